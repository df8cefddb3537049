//! The media bridge's inputs from peers: SDP offers and answers, datagrams on the shared
//! WebRTC port and on a caller's RTP port, in any order. Nothing may panic; the bridge keeps
//! its sessions.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent_edge::media::bridge::Bridge;
use agent_edge::media::{rtp, sdp};
use libfuzzer_sys::fuzz_target;

const OFFER: &[u8] = b"v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

fuzz_target!(|data: &[u8]| {
    let _ = rtp::parse(data);
    let _ = sdp::audio_offer(data);
    let _ = sdp::audio_direction(data);
    let webrtc: SocketAddr = "10.0.0.1:16100"
        .parse()
        .unwrap_or(SocketAddr::from(([0; 4], 0)));
    let local: SocketAddr = "10.0.0.1:20000".parse().unwrap_or(webrtc);
    let peer: SocketAddr = "192.0.2.7:4000".parse().unwrap_or(webrtc);
    let mut now = Instant::now();
    let mut bridge = Bridge::new(webrtc, Duration::from_secs(30));
    let _ = bridge.create(1, data, local, now);
    if bridge.create(2, OFFER, local, now).is_err() {
        return;
    }
    for (i, chunk) in data.split(|b| *b == 0xfe).enumerate() {
        match i % 5 {
            0 => bridge.from_webrtc(chunk, peer, webrtc, now),
            1 => bridge.from_caller(2, chunk, peer, now),
            2 => {
                let _ = bridge.agent_answer(2, chunk, now);
            }
            3 => {
                let _ = bridge.caller_reoffer(2, chunk, local, now);
            }
            _ => {
                let _ = bridge.agent_reoffer(2, chunk, local, now);
            }
        }
        now += Duration::from_millis(20);
        bridge.handle_timeout(now);
        while bridge.poll_datagram().is_some() {}
        while bridge.poll_event().is_some() {}
    }
    assert!(bridge.stats(2).is_some(), "the session survives its peers");
});
