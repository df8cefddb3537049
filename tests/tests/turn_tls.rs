//! TURN over TLS on the distributor's public port (issue 17), on loopback, with a TURN client
//! of the test's own and a media connection of the test's own as edge `edge-9` (a real edge
//! credential): an allocation relays only to the UDP candidate of a WebRTC session the edge
//! registered for the credential's agent, over that edge's media connection, and everything
//! else is refused with RFC 8656's codes: no credentials, a wrong password, expired
//! credentials, credentials not minted with the edge's credential, another agent's
//! credentials, a permission for an address that is no session, and a flood of allocations
//! from one address beyond `[limits] turn_allocations_per_ip`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_edge::turn::credentials;
use agent_edge_tests::tunnel::{self, Ws, next_media};
use agent_edge_tests::turn_client::TurnClient;
use agent_edge_tests::{System, WAIT, admin_key, http, issue_edge_token};
use proto_tunnel::media::{MEDIA_SUBPROTOCOL, MediaFrame, encode_media};
use tokio_tungstenite::tungstenite::Message;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn live(admin: SocketAddr, key: &str) -> serde_json::Value {
    let (_, body) = http(admin, "GET", "/live", Some(key), None);
    serde_json::from_str(&body).unwrap()
}

fn send(ws: &mut Ws, frame: &MediaFrame) {
    ws.send(Message::Binary(encode_media(frame).into()))
        .unwrap();
}

