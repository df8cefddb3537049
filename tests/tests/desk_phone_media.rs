//! A desk-phone agent's media anchored in the buffer server (`[buffer]
//! anchor_desk_phone_media`, on by default): SIPp callers and SIPp desk phones registered
//! over UDP, each side's SDP read from its own SIPp message trace, audio both ways proved by
//! SIPp echoing what reached it, counted by the edge's media statistics in the call record.
//! Everything runs on 127.0.0.1, so the addresses told apart are the ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent_edge_tests::{System, admin_key, agent, caller, free_port, register};
use serde_json::Value;

/// SIPp's media runs one at a time: two calls carrying audio at once on a 2-core machine
/// measure the machine.
static AUDIO: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Packets in /usr/share/sip-tester/g711a.pcap.
const PCAP_PACKETS: u64 = 236;

/// The body of a SIP message as SIPp traced it.
fn body(msg: &str) -> &str {
    msg.split_once("\n\n").map_or("", |(_, b)| b)
}

/// The bodies of the messages starting with `start` whose body is an SDP, in order.
fn sdp_in<'a>(messages: &'a [String], start: &str) -> Vec<&'a str> {
    messages
        .iter()
        .filter(|m| m.starts_with(start) && body(m).contains("m=audio"))
        .map(|m| body(m))
        .collect()
}

