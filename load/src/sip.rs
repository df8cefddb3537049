//! The little SIP a load agent needs, on text: find a header, answer a request, end a dialog,
//! and an SDP answer the buffer server's WebRTC stack accepts. Nothing here panics on what
//! the buffer server sends; a message missing what is needed gives `None`.

/// The compact forms (RFC 3261 §7.3.3) of the headers read here.
const COMPACT: &[(&str, &str)] = &[
    ("Via", "v"),
    ("From", "f"),
    ("To", "t"),
    ("Call-ID", "i"),
    ("Contact", "m"),
    ("Content-Length", "l"),
];

fn head(msg: &str) -> &str {
    msg.split("\r\n\r\n").next().unwrap_or_default()
}

/// The body after the blank line.
pub fn body(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn is_named(line_name: &str, name: &str) -> bool {
    let line_name = line_name.trim();
    line_name.eq_ignore_ascii_case(name)
        || COMPACT
            .iter()
            .any(|(full, short)| full.eq_ignore_ascii_case(name) && line_name == *short)
}

/// Every value of a header, in order (full or compact name, any case).
pub fn headers<'a>(msg: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    head(msg).lines().skip(1).filter_map(move |l| {
        let (n, v) = l.split_once(':')?;
        is_named(n, name).then(|| v.trim())
    })
}

/// The first value of a header.
pub fn header<'a>(msg: &'a str, name: &'a str) -> Option<&'a str> {
    headers(msg, name).next()
}

/// The request method, or `None` for a response.
pub fn method(msg: &str) -> Option<&str> {
    let first = msg.lines().next()?;
    if first.starts_with("SIP/2.0 ") {
        return None;
    }
    first.split(' ').next()
}

/// A response's status code.
pub fn status(msg: &str) -> Option<u16> {
    msg.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

/// The method named in CSeq (to tell which request a response answers).
pub fn cseq_method(msg: &str) -> Option<&str> {
    header(msg, "CSeq")?.split_whitespace().nth(1)
}

/// A `tag` parameter of a From or To value.
pub fn tag(value: &str) -> Option<&str> {
    let after = value.split(";tag=").nth(1)?;
    after
        .split([';', ' ', '>'])
        .next()
        .filter(|t| !t.is_empty())
}

/// The URI inside `<…>`, or the value up to its parameters.
pub fn uri_of(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value).trim(),
    }
}

/// A response to `request`: its Via and Record-Route lines, From, Call-ID, CSeq, To with
/// `to_tag` added when it has none, then `extra` header lines and the body.
pub fn response(
    request: &str,
    code: u16,
    reason: &str,
    to_tag: &str,
    extra: &str,
    sdp: Option<&str>,
) -> Option<String> {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for line in head(request).lines().skip(1) {
        let name = line.split(':').next().unwrap_or_default();
        if is_named(name, "Via") || is_named(name, "Record-Route") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    for name in ["From", "Call-ID", "CSeq"] {
        out.push_str(&format!("{name}: {}\r\n", header(request, name)?));
    }
    let to = header(request, "To")?;
    if tag(to).is_some() {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        out.push_str(&format!("To: {to};tag={to_tag}\r\n"));
    }
    out.push_str(extra);
    match sdp {
        Some(sdp) => out.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )),
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    Some(out)
}

/// The BYE that ends the dialog `invite` set up, sent by its callee (the agent): to the
/// caller's Contact, through the Record-Route set in the order received, From and To swapped.
pub fn bye(invite: &str, to_tag: &str, branch: &str, via_host: &str) -> Option<String> {
    let target = uri_of(header(invite, "Contact")?);
    let routes: Vec<&str> = headers(invite, "Record-Route").collect();
    let mut out = format!(
        "BYE {target} SIP/2.0\r\nVia: SIP/2.0/WSS {via_host};branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\n"
    );
    if !routes.is_empty() {
        out.push_str(&format!("Route: {}\r\n", routes.join(", ")));
    }
    let to = header(invite, "To")?;
    let from = if tag(to).is_some() {
        to.to_owned()
    } else {
        format!("{to};tag={to_tag}")
    };
    out.push_str(&format!(
        "From: {from}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        header(invite, "From")?,
        header(invite, "Call-ID")?
    ));
    Some(out)
}

