//! Re-addressing between the two legs of a call. Each function builds the message for the
//! other leg from scratch: only the request line, dialog identifiers and addresses of the
//! receiving leg, plus the few end-to-end headers that describe the session, so nothing of
//! one leg's topology (Via, Contact, Route, Call-ID, tags, CSeq) can leak into the other.

use bytes::Bytes;

use super::routing_table::Leg;
use crate::sip::{Header, Method, NameAddr, SipError, SipMessage, SipUri, StartLine, Target};

/// Headers that describe the session or the request itself and mean the same on both legs.
const END_TO_END: [&str; 12] = [
    "Content-Type",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Accept",
    "Accept-Language",
    "Allow",
    "Subject",
    "Priority",
    // What the distributor tells the agent about the call: type, queue, seconds waited.
    "X-AE-Call-Type",
    "X-AE-Queue",
    "X-AE-Waited",
];

/// Max-Forwards on requests the buffer server originates.
const MAX_FORWARDS: u8 = 70;

/// How the buffer server names itself on one leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddr {
    /// Via transport token: UDP, TCP, WSS.
    pub transport: &'static str,
    /// Via sent-by, `host:port`.
    pub sent_by: String,
    /// Host for the URIs we put in From/To.
    pub host: String,
    /// Our Contact value on this leg.
    pub contact: String,
}

/// The client leg of a new call, as the caller's INVITE (after the distributor) describes it.
pub fn client_leg(invite: &SipMessage, from: Target, local_tag: String) -> Result<Leg, SipError> {
    let call_id = invite
        .call_id()
        .ok_or_else(|| SipError::bad_request("missing Call-ID"))?;
    let from_hdr = NameAddr::parse(invite.header("From").unwrap_or_default())?;
    let remote_tag = from_hdr
        .tag()
        .ok_or_else(|| SipError::bad_request("From has no tag"))?
        .to_owned();
    let contact = invite
        .header("Contact")
        .ok_or_else(|| SipError::bad_request("INVITE without Contact"))?;
    let remote_target = NameAddr::parse(contact)?.uri;
    Ok(Leg {
        call_id: call_id.to_owned(),
        local_tag,
        remote_tag: Some(remote_tag),
        local_uri: without_tag(invite.header("To").unwrap_or_default())?,
        remote_uri: without_tag(invite.header("From").unwrap_or_default())?,
        remote_target,
        // As UAS, the route set is the Record-Route list in order (RFC 3261 §12.1.1).
        route_set: invite
            .headers_named("Record-Route")
            .map(str::to_owned)
            .collect(),
        local_cseq: 0,
        invite_cseq: 0,
        target: from,
    })
}

/// The agent leg of a new call: fresh Call-ID and tag, the caller shown by display name and
/// user only, at this server's host.
pub fn agent_leg(
    invite: &SipMessage,
    agent: &str,
    contact: &str,
    target: Target,
    local: &LocalAddr,
    call_id: String,
    local_tag: String,
) -> Leg {
    let caller = invite.header("From").and_then(|f| NameAddr::parse(f).ok());
    let user = caller
        .as_ref()
        .and_then(|n| n.sip_uri().ok())
        .and_then(|u| u.user)
        .filter(|u| u.chars().all(is_user_char))
        .unwrap_or_else(|| "anonymous".into());
    let display = caller
        .and_then(|n| n.display)
        .filter(|d| !d.chars().any(char::is_control))
        .map(|d| format!("{d} "))
        .unwrap_or_default();
    Leg {
        call_id,
        local_tag,
        remote_tag: None,
        local_uri: format!("{display}<sip:{user}@{}>", local.host),
        remote_uri: format!("<sip:{agent}@{}>", local.host),
        remote_target: contact.to_owned(),
        route_set: Vec::new(),
        local_cseq: 1,
        invite_cseq: 1,
        target,
    }
}

