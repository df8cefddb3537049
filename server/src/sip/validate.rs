//! The rules a SIP request must meet before anything acts on it, in one place.
//!
//! Why one place: peer bytes reach this server on five transports and two roles. When each
//! path checked what it happened to need, a rule held on one path and not the next: a
//! REGISTER with a broken Request-URI was authenticated (and refused 401) before anything
//! looked at its URI, a request of another SIP version or with a short body was dropped
//! without a word, and two Call-IDs went through. Here, in the order RFC 3261 §8.2 gives:
//!
//! - [`message`]: the grammar (§7, §25), leniently where it is lenient (folding, white space
//!   around separators) and the headers every request needs, once each (§8.1.1, §20): 505
//!   for another version, 400 for the rest, with a reason phrase that names the problem.
//!   Whatever carries SIP goes through it: datagrams, stream frames, WebSocket messages, the
//!   tunnel and hand-off wrappers ([`super::SipMessage::parse_checked`] is this).
//! - [`from_peer`]: `message` plus what the edge of the system checks on requests from
//!   outside: the Request-URI's syntax (400) and scheme (416, §8.2.2.1). `transport::ingest`
//!   runs it for every socket a peer reaches (UDP, TCP, TLS, WSS), before any role, so before
//!   any authentication. The tunnel carries requests that passed it at the distributor (or
//!   that our own code built), so it is not checked twice.
//! - [`unsupported`]: option tags in `Require` (a UAS, §8.2.2.3) or `Proxy-Require` (a proxy,
//!   §16.3) that we do not implement: 420 with `Unsupported`. Which header applies depends on
//!   whether a role answers a request or proxies it, so the role cores call it.
//!
//! A refusal carries the response to send: a request that parses far enough to be answered
//! is answered (never an ACK, which has no response), with a To tag derived from the request
//! so a retransmission gets the same answer (§8.2.7). Pure: bytes in, a message or a refusal
//! out; nothing here may panic on peer data (the `sip_websocket` fuzz target drives
//! [`from_peer`]).

use std::hash::{Hash, Hasher};

use super::error::SipError;
use super::message::{Method, Parsed, Rejected, SipMessage, StartLine, split_list};
use super::uri::{NameAddr, SipUri};

/// Headers a request must carry (RFC 3261 §8.1.1; Max-Forwards is added by us when absent).
const MANDATORY: [&str; 5] = ["Via", "From", "To", "Call-ID", "CSeq"];

/// Headers that appear at most once, with one value (§7.3.1: only list headers may repeat).
const SINGLETONS: [&str; 6] = [
    "Call-ID",
    "CSeq",
    "From",
    "To",
    "Max-Forwards",
    "Content-Length",
];

/// Option tags (RFC 3261 §19.2) this server implements as a UAS or as a proxy. None yet:
/// reliable provisionals (100rel), session timers, Path, outbound and GRUU are not done, so a
/// request that requires one is refused rather than half served.
pub const SUPPORTED: &[&str] = &[];

/// The header a UAS checks (§8.2.2.3).
pub const AS_UAS: &[&str] = &["Require"];

/// The header a proxy checks (§16.3 step 8).
pub const AS_PROXY: &[&str] = &["Proxy-Require"];

/// Parses one message and checks it against the grammar and the rules every request must
/// meet; a request that fails comes back with its answer (see the module doc).
pub fn message(buf: &[u8]) -> Result<SipMessage, Rejected> {
    let Parsed {
        msg,
        version,
        defect,
    } = SipMessage::parse_lenient(buf, true).map_err(|error| Rejected {
        error,
        answer: None,
    })?;
    let checked = match (version, defect) {
        (Some(version), _) => Err(SipError::Version(version)),
        (None, Some(defect)) => Err(defect),
        (None, None) if msg.is_request() => request(&msg),
        (None, None) => msg.validate_response(),
    };
    match checked {
        Ok(()) => Ok(msg),
        Err(error) => Err(refuse(&msg, error)),
    }
}

