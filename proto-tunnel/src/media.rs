//! The caller media relay between an exposed edge and its distributor: frames of the media
//! WebSocket and the receiver's rule for late packets.
//!
//! The media WebSocket is a connection of its own beside the signalling tunnel, so RTP never
//! waits behind SIP nor SIP behind RTP. Each binary message is one [`MediaFrame`]; a caller's
//! datagram is one `Packet`, stamped with the sender's clock so the receiver can drop what
//! the TCP connection delayed too long to be worth playing ([`LateFilter`]).
//!
//! The same connection carries agents' ICE-TCP (RFC 6544): a browser that reaches the
//! distributor's public port with RFC 4571-framed STUN is routed by its ICE username to the
//! edge that registered that session, and each frame crosses as one `TcpData`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The media WebSocket's subprotocol.
pub const MEDIA_SUBPROTOCOL: &str = "agent-edge-media.v1";

/// Largest datagram relayed: RTP of a G.711 call is 172 bytes; anything above an Ethernet
/// MTU is not media we relay.
pub const MAX_DATAGRAM: usize = 1500;

/// Longest text carried (a refusal's reason).
const MAX_REASON: usize = 256;

/// Largest encoded media frame: a packet with the largest datagram and an IPv6 peer.
pub const MAX_MEDIA_FRAME: usize = MAX_DATAGRAM + 64;

const OPEN: u8 = 1;
const OPENED: u8 = 2;
const REFUSED: u8 = 3;
const CLOSE: u8 = 4;
const PACKET: u8 = 5;
const REPORT: u8 = 6;
const ICE_TCP: u8 = 7;
const ICE_SESSION: u8 = 8;
const TCP_OPEN: u8 = 9;
const TCP_DATA: u8 = 10;
const TCP_CLOSE: u8 = 11;
const TURN_DATA: u8 = 12;

/// Longest ICE username fragment (RFC 8839: 4 to 256 characters).
pub const MAX_UFRAG: usize = 256;
/// Longest agent identifier carried.
pub const MAX_AGENT: usize = 256;

/// One message of the media WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaFrame {
    /// Edge → distributor: a public UDP port for a call's caller media. `remote` is where the
    /// caller's SDP says it receives, the one address the distributor sends to before the
    /// caller's own packets show where it is.
    Open {
        flow: u64,
        remote: Option<SocketAddr>,
    },
    /// Distributor → edge: the flow's port, as the caller must be told in SDP.
    Opened { flow: u64, public: SocketAddr },
    /// Distributor → edge: no port for the flow.
    Refused { flow: u64, reason: String },
    /// Either way: the flow is over (the call ended, or the distributor closed it).
    Close { flow: u64 },
    /// A caller's datagram: distributor → edge with `peer` its source, edge → distributor
    /// with `peer` its destination. `sent_us`: the sender's clock, in microseconds from an
    /// origin of its own.
    Packet {
        flow: u64,
        peer: SocketAddr,
        sent_us: u64,
        payload: Vec<u8>,
    },
    /// Edge → distributor, every few seconds: what the edge dropped of the relayed media
    /// since the connection opened, for the distributor's live view.
    Report { late: u64, overflow: u64 },
    /// Distributor → edge, first on every connection: where agents' browsers reach the
    /// distributor for ICE-TCP (its public listener, as announced), or none.
    IceTcp { addr: Option<SocketAddr> },
    /// Edge → distributor: a WebRTC session with this local ICE username fragment is open
    /// (or closed) here; ICE-TCP connections naming it are this edge's. `agent` is whose
    /// call it is and `webrtc` the session's UDP candidate: the one peer a TURN allocation
    /// with that agent's credentials may reach.
    IceSession {
        ufrag: String,
        open: bool,
        agent: String,
        webrtc: Option<SocketAddr>,
    },
    /// Distributor → edge: a browser's ICE-TCP connection for one of the edge's sessions,
    /// from `peer` (the browser's address as the distributor sees it).
    TcpOpen { conn: u64, peer: SocketAddr },
    /// Either way: one RFC 4571 frame of that connection (STUN, DTLS or SRTP), without its
    /// length prefix.
    TcpData { conn: u64, payload: Vec<u8> },
    /// Either way: the connection is over.
    TcpClose { conn: u64 },
    /// Either way: one datagram between a browser's TURN allocation on the distributor
    /// (`relayed`, its relayed transport address) and the edge's WebRTC socket (`peer`, as
    /// the browser addressed it). Distributor → edge: the browser sent it; edge → distributor:
    /// the edge sends it to the browser.
    TurnData {
        relayed: SocketAddr,
        peer: SocketAddr,
        payload: Vec<u8>,
    },
}