/// The audio port of an SDP.
fn audio_port(sdp: &str) -> u16 {
    let m = sdp.lines().find(|l| l.starts_with("m=audio")).unwrap();
    m.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The `o=` line's version.
fn version(sdp: &str) -> u64 {
    let o = sdp.lines().find(|l| l.starts_with("o=")).unwrap();
    o.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// Every number in the SDP: none may be the other side's port.
fn numbers(sdp: &str) -> Vec<u64> {
    sdp.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Checks that `sdp`, which one side received, names only the edge: its `o=` line, its
/// address and its port `edge_port`, none of the `hidden` ports of the other side.
fn only_the_edge(sdp: &str, edge_port: u16, hidden: &[u16], other_origin: &str, what: &str) {
    assert_eq!(audio_port(sdp), edge_port, "{what}: {sdp}");
    assert!(sdp.contains("o=agent-edge "), "{what}: our origin: {sdp}");
    assert!(
        !sdp.contains(other_origin),
        "{what}: the other side's o= line: {sdp}"
    );
    assert!(sdp.contains("c=IN IP4 127.0.0.1"), "{what}: {sdp}");
    for port in hidden {
        assert!(
            !numbers(sdp).contains(&u64::from(*port)),
            "{what}: the other side's port {port} leaked: {sdp}"
        );
    }
}

fn media_record(sys: &mut System) -> Value {
    let admin = sys.edge.addr("distributor.admin");
    agent_edge_tests::record_with_media(admin, &admin_key(sys.path()))
}

/// The edge's per-call ports close with the call: each can be bound again.
fn closed(ports: &[u16]) {
    for port in ports {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], *port))).is_err() {
            assert!(
                Instant::now() < deadline,
                "the edge's media port {port} is still open after the call"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One call: the desk phone `agent_scenario` (its media on `agent_mp`) answers a caller
/// playing a pcap (its media on `caller_mp`). Returns what each received.
fn call(
    sys: &mut System,
    agent_scenario: &str,
    agent_extra: &[&str],
    caller_scenario: &str,
    caller_extra: &[&str],
) -> (Vec<String>, Vec<String>) {
    let (port, uas) = agent(agent_scenario, sys.path(), "agent", 1, agent_extra);
    register(
        &mut sys.edge,
        sys.dir.path(),
        sys.buffer_udp,
        "alice",
        port,
        false,
    );
    let run = caller(caller_scenario, sys.path(), "caller", sys.dist_udp)
        .arg(&["-m", "1"])
        .arg(caller_extra)
        .run();
    run.assert_ok("the caller");
    let agent_run = uas.wait();
    agent_run.assert_ok("the desk phone");
    (run.received, agent_run.received)
}

#[test]
fn the_callers_audio_reaches_the_desk_phone_and_comes_back_with_neither_sdp_crossing() {
    let _one = AUDIO.lock().unwrap_or_else(|e| e.into_inner());
    let mut sys = System::start("");
    let (caller_mp, agent_mp) = (free_port(), free_port());
    let (to_caller, to_agent) = call(
        &mut sys,
        "agent_answer_rtp_echo.xml",
        &["-rtp_echo", "-mp", &agent_mp.to_string()],
        "caller_pcap_audio.xml",
        &["-mp", &caller_mp.to_string()],
    );
    let answer = sdp_in(&to_caller, "SIP/2.0 200");
    let offer = sdp_in(&to_agent, "INVITE");
    assert_eq!(
        (answer.len(), offer.len()),
        (1, 1),
        "{to_caller:?}\n{to_agent:?}"
    );
    let (caller_side, agent_side) = (audio_port(answer[0]), audio_port(offer[0]));
    assert!(
        ![caller_mp, agent_mp, agent_side].contains(&caller_side),
        "the caller's port of the edge is its own: {caller_side}"
    );
    assert_ne!(agent_side, caller_mp);
    assert_ne!(agent_side, agent_mp);
    only_the_edge(
        answer[0],
        caller_side,
        &[agent_mp],
        "o=agent ",
        "the caller's answer",
    );
    only_the_edge(
        offer[0],
        agent_side,
        &[caller_mp],
        "o=caller ",
        "the phone's offer",
    );
    // The codecs are the phones' own, end to end.
    assert!(
        offer[0].contains("m=audio") && offer[0].contains("RTP/AVP 8 101"),
        "{}",
        offer[0]
    );
    assert!(
        offer[0].contains("a=rtpmap:101 telephone-event/8000"),
        "{}",
        offer[0]
    );
    assert!(answer[0].contains("RTP/AVP 8 101"), "{}", answer[0]);
    // Caller → phone: the phone echoes only what reached it, so the edge counts each
    // direction in full.
    let record = media_record(&mut sys);
    let media = &record["media"];
    let (from_caller, from_agent) = (
        media["caller"]["packets"].as_u64().unwrap(),
        media["agent"]["packets"].as_u64().unwrap(),
    );
    assert!(from_caller >= PCAP_PACKETS, "{record:#}");
    assert!(
        from_agent >= PCAP_PACKETS,
        "the caller's audio came back from the phone: {record:#}"
    );
    assert_eq!(media["caller"]["lost"], 0, "{record:#}");
    closed(&[caller_side, agent_side]);
}

#[test]
fn the_desk_phones_audio_reaches_the_caller_through_the_edge() {
    let _one = AUDIO.lock().unwrap_or_else(|e| e.into_inner());
    let mut sys = System::start("");
    let (caller_mp, agent_mp) = (free_port(), free_port());
    let (to_caller, to_agent) = call(
        &mut sys,
        "agent_answer_play_pcap.xml",
        &["-mp", &agent_mp.to_string()],
        "caller_pcap_audio.xml",
        &["-rtp_echo", "-mp", &caller_mp.to_string()],
    );
    let answer = sdp_in(&to_caller, "SIP/2.0 200");
    let offer = sdp_in(&to_agent, "INVITE");
    only_the_edge(
        answer[0],
        audio_port(answer[0]),
        &[agent_mp],
        "o=agent ",
        "the caller's answer",
    );
    only_the_edge(
        offer[0],
        audio_port(offer[0]),
        &[caller_mp],
        "o=caller ",
        "the phone's offer",
    );
    // The caller echoes the phone's pcap: what the edge got from the caller is its own
    // pcap and the phone's.
    let record = media_record(&mut sys);
    let media = &record["media"];
    let (from_caller, from_agent) = (
        media["caller"]["packets"].as_u64().unwrap(),
        media["agent"]["packets"].as_u64().unwrap(),
    );
    assert!(from_agent >= PCAP_PACKETS, "the phone's pcap: {record:#}");
    assert!(
        from_caller >= PCAP_PACKETS + PCAP_PACKETS * 9 / 10,
        "the phone's audio reached the caller, which sent it back: {record:#}"
    );
    closed(&[audio_port(answer[0]), audio_port(offer[0])]);
}

#[test]
fn hold_and_resume_from_the_desk_phone_cross_the_edge_each_side_seeing_only_it() {
    let mut sys = System::start("");
    let (caller_mp, agent_mp) = (free_port(), free_port());
    let (to_caller, to_agent) = call(
        &mut sys,
        "agent_answer_hold.xml",
        &["-mp", &agent_mp.to_string()],
        "caller_hold.xml",
        &["-mp", &caller_mp.to_string()],
    );
    // The caller: the answer, then the phone's hold and resume, all from the edge's port
    // facing it, each a new version of one session.
    let mut to_caller_sdps = sdp_in(&to_caller, "SIP/2.0 200");
    to_caller_sdps.extend(sdp_in(&to_caller, "INVITE"));
    assert_eq!(to_caller_sdps.len(), 3, "{to_caller:?}");
    let port = audio_port(to_caller_sdps[0]);
    for sdp in &to_caller_sdps {
        only_the_edge(sdp, port, &[agent_mp], "o=agent ", "an SDP to the caller");
    }
    assert!(to_caller_sdps[1].contains("a=sendonly") && to_caller_sdps[2].contains("a=sendrecv"));
    let versions: Vec<u64> = to_caller_sdps.iter().map(|s| version(s)).collect();
    assert!(
        versions[0] < versions[1] && versions[1] < versions[2],
        "RFC 3264 §8: {versions:?}"
    );
    // The phone: the caller's offer, then its answers to hold (recvonly) and resume.
    let mut to_agent_sdps = sdp_in(&to_agent, "INVITE");
    to_agent_sdps.extend(sdp_in(&to_agent, "SIP/2.0 200"));
    assert_eq!(to_agent_sdps.len(), 3, "{to_agent:?}");
    let port = audio_port(to_agent_sdps[0]);
    for sdp in &to_agent_sdps {
        only_the_edge(sdp, port, &[caller_mp], "o=caller ", "an SDP to the phone");
    }
    assert!(to_agent_sdps[1].contains("a=recvonly") && to_agent_sdps[2].contains("a=sendrecv"));
    let versions: Vec<u64> = to_agent_sdps.iter().map(|s| version(s)).collect();
    assert!(
        versions[0] < versions[1] && versions[1] < versions[2],
        "the caller's two answers differ, so do their versions: {versions:?}"
    );
}

#[test]
fn a_cancelled_call_closes_the_port_it_opened_for_the_phone() {
    let mut sys = System::start("");
    let (_, to_agent) = call(
        &mut sys,
        "agent_ring_cancel.xml",
        &[],
        "caller_cancel.xml",
        &[],
    );
    let offer = sdp_in(&to_agent, "INVITE");
    assert!(!offer.is_empty(), "{to_agent:?}");
    assert!(offer[0].contains("o=agent-edge "), "{}", offer[0]);
    closed(&[audio_port(offer[0])]);
}

#[test]
fn switched_off_the_callers_and_the_phones_sdp_cross_unchanged() {
    let _one = AUDIO.lock().unwrap_or_else(|e| e.into_inner());
    let mut sys = System::start_with("", "anchor_desk_phone_media = false");
    let (caller_mp, agent_mp) = (free_port(), free_port());
    let (to_caller, to_agent) = call(
        &mut sys,
        "agent_answer_rtp_echo.xml",
        &["-rtp_echo", "-mp", &agent_mp.to_string()],
        "caller_pcap_audio.xml",
        &["-mp", &caller_mp.to_string()],
    );
    let answer = sdp_in(&to_caller, "SIP/2.0 200");
    let offer = sdp_in(&to_agent, "INVITE");
    // The old passthrough: each side learns the other's media address.
    assert_eq!(audio_port(answer[0]), agent_mp, "{}", answer[0]);
    assert!(answer[0].contains("o=agent "), "{}", answer[0]);
    assert_eq!(audio_port(offer[0]), caller_mp, "{}", offer[0]);
    assert!(offer[0].contains("o=caller "), "{}", offer[0]);
}