/// [`message`], then the Request-URI's syntax and scheme: what a request from outside the
/// system must meet before a role sees it.
pub fn from_peer(buf: &[u8]) -> Result<SipMessage, Rejected> {
    let msg = message(buf)?;
    if let Some(uri) = msg.request_uri()
        && let Err(error) = request_uri(uri)
    {
        return Err(refuse(&msg, error));
    }
    Ok(msg)
}

/// What RFC 3261 asks of a request's headers before anything acts on it: the mandatory ones
/// present, singletons once with one value, a CSeq naming the request's method, From and To
/// that parse, a Max-Forwards that is a number, and a REGISTER's `Contact: *` only alone and
/// with `Expires: 0` (§10.3 step 6).
pub fn request(msg: &SipMessage) -> Result<(), SipError> {
    let StartLine::Request { method, .. } = &msg.start else {
        return Ok(());
    };
    for name in MANDATORY {
        if msg.header(name).is_none() {
            return Err(SipError::bad_request(format!("missing {name}")));
        }
    }
    for name in SINGLETONS {
        let count = msg.headers_named(name).count();
        if count > 1 {
            return Err(SipError::bad_request(format!(
                "{count} {name} headers where one is allowed"
            )));
        }
    }
    let call_id = msg.call_id().unwrap_or_default();
    if call_id.contains(',') {
        return Err(SipError::bad_request("more than one value in Call-ID"));
    }
    if call_id.is_empty() || call_id.contains(char::is_whitespace) {
        return Err(SipError::bad_request("bad Call-ID"));
    }
    msg.top_via()?;
    let cseq = msg.cseq()?;
    if &cseq.method != method {
        return Err(SipError::bad_request("CSeq method does not match"));
    }
    for name in ["From", "To"] {
        let value = msg.header(name).unwrap_or_default();
        // Two addresses are two values; a comma in an unquoted display name (`Doe, John
        // <sip:…>`, which phones send though the grammar wants it quoted) is not.
        let addresses = split_list(value)
            .into_iter()
            .filter(|v| NameAddr::parse(v).is_ok())
            .count();
        if addresses > 1 {
            return Err(SipError::bad_request(format!(
                "more than one value in {name}"
            )));
        }
        NameAddr::parse(value)?;
    }
    if let Some(mf) = msg.header("Max-Forwards") {
        mf.trim()
            .parse::<u8>()
            .map_err(|_| SipError::bad_request("bad Max-Forwards"))?;
    }
    if method == &Method::Register {
        register_wildcard(msg)?;
    }
    Ok(())
}

/// `Contact: *` removes every binding, so it stands alone and only with `Expires: 0`
/// (RFC 3261 §10.2.2, §10.3 step 6); no Expires means the default lifetime, not zero.
fn register_wildcard(msg: &SipMessage) -> Result<(), SipError> {
    let count = msg.headers_named("Contact").count();
    if !msg.headers_named("Contact").any(|c| c.trim() == "*") {
        return Ok(());
    }
    if count > 1 {
        return Err(SipError::bad_request(
            "Contact: * must be the only Contact (RFC 3261 §10.3)",
        ));
    }
    match msg.header("Expires").map(|e| e.trim().parse::<u32>()) {
        Some(Ok(0)) => Ok(()),
        _ => Err(SipError::bad_request(
            "Contact: * needs Expires: 0 (RFC 3261 §10.3)",
        )),
    }
}