/// Why a media frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaDecodeError {
    #[error("empty media frame")]
    Empty,
    #[error("unknown media frame type {0}")]
    UnknownTag(u8),
    #[error("media frame truncated in {0}")]
    Truncated(&'static str),
    #[error("{0} bytes after the end of the media frame")]
    TrailingBytes(usize),
    #[error("{field} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("a reason that is not UTF-8")]
    NotUtf8,
}

/// Encodes a frame.
pub fn encode_media(frame: &MediaFrame) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    match frame {
        MediaFrame::Open { flow, remote } => {
            out.push(OPEN);
            out.extend_from_slice(&flow.to_be_bytes());
            put_opt_addr(&mut out, remote.as_ref());
        }
        MediaFrame::Opened { flow, public } => {
            out.push(OPENED);
            out.extend_from_slice(&flow.to_be_bytes());
            put_addr(&mut out, public);
        }
        MediaFrame::Refused { flow, reason } => {
            out.push(REFUSED);
            out.extend_from_slice(&flow.to_be_bytes());
            put_text(&mut out, reason, MAX_REASON);
        }
        MediaFrame::Close { flow } => {
            out.push(CLOSE);
            out.extend_from_slice(&flow.to_be_bytes());
        }
        MediaFrame::Packet {
            flow,
            peer,
            sent_us,
            payload,
        } => return encode_packet(*flow, *peer, *sent_us, payload),
        MediaFrame::Report { late, overflow } => {
            out.push(REPORT);
            out.extend_from_slice(&late.to_be_bytes());
            out.extend_from_slice(&overflow.to_be_bytes());
        }
        MediaFrame::IceTcp { addr } => {
            out.push(ICE_TCP);
            put_opt_addr(&mut out, addr.as_ref());
        }
        MediaFrame::IceSession {
            ufrag,
            open,
            agent,
            webrtc,
        } => {
            out.push(ICE_SESSION);
            out.push(u8::from(*open));
            put_text(&mut out, ufrag, MAX_UFRAG);
            put_text(&mut out, agent, MAX_AGENT);
            put_opt_addr(&mut out, webrtc.as_ref());
        }
        MediaFrame::TcpOpen { conn, peer } => {
            out.push(TCP_OPEN);
            out.extend_from_slice(&conn.to_be_bytes());
            put_addr(&mut out, peer);
        }
        MediaFrame::TcpData { conn, payload } => return encode_tcp_data(*conn, payload),
        MediaFrame::TcpClose { conn } => {
            out.push(TCP_CLOSE);
            out.extend_from_slice(&conn.to_be_bytes());
        }
        MediaFrame::TurnData {
            relayed,
            peer,
            payload,
        } => return encode_turn_data(*relayed, *peer, payload),
    }
    out
}

/// Encodes a `TurnData` without building the frame first.
pub fn encode_turn_data(relayed: SocketAddr, peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 40);
    out.push(TURN_DATA);
    put_addr(&mut out, &relayed);
    put_addr(&mut out, &peer);
    out.extend_from_slice(payload);
    out
}

