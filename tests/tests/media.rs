//! The media bridge end to end: a WebRTC agent (str0m doing ICE, DTLS and SRTP, as a
//! browser would) registered over WSS, and SIPp callers sending G.711 and DTMF from pcap
//! files through the distributor and the buffer server's bridge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use agent_edge_tests::webrtc_agent::{
    WebRtcAgent, assert_pcap_and_echo, marked_payloads, pcap_rtp_payloads,
};
use agent_edge_tests::{System, admin_key, caller, http, issue_token};

/// The tests that carry audio for seconds run one at a time: each counts every packet, and
/// two at once on a 2-core machine measure the machine, not the bridge.
static AUDIO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A system (`buffer_extra` lines in its `[buffer]` section) with agent bob signed in as a
/// WebRTC agent over WSS.
async fn bob_signed_in(buffer_extra: &'static str) -> (System, WebRtcAgent) {
    let sys = tokio::task::spawn_blocking(move || System::start_with("", buffer_extra))
        .await
        .unwrap();
    let agent = WebRtcAgent::sign_in(sys.path(), sys.buffer_https, "/sip", "bob").await;
    (sys, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_and_dtmf_cross_the_bridge_unchanged_both_ways() {
    let _one_at_a_time = AUDIO.lock().await;
    let (mut sys, mut agent) = bob_signed_in("").await;
    let admin = sys.edge.addr("distributor.admin");
    let media_port = sys.edge.addr("buffer.media");
    let key = admin_key(sys.path());
    // The caller plays a pcap of PCMA and one of DTMF, and echoes what it receives.
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let call = tokio::task::spawn_blocking(move || {
        caller("caller_pcap_audio.xml", &dir, "caller", dist)
            .arg(&["-m", "1", "-rtp_echo"])
            .run()
    });
    let invite = agent.wait_invite().await;
    assert!(invite.contains("a=ice-lite"), "a WebRTC offer: {invite}");
    assert!(invite.contains("a=fingerprint:sha-256"), "{invite}");
    assert!(
        !invite.contains("RTP/AVP "),
        "no plain RTP offered to a browser: {invite}"
    );
    let sent = marked_payloads(150);
    let media = agent.answer(&invite, sent.clone()).await;
    // Garbage on the shared media port, mid-call: dropped, and the call goes on (every
    // packet is checked below).
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..50u8 {
        junk.send_to(&[i; 100], media_port).unwrap();
        junk.send_to(b"\x80\x08 not quite rtp", media_port).unwrap();
    }
    // The live view shows the call's media as it flows.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let live = tokio::task::spawn_blocking(move || http(admin, "GET", "/live", Some(&key), None))
        .await
        .unwrap();
    let live: serde_json::Value = serde_json::from_str(&live.1).unwrap();
    let stats = &live["calls"][0]["media"];
    assert!(
        stats["from_caller"]["packets"].as_u64().unwrap() > 0,
        "{live}"
    );
    assert!(
        stats["from_agent"]["packets"].as_u64().unwrap() > 0,
        "{live}"
    );
    assert!(stats["ice_remote"].as_str().is_some(), "{live}");
    assert!(
        stats["jitter_ms"].is_null() && stats["from_caller"]["lost"] == 0,
        "{live}"
    );
    agent.wait_bye().await;
    let run = call.await.unwrap();
    run.assert_ok("the caller");
    assert!(*media.connected.lock().unwrap(), "ICE and DTLS connected");

    // Caller → agent: every pcap payload, in order, unchanged; agent → caller → (SIPp's
    // echo) → agent: what the agent sent came back unchanged.
    assert_pcap_and_echo(&media, &sent);
    let received = media.received.lock().unwrap().clone();
    // DTMF: the digit's RFC 4733 events, as telephone-event (101). The pcap repeats its end
    // packet three times with one sequence number, as RFC 4733 allows; over SRTP a repeat
    // is a replay, so the agent gets each sequence number once, the end included.
    let mut dtmf = pcap_rtp_payloads(Path::new("/usr/share/sip-tester/dtmf_2833_5.pcap"));
    dtmf.dedup_by_key(|(_, seq, _)| *seq);
    let events: Vec<&Vec<u8>> = received
        .iter()
        .filter(|(pt, _)| *pt == 101)
        .map(|(_, p)| p)
        .collect();
    let want: Vec<&Vec<u8>> = dtmf.iter().map(|(_, _, p)| p).collect();
    assert_eq!(events, want, "the digit 5, from its start to its end");
    assert!(
        events.last().is_some_and(|e| e[1] & 0x80 != 0),
        "the end bit"
    );
    drop(media);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_media_stops_is_hung_up_on_both_legs() {
    let (sys, mut agent) = bob_signed_in("media_timeout_s = 5").await;
    // Neither side sends audio: after five seconds the buffer server ends the call.
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let call = tokio::task::spawn_blocking(move || {
        caller("caller_call_wait_bye.xml", &dir, "caller", dist)
            .arg(&["-m", "1"])
            .run()
    });
    let invite = agent.wait_invite().await;
    let started = std::time::Instant::now();
    let media = agent.answer(&invite, Vec::new()).await;
    agent.wait_bye().await;
    call.await.unwrap().assert_ok("the caller got a BYE");
    assert!(
        *media.connected.lock().unwrap(),
        "the WebRTC session was up"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_bridged_calls_share_one_port_without_loss() {
    const CALLS: usize = 50;
    let _one_at_a_time = AUDIO.lock().await;
    let sys = tokio::task::spawn_blocking(|| System::start("agent_max_calls = 1"))
        .await
        .unwrap();
    let ca = sys.path().join("certs").join("ca.pem");
    let mut agents = Vec::new();
    for i in 0..CALLS {
        let (dir, name) = (sys.path().to_owned(), format!("agent{i:02}"));
        let token = tokio::task::spawn_blocking(move || issue_token(&dir, &name))
            .await
            .unwrap();
        agents.push(
            WebRtcAgent::register(sys.buffer_https, &ca, &format!("agent{i:02}"), &token).await,
        );
    }
    // The distributor knows all fifty before the calls come.
    let (dir, mut edge) = (sys.path().to_owned(), sys.edge);
    let edge = tokio::task::spawn_blocking(move || {
        for i in 0..CALLS {
            edge.wait_line(
                &format!("agent-up agent{i:02} edge-1"),
                agent_edge_tests::WAIT,
            );
        }
        edge
    })
    .await
    .unwrap();
    let dist = sys.dist_udp;
    let call = tokio::task::spawn_blocking(move || {
        caller("caller_pcap_audio.xml", &dir, "callers", dist)
            .arg(&["-m", "50", "-r", "50", "-l", "50", "-rtp_echo"])
            .run()
    });
    let mut calls = Vec::new();
    for mut agent in agents {
        calls.push(tokio::spawn(async move {
            let invite = agent.wait_invite().await;
            let media = agent.answer(&invite, marked_payloads(100)).await;
            agent.wait_bye().await;
            let received = media.received.lock().unwrap().clone();
            let sent = *media.sent.lock().unwrap();
            (received, sent)
        }));
    }
    let audio = pcap_rtp_payloads(Path::new("/usr/share/sip-tester/g711a.pcap"));
    for (i, c) in calls.into_iter().enumerate() {
        let (received, sent) = c.await.unwrap();
        let from_pcap: Vec<&Vec<u8>> = received
            .iter()
            .filter(|(pt, p)| *pt == 8 && !p.starts_with(b"AGENT-"))
            .map(|(_, p)| p)
            .collect();
        let want: Vec<&Vec<u8>> = audio.iter().map(|(_, _, p)| p).collect();
        assert_eq!(
            from_pcap, want,
            "call {i}: the caller's audio, every packet in order"
        );
        let echoed = received
            .iter()
            .filter(|(_, p)| p.starts_with(b"AGENT-"))
            .count();
        assert_eq!(
            (sent, echoed),
            (100, 100),
            "call {i}: the agent's audio, there and back"
        );
    }
    call.await.unwrap().assert_ok("fifty callers");
    drop(edge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_g711_gets_488_and_the_agent_stays_available() {
    let (mut sys, _agent) = bob_signed_in("").await;
    let admin = sys.edge.addr("distributor.admin");
    let key = admin_key(sys.path());
    // A caller offering G.729 only, expecting 488.
    let scenario = sys.path().join("caller_g729.xml");
    let text =
        std::fs::read_to_string(agent_edge_tests::scenario("caller_expect_480.xml")).unwrap();
    let text = text
        .replace("RTP/AVP 0", "RTP/AVP 18")
        .replace("rtpmap:0 PCMU/8000", "rtpmap:18 G729/8000")
        .replace("<recv response=\"480\"/>", "<recv response=\"488\"/>");
    assert!(text.contains("RTP/AVP 18") && text.contains("\"488\""));
    std::fs::write(&scenario, text).unwrap();
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    tokio::task::spawn_blocking(move || {
        caller(scenario.to_str().unwrap(), &dir, "caller", dist)
            .arg(&["-m", "1"])
            .run()
    })
    .await
    .unwrap()
    .assert_ok("488 Not Acceptable Here");
    let live = tokio::task::spawn_blocking(move || http(admin, "GET", "/live", Some(&key), None))
        .await
        .unwrap();
    let live: serde_json::Value = serde_json::from_str(&live.1).unwrap();
    assert_eq!(live["agents"][0]["state"], "available", "{live}");
}

/// g711a.pcap with every other packet moved to a second SSRC whose timestamps start half the
/// clock away: a caller mixing two streams.
fn two_stream_pcap(dir: &Path) -> std::path::PathBuf {
    let mut data = std::fs::read("/usr/share/sip-tester/g711a.pcap").unwrap();
    let (mut pos, mut n) = (24, 0);
    while pos + 16 <= data.len() {
        let caplen = u32::from_le_bytes(data[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let frame = pos + 16;
        let ihl = usize::from(data[frame + 14] & 0x0f) * 4;
        let rtp = frame + 14 + ihl + 8;
        if rtp + 12 <= frame + caplen && data[rtp] >> 6 == 2 {
            if n % 2 == 1 {
                data[rtp + 8..rtp + 12].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
                let ts = u32::from_be_bytes(data[rtp + 4..rtp + 8].try_into().unwrap());
                data[rtp + 4..rtp + 8].copy_from_slice(&ts.wrapping_add(1 << 31).to_be_bytes());
            }
            n += 1;
        }
        pos = frame + caplen;
    }
    assert!(n > 100, "{n} RTP packets in the pcap");
    let path = dir.join("two_streams.pcap");
    std::fs::write(&path, data).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_mixing_two_ssrcs_gets_a_sane_jitter_figure() {
    let _one_at_a_time = AUDIO.lock().await;
    let (mut sys, mut agent) = bob_signed_in("").await;
    let admin = sys.edge.addr("distributor.admin");
    let key = admin_key(sys.path());
    let pcap = two_stream_pcap(sys.path());
    let scenario = std::fs::read_to_string(agent_edge_tests::scenario("caller_pcap_audio.xml"))
        .unwrap()
        .replace(
            "/usr/share/sip-tester/g711a.pcap",
            &pcap.display().to_string(),
        );
    let scenario_path = sys.path().join("caller_two_streams.xml");
    std::fs::write(&scenario_path, scenario).unwrap();
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let call = tokio::task::spawn_blocking(move || {
        caller(&scenario_path.display().to_string(), &dir, "caller", dist)
            .arg(&["-m", "1"])
            .run()
    });
    let invite = agent.wait_invite().await;
    let media = agent.answer(&invite, marked_payloads(150)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let live = tokio::task::spawn_blocking(move || http(admin, "GET", "/live", Some(&key), None))
        .await
        .unwrap();
    let live: serde_json::Value = serde_json::from_str(&live.1).unwrap();
    let from_caller = &live["calls"][0]["media"]["from_caller"];
    assert!(from_caller["packets"].as_u64().unwrap() > 20, "{live}");
    // Each stream arrives every 40 ms like clockwork: jitter is a few ms at most, not the
    // distance between the two streams' clocks.
    let jitter = from_caller["jitter_ms"].as_u64().unwrap();
    assert!(jitter < 50, "jitter of {jitter} ms: {from_caller}");
    agent.wait_bye().await;
    call.await.unwrap().assert_ok("the caller");
    drop(media);
}
