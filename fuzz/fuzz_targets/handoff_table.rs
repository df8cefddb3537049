//! The `table` hand-off: Route frames from the tunnel, then INVITEs and time, in any order.
#![no_main]

use std::time::{Duration, Instant};

use agent_edge::handoff::RouteTable;
use libfuzzer_sys::fuzz_target;
use proto_tunnel::{Frame, Limits, decode};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut table = RouteTable::new();
    let mut now = t0;
    for chunk in data.split(|b| *b == 0xff) {
        match decode(chunk, &Limits::default()) {
            Ok(Frame::Route {
                call_id,
                agent,
                ttl_ms,
            }) => {
                table.insert(call_id, agent, Duration::from_millis(ttl_ms.into()), now);
            }
            _ => {
                let call_id = String::from_utf8_lossy(chunk);
                let _ = table.take(&call_id, now);
                now += Duration::from_millis(chunk.len() as u64 * 100);
                table.expire(now);
            }
        }
    }
    table.expire(now + Duration::from_secs(u32::MAX as u64 / 1000 + 1));
    assert!(table.is_empty(), "every entry expires");
});