/// Encodes a `TcpData` without building the frame first.
pub fn encode_tcp_data(conn: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 9);
    out.push(TCP_DATA);
    out.extend_from_slice(&conn.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Encodes a `Packet` without building the frame first (the relay's hot path).
pub fn encode_packet(flow: u64, peer: SocketAddr, sent_us: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 40);
    out.push(PACKET);
    out.extend_from_slice(&flow.to_be_bytes());
    put_addr(&mut out, &peer);
    out.extend_from_slice(&sent_us.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The longest prefix of `s` within `max` bytes that ends on a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A 16-bit length, then the text (cut to `max` bytes on a character boundary).
fn put_text(out: &mut Vec<u8>, text: &str, max: usize) {
    let text = truncated(text, max);
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn put_opt_addr(out: &mut Vec<u8>, addr: Option<&SocketAddr>) {
    match addr {
        Some(addr) => put_addr(out, addr),
        None => out.push(0),
    }
}

fn put_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Decodes one frame; never panics, whatever the bytes.
pub fn decode_media(bytes: &[u8]) -> Result<MediaFrame, MediaDecodeError> {
    if bytes.len() > MAX_MEDIA_FRAME {
        return Err(MediaDecodeError::TooLarge {
            field: "frame",
            len: bytes.len(),
            max: MAX_MEDIA_FRAME,
        });
    }
    let (&tag, rest) = bytes.split_first().ok_or(MediaDecodeError::Empty)?;
    let mut r = Reader(rest);
    let frame = match tag {
        OPEN => {
            let flow = r.u64("flow")?;
            let remote = r.opt_addr()?;
            MediaFrame::Open { flow, remote }
        }
        OPENED => MediaFrame::Opened {
            flow: r.u64("flow")?,
            public: r.opt_addr()?.ok_or(MediaDecodeError::Family(0))?,
        },
        REFUSED => {
            let flow = r.u64("flow")?;
            let reason = r.text("reason", MAX_REASON)?;
            MediaFrame::Refused { flow, reason }
        }
        CLOSE => MediaFrame::Close {
            flow: r.u64("flow")?,
        },
        PACKET => {
            let flow = r.u64("flow")?;
            let peer = r.opt_addr()?.ok_or(MediaDecodeError::Family(0))?;
            let sent_us = r.u64("sent_us")?;
            let payload = std::mem::take(&mut r.0).to_vec();
            MediaFrame::Packet {
                flow,
                peer,
                sent_us,
                payload,
            }
        }
        REPORT => MediaFrame::Report {
            late: r.u64("late")?,
            overflow: r.u64("overflow")?,
        },
        ICE_TCP => MediaFrame::IceTcp {
            addr: r.opt_addr()?,
        },
        ICE_SESSION => {
            let open = match r.array::<1>("open")?[0] {
                0 => false,
                1 => true,
                other => return Err(MediaDecodeError::UnknownTag(other)),
            };
            let ufrag = r.text("ufrag", MAX_UFRAG)?;
            let agent = r.text("agent", MAX_AGENT)?;
            let webrtc = r.opt_addr()?;
            MediaFrame::IceSession {
                ufrag,
                open,
                agent,
                webrtc,
            }
        }
        TCP_OPEN => MediaFrame::TcpOpen {
            conn: r.u64("conn")?,
            peer: r.opt_addr()?.ok_or(MediaDecodeError::Family(0))?,
        },
        TCP_DATA => {
            let conn = r.u64("conn")?;
            let payload = std::mem::take(&mut r.0).to_vec();
            MediaFrame::TcpData { conn, payload }
        }
        TCP_CLOSE => MediaFrame::TcpClose {
            conn: r.u64("conn")?,
        },
        TURN_DATA => {
            let relayed = r.opt_addr()?.ok_or(MediaDecodeError::Family(0))?;
            let peer = r.opt_addr()?.ok_or(MediaDecodeError::Family(0))?;
            let payload = std::mem::take(&mut r.0).to_vec();
            MediaFrame::TurnData {
                relayed,
                peer,
                payload,
            }
        }
        other => return Err(MediaDecodeError::UnknownTag(other)),
    };
    match r.0.len() {
        0 => Ok(frame),
        n => Err(MediaDecodeError::TrailingBytes(n)),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A 16-bit length and that much UTF-8, at most `max` bytes.
    fn text(&mut self, field: &'static str, max: usize) -> Result<String, MediaDecodeError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(MediaDecodeError::TooLarge { field, len, max });
        }
        std::str::from_utf8(self.take(len, field)?)
            .map(str::to_owned)
            .map_err(|_| MediaDecodeError::NotUtf8)
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], MediaDecodeError> {
        if self.0.len() < n {
            return Err(MediaDecodeError::Truncated(field));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], MediaDecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, MediaDecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, MediaDecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// An address, or none (family byte 0).
    fn opt_addr(&mut self) -> Result<Option<SocketAddr>, MediaDecodeError> {
        let ip = match self.array::<1>("address family")?[0] {
            0 => return Ok(None),
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>("address")?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>("address")?)),
            other => return Err(MediaDecodeError::Family(other)),
        };
        Ok(Some(SocketAddr::new(ip, self.u16("port")?)))
    }
}

/// The local ICE username fragment a browser's first ICE-TCP message names: RFC 4571 frame
/// `frame` (without its length) must be a STUN Binding request (RFC 8489) whose USERNAME is
/// `<ours>:<theirs>` (RFC 8445 §7.2.2); ours is the part before the colon. None for anything
/// else. Only reads: the edge's ICE agent checks the message's integrity.
pub fn stun_binding_ufrag(frame: &[u8]) -> Option<&str> {
    const BINDING_REQUEST: u16 = 0x0001;
    const MAGIC_COOKIE: u32 = 0x2112_A442;
    const USERNAME: u16 = 0x0006;
    let header = frame.get(..20)?;
    let kind = u16::from_be_bytes([header[0], header[1]]);
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let cookie = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if kind != BINDING_REQUEST || cookie != MAGIC_COOKIE || length % 4 != 0 {
        return None;
    }
    let mut attrs = frame.get(20..20 + length)?;
    while attrs.len() >= 4 {
        let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
        let len = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        let value = attrs.get(4..4 + len)?;
        if kind == USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            let ours = username.split_once(':')?.0;
            return (!ours.is_empty() && ours.len() <= MAX_UFRAG).then_some(ours);
        }
        // Attributes are padded to four bytes.
        attrs = attrs.get((4 + len).div_ceil(4) * 4..)?;
    }
    None
}

/// Tells late packets from timely ones without synchronised clocks.
///
/// Sender and receiver clocks have different origins, so `arrival - sent` is the one-way
/// delay plus an unknown constant. Its smallest value seen recently stands for "no queueing";
/// a packet whose offset exceeds that by more than `max_age` waited that much longer in
/// queues and TCP retransmissions than the quickest packet did, and would only add delay to
/// the jitter buffer it reaches. The baseline is the minimum over the last few windows (as
/// LEDBAT keeps its base delay), so drift between the two clocks cannot make every packet
/// late or none.
#[derive(Debug, Clone)]
pub struct LateFilter {
    max_age_us: u64,
    window_us: u64,
    /// Minimum offset of each recent window, newest last; offsets are `arrival - sent` in
    /// wrapping arithmetic read as signed.
    minima: [i64; LateFilter::WINDOWS],
    /// Start of the newest window (receiver clock), or none before the first packet.
    window_start: Option<u64>,
    current: usize,
}

impl LateFilter {
    const WINDOWS: usize = 4;

    /// `max_age`: added delay beyond which a packet is late; `window`: length of each of the
    /// windows the baseline is the minimum of.
    pub fn new(max_age: Duration, window: Duration) -> LateFilter {
        LateFilter {
            max_age_us: u64::try_from(max_age.as_micros()).unwrap_or(u64::MAX),
            window_us: u64::try_from(window.as_micros()).unwrap_or(u64::MAX).max(1),
            minima: [i64::MAX; LateFilter::WINDOWS],
            window_start: None,
            current: 0,
        }
    }

    /// Whether a packet sent at `sent_us` (sender's clock) and arriving at `arrival_us`
    /// (receiver's clock) is late. Every packet, late or not, updates the baseline.
    pub fn is_late(&mut self, sent_us: u64, arrival_us: u64) -> bool {
        let offset = arrival_us.wrapping_sub(sent_us) as i64;
        match self.window_start {
            None => self.window_start = Some(arrival_us),
            Some(start) if arrival_us.saturating_sub(start) >= self.window_us => {
                self.current = (self.current + 1) % LateFilter::WINDOWS;
                self.minima[self.current] = i64::MAX;
                self.window_start = Some(arrival_us);
            }
            Some(_) => {}
        }
        let slot = &mut self.minima[self.current];
        *slot = (*slot).min(offset);
        let base = self.minima.iter().copied().min().unwrap_or(offset);
        let queued = offset.saturating_sub(base);
        u64::try_from(queued).unwrap_or(0) > self.max_age_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(port: u16) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, 20], port))
    }

    #[test]
    fn every_frame_round_trips() {
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 9));
        for frame in [
            MediaFrame::Open {
                flow: 7,
                remote: Some(v4(4000)),
            },
            MediaFrame::Open {
                flow: 7,
                remote: None,
            },
            MediaFrame::Opened {
                flow: u64::MAX,
                public: v6,
            },
            MediaFrame::Refused {
                flow: 1,
                reason: "no port free in 40000-40009".into(),
            },
            MediaFrame::Close { flow: 2 },
            MediaFrame::Packet {
                flow: 3,
                peer: v4(5004),
                sent_us: 123_456_789,
                payload: vec![0x80; 172],
            },
            MediaFrame::Packet {
                flow: 3,
                peer: v6,
                sent_us: 0,
                payload: vec![],
            },
            MediaFrame::Report {
                late: 5,
                overflow: 6,
            },
            MediaFrame::IceTcp {
                addr: Some(v4(443)),
            },
            MediaFrame::IceTcp { addr: None },
            MediaFrame::IceSession {
                ufrag: "aB3+/xyz".into(),
                open: true,
                agent: "alice".into(),
                webrtc: Some(v4(40000)),
            },
            MediaFrame::IceSession {
                ufrag: "aB3+/xyz".into(),
                open: false,
                agent: String::new(),
                webrtc: None,
            },
            MediaFrame::TcpOpen { conn: 9, peer: v6 },
            MediaFrame::TcpData {
                conn: 9,
                payload: vec![0, 1, 0x21, 0x12],
            },
            MediaFrame::TcpClose { conn: 9 },
            MediaFrame::TurnData {
                relayed: v4(49152),
                peer: v6,
                payload: vec![0, 1, 0, 0],
            },
        ] {
            assert_eq!(decode_media(&encode_media(&frame)), Ok(frame));
        }
    }

    #[test]
    fn broken_frames_are_named() {
        assert_eq!(decode_media(&[]), Err(MediaDecodeError::Empty));
        assert_eq!(decode_media(&[99]), Err(MediaDecodeError::UnknownTag(99)));
        assert_eq!(
            decode_media(&[CLOSE, 0, 0]),
            Err(MediaDecodeError::Truncated("flow"))
        );
        let mut close = encode_media(&MediaFrame::Close { flow: 1 });
        close.push(0);
        assert_eq!(
            decode_media(&close),
            Err(MediaDecodeError::TrailingBytes(1))
        );
        let mut packet = encode_packet(1, v4(1), 0, &[]);
        packet[9] = 5;
        assert_eq!(decode_media(&packet), Err(MediaDecodeError::Family(5)));
        let huge = encode_packet(1, v4(1), 0, &[0; MAX_DATAGRAM + 100]);
        assert!(matches!(
            decode_media(&huge),
            Err(MediaDecodeError::TooLarge { field: "frame", .. })
        ));
        let mut refused = vec![REFUSED];
        refused.extend_from_slice(&1u64.to_be_bytes());
        refused.extend_from_slice(&2u16.to_be_bytes());
        refused.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(decode_media(&refused), Err(MediaDecodeError::NotUtf8));
    }

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary() {
        let reason = "é".repeat(MAX_REASON);
        let frame = MediaFrame::Refused { flow: 1, reason };
        let Ok(MediaFrame::Refused { reason, .. }) = decode_media(&encode_media(&frame)) else {
            panic!("a long reason must still encode");
        };
        assert!(reason.len() <= MAX_REASON && reason.chars().all(|c| c == 'é'));
    }

    fn stun(kind: u16, cookie: u32, username: Option<&[u8]>) -> Vec<u8> {
        let mut attrs = Vec::new();
        // Something before the USERNAME, with padding: PRIORITY-like, 4 bytes.
        attrs.extend_from_slice(&0x0024u16.to_be_bytes());
        attrs.extend_from_slice(&4u16.to_be_bytes());
        attrs.extend_from_slice(&[1, 2, 3, 4]);
        if let Some(u) = username {
            attrs.extend_from_slice(&0x0006u16.to_be_bytes());
            attrs.extend_from_slice(&(u.len() as u16).to_be_bytes());
            attrs.extend_from_slice(u);
            attrs.resize(attrs.len().div_ceil(4) * 4, 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn the_ufrag_of_a_binding_request_is_the_part_before_the_colon() {
        let ok = stun(1, 0x2112_A442, Some(b"edgeUfrag1:brws"));
        assert_eq!(stun_binding_ufrag(&ok), Some("edgeUfrag1"));
        for bad in [
            stun(0x0101, 0x2112_A442, Some(b"a:b")),
            stun(1, 0xdead_beef, Some(b"a:b")),
            stun(1, 0x2112_A442, None),
            stun(1, 0x2112_A442, Some(b"nocolon")),
            stun(1, 0x2112_A442, Some(b":b")),
            stun(1, 0x2112_A442, Some(&[0xff, b':', b'b'])),
        ] {
            assert_eq!(stun_binding_ufrag(&bad), None, "{bad:?}");
        }
        let mut truncated = ok.clone();
        truncated.truncate(30);
        assert_eq!(stun_binding_ufrag(&truncated), None);
        assert_eq!(stun_binding_ufrag(&[0x16, 3, 1]), None);
    }

    const MS: u64 = 1000;

    #[test]
    fn a_packet_delayed_beyond_the_age_is_late_whatever_the_clock_origins() {
        for origin in [0u64, 5_000_000_000, u64::MAX - 1_000_000] {
            let mut f = LateFilter::new(Duration::from_millis(200), Duration::from_secs(10));
            // 20 ms packets, 30 ms one-way; the receiver's clock starts elsewhere.
            let at = |i: u64, delay: u64| origin.wrapping_add(i * 20 * MS + delay);
            for i in 0..50 {
                assert!(!f.is_late(i * 20 * MS, at(i, 30 * MS)), "{origin} {i}");
            }
            // One held up 150 ms more: still in time; one 250 ms: late.
            assert!(!f.is_late(50 * 20 * MS, at(50, 180 * MS)));
            assert!(f.is_late(51 * 20 * MS, at(51, 280 * MS)));
            // The ones after it, back to normal, are not.
            assert!(!f.is_late(52 * 20 * MS, at(52, 30 * MS)));
        }
    }

    #[test]
    fn the_baseline_follows_a_drifting_clock() {
        // The receiver's clock runs 200 ppm fast: over ten minutes, 120 ms of apparent delay
        // builds up. With 10 s windows the baseline keeps up and nothing is late.
        let mut f = LateFilter::new(Duration::from_millis(100), Duration::from_secs(10));
        for i in 0..30_000u64 {
            let sent = i * 20 * MS;
            let arrival = sent + sent / 5000 + 30 * MS;
            assert!(!f.is_late(sent, arrival), "packet {i}");
        }
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1700)) {
            let _ = decode_media(&bytes);
        }

        #[test]
        fn reading_a_ufrag_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = stun_binding_ufrag(&bytes);
        }

        #[test]
        fn packets_round_trip(flow in any::<u64>(), port in any::<u16>(), sent in any::<u64>(),
                              payload in proptest::collection::vec(any::<u8>(), 0..MAX_DATAGRAM)) {
            let peer = v4(port);
            let frame = MediaFrame::Packet { flow, peer, sent_us: sent, payload };
            prop_assert_eq!(decode_media(&encode_media(&frame)), Ok(frame));
        }
    }
}
