//! Table-driven tests of the call-type rules: each row is an INVITE and the type it must get
//! from one rule set, written in TOML as an operator would write it.

use super::*;
use crate::acd::config;

const RULES: &str = r#"
[[call_types]]
name = "vip"
queue = "priority"
priority = 10
headers = { "X-VIP" = { present = true } }

[[call_types]]
name = "video-support"
queue = "video"
media = "video"

[[call_types]]
name = "billing"
queue = "billing"
request_user = { equals = "billing" }

[[call_types]]
name = "freephone"
queue = "sales"
request_user = { prefix = "0800" }

[[call_types]]
name = "uk-mobile"
queue = "sales"
request_user = { regex = '^\+447\d{9}$' }

[[call_types]]
name = "partner"
queue = "support"
from_domain = { equals = "Partner.Example" }
to_user = { equals = "support" }

[[call_types]]
name = "french"
queue = "support-fr"
headers = { "Accept-Language" = { prefix = "fr" } }

[[call_types]]
name = "tagged"
queue = "support"
headers = { "X-Call-Type" = { equals = "support" } }

[[call_types]]
name = "emergency"
queue = "priority"
priority = 100
headers = { "Priority" = { equals = "emergency" } }

[[call_types]]
name = "anonymous"
queue = "support"
from_user = { regex = "^(anonymous|unknown)$" }

[[call_types]]
name = "audio-only-to-desk"
queue = "desk"
to_domain = { equals = "desk.example" }
media = "audio"
"#;

#[derive(serde::Deserialize)]
struct Rules {
    call_types: Vec<config::CallTypeConfig>,
}

fn classifier() -> Classifier {
    let rules: Rules = toml::from_str(RULES).unwrap();
    let queues: Vec<_> = [
        "priority",
        "video",
        "billing",
        "sales",
        "support",
        "support-fr",
        "desk",
    ]
    .iter()
    .map(|n| config::QueueConfig {
        name: (*n).into(),
        ..Default::default()
    })
    .collect();
    config::validate(&rules.call_types, &queues, "default").unwrap();
    Classifier::new(&rules.call_types, "default")
}

const AUDIO: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                     m=audio 4000 RTP/AVP 0 8 101\r\n";
const VIDEO: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                     m=audio 4000 RTP/AVP 0\r\nm=video 4002 RTP/AVP 96\r\n";
const VIDEO_OFF: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                         m=audio 4000 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\n";

