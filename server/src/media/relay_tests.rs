//! The plain-RTP relay through the bridge's API, on a simulated clock: SDP re-addressed each
//! way, datagrams relayed byte for byte, hold and resume, inactivity and one-way audio.

use super::*;
use crate::media::bridge::{Bridge, BridgeEvent, Datagram, Via};

const CALLER: &str = "192.0.2.7:4000";
const CALLER_NAT: &str = "198.51.100.9:31000";
const AGENT: &str = "10.1.2.3:6000";
const CALLER_LOCAL: &str = "10.0.0.1:20000";
const AGENT_LOCAL: &str = "10.0.0.1:20002";
const ID: u64 = 7;

const OFFER: &str = "v=0\r\no=caller 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n\
                     m=audio 4000 RTP/AVP 9 8 101\r\na=rtpmap:9 G722/8000\r\n\
                     a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=rtcp:4001\r\n\
                     a=rtcp-mux\r\na=ptime:20\r\nm=video 5000 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n";
const ANSWER: &str = "v=0\r\no=phone 55 55 IN IP4 10.1.2.3\r\ns=-\r\nc=IN IP4 10.1.2.3\r\nt=0 0\r\n\
                      m=audio 6000 RTP/AVP 9 101\r\na=rtpmap:9 G722/8000\r\n\
                      a=rtpmap:101 telephone-event/8000\r\na=candidate:1 1 UDP 1 10.1.2.3 6000 typ host\r\n\
                      a=rtcp-mux\r\nm=video 0 RTP/AVP 96\r\n";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn rtp(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&0x1234_5678_u32.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An RTCP receiver report, as a phone with rtcp-mux sends it on its RTP port.
const RTCP_RR: [u8; 8] = [0x80, 201, 0, 1, 0x12, 0x34, 0x56, 0x78];

fn datagrams(bridge: &mut Bridge) -> Vec<Datagram> {
    std::iter::from_fn(|| bridge.poll_datagram()).collect()
}

fn events(bridge: &mut Bridge) -> Vec<BridgeEvent> {
    std::iter::from_fn(|| bridge.poll_event()).collect()
}

fn version(sdp: &str) -> u64 {
    let o = sdp.lines().find(|l| l.starts_with("o=")).unwrap();
    o.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// A call set up: the caller's offer passed to the agent, its answer passed back.
fn answered(now: Instant) -> (Bridge, String, String) {
    let mut bridge = Bridge::new(addr("10.0.0.1:16100"), Duration::from_secs(10));
    bridge.open_relay(ID, OFFER.as_bytes(), now);
    assert!(bridge.is_relay(ID));
    assert_eq!(bridge.caller_destination(ID), Some(addr(CALLER)));
    let to_agent = bridge
        .relay_sdp(ID, Leg::Caller, OFFER.as_bytes(), addr(AGENT_LOCAL), now)
        .unwrap();
    let to_caller = bridge
        .relay_sdp(ID, Leg::Agent, ANSWER.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    bridge.relay_answered(ID, now);
    (bridge, to_agent, to_caller)
}

#[test]
fn each_side_gets_the_others_description_at_the_edges_address_only() {
    let (_, to_agent, to_caller) = answered(Instant::now());
    // The agent: our agent-side address and port, the caller's formats as they were.
    assert!(!to_agent.contains("192.0.2.7"), "{to_agent}");
    assert!(
        !to_agent.contains("4000") && !to_agent.contains("4001"),
        "{to_agent}"
    );
    assert!(
        to_agent.contains("o=agent-edge 7 7 IN IP4 10.0.0.1\r\n"),
        "{to_agent}"
    );
    assert!(to_agent.contains("c=IN IP4 10.0.0.1\r\n"), "{to_agent}");
    assert!(
        to_agent.contains("m=audio 20002 RTP/AVP 9 8 101\r\n"),
        "{to_agent}"
    );
    for kept in [
        "a=rtpmap:9 G722/8000",
        "a=fmtp:101 0-16",
        "a=rtcp-mux",
        "a=ptime:20",
    ] {
        assert!(to_agent.contains(kept), "{kept}: {to_agent}");
    }
    assert!(
        !to_agent.contains("a=rtcp:"),
        "RFC 3605 names the caller's port"
    );
    assert!(
        to_agent.contains("m=video 0 RTP/AVP 96\r\n"),
        "a stream the relay does not carry is refused: {to_agent}"
    );
    // The caller: our caller-side address, nothing of the agent's.
    assert!(!to_caller.contains("10.1.2.3"), "{to_caller}");
    assert!(!to_caller.contains("6000"), "{to_caller}");
    assert!(!to_caller.contains("candidate"), "{to_caller}");
    assert!(
        to_caller.contains("m=audio 20000 RTP/AVP 9 101\r\n"),
        "{to_caller}"
    );
    assert!(to_caller.contains("c=IN IP4 10.0.0.1\r\n"), "{to_caller}");
    assert!(to_caller.ends_with("\r\n") && !to_caller.contains("\r\n\r\n"));
}

#[test]
fn rtp_and_muxed_rtcp_cross_byte_for_byte_and_follow_where_each_side_sends_from() {
    let now = Instant::now();
    let (mut bridge, _, _) = answered(now);
    // The caller sends from behind a NAT: the first packet moves its destination there.
    let from_caller = rtp(9, 100, 1600, &[1; 160]);
    bridge.from_caller(ID, &from_caller, addr(CALLER_NAT), now);
    let d = datagrams(&mut bridge);
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].via, d[0].to, &d[0].bytes),
        (Via::Agent(ID), addr(AGENT), &from_caller)
    );
    assert_eq!(bridge.caller_destination(ID), Some(addr(CALLER_NAT)));
    let from_agent = rtp(101, 9, 80, &[5, 0x80, 0, 160]);
    bridge.from_agent_rtp(ID, &from_agent, addr(AGENT), now);
    bridge.from_agent_rtp(ID, &RTCP_RR, addr(AGENT), now);
    let d = datagrams(&mut bridge);
    assert_eq!(d.len(), 2);
    assert!(
        d.iter()
            .all(|d| d.via == Via::Caller(ID) && d.to == addr(CALLER_NAT))
    );
    assert_eq!((&d[0].bytes, &d[1].bytes[..]), (&from_agent, &RTCP_RR[..]));
    // Not media: dropped and counted, never relayed.
    for junk in [&b"hello"[..], &[0u8; 20], &[0x80, 200, 0]] {
        bridge.from_caller(ID, junk, addr(CALLER_NAT), now);
    }
    assert!(datagrams(&mut bridge).is_empty());
    let stats = bridge.stats(ID).unwrap();
    assert_eq!(
        (stats.from_caller.packets, stats.from_agent.packets),
        (1, 1)
    );
    assert_eq!((stats.dropped, stats.agent_media), (3, "rtp"));
    assert_eq!(stats.rtcp_relayed.map(|r| r.from_agent), Some(1));
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["agent_media"], "rtp");
    assert!(json.get("ice_state").is_none(), "{json}");
}

