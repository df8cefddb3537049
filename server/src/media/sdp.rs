//! Just enough SDP (RFC 4566/3264) for early media: where a caller's audio offer wants RTP
//! sent and with which payload types, and the answer that sends G.711 back. Pure.

use std::net::{IpAddr, SocketAddr};

use super::announcement::Law;

/// The first active audio stream of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioOffer {
    pub to: SocketAddr,
    pub payload_types: Vec<u8>,
    /// The payload type of `telephone-event/8000`, if offered.
    pub telephone_event: Option<u8>,
    pub direction: Direction,
}

/// An SDP media direction (RFC 3264 §5.1), the caller's side of hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn parse(s: &str) -> Option<Direction> {
        Some(match s {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    /// What the answerer says to this offer (RFC 3264 §6.1).
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    /// Whether the side that said this direction sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the side that said this direction receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

impl AudioOffer {
    /// The G.711 law to answer with: PCMU if offered, else PCMA, else none.
    pub fn law(&self) -> Option<Law> {
        [Law::Ulaw, Law::Alaw]
            .into_iter()
            .find(|l| self.payload_types.contains(&l.payload_type()))
    }
}

/// Reads the offer in an SDP body; `None` without an active audio stream or an address.
pub fn audio_offer(body: &[u8]) -> Option<AudioOffer> {
    let text = std::str::from_utf8(body).ok()?;
    let mut session_addr: Option<IpAddr> = None;
    let mut media: Option<(u16, Vec<u8>, Option<IpAddr>)> = None;
    let mut in_audio = false;
    let mut session_direction = None;
    let mut media_direction = None;
    let mut telephone_event = None;
    for line in text.lines().map(str::trim) {
        if let Some(attr) = line.strip_prefix("a=") {
            if let Some(d) = Direction::parse(attr) {
                match (&media, in_audio) {
                    (None, _) => session_direction = Some(d),
                    (Some(_), true) => media_direction = Some(d),
                    _ => {}
                }
            } else if let Some(map) = attr.strip_prefix("rtpmap:")
                && in_audio
                && let Some((pt, codec)) = map.split_once(' ')
                && codec.trim().eq_ignore_ascii_case("telephone-event/8000")
            {
                telephone_event = pt.trim().parse().ok();
            }
            continue;
        }
        if let Some(m) = line.strip_prefix("m=") {
            if media.is_some() {
                break;
            }
            let mut parts = m.split_whitespace();
            in_audio = parts.next() == Some("audio");
            let port = parts.next().and_then(|p| p.split('/').next()?.parse().ok());
            let _proto = parts.next();
            if let (true, Some(port)) = (in_audio, port)
                && port != 0
            {
                let pts = parts.filter_map(|p| p.parse().ok()).collect();
                media = Some((port, pts, None));
            } else {
                in_audio = false;
            }
        } else if let Some(c) = line.strip_prefix("c=") {
            let addr = c
                .split_whitespace()
                .nth(2)
                .and_then(|a| a.split('/').next()?.parse().ok());
            match (&mut media, in_audio) {
                (Some((_, _, slot)), true) => *slot = addr,
                (None, _) => session_addr = addr,
                _ => {}
            }
        }
    }
    let (port, payload_types, addr) = media?;
    let ip = addr.or(session_addr)?;
    if ip.is_unspecified() {
        return None;
    }
    let telephone_event = telephone_event.filter(|pt| payload_types.contains(pt));
    Some(AudioOffer {
        to: SocketAddr::new(ip, port),
        payload_types,
        telephone_event,
        direction: media_direction.or(session_direction).unwrap_or_default(),
    })
}

/// The bridge's SDP to a caller: G.711 `pt` (and telephone-event `te`) at `from`, version
/// `version` of session `session_id` (the `o=` line).
pub fn rtp_answer(
    from: SocketAddr,
    pt: u8,
    te: Option<u8>,
    direction: Direction,
    session_id: u64,
    version: u64,
) -> String {
    let ip = from.ip();
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let name = if pt == 8 { "PCMA" } else { "PCMU" };
    let mut sdp = format!(
        "v=0\r\no=agent-edge {session_id} {version} IN {family} {ip}\r\ns=-\r\n\
         c=IN {family} {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP {pt}",
        from.port()
    );
    if let Some(te) = te {
        sdp.push_str(&format!(" {te}"));
    }
    sdp.push_str(&format!("\r\na=rtpmap:{pt} {name}/8000\r\n"));
    if let Some(te) = te {
        sdp.push_str(&format!(
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n"
        ));
    }
    sdp.push_str(&format!("a=ptime:20\r\na={}\r\n", direction.as_str()));
    sdp
}

/// The direction of the first audio stream of any SDP (WebRTC included): its own
/// attribute, else the session's, else sendrecv.
pub fn audio_direction(body: &[u8]) -> Direction {
    let text = String::from_utf8_lossy(body);
    let (mut session, mut in_audio, mut seen_media) = (None, false, false);
    for line in text.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            if in_audio {
                break;
            }
            seen_media = true;
            in_audio = m.starts_with("audio ");
        } else if let Some(d) = line.strip_prefix("a=").and_then(Direction::parse) {
            if in_audio {
                return d;
            }
            if !seen_media {
                session = Some(d);
            }
        }
    }
    session.unwrap_or_default()
}

/// An answer sending (only) G.711 `law` from `from`.
pub fn answer(from: SocketAddr, law: Law, session_id: u64) -> String {
    let ip = from.ip();
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let pt = law.payload_type();
    let name = match law {
        Law::Ulaw => "PCMU",
        Law::Alaw => "PCMA",
    };
    format!(
        "v=0\r\no=agent-edge {session_id} {session_id} IN {family} {ip}\r\ns=-\r\n\
         c=IN {family} {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP {pt}\r\na=rtpmap:{pt} {name}/8000\r\n\
         a=sendonly\r\n",
        from.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_read_and_answered() {
        let offer = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                      m=video 0 RTP/AVP 96\r\nm=audio 4000 RTP/AVP 8 0 101\r\nc=IN IP4 192.0.2.9\r\n";
        let o = audio_offer(offer).unwrap();
        assert_eq!(o.to, "192.0.2.9:4000".parse().unwrap());
        assert_eq!(o.law(), Some(Law::Ulaw));
        let pcma = b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 8\r\n";
        assert_eq!(audio_offer(pcma).unwrap().law(), Some(Law::Alaw));
        let g729 = b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 18\r\n";
        assert_eq!(audio_offer(g729).unwrap().law(), None);
        for none in [
            &b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 0 RTP/AVP 0\r\n"[..],
            b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n",
            b"v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n",
            b"",
            b"\xff\xfe",
        ] {
            assert_eq!(audio_offer(none), None);
        }
        let held = b"v=0\r\nc=IN IP4 192.0.2.1\r\na=sendonly\r\nm=audio 4000 RTP/AVP 0 101\r\n\
                     a=rtpmap:101 telephone-event/8000\r\n";
        let o = audio_offer(held).unwrap();
        assert_eq!(
            (o.direction, o.telephone_event),
            (Direction::SendOnly, Some(101))
        );
        assert_eq!(o.direction.answer(), Direction::RecvOnly);
        let a = answer("127.0.0.1:16000".parse().unwrap(), Law::Alaw, 7);
        assert!(a.contains("m=audio 16000 RTP/AVP 8\r\n") && a.contains("c=IN IP4 127.0.0.1"));
    }
}
