//! The caller media relay of an exposed edge (issue 16), on loopback: the caller's RTP goes to
//! a port of the distributor's, and crosses to the edge's bridge over the edge's media
//! WebSocket (`/media` on the public listener), both ways. A WebRTC agent (str0m, as a
//! browser) registered through the distributor's `/edge/edge-1/sip` answers SIPp callers
//! playing G.711 and DTMF from pcap files. What strangers and floods on `/media` get.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent_edge_tests::tunnel::{self, next_media};
use agent_edge_tests::webrtc_agent::{
    CallMedia, WebRtcAgent, assert_pcap_and_echo, marked_payloads,
};
use agent_edge_tests::{
    SippRun, System, WAIT, admin_key, caller, http, issue_edge_token, issue_token,
};
use proto_tunnel::media::{MEDIA_SUBPROTOCOL, MediaFrame, encode_media, encode_packet};
use tokio_tungstenite::tungstenite::{self, Message};

const EXPOSED: &str = "expose = \"tunnel\"";

/// The tests that carry audio for seconds run one at a time (see `media.rs`).
static AUDIO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The distributor's live view of the relay: one entry per media connection.
fn relay_view(admin: SocketAddr, key: &str) -> Vec<serde_json::Value> {
    let (_, body) = http(admin, "GET", "/live", Some(key), None);
    let live: serde_json::Value = serde_json::from_str(&body).unwrap();
    live["media_relay"].as_array().cloned().unwrap_or_default()
}

fn relay_of<'a>(view: &'a [serde_json::Value], edge: &str) -> &'a serde_json::Value {
    view.iter()
        .find(|c| c["edge"] == edge)
        .unwrap_or_else(|| panic!("no media connection of {edge}: {view:?}"))
}

/// An exposed edge with its media relay up, and bob signed in as a WebRTC agent through
/// the distributor's public listener.
async fn bob_exposed() -> (System, WebRtcAgent, SocketAddr) {
    let (sys, public) = tokio::task::spawn_blocking(|| {
        let mut sys = System::start_with("", EXPOSED);
        sys.edge.wait_line("media-relay-up edge-1", WAIT);
        let public = sys.edge.addr("distributor.public");
        let deadline = Instant::now() + WAIT;
        while agent_edge_tests::https::get(sys.path(), public, "/edge/edge-1/").status != 200 {
            assert!(Instant::now() < deadline, "edge-1 never exposed");
            std::thread::sleep(Duration::from_millis(50));
        }
        (sys, public)
    })
    .await
    .unwrap();
    let agent = WebRtcAgent::sign_in(sys.path(), public, "/edge/edge-1/sip", "bob").await;
    (sys, agent, public)
}

/// A caller playing the PCMA and DTMF pcaps and echoing what it receives, answered by bob.
async fn relayed_call(
    sys: &System,
    agent: &mut WebRtcAgent,
    name: &str,
) -> (
    tokio::task::JoinHandle<SippRun>,
    CallMedia,
    Vec<Vec<u8>>,
    String,
) {
    let (dir, dist, name) = (sys.path().to_owned(), sys.dist_udp, name.to_owned());
    let call = tokio::task::spawn_blocking(move || {
        caller("caller_pcap_audio.xml", &dir, &name, dist)
            .arg(&["-m", "1", "-rtp_echo"])
            .run()
    });
    let invite = agent.wait_invite().await;
    let sent = marked_payloads(150);
    let media = agent.answer(&invite, sent.clone()).await;
    (call, media, sent, invite)
}

