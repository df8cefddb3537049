//! The `uri` hand-off decoder on any INVITE a peer could send.
#![no_main]

use agent_edge::handoff::decode_uri;
use agent_edge::sip::SipMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = SipMessage::parse(data)
        && let Ok(agent) = decode_uri(&msg)
    {
        assert!(proto_tunnel::valid_id(&agent, 128));
    }
});