/// A REGISTER for `agent` at `domain`, with the bearer token the buffer server verifies.
pub fn register(
    agent: &str,
    domain: &str,
    via_host: &str,
    cseq: u32,
    expires: u32,
    token: &str,
) -> String {
    format!(
        "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/WSS {via_host};branch=z9hG4bKreg{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{agent}@{domain}>;tag=reg-{agent}\r\nTo: <sip:{agent}@{domain}>\r\n\
         Call-ID: reg-{agent}@{via_host}\r\nCSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{agent}@{via_host};transport=ws>\r\nExpires: {expires}\r\n\
         Authorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A WebRTC answer to the buffer server's offer: the offer's audio `mid` and first payload
/// type, ICE and DTLS attributes of a peer that will send no media. A load agent measures
/// signalling; media cost is measured by the media bench with real WebRTC peers.
pub fn webrtc_answer(offer: &str) -> Option<String> {
    let mid = offer
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=mid:"))?
        .trim();
    let m_line = offer.lines().find(|l| l.starts_with("m=audio "))?;
    let pt: u8 = m_line.split_whitespace().nth(3)?.parse().ok()?;
    let rtpmap = offer
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("a=rtpmap:{pt} ")))?
        .trim();
    let fingerprint = vec!["AB"; 32].join(":");
    Some(format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {mid}\r\n\
         a=ice-ufrag:load\r\na=ice-pwd:loadagentloadagentload\r\na=fingerprint:sha-256 {fingerprint}\r\n\
         a=setup:active\r\nm=audio 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n\
         a=sendrecv\r\na=rtcp-mux\r\na=rtpmap:{pt} {rtpmap}\r\n"
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:a1@x.invalid;transport=ws SIP/2.0\r\n\
        Via: SIP/2.0/WSS 127.0.0.1:8443;branch=z9hG4bKb1\r\n\
        Record-Route: <sip:127.0.0.1:8443;transport=ws;lr>\r\n\
        From: \"Caller\" <sip:caller@127.0.0.1>;tag=ft\r\n\
        t: <sip:a1@127.0.0.1>\r\n\
        i: call-1\r\nCSeq: 7 INVITE\r\n\
        Contact: <sip:buffer@127.0.0.1:8443;transport=ws>\r\n\
        Content-Type: application/sdp\r\nContent-Length: 10\r\n\r\n\
        v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 8 101\r\na=mid:0\r\na=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n";

    #[test]
    fn reads_full_and_compact_headers() {
        assert_eq!(header(INVITE, "call-id"), Some("call-1"));
        assert_eq!(header(INVITE, "To"), Some("<sip:a1@127.0.0.1>"));
        assert_eq!(method(INVITE), Some("INVITE"));
        assert_eq!(status("SIP/2.0 486 Busy Here\r\n\r\n"), Some(486));
        assert_eq!(status("SIP/2.0 4"), None);
        assert_eq!(cseq_method(INVITE), Some("INVITE"));
        assert_eq!(tag(header(INVITE, "From").unwrap()), Some("ft"));
    }

    #[test]
    fn a_response_keeps_the_transaction_and_adds_our_tag() {
        let r = response(INVITE, 180, "Ringing", "mine", "", None).unwrap();
        assert!(r.starts_with("SIP/2.0 180 Ringing\r\n"));
        assert!(r.contains("Via: SIP/2.0/WSS 127.0.0.1:8443;branch=z9hG4bKb1\r\n"));
        assert!(r.contains("Record-Route: <sip:127.0.0.1:8443;transport=ws;lr>\r\n"));
        assert!(r.contains("To: <sip:a1@127.0.0.1>;tag=mine\r\n"));
        assert!(r.contains("CSeq: 7 INVITE\r\n"));
        assert!(r.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn the_agents_bye_goes_to_the_contact_through_the_route_set() {
        let b = bye(INVITE, "mine", "x1", "h.invalid").unwrap();
        assert!(b.starts_with("BYE sip:buffer@127.0.0.1:8443;transport=ws SIP/2.0\r\n"));
        assert!(b.contains("Route: <sip:127.0.0.1:8443;transport=ws;lr>\r\n"));
        assert!(b.contains("From: <sip:a1@127.0.0.1>;tag=mine\r\n"));
        assert!(b.contains("To: \"Caller\" <sip:caller@127.0.0.1>;tag=ft\r\n"));
        assert!(b.contains("Call-ID: call-1\r\n"));
    }

    #[test]
    fn the_answer_takes_the_offers_mid_and_codec() {
        let a = webrtc_answer(body(INVITE)).unwrap();
        assert!(a.contains("m=audio 9 UDP/TLS/RTP/SAVPF 8\r\n"));
        assert!(a.contains("a=mid:0\r\n"));
        assert!(a.contains("a=rtpmap:8 PCMA/8000\r\n"));
        assert_eq!(webrtc_answer("v=0\r\n"), None);
    }

    #[test]
    fn truncated_messages_give_none_not_a_panic() {
        for cut in 0..INVITE.len() {
            let Some(part) = INVITE.get(..cut) else {
                continue;
            };
            let _ = response(part, 200, "OK", "t", "", None);
            let _ = bye(part, "t", "b", "h");
            let _ = webrtc_answer(part);
            let _ = status(part);
            let _ = cseq_method(part);
        }
    }
}
