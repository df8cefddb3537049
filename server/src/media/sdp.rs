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

/// The first audio stream of one side's SDP, as the plain-RTP relay reads it
/// ([`super::relay`]): where that side receives, whether it holds the call by address, the
/// direction it said, and the clock rates of the formats it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioStream {
    /// Where it wants RTP; `None` when the stream is refused (port 0) or on hold by address.
    pub to: Option<SocketAddr>,
    /// `c=` 0.0.0.0 (RFC 2543 hold, still sent by some phones): send it nothing.
    pub held_by_address: bool,
    pub direction: Direction,
    /// (payload type, clock rate) of each format of the stream, at most [`MAX_FORMATS`].
    pub clock_rates: Vec<(u8, u32)>,
}

/// Formats of one stream kept for their clock rates (RTP has 128 payload types).
pub const MAX_FORMATS: usize = 32;

/// The RTP clock rate of a static payload type (RFC 3551 table 4), 8000 if unknown.
fn static_clock_rate(pt: u8) -> u32 {
    match pt {
        6 => 16_000,
        10 | 11 => 44_100,
        16 => 11_025,
        17 => 22_050,
        25 | 26 | 28 | 31..=34 => 90_000,
        _ => 8_000,
    }
}

/// The first audio stream of an SDP as it is read.
#[derive(Default)]
struct AudioSection {
    port: u16,
    formats: Vec<u8>,
    addr: Option<IpAddr>,
    direction: Option<Direction>,
    rtpmaps: Vec<(u8, u32)>,
}

/// Reads the first audio stream of any SDP, hold by address (`c=` 0.0.0.0) included; `None`
/// without an audio `m=` line.
pub fn audio_stream(text: &str) -> Option<AudioStream> {
    let mut session_addr: Option<IpAddr> = None;
    let mut session_direction = None;
    let mut audio: Option<AudioSection> = None;
    let mut seen_media = false;
    let mut in_audio = false;
    for line in text.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            if audio.is_some() {
                break;
            }
            seen_media = true;
            let mut parts = m.split_whitespace();
            in_audio = parts.next() == Some("audio");
            if in_audio {
                let port = parts
                    .next()
                    .and_then(|p| p.split('/').next()?.parse().ok())
                    .unwrap_or(0);
                let _proto = parts.next();
                let formats = parts
                    .filter_map(|p| p.parse().ok())
                    .filter(|pt| *pt < 128)
                    .take(MAX_FORMATS)
                    .collect();
                audio = Some(AudioSection {
                    port,
                    formats,
                    ..AudioSection::default()
                });
            }
        } else if let Some(c) = line.strip_prefix("c=") {
            let addr = c
                .split_whitespace()
                .nth(2)
                .and_then(|a| a.split('/').next()?.parse().ok());
            match (&mut audio, seen_media) {
                (Some(a), _) if in_audio => a.addr = addr,
                (None, false) => session_addr = addr,
                _ => {}
            }
        } else if let Some(attr) = line.strip_prefix("a=") {
            let d = Direction::parse(attr);
            match (&mut audio, seen_media) {
                (None, false) => session_direction = d.or(session_direction),
                (Some(a), _) if in_audio => {
                    if d.is_some() {
                        a.direction = d;
                    } else if let Some(map) = attr.strip_prefix("rtpmap:")
                        && let Some((pt, codec)) = map.split_once(' ')
                        && let Ok(pt) = pt.trim().parse::<u8>()
                        && let Some(rate) = codec.split('/').nth(1)
                        && let Ok(rate) = rate.trim().parse::<u32>()
                        && rate > 0
                        && a.rtpmaps.len() < MAX_FORMATS
                    {
                        a.rtpmaps.push((pt, rate));
                    }
                }
                _ => {}
            }
        }
    }
    let AudioSection {
        port,
        formats: pts,
        addr: media_addr,
        direction,
        rtpmaps: maps,
    } = audio?;
    let ip = media_addr.or(session_addr);
    let held_by_address = ip.is_some_and(|ip| ip.is_unspecified());
    let to = match ip {
        Some(ip) if port != 0 && !held_by_address => Some(SocketAddr::new(ip, port)),
        _ => None,
    };
    let clock_rates = pts
        .iter()
        .map(|pt| {
            let rate = maps
                .iter()
                .find(|(p, _)| p == pt)
                .map_or_else(|| static_clock_rate(*pt), |(_, r)| *r);
            (*pt, rate)
        })
        .collect();
    Some(AudioStream {
        to,
        held_by_address,
        direction: direction.or(session_direction).unwrap_or_default(),
        clock_rates,
    })
}

/// Attributes that name one side's transport addresses or ICE identity (RFC 3605's
/// `a=rtcp`, ICE's candidates and credentials): never passed to the other side.
const TOPOLOGY_ATTRIBUTES: [&str; 8] = [
    "rtcp:",
    "candidate:",
    "remote-candidates:",
    "ice-ufrag:",
    "ice-pwd:",
    "ice-options:",
    "ice-lite",
    "end-of-candidates",
];

/// One side's SDP as the relay passes it to the other: the same description (formats,
/// `rtpmap`/`fmtp`, `ptime`, direction, `rtcp-mux`, everything else), but our `o=` line
/// (session `session_id`, `version`), our address `local` in every `c=` line (a `c=`
/// 0.0.0.0 stays, as the hold it is), our port on the first active audio stream and port
/// 0 (refused) on every other stream, and no attribute that names the side's addresses.
pub fn readdress(text: &str, local: SocketAddr, session_id: u64, version: u64) -> String {
    let ip = local.ip();
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut out = String::with_capacity(text.len() + 64);
    let mut audio_claimed = false;
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            continue;
        }
        if line.starts_with("o=") {
            out.push_str(&format!(
                "o=agent-edge {session_id} {version} IN {family} {ip}"
            ));
        } else if let Some(c) = line.strip_prefix("c=") {
            let held = c
                .split_whitespace()
                .nth(2)
                .and_then(|a| a.split('/').next()?.parse::<IpAddr>().ok())
                .is_some_and(|a| a.is_unspecified());
            if held {
                out.push_str(line);
            } else {
                out.push_str(&format!("c=IN {family} {ip}"));
            }
        } else if let Some(m) = line.strip_prefix("m=") {
            let mut parts = m.splitn(3, ' ');
            let media = parts.next().unwrap_or("");
            let port = parts.next().unwrap_or("0");
            let rest = parts.next().unwrap_or("");
            let active = port.split('/').next().and_then(|p| p.parse::<u16>().ok()) != Some(0);
            let ours = media == "audio" && active && !audio_claimed;
            audio_claimed |= ours;
            let port = if ours { local.port() } else { 0 };
            out.push_str(&format!("m={media} {port} {rest}"));
        } else if line
            .strip_prefix("a=")
            .is_some_and(|a| TOPOLOGY_ATTRIBUTES.iter().any(|t| a.starts_with(t)))
        {
            continue;
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
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