/// The SDP port of the caller's 200 OK: where SIPp sent its RTP.
fn answered_port(run: &SippRun) -> u16 {
    let ok = run
        .received
        .iter()
        .find(|m| m.starts_with("SIP/2.0 200") && m.contains("m=audio"))
        .expect("a 200 with SDP");
    let m = ok.lines().find(|l| l.starts_with("m=audio")).unwrap();
    m.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_callers_audio_and_dtmf_cross_both_ways_through_the_distributor() {
    let _one_at_a_time = AUDIO.lock().await;
    let (mut sys, mut agent, _) = bob_exposed().await;
    let admin = sys.edge.addr("distributor.admin");
    let key = admin_key(sys.path());
    let (call, media, sent, _) = relayed_call(&sys, &mut agent, "relayed").await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || relay_view(admin, &key))
            .await
            .unwrap()
    };
    let edge = relay_of(&during, "edge-1");
    assert_eq!(edge["flows"], 1, "one call relayed: {during:?}");
    assert!(edge["packets_to_edge"].as_u64().unwrap() > 50, "{during:?}");
    assert!(
        edge["packets_from_edge"].as_u64().unwrap() > 50,
        "{during:?}"
    );

    agent.wait_bye().await;
    let run = call.await.unwrap();
    run.assert_ok("the relayed caller");
    assert_pcap_and_echo(&media, &sent);
    let port = answered_port(&run);
    assert_ne!(
        port,
        sys.edge.addr("buffer.media").port(),
        "the caller was given a relay port"
    );

    // The edge closed the flow when the call ended: the port is the distributor's no more.
    let deadline = Instant::now() + WAIT;
    loop {
        let key = key.clone();
        let after = tokio::task::spawn_blocking(move || relay_view(admin, &key))
            .await
            .unwrap();
        let edge = relay_of(&after, "edge-1").clone();
        if edge["flows"] == 0 {
            for counter in [
                "dropped_unknown_flow",
                "dropped_bad_destination",
                "dropped_malformed",
                "dropped_late",
                "refused",
            ] {
                assert_eq!(edge[counter], 0, "{counter}: {after:?}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "the flow stayed open: {after:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok(),
        "the relay port {port} was released"
    );
    drop(media);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_floods_on_the_relay_are_refused_or_dropped_and_the_call_keeps_its_audio() {
    let _one_at_a_time = AUDIO.lock().await;
    let (mut sys, mut agent, public) = bob_exposed().await;
    let admin = sys.edge.addr("distributor.admin");
    let key = admin_key(sys.path());
    let dir = sys.path().to_owned();

    let (call, media, sent, _) = relayed_call(&sys, &mut agent, "flooded").await;
    // Mid-call, refused before any upgrade: the relay without a credential, with an agent's
    // token, without its subprotocol; an edge that is not exposed; an agent WebSocket
    // without the `sip` subprotocol.
    let status = |e: tungstenite::Error| match e {
        tungstenite::Error::Http(r) => r.status().as_u16(),
        e => panic!("{e}"),
    };
    let (stranger, agent_token, edge9) = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let none = tunnel::media(&dir, public, None, Some(MEDIA_SUBPROTOCOL)).unwrap_err();
            (
                status(none),
                issue_token(&dir, "mallory"),
                issue_edge_token(&dir, "edge-9"),
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(stranger, 401);
    let (as_agent, no_protocol, mut rogue) = {
        let (dir, edge9) = (dir.clone(), edge9.clone());
        tokio::task::spawn_blocking(move || {
            let as_agent = tunnel::media(&dir, public, Some(&agent_token), Some(MEDIA_SUBPROTOCOL))
                .unwrap_err();
            let no_protocol = tunnel::media(&dir, public, Some(&edge9), None).unwrap_err();
            let https = agent_edge_tests::https::get(&dir, public, "/edge/edge-7/");
            assert_eq!(https.status, 404, "an edge id that is not exposed");
            let no_sip =
                agent_edge_tests::https::websocket_status(&dir, public, "/edge/edge-1/sip", None);
            assert_eq!(
                no_sip, 400,
                "an agent WebSocket without the sip subprotocol"
            );
            let rogue = tunnel::media(&dir, public, Some(&edge9), Some(MEDIA_SUBPROTOCOL)).unwrap();
            (status(as_agent), status(no_protocol), rogue)
        })
        .await
        .unwrap()
    };
    assert_eq!((as_agent, no_protocol), (401, 400));

    // Then edge-9 (a valid edge credential, another edge) aims at edge-1's flows:
    // packets for flow numbers it never opened, a flood of them, frames only the distributor
    // sends, bytes that are no frame; and, on a flow of its own, a packet to an address
    // that flow never heard from (the relay is no reflector).
    let rogue = tokio::task::spawn_blocking(move || {
        let target = SocketAddr::from(([127, 0, 0, 1], 9));
        for i in 0..5000u64 {
            let packet = encode_packet(i % 64, target, i, &[0x80; 172]);
            rogue.send(Message::Binary(packet.into())).unwrap();
        }
        let opened = MediaFrame::Opened {
            flow: 1,
            public: target,
        };
        rogue
            .send(Message::Binary(encode_media(&opened).into()))
            .unwrap();
        rogue
            .send(Message::Binary(vec![0xee, 1, 2, 3].into()))
            .unwrap();
        let open = MediaFrame::Open {
            flow: 1_000_000,
            remote: None,
        };
        rogue
            .send(Message::Binary(encode_media(&open).into()))
            .unwrap();
        // The distributor's first word on any media connection is where agents reach it
        // for ICE-TCP; then the answer.
        let first = next_media(&mut rogue, WAIT).expect("the ICE-TCP address");
        assert!(
            matches!(first, MediaFrame::IceTcp { addr: Some(_) }),
            "{first:?}"
        );
        let answer = next_media(&mut rogue, WAIT).expect("an answer to Open");
        assert!(
            matches!(
                answer,
                MediaFrame::Opened {
                    flow: 1_000_000,
                    ..
                }
            ),
            "{answer:?}"
        );
        let packet = encode_packet(1_000_000, target, 1, &[0x80; 172]);
        rogue.send(Message::Binary(packet.into())).unwrap();
        rogue
    });
    let rogue = rogue.await.unwrap();

    agent.wait_bye().await;
    call.await.unwrap().assert_ok("the caller during the flood");
    assert_pcap_and_echo(&media, &sent);

    let view = tokio::task::spawn_blocking(move || relay_view(admin, &key))
        .await
        .unwrap();
    let r = relay_of(&view, "edge-9");
    assert_eq!(r["dropped_unknown_flow"], 5000, "{view:?}");
    assert_eq!(
        r["dropped_malformed"], 2,
        "the Opened and the junk: {view:?}"
    );
    assert_eq!(r["dropped_bad_destination"], 1, "{view:?}");
    assert_eq!(
        r["packets_from_edge"], 0,
        "nothing of edge-9's was sent: {view:?}"
    );
    let own = relay_of(&view, "edge-1");
    assert_eq!(own["dropped_unknown_flow"], 0, "{view:?}");
    drop((rogue, media));
}