/// A request on `leg`, carrying what `incoming` (from the other leg) says end to end.
/// `cseq` is the number on `leg`; `Max-Forwards` counts down from the incoming request.
pub fn request_for_leg(
    incoming: &SipMessage,
    leg: &Leg,
    cseq: u32,
    local: &LocalAddr,
    branch: &str,
) -> SipMessage {
    let method = incoming
        .method()
        .cloned()
        .unwrap_or(Method::Other("UNKNOWN".into()));
    let max_forwards = incoming
        .max_forwards()
        .map_or(MAX_FORWARDS, |mf| mf.saturating_sub(1).min(MAX_FORWARDS));
    let mut headers = Vec::with_capacity(12);
    let mut push = |name: &str, value: String| {
        headers.push(Header {
            name: name.to_owned(),
            value,
        })
    };
    push(
        "Via",
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            local.transport, local.sent_by
        ),
    );
    push("Max-Forwards", max_forwards.to_string());
    for route in &leg.route_set {
        push("Route", route.clone());
    }
    push("From", format!("{};tag={}", leg.local_uri, leg.local_tag));
    push(
        "To",
        match &leg.remote_tag {
            Some(tag) => format!("{};tag={tag}", leg.remote_uri),
            None => leg.remote_uri.clone(),
        },
    );
    push("Call-ID", leg.call_id.clone());
    push("CSeq", format!("{cseq} {method}"));
    if incoming.header("Contact").is_some() || method == Method::Invite {
        push("Contact", local.contact.clone());
    }
    let mut msg = SipMessage {
        start: StartLine::Request {
            method,
            uri: leg.remote_target.clone(),
        },
        headers,
        body: Bytes::new(),
    };
    copy_end_to_end(incoming, &mut msg);
    msg
}

/// A request the buffer server starts itself on `leg` (the ACK and BYE that end an agent
/// leg nobody else will end).
pub fn originate(
    method: Method,
    leg: &Leg,
    cseq: u32,
    local: &LocalAddr,
    branch: &str,
) -> SipMessage {
    let blank = SipMessage {
        start: StartLine::Request {
            method,
            uri: String::new(),
        },
        headers: Vec::new(),
        body: Bytes::new(),
    };
    request_for_leg(&blank, leg, cseq, local, branch)
}

/// The response on the receiving leg's server transaction that mirrors `resp` from the other
/// leg: same status and reason, our tag and Contact, the session headers and body.
pub fn response_for_leg(
    server_request: &SipMessage,
    resp: &SipMessage,
    local_tag: &str,
    local: &LocalAddr,
) -> SipMessage {
    let code = resp.status().unwrap_or(500);
    let mut out = server_request.response(code, Some(local_tag));
    if let StartLine::Response { reason, .. } = &resp.start {
        out.set_reason(reason);
    }
    if resp.header("Contact").is_some() && (101..300).contains(&code) {
        out.push_header("Contact", local.contact.clone());
    }
    copy_end_to_end(resp, &mut out);
    out
}

/// The URI a Contact value names, for a dialog's remote target.
pub fn contact_uri(msg: &SipMessage) -> Option<String> {
    let contact = NameAddr::parse(msg.header("Contact")?).ok()?;
    SipUri::parse(&contact.uri).ok()?;
    Some(contact.uri)
}

fn copy_end_to_end(from: &SipMessage, to: &mut SipMessage) {
    for h in &from.headers {
        if END_TO_END.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
            to.headers.push(h.clone());
        }
    }
    to.body = from.body.clone();
}

fn without_tag(value: &str) -> Result<String, SipError> {
    let mut addr = NameAddr::parse(value)?;
    addr.params.retain(|(k, _)| !k.eq_ignore_ascii_case("tag"));
    Ok(addr.to_string())
}

