//! The four ways the distributor hands a call to a buffer server together with the chosen
//! agent, and their decoding on the buffer side. All four end as the same thing, (INVITE,
//! agent); each suits a different network between the two (see the design notes):
//!
//! - `tunnel`: the tunnel frame carrying the INVITE names the agent;
//! - `uri`: the agent rides in the request-URI, `sip:edge-1.invalid;agent=alice`;
//! - `message`: every SIP message between the two travels as the body of a SIP MESSAGE
//!   (`Content-Type: message/sip`), the INVITE's addressed to the agent;
//! - `table`: a route entry (Call-ID → agent, with an expiry) goes first, the plain INVITE after.
//!
//! Pure: messages and time in, messages and decisions out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::sip::{Header, Method, SipError, SipMessage, SipUri, StartLine};

/// How a buffer server wants calls handed to it (`[buffer] handoff` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Tunnel,
    Uri,
    Message,
    Table,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Tunnel, Mode::Uri, Mode::Message, Mode::Table];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tunnel => "tunnel",
            Mode::Uri => "uri",
            Mode::Message => "message",
            Mode::Table => "table",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// The URI parameter that names the agent in `uri` mode.
pub const AGENT_PARAM: &str = "agent";
/// Contact parameter with which an edge on a plain-SIP link names its hand-off mode.
pub const LINK_MODE_PARAM: &str = "ae-handoff";
/// Header with which an edge on a plain-SIP link sends the agent's own token with each
/// REGISTER of that agent (`Authorization` carries the edge's credential): the distributor
/// verifies it, as it does the token of a tunnel's `AgentUp`.
pub const LINK_AGENT_TOKEN: &str = "X-AE-Agent-Token";
/// The content type of a SIP message carried in a MESSAGE (RFC 3261 §27.5).
pub const MESSAGE_SIP: &str = "message/sip";
/// Call-IDs of wrapper MESSAGEs start so, to tell their own responses from the call's.
const WRAPPER_CALL_ID: &str = "ae-wrap-";

/// Why a hand-off could not be decoded; each knows the status to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    /// The INVITE names no agent the way this mode expects (or names an invalid one).
    #[error("the hand-off names no agent")]
    NoAgent,
    /// A MESSAGE whose content type is not message/sip.
    #[error("a hand-off MESSAGE must carry message/sip, not {0}")]
    UnsupportedType(String),
    /// A message/sip body that is not a SIP message.
    #[error("the MESSAGE body is not a SIP message: {0}")]
    BadBody(SipError),
}

impl HandoffError {
    pub fn status(&self) -> u16 {
        match self {
            HandoffError::NoAgent => 404,
            HandoffError::UnsupportedType(_) => 415,
            HandoffError::BadBody(_) => 400,
        }
    }
}

/// `uri` mode, distributor side: the INVITE goes to the edge with the agent in its URI.
pub fn encode_uri(invite: &mut SipMessage, edge_host: &str, agent: &str) {
    invite.set_request_uri(format!("sip:{edge_host};{AGENT_PARAM}={agent}"));
}

/// `uri` mode, buffer side.
pub fn decode_uri(invite: &SipMessage) -> Result<String, HandoffError> {
    let uri = invite
        .request_uri()
        .and_then(|u| SipUri::parse(u).ok())
        .ok_or(HandoffError::NoAgent)?;
    uri.param(AGENT_PARAM)
        .flatten()
        .filter(|a| proto_tunnel::valid_id(a, 128))
        .map(str::to_owned)
        .ok_or(HandoffError::NoAgent)
}

/// `message` mode: wraps one SIP message in a MESSAGE to `target_uri` (the agent's address
/// for the INVITE that hands a call off, the edge's for everything else).
pub fn wrap(inner: &[u8], target_uri: &str, local_host: &str, branch: &str) -> SipMessage {
    let call_id = format!("{WRAPPER_CALL_ID}{:016x}", rand::random::<u64>());
    let header = |name: &str, value: String| Header {
        name: name.to_owned(),
        value,
    };
    SipMessage {
        start: StartLine::Request {
            method: Method::Message,
            uri: target_uri.to_owned(),
        },
        headers: vec![
            header("Via", format!("SIP/2.0/WSS {local_host};branch={branch}")),
            header("Max-Forwards", "70".into()),
            header(
                "From",
                format!("<sip:{local_host}>;tag={:08x}", rand::random::<u32>()),
            ),
            header("To", format!("<{target_uri}>")),
            header("Call-ID", call_id),
            header("CSeq", "1 MESSAGE".into()),
            header("Content-Type", MESSAGE_SIP.into()),
        ],
        body: Bytes::copy_from_slice(inner),
    }
}

/// Whether `msg` is a hand-off wrapper (to unwrap) rather than a MESSAGE of a call.
pub fn is_wrapper(msg: &SipMessage) -> bool {
    msg.method() == Some(&Method::Message)
        && msg
            .call_id()
            .is_some_and(|c| c.starts_with(WRAPPER_CALL_ID))
}

/// Whether `msg` answers a wrapper: nothing to do with it.
pub fn is_wrapper_response(msg: &SipMessage) -> bool {
    !msg.is_request()
        && msg
            .call_id()
            .is_some_and(|c| c.starts_with(WRAPPER_CALL_ID))
}

