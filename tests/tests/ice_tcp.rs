//! Agents' WebRTC over ICE-TCP through the distributor (issue 17), on loopback: the bridge
//! offers a passive TCP candidate on the distributor's public port beside its UDP one, and a
//! WebRTC agent (str0m) that answers with only an active TCP candidate connects there; the
//! distributor passes the connection, by the ICE username fragment of its first STUN
//! message, over the edge's media connection to the bridge. What else arrives on the public
//! port that is not TLS is closed and counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use agent_edge_tests::webrtc_agent::{IcePath, WebRtcAgent, assert_pcap_and_echo, marked_payloads};
use agent_edge_tests::{System, WAIT, admin_key, caller, http};

fn live(admin: SocketAddr, key: &str) -> serde_json::Value {
    let (_, body) = http(admin, "GET", "/live", Some(key), None);
    serde_json::from_str(&body).unwrap()
}

/// A system whose edge has its media connection up, and bob signed in on the edge's own
/// listener as a WebRTC agent.
async fn bob_signed_in() -> (System, WebRtcAgent) {
    let sys = tokio::task::spawn_blocking(|| {
        let mut sys = System::start("");
        sys.edge.wait_line("media-relay-up edge-1", WAIT);
        sys
    })
    .await
    .unwrap();
    let agent = WebRtcAgent::sign_in(sys.path(), sys.buffer_https, "/sip", "bob").await;
    (sys, agent)
}

/// Whether the distributor closed `stream` (read returns 0 or fails) within `limit`.
fn closed(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    matches!(stream.read(&mut [0u8; 64]), Ok(0) | Err(_))
        && stream.read(&mut [0u8; 64]).map_or(true, |n| n == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_ice_tcp_through_the_distributor_has_audio_both_ways() {
    let (mut sys, mut agent) = bob_signed_in().await;
    let admin = sys.edge.addr("distributor.admin");
    let public = sys.edge.addr("distributor.public");
    let key = admin_key(sys.path());
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let call = tokio::task::spawn_blocking(move || {
        caller("caller_pcap_audio.xml", &dir, "tcp-caller", dist)
            .arg(&["-m", "1", "-rtp_echo"])
            .run()
    });
    let invite = agent.wait_invite().await;
    let passive = format!("{} {} typ host tcptype passive", public.ip(), public.port());
    assert!(
        invite.contains(&passive),
        "the offer has the distributor's passive TCP candidate: {invite}"
    );
    assert!(
        invite
            .lines()
            .any(|l| l.contains(" udp ") || l.contains(" UDP ")),
        "and keeps its UDP one: {invite}"
    );
    let sent = marked_payloads(150);
    let media = agent.answer_over(&invite, sent.clone(), IcePath::Tcp).await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || live(admin, &key))
            .await
            .unwrap()
    };
    let stats = &during["calls"][0]["media"];
    assert_eq!(stats["ice_protocol"], "tcp", "{during}");
    assert!(stats["ice_connected_ms"].as_u64().is_some(), "{during}");
    assert_eq!(
        stats["ice_remote"]
            .as_str()
            .map(|a| a.starts_with("127.0.0.1:")),
        Some(true),
        "{during}"
    );
    let relay = &during["media_relay"][0];
    assert_eq!(relay["ice_sessions"], 1, "{during}");
    assert_eq!(relay["ice_tcp_connections"], 1, "{during}");
    assert_eq!(during["ice_tcp"]["passed"], 1, "{during}");

    agent.wait_bye().await;
    call.await
        .unwrap()
        .assert_ok("the caller of an ICE-TCP agent");
    // Every pcap packet and the digit reached the agent over TCP, and each packet it sent over
    // TCP came back through the caller's echo.
    assert_pcap_and_echo(&media, &sent);

    // The call is over: its session is no longer registered, its connection gone.
    let deadline = Instant::now() + WAIT;
    loop {
        let key = key.clone();
        let after = tokio::task::spawn_blocking(move || live(admin, &key))
            .await
            .unwrap();
        let relay = &after["media_relay"][0];
        if relay["ice_sessions"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still registered: {after}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(media);
}

/// An RFC 4571-framed STUN Binding request whose USERNAME is `username`.
fn framed_binding(username: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&0x0006u16.to_be_bytes());
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    attrs.resize(attrs.len().div_ceil(4) * 4, 0);
    let mut stun = vec![0x00, 0x01];
    stun.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    stun.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    stun.extend_from_slice(&[9; 12]);
    stun.extend_from_slice(&attrs);
    let mut framed = (stun.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&stun);
    framed
}

#[test]
fn what_is_neither_tls_nor_ice_tcp_for_a_known_session_is_closed_and_counted() {
    let mut sys = System::start("");
    sys.edge.wait_line("media-relay-up edge-1", WAIT);
    let public = sys.edge.addr("distributor.public");
    let admin = sys.edge.addr("distributor.admin");
    let key = admin_key(sys.path());
    let tries: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0x00, 0x00],
        &[0xff, 0xff, 1, 2, 3],
        &framed_binding("nosuchsession:agent"),
    ];
    for bytes in tries {
        let mut stream = TcpStream::connect(public).unwrap();
        stream.write_all(bytes).unwrap();
        assert!(
            closed(&mut stream, Duration::from_secs(5)),
            "{bytes:?} was not closed"
        );
    }
    let view = live(admin, &key);
    assert_eq!(view["ice_tcp"]["refused"], 4, "{view}");
    assert_eq!(view["ice_tcp"]["passed"], 0, "{view}");
    // TLS on the same port is untouched.
    let page = agent_edge_tests::https::get(sys.path(), public, "/edge/nosuch/");
    assert_eq!(page.status, 404);
}