#[test]
fn media_before_the_other_side_says_where_goes_nowhere() {
    let now = Instant::now();
    let mut bridge = Bridge::new(addr("10.0.0.1:16100"), Duration::from_secs(10));
    bridge.open_relay(ID, OFFER.as_bytes(), now);
    bridge.from_caller(ID, &rtp(9, 1, 0, &[0; 160]), addr(CALLER), now);
    assert!(
        datagrams(&mut bridge).is_empty(),
        "the agent has not answered"
    );
    // An INVITE without SDP: the caller is learnt from where it sends.
    bridge.open_relay(ID + 1, b"", now);
    assert_eq!(bridge.caller_destination(ID + 1), None);
    assert_eq!(
        bridge.relay_sdp(ID + 1, Leg::Agent, b"\xff\xfe", addr(CALLER_LOCAL), now),
        Err(crate::media::bridge::BridgeError::NotSdp)
    );
    assert_eq!(
        bridge.relay_sdp(99, Leg::Agent, ANSWER.as_bytes(), addr(CALLER_LOCAL), now),
        Err(crate::media::bridge::BridgeError::Unknown(99))
    );
    assert!(bridge.close(ID).is_some() && bridge.close(ID + 1).is_some());
    assert!(bridge.is_empty() && bridge.close(ID).is_none());
    assert_eq!(bridge.poll_timeout(), None, "no call, no timer");
}

