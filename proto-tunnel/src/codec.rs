//! A compact binary encoding: one tag byte, then fields. Integers are big-endian, strings and
//! byte strings carry a u32 length, options a 0/1 byte, lists a u16 count. Decoding checks
//! every length against [`Limits`] before trusting it, and never panics.

use bytes::{BufMut, Bytes, BytesMut};

use crate::Frame;

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const SIP: u8 = 3;
const AGENT_UP: u8 = 4;
const AGENT_DOWN: u8 = 5;
const PING: u8 = 6;
const PONG: u8 = 7;
const CLOSE: u8 = 8;
const KEYS: u8 = 9;
const REVOKE: u8 = 10;
const ROUTE: u8 = 11;

/// Bounds on what a peer may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted, in bytes.
    pub max_frame: usize,
    /// Longest identifier (edge, distributor, agent, hand-off name), in bytes.
    pub max_id: usize,
    /// Most hand-off names in a Hello.
    pub max_handoffs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 256 * 1024,
            max_id: 128,
            max_handoffs: 8,
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message had no bytes at all.
    #[error("empty frame")]
    Empty,
    /// The first byte names no frame type.
    #[error("unknown frame type {0}")]
    UnknownTag(u8),
    /// The frame ended in the middle of a field.
    #[error("frame truncated in {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// Bytes were left after the last field.
    #[error("{0} bytes after the end of the frame")]
    TrailingBytes(usize),
    /// A frame or field is longer than the limits allow.
    #[error("{field} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The frame or field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An identifier is empty or holds whitespace or control characters.
    #[error("invalid identifier in {field}")]
    BadId {
        /// The field.
        field: &'static str,
    },
    /// A text field is not UTF-8.
    #[error("{field} is not UTF-8")]
    BadUtf8 {
        /// The field.
        field: &'static str,
    },
}

/// Whether `id` can name an edge, a distributor, an agent or a hand-off: 1 to `max` bytes,
/// no whitespace, no control characters (they would break logs, SIP URIs and the CLI).
pub fn valid_id(id: &str, max: usize) -> bool {
    !id.is_empty() && id.len() <= max && !id.chars().any(|c| c.is_whitespace() || c.is_control())
}

pub fn encode(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::new();
    encode_into(frame, &mut buf);
    buf.freeze()
}

pub fn encode_into(frame: &Frame, buf: &mut BytesMut) {
    match frame {
        Frame::Hello {
            version,
            edge_id,
            handoffs,
        } => {
            buf.put_u8(HELLO);
            buf.put_u16(*version);
            put_bytes(buf, edge_id.as_bytes());
            // Encoding never fails: a list longer than a u16 is cut, and decoding rejects
            // such a Hello anyway through max_handoffs.
            let n = handoffs.len().min(u16::MAX as usize);
            buf.put_u16(n as u16);
            for h in handoffs.iter().take(n) {
                put_bytes(buf, h.as_bytes());
            }
        }
        Frame::Welcome {
            version,
            distributor_id,
        } => {
            buf.put_u8(WELCOME);
            buf.put_u16(*version);
            put_bytes(buf, distributor_id.as_bytes());
        }
        Frame::Sip { agent, message } => {
            buf.put_u8(SIP);
            match agent {
                Some(a) => {
                    buf.put_u8(1);
                    put_bytes(buf, a.as_bytes());
                }
                None => buf.put_u8(0),
            }
            put_bytes(buf, message);
        }
        Frame::AgentUp { agent } => {
            buf.put_u8(AGENT_UP);
            put_bytes(buf, agent.as_bytes());
        }
        Frame::AgentDown { agent } => {
            buf.put_u8(AGENT_DOWN);
            put_bytes(buf, agent.as_bytes());
        }
        Frame::Ping { nonce } => {
            buf.put_u8(PING);
            buf.put_u64(*nonce);
        }
        Frame::Pong { nonce } => {
            buf.put_u8(PONG);
            buf.put_u64(*nonce);
        }
        Frame::Close { reason } => {
            buf.put_u8(CLOSE);
            put_bytes(buf, reason.as_bytes());
        }
        Frame::Keys { json } => {
            buf.put_u8(KEYS);
            put_bytes(buf, json.as_bytes());
        }
        Frame::Revoke { jti } => {
            buf.put_u8(REVOKE);
            put_bytes(buf, jti.as_bytes());
        }
        Frame::Route {
            call_id,
            agent,
            ttl_ms,
        } => {
            buf.put_u8(ROUTE);
            put_bytes(buf, call_id.as_bytes());
            put_bytes(buf, agent.as_bytes());
            buf.put_u32(*ttl_ms);
        }
    }
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    let n = b.len().min(u32::MAX as usize);
    buf.put_u32(n as u32);
    buf.put_slice(&b[..n]);
}

