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
const CALL_STATS: u8 = 12;
const PRESENCE: u8 = 13;
const AGENT_STATE: u8 = 14;
const EXPOSE: u8 = 15;
const HTTP_REQUEST: u8 = 16;
const HTTP_HEAD: u8 = 17;
const HTTP_BODY: u8 = 18;
const WS_OPEN: u8 = 19;
const WS_MESSAGE: u8 = 20;
const WS_CLOSE: u8 = 21;
const DIGEST_CHECK: u8 = 22;
const DIGEST_RESULT: u8 = 23;
/// Longest `Authorization` header value or method carried in a Digest check.
const MAX_DIGEST_TEXT: usize = 4096;
/// Longest path of an exposed page's request, media type or peer address carried.
const MAX_HTTP_TEXT: usize = 1024;
/// Longest media statistics carried for one call.
const MAX_CALL_STATS: usize = 4096;
/// Longest agent token in an AgentUp (a JWT with a name and skills fits many times over).
/// An edge refuses to register an agent with a longer one: it could not pass it on.
pub const MAX_TOKEN: usize = 8192;

/// Bounds on what a peer may send, so a broken or hostile peer cannot make us allocate
/// without limit. The defaults fit any SIP message an agent sends.
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
    /// An identifier is empty or holds whitespace or control characters (or, for the Sip
    /// frame's optional agent, its presence byte is neither 0 nor 1).
    #[error("invalid identifier in {field}")]
    BadId {
        /// The field.
        field: &'static str,
    },
    /// A yes/no field holds something other than 0 or 1.
    #[error("{field} is neither 0 nor 1")]
    BadFlag {
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

/// Encodes one frame as the payload of one WebSocket binary message.
pub fn encode(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::new();
    encode_into(frame, &mut buf);
    buf.freeze()
}

/// Appends one frame to `buf`, so a shell can reuse one buffer instead of allocating per frame.
/// Encoding never fails and does not check ids: the peer's decoder is the one line of defence
/// that matters, and our own frames come from already validated state.
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
        Frame::AgentUp { agent, token } => {
            buf.put_u8(AGENT_UP);
            put_bytes(buf, agent.as_bytes());
            put_bytes(buf, token.as_bytes());
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
        Frame::CallStats { call_id, json } => {
            buf.put_u8(CALL_STATS);
            put_bytes(buf, call_id.as_bytes());
            put_bytes(buf, json.as_bytes());
        }
        Frame::Presence { agent, json } => {
            buf.put_u8(PRESENCE);
            put_bytes(buf, agent.as_bytes());
            put_bytes(buf, json.as_bytes());
        }
        Frame::AgentState { agent, json } => {
            buf.put_u8(AGENT_STATE);
            put_bytes(buf, agent.as_bytes());
            put_bytes(buf, json.as_bytes());
        }
        Frame::Expose => buf.put_u8(EXPOSE),
        Frame::HttpRequest { stream, path } => {
            buf.put_u8(HTTP_REQUEST);
            buf.put_u64(*stream);
            put_bytes(buf, path.as_bytes());
        }
        Frame::HttpHead {
            stream,
            status,
            content_type,
        } => {
            buf.put_u8(HTTP_HEAD);
            buf.put_u64(*stream);
            buf.put_u16(*status);
            put_bytes(buf, content_type.as_bytes());
        }
        Frame::HttpBody { stream, data, last } => {
            buf.put_u8(HTTP_BODY);
            buf.put_u64(*stream);
            put_bytes(buf, data);
            buf.put_u8(u8::from(*last));
        }
        Frame::WsOpen { conn, peer } => {
            buf.put_u8(WS_OPEN);
            buf.put_u64(*conn);
            put_bytes(buf, peer.as_bytes());
        }
        Frame::WsMessage { conn, data } => {
            buf.put_u8(WS_MESSAGE);
            buf.put_u64(*conn);
            put_bytes(buf, data);
        }
        Frame::WsClose { conn, reason } => {
            buf.put_u8(WS_CLOSE);
            buf.put_u64(*conn);
            put_bytes(buf, reason.as_bytes());
        }
        Frame::DigestCheck {
            request,
            agent,
            method,
            authorization,
            expires,
        } => {
            buf.put_u8(DIGEST_CHECK);
            buf.put_u64(*request);
            put_bytes(buf, agent.as_bytes());
            put_bytes(buf, method.as_bytes());
            put_bytes(buf, authorization.as_bytes());
            buf.put_u32(*expires);
        }
        Frame::DigestResult {
            request,
            token,
            refusal,
        } => {
            buf.put_u8(DIGEST_RESULT);
            buf.put_u64(*request);
            match token {
                Some(t) => {
                    buf.put_u8(1);
                    put_bytes(buf, t.as_bytes());
                }
                None => buf.put_u8(0),
            }
            put_bytes(buf, refusal.as_bytes());
        }
    }
}

