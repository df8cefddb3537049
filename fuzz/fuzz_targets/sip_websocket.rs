//! SIP arriving in WebSocket frames (RFC 7118): the bytes of one WebSocket message, as the
//! buffer server's `/sip` endpoint hands them to `transport::ingest`, through
//! `validate::from_peer`, the pure parse-and-validate step every peer's SIP takes. The first
//! byte picks the frame type: a text message must be UTF-8 (the WebSocket layer closes the
//! connection on one that is not, so SIP never sees it); a binary one may hold anything.
//!
//! Never panics; what it accepts survives serialising and checking again; what it refuses
//! it answers with the status the rules name, to the same request, or not at all.
#![no_main]

use agent_edge::sip::validate::{self, AS_PROXY, AS_UAS};
use agent_edge::sip::SipMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, payload)) = data.split_first() else {
        return;
    };
    if kind & 1 == 1 && std::str::from_utf8(payload).is_err() {
        return;
    }
    match validate::from_peer(payload) {
        Ok(msg) => {
            let bytes = msg.to_bytes();
            let again = validate::from_peer(&bytes).expect("what we accept, we accept again");
            assert_eq!(again.call_id(), msg.call_id());
            assert_eq!(again.method(), msg.method());
            for headers in [AS_UAS, AS_PROXY] {
                if let Some(refusal) = validate::unsupported(&msg, headers) {
                    assert_eq!(refusal.status(), Some(420));
                    assert!(refusal.header("Unsupported").is_some());
                    SipMessage::parse(&refusal.to_bytes()).expect("our 420 parses");
                }
            }
        }
        Err(rejected) => {
            let Some(answer) = rejected.answer else {
                return;
            };
            let code = answer.status().expect("an answer is a response");
            assert_eq!(code, rejected.error.status());
            assert!(matches!(code, 400 | 416 | 505), "{code}");
            let parsed = SipMessage::parse(&answer.to_bytes()).expect("our answer parses");
            assert_eq!(parsed.call_id(), answer.call_id());
            // Never an answer to an ACK.
            let first = payload
                .split(|b| *b == b'\n')
                .find(|l| !l.trim_ascii().is_empty());
            assert!(!first.is_some_and(|l| l.starts_with(b"ACK ")), "an ACK answered");
        }
    }
});