/// The Request-URI: a scheme we serve (416 otherwise) and, for sip/sips, the structure of
/// RFC 3261 §25.1: well-formed `%HH` escapes, a user part without brackets or quotes, a host
/// that is a name, an IPv4 address or an IPv6 reference holding an IPv6 address, a numeric
/// port, and parameters of parameter characters. Characters beyond ASCII are let through
/// in the user part and in parameters: agent ids may be non-ASCII and our own hand-offs put
/// them there as they are.
pub fn request_uri(uri: &str) -> Result<(), SipError> {
    let bad = |why: &str| SipError::bad_request(format!("bad Request-URI: {why}"));
    let (scheme, _) = uri.split_once(':').ok_or_else(|| bad("no scheme"))?;
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok {
        return Err(bad("bad scheme"));
    }
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return Err(SipError::Scheme(scheme.to_ascii_lowercase()));
    }
    if !escapes_well_formed(uri) {
        return Err(bad("a % not followed by two hex digits"));
    }
    let parsed = SipUri::parse(uri).map_err(|_| bad("not a SIP URI"))?;
    if let Some(user) = &parsed.user
        && !user.bytes().all(|b| is_user_byte(b) || b >= 0x80)
    {
        return Err(bad("a character the user part cannot hold"));
    }
    let host = parsed.host.as_bytes();
    let ip6 = parsed.host.contains(':');
    if !ip6
        && !host
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(b))
    {
        return Err(bad("bad host"));
    }
    let param_ok = |s: &str| s.bytes().all(|b| is_param_byte(b) || b >= 0x80);
    for (name, value) in &parsed.params {
        if name.is_empty() || !param_ok(name) || !value.as_deref().is_none_or(param_ok) {
            return Err(bad("bad parameter"));
        }
    }
    Ok(())
}

/// The option tags of `headers` (`Require`, `Proxy-Require`) that we do not support, as a
/// 420 answer listing them in `Unsupported`; None when there are none. ACK and CANCEL are
/// never refused for them (§8.2.2.3: those headers are ignored there).
pub fn unsupported(msg: &SipMessage, headers: &[&str]) -> Option<SipMessage> {
    if matches!(msg.method(), Some(Method::Ack | Method::Cancel) | None) {
        return None;
    }
    let mut tags: Vec<String> = Vec::new();
    for name in headers {
        for value in msg.headers_named(name) {
            for tag in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if !SUPPORTED.contains(&tag) && !tags.iter().any(|t| t == tag) {
                    tags.push(tag.to_owned());
                }
            }
        }
    }
    if tags.is_empty() {
        return None;
    }
    answer(msg, &SipError::Extension(tags))
}

/// The refusal of `msg` for `error`, with its answer when one is due.
pub fn refuse(msg: &SipMessage, error: SipError) -> Rejected {
    let answer = answer(msg, &error).map(Box::new);
    Rejected { error, answer }
}

/// The response that tells the sender of `request` what `error` is: its status, the error
/// as the reason phrase, `Unsupported` for a 420. None for a response, an ACK, or a request
/// without a Via: a response travels by its Vias (§18.2.2), so without one there is nobody
/// to answer, only bytes that would be echoed to wherever they claim to come from.
pub fn answer(request: &SipMessage, error: &SipError) -> Option<SipMessage> {
    if !request.is_request()
        || request.method() == Some(&Method::Ack)
        || request.header("Via").is_none()
    {
        return None;
    }
    let mut resp = request.response(error.status(), Some(&stateless_tag(request)));
    resp.set_reason(&error.to_string());
    if let SipError::Extension(tags) = error {
        resp.push_header("Unsupported", tags.join(", "));
    }
    Some(resp)
}

/// The answer to a message whose head is all we will read (an oversized one, or a stream
/// that broke framing): only for a request whose head meets [`request`], so garbage is not
/// echoed.
pub fn answer_head(head: &[u8], error: &SipError) -> Option<SipMessage> {
    let msg = SipMessage::parse_head(head).ok()?;
    request(&msg).ok()?;
    answer(&msg, error)
}

/// A To tag for a response sent without a transaction: the same for every retransmission of
/// one request (§8.2.7), so a client matches them to one answer.
fn stateless_tag(request: &SipMessage) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    request.call_id().hash(&mut h);
    request.from_tag().hash(&mut h);
    request.top_via().ok().and_then(|v| v.branch).hash(&mut h);
    request.header("CSeq").hash(&mut h);
    format!("{:016x}", h.finish())
}

fn escapes_well_formed(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || b.get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    })
}

/// `unreserved / escaped / user-unreserved`, plus `:` before a password, and `@`: our own
/// hand-offs may name an agent whose id holds one.
fn is_user_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.!~*'()%&=+$,;?/:@".contains(&b)
}

