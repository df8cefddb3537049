//! The tunnel codec (including the `tunnel` hand-off's Sip frame and the `table` hand-off's
//! Route frame): any bytes decode or fail cleanly, and what decodes re-encodes to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto_tunnel::{Limits, decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode(data, &Limits::default()) {
        assert_eq!(&encode(&frame)[..], data);
    }
});