/// Characters of a SIP URI user part that need no escaping (RFC 3261 §25.1 unreserved and
/// user-unreserved), so a caller's user cannot smuggle URI syntax into our From.
fn is_user_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::TransportKind;

    const CALLER_INVITE: &str = "INVITE sip:support@10.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/WSS dist-1.invalid;branch=z9hG4bKdist\r\n\
Via: SIP/2.0/UDP 192.0.2.7:5061;branch=z9hG4bKcaller;rport\r\n\
Record-Route: <sip:10.0.0.1:5060;lr>\r\n\
Max-Forwards: 69\r\n\
From: \"Carol\" <sip:carol@192.0.2.7:5061>;tag=caller-tag\r\n\
To: <sip:support@10.0.0.1:5060>\r\n\
Call-ID: caller-call-id@192.0.2.7\r\n\
CSeq: 314 INVITE\r\n\
Contact: <sip:carol@192.0.2.7:5061>\r\n\
User-Agent: secret-pbx 1.0\r\n\
X-Internal-Route: 192.0.2.99\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

    fn local() -> LocalAddr {
        LocalAddr {
            transport: "UDP",
            sent_by: "127.0.0.1:5070".into(),
            host: "127.0.0.1:5070".into(),
            contact: "<sip:127.0.0.1:5070>".into(),
        }
    }

    fn tunnel() -> Target {
        Target {
            kind: TransportKind::Tunnel,
            addr: "127.0.0.1:7443".parse().unwrap(),
            conn: None,
        }
    }

    #[test]
    fn agent_invite_carries_nothing_of_the_client_leg_topology() {
        let invite = SipMessage::parse(CALLER_INVITE.as_bytes()).unwrap();
        let client = client_leg(&invite, tunnel(), "buf-tag".into()).unwrap();
        assert_eq!(client.remote_tag.as_deref(), Some("caller-tag"));
        assert_eq!(client.remote_target, "sip:carol@192.0.2.7:5061");
        assert_eq!(client.route_set, vec!["<sip:10.0.0.1:5060;lr>"]);
        let agent = agent_leg(
            &invite,
            "alice",
            "sip:alice@127.0.0.1:6000",
            Target::udp("127.0.0.1:6000".parse().unwrap()),
            &local(),
            "agent-call".into(),
            "agent-tag".into(),
        );
        let out = request_for_leg(&invite, &agent, 1, &local(), "z9hG4bKnew");
        let text = String::from_utf8(out.to_bytes()).unwrap();
        for leaked in [
            "192.0.2.7",
            "10.0.0.1",
            "dist-1",
            "caller-tag",
            "caller-call-id",
            "z9hG4bKcaller",
            "secret-pbx",
            "X-Internal",
            "314",
        ] {
            assert!(!text.contains(leaked), "{leaked} leaked into:\n{text}");
        }
        assert!(text.starts_with("INVITE sip:alice@127.0.0.1:6000 SIP/2.0\r\n"));
        assert!(text.contains("From: \"Carol\" <sip:carol@127.0.0.1:5070>;tag=agent-tag\r\n"));
        assert!(text.contains("To: <sip:alice@127.0.0.1:5070>\r\n"));
        assert!(text.contains("CSeq: 1 INVITE\r\n"));
        assert!(text.contains("Max-Forwards: 68\r\n"));
        assert!(text.contains("Content-Type: application/sdp\r\n"));
        assert!(text.ends_with("\r\n\r\nv=0\n"));
    }

    #[test]
    fn response_mirrors_status_with_our_tag_and_contact() {
        let invite = SipMessage::parse(CALLER_INVITE.as_bytes()).unwrap();
        let agent_ok = SipMessage::parse(
            b"SIP/2.0 200 Fine\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKnew\r\n\
From: <sip:carol@127.0.0.1:5070>;tag=agent-tag\r\nTo: <sip:alice@127.0.0.1:5070>;tag=alice-tag\r\n\
Call-ID: agent-call\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.1:6000>\r\n\
Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n",
        )
        .unwrap();
        let out = response_for_leg(&invite, &agent_ok, "buf-tag", &local());
        let text = String::from_utf8(out.to_bytes()).unwrap();
        assert!(text.starts_with("SIP/2.0 200 Fine\r\n"));
        assert!(text.contains("To: <sip:support@10.0.0.1:5060>;tag=buf-tag\r\n"));
        assert!(text.contains("Call-ID: caller-call-id@192.0.2.7\r\n"));
        assert!(text.contains("Contact: <sip:127.0.0.1:5070>\r\n"));
        assert!(text.contains("Record-Route: <sip:10.0.0.1:5060;lr>\r\n"));
        for leaked in ["alice-tag", "agent-call", "6000", "agent-tag"] {
            assert!(!text.contains(leaked), "{leaked} leaked into:\n{text}");
        }
    }

    #[test]
    fn hostile_caller_user_is_not_copied() {
        let text = CALLER_INVITE.replace("sip:carol@192", "sip:ca<rol@192");
        let invite = SipMessage::parse(text.as_bytes()).unwrap();
        let agent = agent_leg(
            &invite,
            "alice",
            "sip:alice@127.0.0.1:6000",
            tunnel(),
            &local(),
            "c".into(),
            "t".into(),
        );
        assert!(
            agent.local_uri.contains("sip:anonymous@"),
            "{}",
            agent.local_uri
        );
    }
}
