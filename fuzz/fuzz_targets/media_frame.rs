//! The caller media relay's frames (`proto_tunnel::media`): any bytes decode or fail cleanly,
//! and what decodes re-encodes to the same bytes. The late-packet filter takes whatever
//! stamps and arrival times a peer's packets give it without panicking.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use proto_tunnel::media::{LateFilter, decode_media, encode_media};

fuzz_target!(|data: &[u8]| {
    let _ = proto_tunnel::media::stun_binding_ufrag(data);
    if let Ok(frame) = decode_media(data) {
        assert_eq!(encode_media(&frame), data);
    }
    let mut filter = LateFilter::new(Duration::from_millis(250), Duration::from_millis(10));
    for chunk in data.chunks_exact(16) {
        let sent = u64::from_be_bytes(chunk[..8].try_into().unwrap_or_default());
        let arrival = u64::from_be_bytes(chunk[8..].try_into().unwrap_or_default());
        let _ = filter.is_late(sent, arrival);
    }
});