pub fn decode(buf: &[u8], limits: &Limits) -> Result<Frame, DecodeError> {
    if buf.len() > limits.max_frame {
        return Err(DecodeError::TooLarge {
            field: "frame",
            len: buf.len(),
            max: limits.max_frame,
        });
    }
    let mut r = Reader { buf, limits };
    let tag = r.u8("type").map_err(|_| DecodeError::Empty)?;
    let frame = match tag {
        HELLO => {
            let version = r.u16("version")?;
            let edge_id = r.id("edge_id")?;
            let n = usize::from(r.u16("handoffs")?);
            if n > limits.max_handoffs {
                return Err(DecodeError::TooLarge {
                    field: "handoffs",
                    len: n,
                    max: limits.max_handoffs,
                });
            }
            let mut handoffs = Vec::with_capacity(n);
            for _ in 0..n {
                handoffs.push(r.id("handoff")?);
            }
            Frame::Hello {
                version,
                edge_id,
                handoffs,
            }
        }
        WELCOME => Frame::Welcome {
            version: r.u16("version")?,
            distributor_id: r.id("distributor_id")?,
        },
        SIP => {
            let agent = match r.u8("agent")? {
                0 => None,
                1 => Some(r.id("agent")?),
                _ => return Err(DecodeError::BadId { field: "agent" }),
            };
            let message = Bytes::copy_from_slice(r.bytes("message", limits.max_frame)?);
            Frame::Sip { agent, message }
        }
        AGENT_UP => Frame::AgentUp {
            agent: r.id("agent")?,
        },
        AGENT_DOWN => Frame::AgentDown {
            agent: r.id("agent")?,
        },
        PING => Frame::Ping {
            nonce: r.u64("nonce")?,
        },
        PONG => Frame::Pong {
            nonce: r.u64("nonce")?,
        },
        CLOSE => Frame::Close {
            reason: r.text("reason", 1024)?,
        },
        KEYS => Frame::Keys {
            json: r.text("keys", limits.max_frame)?,
        },
        REVOKE => Frame::Revoke { jti: r.id("jti")? },
        ROUTE => Frame::Route {
            call_id: r.text("call_id", 1024)?,
            agent: r.id("agent")?,
            ttl_ms: r.u32("ttl_ms")?,
        },
        other => return Err(DecodeError::UnknownTag(other)),
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::TrailingBytes(r.buf.len()));
    }
    Ok(frame)
}