fn invite(ruri: &str, from: &str, to: &str, headers: &[(&str, &str)], sdp: &str) -> SipMessage {
    let mut text = format!(
        "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
         From: <{from}>;tag=1\r\nTo: <{to}>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!(
        "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ));
    SipMessage::parse(text.as_bytes()).unwrap()
}

/// (request-URI, From, To, headers, SDP, type, queue, priority)
type Row<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a str,
    &'a str,
    &'a str,
    i32,
);

#[test]
fn each_invite_gets_the_first_matching_type() {
    let c = classifier();
    let caller = "sip:alice@caller.example";
    #[rustfmt::skip]
    let table: &[Row] = &[
        ("sip:billing@acd.example", caller, "sip:billing@acd.example", &[], AUDIO, "billing", "billing", 0),
        ("sip:Billing@acd.example", caller, "sip:x@acd.example", &[], AUDIO, "default", "default", 0),
        ("sip:billing;phone-context=x@acd.example", caller, "sip:x@acd.example", &[], AUDIO, "billing", "billing", 0),
        ("sip:08001234567@acd.example", caller, "sip:x@acd.example", &[], AUDIO, "freephone", "sales", 0),
        ("sip:0900@acd.example", caller, "sip:x@acd.example", &[], AUDIO, "default", "default", 0),
        ("tel:08005550100;phone-context=+44", caller, "sip:x@acd.example", &[], AUDIO, "freephone", "sales", 0),
        ("sip:+447700900123@acd.example", caller, "sip:x@acd.example", &[], AUDIO, "uk-mobile", "sales", 0),
        ("sip:+4477009001234@acd.example", caller, "sip:x@acd.example", &[], AUDIO, "default", "default", 0),
        ("sip:x@acd.example", "sip:bob@partner.example", "sip:support@acd.example", &[], AUDIO, "partner", "support", 0),
        ("sip:x@acd.example", "sip:bob@partner.example", "sip:sales@acd.example", &[], AUDIO, "default", "default", 0),
        ("sip:x@acd.example", caller, "sip:x@acd.example", &[("Accept-Language", "FR-fr, en;q=0.5")], AUDIO, "french", "support-fr", 0),
        ("sip:x@acd.example", caller, "sip:x@acd.example", &[("Accept-Language", "en")], AUDIO, "default", "default", 0),
        ("sip:x@acd.example", caller, "sip:x@acd.example", &[("X-Call-Type", "Support")], AUDIO, "tagged", "support", 0),
        ("sip:x@acd.example", caller, "sip:x@acd.example", &[("Priority", "emergency")], AUDIO, "emergency", "priority", 100),
        ("sip:x@acd.example", caller, "sip:x@acd.example", &[("Priority", "urgent")], AUDIO, "default", "default", 0),
        // Rule order: a VIP calling billing is a VIP.
        ("sip:billing@acd.example", caller, "sip:x@acd.example", &[("X-VIP", "1")], AUDIO, "vip", "priority", 10),
        ("sip:billing@acd.example", caller, "sip:x@acd.example", &[], VIDEO, "video-support", "video", 0),
        ("sip:billing@acd.example", caller, "sip:x@acd.example", &[], VIDEO_OFF, "billing", "billing", 0),
        ("sip:x@acd.example", "sip:anonymous@anonymous.invalid", "sip:x@acd.example", &[], AUDIO, "anonymous", "support", 0),
        ("sip:x@acd.example", caller, "sip:x@desk.example", &[], AUDIO, "audio-only-to-desk", "desk", 0),
        ("sip:x@acd.example", caller, "sip:x@DESK.example", &[], "", "default", "default", 0),
    ];
    for (i, (ruri, from, to, headers, sdp, name, queue, priority)) in table.iter().enumerate() {
        let facts = CallFacts::from_invite(&invite(ruri, from, to, headers, sdp));
        let got = c.classify(&facts);
        assert_eq!(
            (got.name.as_str(), got.queue.as_str(), got.priority),
            (*name, *queue, *priority),
            "row {i}: {ruri} from {from} to {to} {headers:?}"
        );
    }
}

#[test]
fn no_rules_means_the_default_type() {
    let c = Classifier::new(&[], "general");
    let facts = CallFacts::from_invite(&invite("sip:a@b", "sip:c@d", "sip:e@f", &[], AUDIO));
    assert_eq!(
        c.classify(&facts),
        &CallType {
            name: "default".into(),
            queue: "general".into(),
            priority: 0
        }
    );
}

#[test]
fn bad_rules_are_refused_with_a_reason() {
    let queue = |name: &str| config::QueueConfig {
        name: name.into(),
        ..Default::default()
    };
    let ty = |toml_text: &str| -> config::CallTypeConfig { toml::from_str(toml_text).unwrap() };
    #[rustfmt::skip]
    let table: &[(config::CallTypeConfig, Vec<config::QueueConfig>, &str)] = &[
        (ty("name = \"a\"\nqueue = \"nowhere\""), vec![], "not defined"),
        (ty("name = \"a\"\nqueue = \"default\"\nrequest_user = { regex = \"(\" }"), vec![], "regex"),
        (ty("name = \"a\"\nqueue = \"default\"\nrequest_user = { equals = \"x\", prefix = \"y\" }"), vec![], "exactly one"),
        (ty("name = \"a\"\nqueue = \"default\"\nheaders = { X = {} }"), vec![], "exactly one"),
        (ty("queue = \"default\""), vec![], "needs a name"),
        (ty("name = \"a\"\nqueue = \"q\""), vec![config::QueueConfig { overflow: Some("r".into()), ..queue("q") }, config::QueueConfig { overflow: Some("q".into()), ..queue("r") }], "loops"),
        (ty("name = \"a\"\nqueue = \"q\""), vec![config::QueueConfig { overflow: Some("s".into()), ..queue("q") }], "not defined"),
        (ty("name = \"a\"\nqueue = \"q\""), vec![queue("q"), queue("q")], "twice"),
        (ty("name = \"a\"\nqueue = \"q\""), vec![config::QueueConfig { timeout_status: 200, ..queue("q") }], "final failures"),
        (ty("name = \"a\"\nqueue = \"q\""), vec![config::QueueConfig { skills: [("x".into(), 0)].into(), ..queue("q") }], "level"),
    ];
    for (i, (t, queues, why)) in table.iter().enumerate() {
        let err = config::validate(std::slice::from_ref(t), queues, "default").unwrap_err();
        assert!(err.contains(why), "row {i}: {err}");
    }
}