/// The next `TurnData` on the test edge's media connection.
fn next_turn_data(ws: &mut Ws) -> (SocketAddr, SocketAddr, Vec<u8>) {
    loop {
        match next_media(ws, WAIT).expect("a TURN datagram for the edge") {
            MediaFrame::TurnData {
                relayed,
                peer,
                payload,
            } => return (relayed, peer, payload),
            MediaFrame::IceTcp { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The test edge's side: `expected` arrives for `route` (relayed address, peer), and
/// `answer` goes back the same way.
async fn edge_answers(
    mut media: Ws,
    route: (SocketAddr, SocketAddr),
    expected: &'static [u8],
    answer: &'static [u8],
) -> Ws {
    tokio::task::spawn_blocking(move || {
        assert_eq!(
            next_turn_data(&mut media),
            (route.0, route.1, expected.to_vec())
        );
        let back = MediaFrame::TurnData {
            relayed: route.0,
            peer: route.1,
            payload: answer.to_vec(),
        };
        send(&mut media, &back);
        media
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_relays_only_to_the_agents_own_sessions_and_refuses_everything_else() {
    // Carol's call on edge-9: a WebRTC session whose UDP candidate is `webrtc`.
    let webrtc: SocketAddr = "127.0.0.1:40999".parse().unwrap();
    let (sys, edge9, media, public, admin, key) = tokio::task::spawn_blocking(move || {
        let mut sys = System::start_with("", "\n[limits]\nturn_allocations_per_ip = 3\n");
        let public = sys.edge.addr("distributor.public");
        let edge9 = issue_edge_token(sys.path(), "edge-9");
        let mut media =
            tunnel::media(sys.path(), public, Some(&edge9), Some(MEDIA_SUBPROTOCOL)).unwrap();
        let session = MediaFrame::IceSession {
            ufrag: "carolufrag".into(),
            open: true,
            agent: "carol".into(),
            webrtc: Some(webrtc),
        };
        send(&mut media, &session);
        let (admin, key) = (sys.edge.addr("distributor.admin"), admin_key(sys.path()));
        let registered = std::time::Instant::now() + WAIT;
        while live(admin, &key)["media_relay"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["edge"] != "edge-9" || c["ice_sessions"] != 1)
        {
            assert!(
                std::time::Instant::now() < registered,
                "the session registered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (sys, edge9, media, public, admin, key)
    })
    .await
    .unwrap();
    let mint =
        |agent: &str, expiry: u64| credentials::mint(edge9.as_bytes(), "edge-9", agent, expiry);
    let carol = mint("carol", unix_now() + 600);

    let mut c1 = TurnClient::connect(public).await.unwrap();
    assert_eq!(c1.allocate(None).await.unwrap(), Err(401), "no credentials");
    let expired = mint("carol", unix_now() - 60);
    let forged = credentials::mint(b"a guess", "edge-9", "carol", unix_now() + 600);
    let elsewhere = credentials::mint(edge9.as_bytes(), "edge-8", "carol", unix_now() + 600);
    for (username, password, why) in [
        (&carol.username, "not-the-password", "a wrong password"),
        (&expired.username, &expired.password, "expired credentials"),
        (
            &forged.username,
            &forged.password,
            "not minted with the edge's credential",
        ),
        (
            &elsewhere.username,
            &elsewhere.password,
            "for an edge that is not connected",
        ),
    ] {
        assert_eq!(
            c1.allocate(Some((username, password))).await.unwrap(),
            Err(401),
            "{why}"
        );
    }

    let relayed = c1
        .allocate(Some((&carol.username, &carol.password)))
        .await
        .unwrap()
        .expect("carol's own credentials allocate");
    assert_eq!(
        relayed.ip(),
        public.ip(),
        "relayed on the distributor's address"
    );
    for stranger in ["198.51.100.7:5000", "127.0.0.1:9", "127.0.0.1:41000"] {
        assert_eq!(
            c1.create_permission(stranger.parse().unwrap())
                .await
                .unwrap(),
            Err(403),
            "a permission for {stranger}, no session of carol's"
        );
    }
    assert_eq!(
        c1.channel_bind(0x4001, "198.51.100.7:5000".parse().unwrap())
            .await
            .unwrap(),
        Err(403),
        "a channel to an address that is no session"
    );
    c1.create_permission(webrtc)
        .await
        .unwrap()
        .expect("a permission for carol's session");

    // Both ways over the edge's media connection, first as Send and Data indications,
    // then on a channel. A datagram bigger than any media is dropped before the edge's
    // media connection, which takes nothing over 1,500 bytes.
    c1.send(webrtc, &[0x80; 4000]).await.unwrap();
    c1.send(webrtc, b"browser to edge").await.unwrap();
    let media = edge_answers(
        media,
        (relayed, webrtc),
        b"browser to edge",
        b"edge to browser",
    )
    .await;
    assert_eq!(
        c1.recv_data(WAIT).await.unwrap(),
        Some((webrtc, b"edge to browser".to_vec()))
    );
    c1.channel_bind(0x4000, webrtc)
        .await
        .unwrap()
        .expect("a channel to carol's session");
    c1.send_channel(0x4000, b"on the channel").await.unwrap();
    let mut media =
        edge_answers(media, (relayed, webrtc), b"on the channel", b"channel back").await;
    assert_eq!(
        c1.recv_data(WAIT).await.unwrap(),
        Some((webrtc, b"channel back".to_vec()))
    );

    // Dave's credentials are good, but carol's session is not his.
    let dave = mint("dave", unix_now() + 600);
    let mut c2 = TurnClient::connect(public).await.unwrap();
    c2.allocate(Some((&dave.username, &dave.password)))
        .await
        .unwrap()
        .expect("dave allocates");
    assert_eq!(
        c2.create_permission(webrtc).await.unwrap(),
        Err(403),
        "another agent's session"
    );
    assert_eq!(
        c2.channel_bind(0x4000, webrtc).await.unwrap(),
        Err(403),
        "another agent's session, on a channel"
    );

    // One address, three allocations at most: the fourth is refused.
    let mut c3 = TurnClient::connect(public).await.unwrap();
    c3.allocate(Some((&dave.username, &dave.password)))
        .await
        .unwrap()
        .expect("the third allocation");
    let mut c4 = TurnClient::connect(public).await.unwrap();
    assert_eq!(
        c4.allocate(Some((&dave.username, &dave.password)))
            .await
            .unwrap(),
        Err(486),
        "beyond turn_allocations_per_ip"
    );
    // An allocation that ends makes room.
    drop(c3);
    let room = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c5 = TurnClient::connect(public).await.unwrap();
        match c5
            .allocate(Some((&dave.username, &dave.password)))
            .await
            .unwrap()
        {
            Ok(_) => break,
            Err(486) if tokio::time::Instant::now() < room => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(code) => panic!("a freed place refused with {code}"),
        }
    }

    // The call ends: its session is no peer any more.
    media = tokio::task::spawn_blocking(move || {
        let closed = MediaFrame::IceSession {
            ufrag: "carolufrag".into(),
            open: false,
            agent: "carol".into(),
            webrtc: Some(webrtc),
        };
        send(&mut media, &closed);
        std::thread::sleep(Duration::from_millis(300));
        media
    })
    .await
    .unwrap();
    assert_eq!(
        c1.create_permission(webrtc).await.unwrap(),
        Err(403),
        "a session that ended"
    );

    let view = tokio::task::spawn_blocking(move || live(admin, &key))
        .await
        .unwrap();
    let turn = &view["turn"];
    assert!(turn["allocations"].as_u64().unwrap() >= 2, "{turn}");
    for code in ["401", "403", "486"] {
        assert!(
            turn["refused"][code].as_u64().unwrap() >= 1,
            "{code}: {turn}"
        );
    }
    assert_eq!(turn["dropped_oversized"], 1, "{turn}");
    drop(media);
    drop(sys);
}

/// The agent page forced onto TURN (`?ice=relay`) on loopback: its INVITE names the
/// distributor's TURN server with credentials for this agent, Chromium allocates there over
/// TLS, and the call has audio both ways, the bridge seeing it come over `turn-tls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_forced_onto_turn_has_audio_both_ways() {
    let mut sys = tokio::task::spawn_blocking(|| {
        let mut sys = System::start("");
        sys.edge.wait_line("media-relay-up edge-1", WAIT);
        sys
    })
    .await
    .unwrap();
    let dir = sys.path().to_owned();
    let token = tokio::task::spawn_blocking(move || agent_edge_tests::issue_token(&dir, "alice"))
        .await
        .unwrap();
    let browser = agent_edge_tests::browser::Browser::start().await;
    let page = format!(
        "https://127.0.0.1:{}/?ice=relay&token={token}",
        sys.buffer_https.port()
    );
    browser.client.goto(&page).await.unwrap();
    browser.wait_state("registered", "turn-signed-in").await;
    let _ = sys.edge.wait_line("agent-up alice edge-1", WAIT);
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let call = tokio::task::spawn_blocking(move || {
        agent_edge_tests::caller("caller_pcap_audio.xml", &dir, "turn-caller", dist)
            .arg(&["-m", "1", "-rtp_echo"])
            .run()
    });
    browser.wait_state("ringing", "turn-ringing").await;
    browser.click("#answer").await;
    browser.wait_state("in-call", "turn-in-call").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stats = browser.audio_stats().await;
    let (admin, key) = (sys.edge.addr("distributor.admin"), admin_key(sys.path()));
    let view = tokio::task::spawn_blocking(move || live(admin, &key))
        .await
        .unwrap();
    let media = &view["calls"][0]["media"];
    assert_eq!(media["ice_protocol"], "turn-tls", "{view}");
    assert_eq!(stats["path"]["candidateType"], "relay", "{stats}");
    assert_eq!(stats["path"]["relayProtocol"], "tls", "{stats}");
    let received = stats["packetsReceived"].as_u64().unwrap_or(0);
    let sent = stats["packetsSent"].as_u64().unwrap_or(0);
    assert!(sent > 100, "the page sent its microphone: {stats}");
    assert!(
        received > 150,
        "audio from the caller and the echo: {stats}"
    );
    assert!(view["turn"]["allocations"].as_u64().unwrap() >= 1, "{view}");
    call.await.unwrap().assert_ok("the caller hung up");
    browser.wait_state("registered", "turn-after-call").await;
    browser.close().await;
}