#[test]
fn hold_and_resume_cross_unchanged_and_each_sides_version_goes_up_only_when_it_changes() {
    let mut now = Instant::now();
    let (mut bridge, to_agent, to_caller) = answered(now);
    let (agent_v, caller_v) = (version(&to_agent), version(&to_caller));
    // The same answer again (a retransmitted 2xx): the same description, the same version.
    let again = bridge
        .relay_sdp(ID, Leg::Agent, ANSWER.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    assert_eq!(again, to_caller);
    // The caller holds: its sendonly reaches the agent, the agent's recvonly the caller.
    let hold = OFFER.replace("a=ptime:20", "a=ptime:20\r\na=sendonly");
    let to_agent = bridge
        .relay_sdp(ID, Leg::Caller, hold.as_bytes(), addr(AGENT_LOCAL), now)
        .unwrap();
    assert!(to_agent.contains("a=sendonly"), "{to_agent}");
    assert_eq!(version(&to_agent), agent_v + 1);
    let held_answer = ANSWER.replace("a=rtcp-mux", "a=rtcp-mux\r\na=recvonly");
    let to_caller = bridge
        .relay_sdp(
            ID,
            Leg::Agent,
            held_answer.as_bytes(),
            addr(CALLER_LOCAL),
            now,
        )
        .unwrap();
    assert!(to_caller.contains("a=recvonly"), "{to_caller}");
    assert_eq!(version(&to_caller), caller_v + 1);
    // Silence on hold is no fault, however long.
    for _ in 0..30 {
        now += Duration::from_secs(1);
        bridge.handle_timeout(now);
    }
    assert!(events(&mut bridge).is_empty());
    // The agent resumes with a re-offer of its own, then an old phone holds by address.
    let to_caller = bridge
        .relay_sdp(ID, Leg::Agent, ANSWER.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    assert_eq!(version(&to_caller), caller_v + 2);
    let to_agent = bridge
        .relay_sdp(ID, Leg::Caller, OFFER.as_bytes(), addr(AGENT_LOCAL), now)
        .unwrap();
    assert_eq!(version(&to_agent), agent_v + 2);
    let by_address = ANSWER.replace("c=IN IP4 10.1.2.3", "c=IN IP4 0.0.0.0");
    let to_caller = bridge
        .relay_sdp(
            ID,
            Leg::Agent,
            by_address.as_bytes(),
            addr(CALLER_LOCAL),
            now,
        )
        .unwrap();
    assert!(
        to_caller.contains("c=IN IP4 0.0.0.0\r\n"),
        "the hold it is: {to_caller}"
    );
    assert!(to_caller.contains("m=audio 20000 "), "{to_caller}");
    bridge.from_caller(ID, &rtp(9, 1, 0, &[0; 160]), addr(CALLER), now);
    assert!(
        datagrams(&mut bridge).is_empty(),
        "nothing to a side on hold by address"
    );
    // Resumed at its old address: media reaches it again.
    bridge
        .relay_sdp(ID, Leg::Agent, ANSWER.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    bridge.from_caller(ID, &rtp(9, 2, 160, &[0; 160]), addr(CALLER), now);
    assert_eq!(datagrams(&mut bridge)[0].to, addr(AGENT));
    // The agent moves to a new address: followed.
    let moved = ANSWER.replace("m=audio 6000", "m=audio 6100");
    bridge
        .relay_sdp(ID, Leg::Agent, moved.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    bridge.from_caller(ID, &rtp(9, 3, 320, &[0; 160]), addr(CALLER), now);
    assert_eq!(datagrams(&mut bridge)[0].to, addr("10.1.2.3:6100"));
}

#[test]
fn a_ringing_call_is_not_inactive_an_answered_silent_one_is_and_one_way_audio_is_flagged() {
    let mut now = Instant::now();
    let mut bridge = Bridge::new(addr("10.0.0.1:16100"), Duration::from_secs(10));
    bridge.set_one_way_after(Duration::from_secs(3));
    bridge.open_relay(ID, OFFER.as_bytes(), now);
    for _ in 0..20 {
        now += Duration::from_secs(1);
        bridge.handle_timeout(now);
    }
    assert!(events(&mut bridge).is_empty(), "ringing for 20 s");
    bridge
        .relay_sdp(ID, Leg::Caller, OFFER.as_bytes(), addr(AGENT_LOCAL), now)
        .unwrap();
    bridge
        .relay_sdp(ID, Leg::Agent, ANSWER.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    bridge.relay_answered(ID, now);
    // Only the caller talks: after 3 s the agent is flagged silent (the caller hears nothing).
    let mut seq = 0u16;
    for _ in 0..250 {
        now += Duration::from_millis(20);
        seq = seq.wrapping_add(1);
        bridge.from_caller(
            ID,
            &rtp(9, seq, u32::from(seq) * 160, &[0; 160]),
            addr(CALLER),
            now,
        );
        bridge.handle_timeout(now);
    }
    datagrams(&mut bridge);
    assert_eq!(
        events(&mut bridge),
        vec![BridgeEvent::OneWay(
            ID,
            Some(crate::media::bridge::Silent::Agent)
        )]
    );
    assert_eq!(bridge.stats(ID).unwrap().one_way, Some("agent-silent"));
    // The agent talks too: cleared.
    for _ in 0..100 {
        now += Duration::from_millis(20);
        seq = seq.wrapping_add(1);
        let p = rtp(9, seq, u32::from(seq) * 160, &[0; 160]);
        bridge.from_caller(ID, &p, addr(CALLER), now);
        bridge.from_agent_rtp(ID, &p, addr(AGENT), now);
        bridge.handle_timeout(now);
    }
    assert_eq!(events(&mut bridge), vec![BridgeEvent::OneWay(ID, None)]);
    let stats = bridge.stats(ID).unwrap();
    assert_eq!(
        (stats.from_caller.lost, stats.from_caller.jitter_ms),
        (0, 0)
    );
    // Then nothing either way: inactive within the sweep after 10 s.
    for _ in 0..12 {
        now += Duration::from_secs(1);
        bridge.handle_timeout(now);
    }
    assert!(events(&mut bridge).contains(&BridgeEvent::Inactive(ID)));
}

#[test]
fn jitter_is_measured_at_the_formats_own_clock() {
    // Opus at 48 kHz, packets every 20 ms (960 units) exactly on time: no jitter; read at
    // G.711's clock the same packets would look 100 ms late each.
    let opus_offer =
        "v=0\r\nc=IN IP4 192.0.2.7\r\nm=audio 4000 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n";
    let mut now = Instant::now();
    let mut bridge = Bridge::new(addr("10.0.0.1:16100"), Duration::from_secs(10));
    bridge.open_relay(ID, opus_offer.as_bytes(), now);
    for seq in 0..100u16 {
        now += Duration::from_millis(20);
        bridge.from_caller(
            ID,
            &rtp(111, seq, u32::from(seq) * 960, &[0; 60]),
            addr(CALLER),
            now,
        );
    }
    assert_eq!(bridge.stats(ID).unwrap().from_caller.jitter_ms, 0);
}
