//! The transaction layer fed any messages and any passage of time never panics, and with
//! enough time nothing is left behind.
#![no_main]

use std::time::{Duration, Instant};

use agent_edge::sip::transaction::{Config, TransactionLayer, TxEvent};
use agent_edge::sip::{SipMessage, Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut layer: TransactionLayer = TransactionLayer::new(Config {
        send_100_trying: true,
        ..Config::default()
    });
    let peer = Target::udp(std::net::SocketAddr::from(([127, 0, 0, 1], 5060)));
    let mut now = t0;
    for chunk in data.split(|b| *b == 0) {
        if let Ok(msg) = SipMessage::parse_checked(chunk) {
            layer.handle_message(msg, peer.clone(), now);
        }
        while let Some(ev) = layer.poll_event() {
            if let TxEvent::Request {
                tx: Some(tx), msg, ..
            } = ev
            {
                let _ = layer.send_response(tx, msg.response(404, Some("f")), now);
            }
        }
        while layer.poll_transmit().is_some() {}
        now += Duration::from_millis(chunk.len() as u64 * 50);
        layer.handle_timeout(now);
    }
    layer.handle_timeout(now + Duration::from_secs(600));
    while layer.poll_event().is_some() {}
    assert!(layer.is_empty(), "{} transactions left", layer.len());
});
