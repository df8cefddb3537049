//! Any bytes from a peer: parsing, checking, the 400 answer and stream framing never panic,
//! and a message that parses survives serialising and parsing again.
#![no_main]

use agent_edge::sip::SipMessage;
use agent_edge::sip::framing::next_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = next_frame(data, 65_535);
    match SipMessage::parse_checked(data) {
        Ok(msg) => {
            let again = SipMessage::parse(&msg.to_bytes()).expect("our own output parses");
            assert_eq!(again.call_id(), msg.call_id());
            let _ = msg.response(486, Some("t"));
        }
        Err(rejected) => {
            if let Some(answer) = rejected.answer {
                SipMessage::parse(&answer.to_bytes()).expect("our 400 parses");
            }
        }
    }
});