/// A field over 4 GiB cannot be framed; it is cut (the peer's `max_frame` refuses it anyway)
/// rather than making encoding fallible for a case no caller can reach.
fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    let n = u32::try_from(b.len()).unwrap_or(u32::MAX);
    buf.put_u32(n);
    buf.put_slice(b.get(..n as usize).unwrap_or(b));
}

/// Decodes one whole WebSocket message. The bytes come from the other side of the internet,
/// so this checks everything and never panics; a frame that decodes re-encodes to exactly the
/// same bytes (the encoding is canonical), which the fuzz target relies on.
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
                // Only 0 and 1 are canonical; anything else would not re-encode identically.
                _ => return Err(DecodeError::BadId { field: "agent" }),
            };
            let message = Bytes::copy_from_slice(r.bytes("message", limits.max_frame)?);
            Frame::Sip { agent, message }
        }
        AGENT_UP => Frame::AgentUp {
            agent: r.id("agent")?,
            token: r.text("token", MAX_TOKEN)?,
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
        CALL_STATS => Frame::CallStats {
            call_id: r.text("call_id", 1024)?,
            json: r.text("stats", MAX_CALL_STATS)?,
        },
        PRESENCE => Frame::Presence {
            agent: r.id("agent")?,
            json: r.text("presence", MAX_CALL_STATS)?,
        },
        AGENT_STATE => Frame::AgentState {
            agent: r.id("agent")?,
            json: r.text("state", MAX_CALL_STATS)?,
        },
        EXPOSE => Frame::Expose,
        HTTP_REQUEST => Frame::HttpRequest {
            stream: r.u64("stream")?,
            path: r.text("path", MAX_HTTP_TEXT)?,
        },
        HTTP_HEAD => Frame::HttpHead {
            stream: r.u64("stream")?,
            status: r.u16("status")?,
            content_type: r.text("content_type", MAX_HTTP_TEXT)?,
        },
        HTTP_BODY => Frame::HttpBody {
            stream: r.u64("stream")?,
            data: Bytes::copy_from_slice(r.bytes("body", limits.max_frame)?),
            last: r.flag("last")?,
        },
        WS_OPEN => Frame::WsOpen {
            conn: r.u64("conn")?,
            peer: r.text("peer", MAX_HTTP_TEXT)?,
        },
        WS_MESSAGE => Frame::WsMessage {
            conn: r.u64("conn")?,
            data: Bytes::copy_from_slice(r.bytes("message", limits.max_frame)?),
        },
        WS_CLOSE => Frame::WsClose {
            conn: r.u64("conn")?,
            reason: r.text("reason", MAX_HTTP_TEXT)?,
        },
        DIGEST_CHECK => Frame::DigestCheck {
            request: r.u64("request")?,
            agent: r.id("agent")?,
            method: r.text("method", MAX_DIGEST_TEXT)?,
            authorization: r.text("authorization", MAX_DIGEST_TEXT)?,
            expires: r.u32("expires")?,
        },
        DIGEST_RESULT => Frame::DigestResult {
            request: r.u64("request")?,
            token: if r.flag("token")? {
                Some(r.text("token", MAX_TOKEN)?)
            } else {
                None
            },
            refusal: r.text("refusal", MAX_HTTP_TEXT)?,
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

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        self.take(N, field)?
            .try_into()
            .map_err(|_| DecodeError::Truncated { field })
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.u32(field)?).unwrap_or(usize::MAX);
        if len > max {
            return Err(DecodeError::TooLarge { field, len, max });
        }
        self.take(len, field)
    }

    /// A 0/1 byte; anything else would not re-encode identically.
    fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::BadFlag { field }),
        }
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
                token: "eyJhbGciOiJFUzI1NiJ9.e30.c2ln".into(),
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
            Frame::DigestCheck {
                request: 9,
                agent: "alice".into(),
                method: "REGISTER".into(),
                authorization: "Digest username=\"alice\", realm=\"agent-edge\"".into(),
                expires: 3600,
            },
            Frame::DigestResult {
                request: 9,
                token: Some("eyJhbGciOiJFUzI1NiJ9.e30.c2ln".into()),
                refusal: String::new(),
            },
            Frame::DigestResult {
                request: 10,
                token: None,
                refusal: "wrong password".into(),
            },
            Frame::Route {
                call_id: "a84b4c76e66710@pc33".into(),
                agent: "alice".into(),
                ttl_ms: 5000,
            },
            Frame::Expose,
            Frame::HttpRequest {
                stream: 1,
                path: "app.js".into(),
            },
            Frame::HttpHead {
                stream: 1,
                status: 200,
                content_type: "text/javascript; charset=utf-8".into(),
            },
            Frame::HttpBody {
                stream: 1,
                data: Bytes::from_static(b"console.log(1)"),
                last: true,
            },
            Frame::WsOpen {
                conn: 9,
                peer: "192.0.2.7:50123".into(),
            },
            Frame::WsMessage {
                conn: 9,
                data: Bytes::from_static(b"REGISTER sip:x SIP/2.0\r\n\r\n"),
            },
            Frame::WsClose {
                conn: 9,
                reason: "page closed".into(),
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
            token: "t".into(),
        });
        assert_eq!(
            decode(&spaced, &l),
            Err(DecodeError::BadId { field: "agent" })
        );
        let empty = encode(&Frame::AgentUp {
            agent: "".into(),
            token: "t".into(),
        });
        assert_eq!(
            decode(&empty, &l),
            Err(DecodeError::BadId { field: "agent" })
        );
        let long = encode(&Frame::AgentUp {
            agent: "a".repeat(129),
            token: "t".into(),
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

    #[test]
    fn every_id_field_is_checked() {
        let l = Limits::default();
        for bad in ["", "a b", "a\tb", "a\u{7}b", "a\u{a0}b", "a\nb", "\u{2028}"] {
            let cases = [
                (
                    Frame::Hello {
                        version: 1,
                        edge_id: bad.into(),
                        handoffs: vec![],
                    },
                    "edge_id",
                ),
                (
                    Frame::Hello {
                        version: 1,
                        edge_id: "e".into(),
                        handoffs: vec!["ok".into(), bad.into()],
                    },
                    "handoff",
                ),
                (
                    Frame::Welcome {
                        version: 1,
                        distributor_id: bad.into(),
                    },
                    "distributor_id",
                ),
                (
                    Frame::Sip {
                        agent: Some(bad.into()),
                        message: Bytes::new(),
                    },
                    "agent",
                ),
                (Frame::AgentDown { agent: bad.into() }, "agent"),
                (Frame::Revoke { jti: bad.into() }, "jti"),
            ];
            for (frame, field) in cases {
                assert_eq!(
                    decode(&encode(&frame), &l),
                    Err(DecodeError::BadId { field }),
                    "{bad:?} in {field}"
                );
            }
        }
    }

    #[test]
    fn valid_id_counts_bytes_and_allows_non_ascii_letters() {
        assert!(valid_id("alice", 5));
        assert!(!valid_id("alice", 4));
        assert!(valid_id("josé@example.com", 128));
        assert!(!valid_id("é", 1), "two UTF-8 bytes");
        assert!(!valid_id("", 128));
        assert!(!valid_id("a\u{7f}", 128), "DEL is a control character");
    }

    #[test]
    fn sip_agent_presence_must_be_zero_or_one() {
        let l = Limits::default();
        assert_eq!(
            decode(&[SIP, 2, 0, 0, 0, 0], &l),
            Err(DecodeError::BadId { field: "agent" })
        );
        assert_eq!(
            decode(&[SIP, 0, 0, 0, 0, 0], &l),
            Ok(Frame::Sip {
                agent: None,
                message: Bytes::new()
            })
        );
    }

    #[test]
    fn http_body_last_must_be_zero_or_one() {
        let l = Limits::default();
        let mut b = vec![HTTP_BODY];
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.push(2);
        assert_eq!(decode(&b, &l), Err(DecodeError::BadFlag { field: "last" }));
        *b.last_mut().unwrap() = 1;
        assert_eq!(
            decode(&b, &l),
            Ok(Frame::HttpBody {
                stream: 7,
                data: Bytes::new(),
                last: true
            })
        );
    }

    #[test]
    fn truncation_names_the_field() {
        let l = Limits::default();
        let t = |field| Err(DecodeError::Truncated { field });
        assert_eq!(decode(&[HELLO, 0], &l), t("version"));
        assert_eq!(decode(&[HELLO, 0, 1, 0, 0], &l), t("edge_id"));
        assert_eq!(decode(&[HELLO, 0, 1, 0, 0, 0, 1, b'e'], &l), t("handoffs"));
        assert_eq!(
            decode(&[HELLO, 0, 1, 0, 0, 0, 1, b'e', 0, 1], &l),
            t("handoff")
        );
        assert_eq!(decode(&[SIP], &l), t("agent"));
        assert_eq!(decode(&[SIP, 0, 0, 0, 0, 5, b'x'], &l), t("message"));
        assert_eq!(decode(&[PONG, 1, 2, 3, 4, 5, 6, 7], &l), t("nonce"));
        // An AgentUp as edges sent it before the token travelled with it.
        assert_eq!(decode(&[AGENT_UP, 0, 0, 0, 1, b'a'], &l), t("token"));
        let route = encode(&Frame::Route {
            call_id: "c".into(),
            agent: "a".into(),
            ttl_ms: 1,
        });
        assert_eq!(decode(&route[..route.len() - 1], &l), t("ttl_ms"));
    }

    #[test]
    fn lengths_are_checked_before_reading() {
        let l = Limits::default();
        // A length prefix claiming 4 GiB is refused from the prefix alone.
        assert_eq!(
            decode(&[SIP, 0, 0xff, 0xff, 0xff, 0xff], &l),
            Err(DecodeError::TooLarge {
                field: "message",
                len: u32::MAX as usize,
                max: l.max_frame
            })
        );
        let reason = encode(&Frame::Close {
            reason: "x".repeat(1025),
        });
        assert!(matches!(
            decode(&reason, &l),
            Err(DecodeError::TooLarge {
                field: "reason",
                ..
            })
        ));
        let exact = Frame::AgentUp {
            agent: "a".repeat(l.max_id),
            token: "t".repeat(MAX_TOKEN),
        };
        assert_eq!(decode(&encode(&exact), &l), Ok(exact));
        let token = encode(&Frame::AgentUp {
            agent: "alice".into(),
            token: "t".repeat(MAX_TOKEN + 1),
        });
        assert!(matches!(
            decode(&token, &l),
            Err(DecodeError::TooLarge { field: "token", .. })
        ));
        // The token's length prefix alone is refused, before any of it is read.
        let mut claimed = encode(&Frame::AgentUp {
            agent: "alice".into(),
            token: String::new(),
        })
        .to_vec();
        let at = claimed.len() - 4;
        claimed[at..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode(&claimed, &l),
            Err(DecodeError::TooLarge { field: "token", .. })
        ));
    }

    #[test]
    fn limits_are_the_callers() {
        let l = Limits {
            max_frame: 16,
            max_id: 4,
            max_handoffs: 0,
        };
        // 1 tag + 1 presence + 4 length + 10 = 16 bytes: exactly at the limit.
        let fits = Frame::Sip {
            agent: None,
            message: Bytes::from_static(b"0123456789"),
        };
        assert_eq!(decode(&encode(&fits), &l), Ok(fits));
        let over = encode(&Frame::Sip {
            agent: None,
            message: Bytes::from_static(b"0123456789a"),
        });
        assert_eq!(
            decode(&over, &l),
            Err(DecodeError::TooLarge {
                field: "frame",
                len: 17,
                max: 16,
            })
        );
        assert!(matches!(
            decode(
                &encode(&Frame::AgentUp {
                    agent: "abcde".into(),
                    token: String::new(),
                }),
                &l
            ),
            Err(DecodeError::TooLarge {
                field: "agent",
                len: 5,
                max: 4
            })
        ));
        let one = Frame::Hello {
            version: 1,
            edge_id: "e".into(),
            handoffs: vec!["t".into()],
        };
        assert_eq!(
            decode(&encode(&one), &l),
            Err(DecodeError::TooLarge {
                field: "handoffs",
                len: 1,
                max: 0
            })
        );
    }

    #[test]
    fn encode_into_appends() {
        let mut buf = BytesMut::new();
        encode_into(&Frame::Ping { nonce: 1 }, &mut buf);
        encode_into(&Frame::Pong { nonce: 2 }, &mut buf);
        let (a, b) = buf.split_at(9);
        let l = Limits::default();
        assert_eq!(decode(a, &l), Ok(Frame::Ping { nonce: 1 }));
        assert_eq!(decode(b, &l), Ok(Frame::Pong { nonce: 2 }));
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            DecodeError::TooLarge {
                field: "agent",
                len: 200,
                max: 128
            }
            .to_string(),
            "agent of 200 bytes exceeds the limit of 128"
        );
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
            (id(), ".{0,200}").prop_map(|(agent, token)| Frame::AgentUp { agent, token }),
            id().prop_map(|agent| Frame::AgentDown { agent }),
            any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
            any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
            ".{0,100}".prop_map(|reason| Frame::Close { reason }),
            ".{0,300}".prop_map(|json| Frame::Keys { json }),
            id().prop_map(|jti| Frame::Revoke { jti }),
            (any::<u64>(), id(), ".{0,20}", ".{0,200}", any::<u32>()).prop_map(
                |(request, agent, method, authorization, expires)| Frame::DigestCheck {
                    request,
                    agent,
                    method,
                    authorization,
                    expires,
                }
            ),
            (any::<u64>(), prop::option::of(".{0,200}"), ".{0,60}").prop_map(
                |(request, token, refusal)| Frame::DigestResult {
                    request,
                    token,
                    refusal,
                }
            ),
            (".{0,60}", id(), any::<u32>()).prop_map(|(call_id, agent, ttl_ms)| Frame::Route {
                call_id,
                agent,
                ttl_ms
            }),
            (".{0,60}", ".{0,300}").prop_map(|(call_id, json)| Frame::CallStats { call_id, json }),
            (id(), ".{0,100}").prop_map(|(agent, json)| Frame::Presence { agent, json }),
            (id(), ".{0,100}").prop_map(|(agent, json)| Frame::AgentState { agent, json }),
            Just(Frame::Expose),
            (any::<u64>(), ".{0,100}")
                .prop_map(|(stream, path)| Frame::HttpRequest { stream, path }),
            (any::<u64>(), any::<u16>(), ".{0,60}").prop_map(|(stream, status, content_type)| {
                Frame::HttpHead {
                    stream,
                    status,
                    content_type,
                }
            }),
            (
                any::<u64>(),
                prop::collection::vec(any::<u8>(), 0..512),
                any::<bool>()
            )
                .prop_map(|(stream, d, last)| Frame::HttpBody {
                    stream,
                    data: Bytes::from(d),
                    last
                }),
            (any::<u64>(), ".{0,60}").prop_map(|(conn, peer)| Frame::WsOpen { conn, peer }),
            (any::<u64>(), prop::collection::vec(any::<u8>(), 0..512)).prop_map(|(conn, d)| {
                Frame::WsMessage {
                    conn,
                    data: Bytes::from(d),
                }
            }),
            (any::<u64>(), ".{0,100}").prop_map(|(conn, reason)| Frame::WsClose { conn, reason }),
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

        /// Random bytes rarely get past the tag, so also start from a valid frame and damage it.
        #[test]
        fn damaged_frames_never_panic(
            f in frame(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut b = encode(&f).to_vec();
            let i = at.index(b.len());
            b[i] = byte;
            if let Ok(again) = decode(&b, &Limits::default()) {
                prop_assert_eq!(&encode(&again)[..], &b[..]);
            }
        }

        #[test]
        fn every_strict_prefix_is_refused(f in frame(), at in any::<prop::sample::Index>()) {
            let b = encode(&f);
            let cut = at.index(b.len());
            prop_assert!(decode(&b[..cut], &Limits::default()).is_err());
        }

        #[test]
        fn what_decodes_re_encodes_identically(
            tag in 1u8..=11,
            rest in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut b = vec![tag];
            b.extend(rest);
            if let Ok(f) = decode(&b, &Limits::default()) {
                prop_assert_eq!(&encode(&f)[..], &b[..]);
            }
        }
    }
}
