//! The `message` hand-off: any MESSAGE (and any body) unwraps or is refused with 400/415.
#![no_main]

use agent_edge::handoff::{unwrap, wrap};
use agent_edge::sip::SipMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = SipMessage::parse(data)
        && let Err(e) = unwrap(&msg)
    {
        assert!(matches!(e.status(), 400 | 415));
    }
    // The body alone, wrapped as the distributor would.
    let wrapper = wrap(
        data,
        "sip:alice@edge-1.invalid",
        "dist-1.invalid",
        "z9hG4bKf",
    );
    let wrapper = SipMessage::parse(&wrapper.to_bytes()).expect("our wrapper parses");
    if let Ok((inner, agent)) = unwrap(&wrapper) {
        assert_eq!(agent.as_deref(), Some("alice"));
        let _ = inner.to_bytes();
    }
});