/// `paramchar`: `param-unreserved / unreserved / escaped`.
fn is_param_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"[]/:&+$-_.!~*'()%".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request with `{via}` and the rest filled in; `\n` becomes CRLF.
    fn req(text: &str) -> Vec<u8> {
        text.replace('\n', "\r\n").into_bytes()
    }

    const OPTIONS: &str = "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK-1\n\
From: <sip:tester@127.0.0.1>;tag=f1\nTo: <sip:support@127.0.0.1>\nCall-ID: c1\nCSeq: 1 OPTIONS\n\
Max-Forwards: 70\nContent-Length: 0\n\n";

    /// `OPTIONS` with `from` replaced by `to`.
    fn options_with(from: &str, to: &str) -> Vec<u8> {
        assert!(OPTIONS.contains(from), "{from}");
        req(&OPTIONS.replacen(from, to, 1))
    }

    /// The status each input gets from [`from_peer`]: 0 when accepted, the answer's status
    /// when refused with one, 1 when refused without an answer.
    fn status(input: &[u8]) -> (u16, String) {
        match from_peer(input) {
            Ok(_) => (0, String::new()),
            Err(Rejected {
                answer: Some(a),
                error,
            }) => (a.status().unwrap_or(0), error.to_string()),
            Err(r) => (1, r.error.to_string()),
        }
    }

    #[test]
    fn what_the_grammar_allows_is_accepted() {
        let rows: &[(&str, &str, &str)] = &[
            ("reference", "", ""),
            (
                "folded Via",
                "Via: SIP/2.0/UDP 10.0.0.1",
                "Via: SIP/2.0/UDP\n \t10.0.0.1",
            ),
            ("folded CSeq", "CSeq: 1 OPTIONS", "CSeq: 1\n OPTIONS"),
            (
                "white space in Via",
                "Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK-1",
                "Via : SIP / 2.0 / UDP 10.0.0.1 : 5062 ; branch = z9hG4bK-1 ; rport",
            ),
            (
                "white space in CSeq",
                "CSeq: 1 OPTIONS",
                "CSeq:  1   OPTIONS",
            ),
            ("tabs", "CSeq: 1 OPTIONS", "CSeq:\t1\tOPTIONS"),
            ("name then space", "Call-ID: c1", "Call-ID   :c1"),
            (
                "escapes in the Request-URI",
                "sip:support@127.0.0.1",
                "sip:%73upport@127.0.0.1;x=%20",
            ),
            (
                "IPv6 reference",
                "sip:support@127.0.0.1",
                "sip:support@[2001:db8::1]:5060",
            ),
            (
                "user parameters",
                "sip:support@127.0.0.1",
                "sip:+1555;phone-context=x@127.0.0.1;user=phone",
            ),
            ("sips", "sip:support@127.0.0.1", "sips:support@127.0.0.1"),
            (
                "non-ASCII agent ids in hand-offs",
                "sip:support@127.0.0.1",
                "sip:edge-1.invalid;agent=jos\u{e9}",
            ),
            (
                "escaped quotes in a display name",
                "From: <sip:tester@127.0.0.1>",
                "From: \"a \\\" <b>, c\" <sip:tester@127.0.0.1>",
            ),
            ("lower-case version", "SIP/2.0\n", "sip/2.0\n"),
            (
                "a comma in an unquoted display name",
                "From: <sip:tester@127.0.0.1>",
                "From: Doe, John <sip:tester@127.0.0.1>",
            ),
            ("compact headers", "Call-ID: c1", "i: c1"),
        ];
        for (name, from, to) in rows {
            let input = options_with(from, to);
            assert_eq!(status(&input), (0, String::new()), "{name}");
        }
    }

    #[test]
    fn broken_requests_get_the_status_that_says_why() {
        let rows: &[(&str, &str, &str, u16, &str)] = &[
            ("tel", "sip:support@127.0.0.1", "tel:+15551234", 416, "tel"),
            ("http", "sip:support@127.0.0.1", "http://x/y", 416, "http"),
            ("SIP/3.0", "SIP/2.0\n", "SIP/3.0\n", 505, "SIP/3.0"),
            ("SIP/1.0", "SIP/2.0\n", "SIP/1.0\n", 505, "SIP/1.0"),
            (
                "two Call-IDs",
                "Call-ID: c1",
                "Call-ID: c1\nCall-ID: c2",
                400,
                "Call-ID",
            ),
            (
                "Call-ID and i:",
                "Call-ID: c1",
                "Call-ID: c1\ni: c1",
                400,
                "Call-ID",
            ),
            (
                "Call-ID list",
                "Call-ID: c1",
                "Call-ID: c1, c2",
                400,
                "Call-ID",
            ),
            (
                "two CSeqs",
                "CSeq: 1 OPTIONS",
                "CSeq: 1 OPTIONS\nCSeq: 1 OPTIONS",
                400,
                "CSeq",
            ),
            (
                "two Froms",
                "From: <sip:tester@127.0.0.1>;tag=f1",
                "From: <sip:tester@127.0.0.1>;tag=f1\nf: <sip:x@y>;tag=2",
                400,
                "From",
            ),
            (
                "From list",
                "From: <sip:tester@127.0.0.1>;tag=f1",
                "From: <sip:tester@127.0.0.1>;tag=f1, <sip:x@y>",
                400,
                "From",
            ),
            (
                "From list of addr-specs",
                "From: <sip:tester@127.0.0.1>;tag=f1",
                "From: sip:tester@127.0.0.1, sip:x@y;tag=f1",
                400,
                "From",
            ),
            (
                "two Tos",
                "To: <sip:support@127.0.0.1>",
                "To: <sip:support@127.0.0.1>\nTo: <sip:x@y>",
                400,
                "To",
            ),
            (
                "two Max-Forwards",
                "Max-Forwards: 70",
                "Max-Forwards: 70\nMax-Forwards: 70",
                400,
                "Max-Forwards",
            ),
            (
                "two Content-Lengths",
                "Content-Length: 0",
                "Content-Length: 0\nl: 0",
                400,
                "Content-Length",
            ),
            (
                "Content-Length beyond the datagram",
                "Content-Length: 0\n\n",
                "Content-Length: 50\n\nshort",
                400,
                "Content-Length",
            ),
            (
                "Content-Length not a number",
                "Content-Length: 0",
                "Content-Length: x",
                400,
                "Content-Length",
            ),
            (
                "bad IPv6 reference",
                "sip:support@127.0.0.1",
                "sip:[::1@127.0.0.1",
                400,
                "Request-URI",
            ),
            (
                "bad IPv6 address",
                "sip:support@127.0.0.1",
                "sip:a@[::zz]",
                400,
                "Request-URI",
            ),
            (
                "broken escape",
                "sip:support@127.0.0.1",
                "sip:a%2@127.0.0.1",
                400,
                "Request-URI",
            ),
            (
                "bad host",
                "sip:support@127.0.0.1",
                "sip:a@b{c}",
                400,
                "Request-URI",
            ),
            (
                "two spaces in the request line",
                "OPTIONS sip:",
                "OPTIONS  sip:",
                400,
                "request line",
            ),
            (
                "no colon",
                "Max-Forwards: 70",
                "Max-Forwards 70",
                400,
                "colon",
            ),
            (
                "header name with a space",
                "Max-Forwards: 70",
                "Max Forwards: 70",
                400,
                "token",
            ),
            (
                "CSeq method",
                "CSeq: 1 OPTIONS",
                "CSeq: 1 INVITE",
                400,
                "CSeq",
            ),
        ];
        for (name, from, to, code, reason) in rows {
            let (got, why) = status(&options_with(from, to));
            assert_eq!(got, *code, "{name}: {why}");
            assert!(why.contains(reason), "{name}: {why:?} names no {reason}");
        }
    }

    #[test]
    fn register_wildcard_only_alone_and_with_expires_zero() {
        let register = |extra: &str| {
            req(&format!(
                "REGISTER sip:127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-r\n\
From: <sip:alice@127.0.0.1>;tag=1\nTo: <sip:alice@127.0.0.1>\nCall-ID: r1\nCSeq: 1 REGISTER\n\
{extra}Content-Length: 0\n\n"
            ))
        };
        assert_eq!(status(&register("Contact: *\nExpires: 0\n")).0, 0);
        assert_eq!(status(&register("Contact: <sip:a@b>\n")).0, 0);
        for bad in [
            "Contact: *\nExpires: 3600\n",
            "Contact: *\n",
            "Contact: *\nExpires: soon\n",
            "Contact: *, <sip:alice@10.0.0.1>\nExpires: 0\n",
            "Contact: <sip:alice@10.0.0.1>\nContact: *\nExpires: 0\n",
        ] {
            let (code, why) = status(&register(bad));
            assert_eq!(code, 400, "{bad:?}");
            assert!(why.contains("Contact: *"), "{why}");
        }
    }

    #[test]
    fn unsupported_option_tags_are_listed_in_a_420() {
        let msg = SipMessage::parse(&options_with(
            "Max-Forwards: 70",
            "Max-Forwards: 70\nRequire: foo\nRequire: 100rel , foo,bar\nProxy-Require: sec",
        ))
        .unwrap();
        let uas = unsupported(&msg, AS_UAS).expect("a 420");
        assert_eq!(uas.status(), Some(420));
        assert_eq!(uas.header("Unsupported"), Some("foo, 100rel, bar"));
        assert!(uas.to_tag().is_some());
        let proxy = unsupported(&msg, AS_PROXY).expect("a 420");
        assert_eq!(proxy.header("Unsupported"), Some("sec"));
        let plain = SipMessage::parse(&req(OPTIONS)).unwrap();
        assert!(unsupported(&plain, AS_UAS).is_none());
        for method in ["ACK", "CANCEL"] {
            let text = OPTIONS
                .replace("OPTIONS sip", &format!("{method} sip"))
                .replace("1 OPTIONS", &format!("1 {method}"))
                .replace("Max-Forwards: 70", "Max-Forwards: 70\nRequire: foo");
            let msg = SipMessage::parse(&req(&text)).unwrap();
            assert!(unsupported(&msg, AS_UAS).is_none(), "{method}");
        }
    }

    #[test]
    fn answers_carry_a_stable_tag_and_never_answer_an_ack() {
        let bad = options_with("Call-ID: c1", "Call-ID: c1\nCall-ID: c2");
        let tag = |input: &[u8]| {
            from_peer(input)
                .unwrap_err()
                .answer
                .and_then(|a| a.to_tag())
        };
        assert!(tag(&bad).is_some());
        assert_eq!(
            tag(&bad),
            tag(&bad),
            "a retransmission gets the same answer"
        );
        let ack = String::from_utf8(bad)
            .unwrap()
            .replace("OPTIONS sip", "ACK sip")
            .replace("1 OPTIONS", "1 ACK");
        let rejected = from_peer(ack.as_bytes()).unwrap_err();
        assert!(rejected.answer.is_none());
    }

    #[test]
    fn heads_without_a_request_are_dropped_not_answered() {
        for input in [
            &b""[..],
            b"\r\n\r\n",
            b"HELLO\r\n\r\n",
            b"SIP/3.0 200 OK\r\n\r\n",
            b"\xff\xfe INVITE\r\n\r\n",
            b"INV(TE sip:a@b SIP/2.0\r\n\r\n",
            // No Via: nowhere to send an answer (and a Call-ID missing besides).
            b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n",
        ] {
            let rejected = from_peer(input).unwrap_err();
            assert!(rejected.answer.is_none(), "{input:?}");
        }
        // A response with a broken header is dropped too: responses are never answered.
        let resp = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nno colon\r\n\r\n";
        assert!(from_peer(resp).unwrap_err().answer.is_none());
    }

    #[test]
    fn oversized_heads_are_answered_only_when_they_are_requests() {
        let error = SipError::TooLarge { len: 9, max: 1 };
        let head = req(OPTIONS);
        assert_eq!(
            answer_head(&head, &error).and_then(|a| a.status()),
            Some(513)
        );
        assert!(answer_head(b"garbage\r\n\r\n", &error).is_none());
    }
}