/// `message` mode, receiving side: the SIP message in the body, and the agent when the
/// wrapper is addressed to one (`sip:alice@edge-1.invalid`).
pub fn unwrap(msg: &SipMessage) -> Result<(SipMessage, Option<String>), HandoffError> {
    let content_type = msg.header("Content-Type").unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case(MESSAGE_SIP) {
        return Err(HandoffError::UnsupportedType(media.to_owned()));
    }
    let inner = SipMessage::parse_checked(&msg.body).map_err(|r| HandoffError::BadBody(r.error))?;
    let agent = msg
        .request_uri()
        .and_then(|u| SipUri::parse(u).ok())
        .and_then(|u| u.user)
        .filter(|a| proto_tunnel::valid_id(a, 128));
    Ok((inner, agent))
}

/// `table` mode, buffer side: Call-ID → agent, placed before the INVITE comes; entries whose
/// INVITE never comes expire.
#[derive(Debug, Default)]
pub struct RouteTable {
    entries: HashMap<String, (String, Instant)>,
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, call_id: String, agent: String, ttl: Duration, now: Instant) {
        self.entries.insert(call_id, (agent, now + ttl));
    }

    /// The agent for this Call-ID, consuming the entry.
    pub fn take(&mut self, call_id: &str, now: Instant) -> Option<String> {
        match self.entries.remove(call_id) {
            Some((agent, expires)) if expires > now => Some(agent),
            _ => None,
        }
    }

    /// Drops expired entries; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, (_, expires)| *expires > now);
        before - self.entries.len()
    }

    pub fn next_expiry(&self) -> Option<Instant> {
        self.entries.values().map(|(_, e)| *e).min()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:support@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WSS d.invalid;branch=z9hG4bK1\r\n\
From: <sip:carol@192.0.2.7>;tag=c\r\nTo: <sip:support@10.0.0.1>\r\nCall-ID: call-1\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:carol@192.0.2.7>\r\nContent-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n";

    fn invite() -> SipMessage {
        SipMessage::parse(INVITE.as_bytes()).unwrap()
    }

    /// Every mode decodes to the same (INVITE, agent).
    #[test]
    fn all_four_modes_decode_to_the_same_invite_and_agent() {
        let now = Instant::now();
        let original = invite();
        for mode in Mode::ALL {
            let (decoded, agent) = match mode {
                Mode::Tunnel => (original.clone(), "alice".to_owned()),
                Mode::Uri => {
                    let mut m = original.clone();
                    encode_uri(&mut m, "edge-1.invalid", "alice");
                    let agent = decode_uri(&m).unwrap();
                    (m, agent)
                }
                Mode::Message => {
                    let w = wrap(
                        &original.to_bytes(),
                        "sip:alice@edge-1.invalid",
                        "dist-1.invalid",
                        "z9hG4bKw",
                    );
                    let w = SipMessage::parse(&w.to_bytes()).unwrap();
                    assert!(is_wrapper(&w));
                    let (inner, agent) = unwrap(&w).unwrap();
                    (inner, agent.unwrap())
                }
                Mode::Table => {
                    let mut table = RouteTable::new();
                    table.insert("call-1".into(), "alice".into(), Duration::from_secs(5), now);
                    let agent = table.take(original.call_id().unwrap(), now).unwrap();
                    (original.clone(), agent)
                }
            };
            assert_eq!(agent, "alice", "{mode:?}");
            assert_eq!(decoded.call_id(), original.call_id(), "{mode:?}");
            assert_eq!(decoded.body, original.body, "{mode:?}");
            assert_eq!(decoded.method(), Some(&Method::Invite), "{mode:?}");
            assert_eq!(Mode::parse(mode.as_str()), Some(mode));
        }
    }

    #[test]
    fn bad_hand_offs_are_refused_with_their_status() {
        let mut no_agent = invite();
        no_agent.set_request_uri("sip:edge-1.invalid");
        assert_eq!(decode_uri(&no_agent).unwrap_err().status(), 404);
        let mut bad_agent = invite();
        encode_uri(&mut bad_agent, "edge-1.invalid", "al%20ice\u{7}");
        assert_eq!(decode_uri(&bad_agent).unwrap_err().status(), 404);

        let mut w = wrap(
            b"hello, not SIP",
            "sip:alice@e.invalid",
            "d.invalid",
            "z9hG4bKx",
        );
        assert_eq!(unwrap(&w).unwrap_err().status(), 400);
        w.set_header("Content-Type", "text/plain");
        assert_eq!(unwrap(&w).unwrap_err().status(), 415);
    }

    #[test]
    fn route_entries_expire_when_no_invite_comes() {
        let now = Instant::now();
        let mut table = RouteTable::new();
        table.insert("a".into(), "alice".into(), Duration::from_secs(2), now);
        table.insert("b".into(), "bob".into(), Duration::from_secs(10), now);
        assert_eq!(table.next_expiry(), Some(now + Duration::from_secs(2)));
        assert_eq!(
            table.take("a", now + Duration::from_secs(3)),
            None,
            "expired"
        );
        assert_eq!(table.expire(now + Duration::from_secs(11)), 1);
        assert!(table.is_empty());
        assert_eq!(table.take("nothing", now), None);
    }
}