struct Reader<'a> {
    buf: &'a [u8],
    limits: &'a Limits,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { field });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let b = self.take(4, field)?;
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len > max {
            return Err(DecodeError::TooLarge { field, len, max });
        }
        self.take(len, field)
    }

    fn text(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let b = self.bytes(field, max)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadUtf8 { field })
    }

    fn id(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let max = self.limits.max_id;
        let s = self.text(field, max)?;
        if !valid_id(&s, max) {
            return Err(DecodeError::BadId { field });
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Hello {
                version: 1,
                edge_id: "edge-1".into(),
                handoffs: vec!["tunnel".into(), "uri".into()],
            },
            Frame::Welcome {
                version: 1,
                distributor_id: "dist-1".into(),
            },
            Frame::Sip {
                agent: Some("alice".into()),
                message: Bytes::from_static(b"INVITE sip:a@b SIP/2.0\r\n\r\n"),
            },
            Frame::Sip {
                agent: None,
                message: Bytes::new(),
            },
            Frame::AgentUp {
                agent: "alice".into(),
            },
            Frame::AgentDown {
                agent: "bob.smith".into(),
            },
            Frame::Ping { nonce: 7 },
            Frame::Pong { nonce: u64::MAX },
            Frame::Close {
                reason: "version mismatch".into(),
            },
            Frame::Keys {
                json: "{\"keys\":[]}".into(),
            },
            Frame::Revoke {
                jti: "0123abcd".into(),
            },
            Frame::Route {
                call_id: "a84b4c76e66710@pc33".into(),
                agent: "alice".into(),
                ttl_ms: 5000,
            },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        let limits = Limits::default();
        for f in all_frames() {
            assert_eq!(decode(&encode(&f), &limits).unwrap(), f);
        }
    }

    #[test]
    fn each_error_is_named() {
        let l = Limits::default();
        assert_eq!(decode(&[], &l), Err(DecodeError::Empty));
        assert_eq!(decode(&[99], &l), Err(DecodeError::UnknownTag(99)));
        assert_eq!(
            decode(&[PING, 0, 0], &l),
            Err(DecodeError::Truncated { field: "nonce" })
        );
        let mut extra = encode(&Frame::Ping { nonce: 1 }).to_vec();
        extra.push(0);
        assert_eq!(decode(&extra, &l), Err(DecodeError::TrailingBytes(1)));
        let big = vec![SIP; l.max_frame + 1];
        assert!(matches!(
            decode(&big, &l),
            Err(DecodeError::TooLarge { field: "frame", .. })
        ));
        let spaced = encode(&Frame::AgentUp {
            agent: "al ice".into(),
        });
        assert_eq!(
            decode(&spaced, &l),
            Err(DecodeError::BadId { field: "agent" })
        );
        let empty = encode(&Frame::AgentUp { agent: "".into() });
        assert_eq!(
            decode(&empty, &l),
            Err(DecodeError::BadId { field: "agent" })
        );
        let long = encode(&Frame::AgentUp {
            agent: "a".repeat(129),
        });
        assert!(matches!(
            decode(&long, &l),
            Err(DecodeError::TooLarge { field: "agent", .. })
        ));
        let mut bad_utf8 = vec![CLOSE, 0, 0, 0, 2, 0xff, 0xfe];
        assert_eq!(
            decode(&bad_utf8, &l),
            Err(DecodeError::BadUtf8 { field: "reason" })
        );
        bad_utf8[4] = 200;
        assert_eq!(
            decode(&bad_utf8, &l),
            Err(DecodeError::Truncated { field: "reason" })
        );
        let many = Frame::Hello {
            version: 1,
            edge_id: "e".into(),
            handoffs: vec!["x".into(); 9],
        };
        assert!(matches!(
            decode(&encode(&many), &l),
            Err(DecodeError::TooLarge {
                field: "handoffs",
                ..
            })
        ));
    }

    fn id() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._@-]{1,40}"
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<u16>(), id(), prop::collection::vec(id(), 0..8)).prop_map(|(v, e, h)| {
                Frame::Hello {
                    version: v,
                    edge_id: e,
                    handoffs: h,
                }
            }),
            (any::<u16>(), id()).prop_map(|(v, d)| Frame::Welcome {
                version: v,
                distributor_id: d
            }),
            (
                prop::option::of(id()),
                prop::collection::vec(any::<u8>(), 0..512)
            )
                .prop_map(|(a, m)| Frame::Sip {
                    agent: a,
                    message: Bytes::from(m)
                }),
            id().prop_map(|agent| Frame::AgentUp { agent }),
            id().prop_map(|agent| Frame::AgentDown { agent }),
            any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
            any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
            ".{0,100}".prop_map(|reason| Frame::Close { reason }),
            ".{0,300}".prop_map(|json| Frame::Keys { json }),
            id().prop_map(|jti| Frame::Revoke { jti }),
            (".{0,60}", id(), any::<u32>()).prop_map(|(call_id, agent, ttl_ms)| Frame::Route {
                call_id,
                agent,
                ttl_ms
            }),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_frames_round_trip(f in frame()) {
            prop_assert_eq!(decode(&encode(&f), &Limits::default()).unwrap(), f);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&b, &Limits::default());
        }
    }
}
