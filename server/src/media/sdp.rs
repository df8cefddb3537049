//! Just enough SDP (RFC 4566/3264) for early media: where a caller's audio offer wants RTP
//! sent and with which payload types, and the answer that sends G.711 back. Pure.

use std::net::{IpAddr, SocketAddr};

use super::announcement::Law;

/// The first active audio stream of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioOffer {
    pub to: SocketAddr,
    pub payload_types: Vec<u8>,
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
    for line in text.lines().map(str::trim) {
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
    Some(AudioOffer {
        to: SocketAddr::new(ip, port),
        payload_types,
    })
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
        let a = answer("127.0.0.1:16000".parse().unwrap(), Law::Alaw, 7);
        assert!(a.contains("m=audio 16000 RTP/AVP 8\r\n") && a.contains("c=IN IP4 127.0.0.1"));
    }
}
