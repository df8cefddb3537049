//! An edge exposed through its distributor (`[buffer] expose = "tunnel"`): the agent page and
//! SIP over WebSocket served on the distributor's public listener at `/edge/<id>/`, carried
//! over the tunnel the edge dialled. What a browser, an agent and a stranger get there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent_edge_tests::browser::Browser;
use agent_edge_tests::https::{self, closed_within, register, sip_status, websocket};
use agent_edge_tests::tunnel::{send, tunnel};
use agent_edge_tests::{System, WAIT, admin_key, http, issue_token};
use proto_tunnel::Frame;

const EXPOSED: &str = "expose = \"tunnel\"";

/// The distributor's live view.
fn live(admin: SocketAddr, key: &str) -> serde_json::Value {
    let (_, body) = http(admin, "GET", "/live", Some(key), None);
    serde_json::from_str(&body).unwrap()
}

/// Waits until the distributor serves the edge's page: the edge asks to be exposed right
/// after its tunnel is welcomed.
fn wait_exposed(sys: &System, public: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while https::get(sys.path(), public, "/edge/edge-1/").status != 200 {
        assert!(
            Instant::now() < deadline,
            "edge-1 never exposed on {public}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_page_of_an_exposed_edge_is_served_by_the_distributor_with_its_headers() {
    let mut sys = System::start_with("", EXPOSED);
    let public = sys.edge.addr("distributor.public");
    wait_exposed(&sys, public);
    let dir = sys.path().to_owned();
    for (file, media_type) in [
        ("", "text/html"),
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
    ] {
        let relayed = https::get(&dir, public, &format!("/edge/edge-1/{file}"));
        let own = https::get(&dir, sys.buffer_https, &format!("/{file}"));
        assert_eq!(relayed.status, 200, "{file}");
        assert!(
            relayed
                .header("content-type")
                .unwrap()
                .starts_with(media_type),
            "{file}: {:?}",
            relayed.headers
        );
        // The same bytes as the edge serves itself; the script is larger than one tunnel
        // frame's piece, so it came in several.
        assert_eq!(relayed.body, own.body, "{file}");
        let csp = relayed.header("content-security-policy").unwrap();
        assert!(csp.contains("script-src 'self'"), "{file}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{file}: {csp}");
        assert_eq!(relayed.header("x-content-type-options"), Some("nosniff"));
    }
    assert!(
        https::get(&dir, public, "/edge/edge-1/app.js").body.len() > 64 * 1024,
        "the bundled script spans several tunnel frames"
    );
    // Relative links need the trailing slash; a sign-in link's token is kept.
    let moved = https::get(&dir, public, "/edge/edge-1?token=abc");
    assert_eq!(moved.status, 308);
    assert_eq!(moved.header("location"), Some("/edge/edge-1/?token=abc"));
    assert_eq!(
        https::get(&dir, public, "/edge/edge-1/nothing-here").status,
        404
    );
}

#[test]
fn strangers_get_404_and_a_websocket_that_does_not_speak_sip_gets_400() {
    let mut sys = System::start_with("", EXPOSED);
    let public = sys.edge.addr("distributor.public");
    let admin = sys.edge.addr("distributor.admin");
    wait_exposed(&sys, public);
    let dir = sys.path();
    assert_eq!(https::get(dir, public, "/edge/edge-9/").status, 404);
    assert_eq!(https::get(dir, public, "/edge/edge-9/app.js").status, 404);
    assert_eq!(
        https::websocket_status(dir, public, "/edge/edge-9/sip", Some("sip")),
        404
    );
    assert_eq!(
        https::websocket_status(dir, public, "/edge/edge-1/sip", None),
        400
    );
    assert_eq!(
        https::websocket_status(dir, public, "/edge/edge-1/sip", Some("xmpp")),
        400
    );
    // Nothing of that reached the edge: no agent, no connection.
    let (_, live) = http(admin, "GET", "/live", Some(&admin_key(dir)), None);
    let live: serde_json::Value = serde_json::from_str(&live).unwrap();
    assert_eq!(live["agents"], serde_json::json!([]), "{live}");
}

#[test]
fn an_edge_that_is_not_exposed_is_not_served_by_the_distributor() {
    let mut sys = System::start("");
    let public = sys.edge.addr("distributor.public");
    let dir = sys.path();
    assert_eq!(https::get(dir, public, "/edge/edge-1/").status, 404);
    assert_eq!(
        https::websocket_status(dir, public, "/edge/edge-1/sip", Some("sip")),
        404
    );
    // Its own listener serves the page as before.
    assert_eq!(https::get(dir, sys.buffer_https, "/").status, 200);
}

#[test]
fn a_websocket_through_the_distributor_registers_with_a_token_and_revocation_closes_it() {
    let mut sys = System::start_with("", EXPOSED);
    let public = sys.edge.addr("distributor.public");
    wait_exposed(&sys, public);
    let admin = sys.edge.addr("distributor.admin");
    let key = admin_key(sys.path());
    let alice = r#"{"id":"alice","name":"Alice"}"#;
    assert_eq!(
        http(admin, "POST", "/agents", Some(&key), Some(alice)).0,
        201
    );
    let (code, body) = http(admin, "POST", "/agents/alice/tokens", Some(&key), None);
    assert_eq!(code, 200, "{body}");
    let issued: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = issued["token"].as_str().unwrap();
    let jti = issued["jti"].as_str().unwrap();

    let mut ws = websocket(sys.path(), public, "/edge/edge-1/sip", Some("sip")).unwrap();
    // The edge checks the token, as on its own listener.
    let refused = register(&mut ws, "alice", None, 0);
    assert_eq!(sip_status(&refused), 401, "{refused}");
    let answer = register(&mut ws, "alice", Some(token), 0);
    assert_eq!(sip_status(&answer), 200, "{answer}");
    sys.edge.wait_line("agent-up alice edge-1", WAIT);
    // The live view counts the virtual connection.
    let live = live(admin, &key);
    assert_eq!(live["exposed"]["edges"][0]["edge"], "edge-1", "{live}");
    assert_eq!(live["exposed"]["edges"][0]["connections"], 1, "{live}");

    agent_edge_tests::revoke(admin, &key, jti);
    sys.edge.wait_line("agent-down alice edge-1", WAIT);
    assert!(
        closed_within(&mut ws, Duration::from_secs(3)),
        "the revoked token's WebSocket through the distributor is still open"
    );
}

#[test]
fn a_websocket_message_larger_than_the_sip_limit_closes_only_that_connection() {
    let mut sys = System::start_with("", EXPOSED);
    let public = sys.edge.addr("distributor.public");
    wait_exposed(&sys, public);
    let dir = sys.path().to_owned();
    let token = issue_token(&dir, "bob");
    let mut bob = websocket(&dir, public, "/edge/edge-1/sip", Some("sip")).unwrap();
    assert_eq!(sip_status(&register(&mut bob, "bob", Some(&token), 0)), 200);
    let mut big = websocket(&dir, public, "/edge/edge-1/sip", Some("sip")).unwrap();
    big.send(tokio_tungstenite::tungstenite::Message::text(
        "x".repeat(70_000),
    ))
    .unwrap();
    assert!(closed_within(&mut big, Duration::from_secs(3)));
    // The tunnel and bob's connection carry on.
    assert_eq!(sip_status(&register(&mut bob, "bob", Some(&token), 0)), 200);
    assert_eq!(https::get(&dir, public, "/edge/edge-1/").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_page_loaded_from_the_distributor_answers_a_call_with_audio_both_ways() {
    let (sys, public) = tokio::task::spawn_blocking(|| {
        let mut sys = System::start_with("", EXPOSED);
        let public = sys.edge.addr("distributor.public");
        wait_exposed(&sys, public);
        (sys, public)
    })
    .await
    .unwrap();
    let dir = sys.path().to_owned();
    let token = tokio::task::spawn_blocking(move || issue_token(&dir, "alice"))
        .await
        .unwrap();
    let browser = Browser::start().await;
    let page = format!(
        "https://127.0.0.1:{}/edge/edge-1/?token={token}",
        public.port()
    );
    browser.client.goto(&page).await.unwrap();
    browser.wait_state("registered", "exposed-signed-in").await;
    let mut sys = sys;
    let sys = tokio::task::spawn_blocking(move || {
        sys.edge.wait_line("agent-up alice edge-1", WAIT);
        sys
    })
    .await
    .unwrap();
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let call = tokio::task::spawn_blocking(move || {
        agent_edge_tests::caller("caller_pcap_audio.xml", &dir, "caller", dist)
            .arg(&["-m", "1", "-rtp_echo"])
            .run()
    });
    browser.wait_state("ringing", "exposed-ringing").await;
    browser.click("#answer").await;
    browser.wait_state("in-call", "exposed-in-call").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stats = browser.audio_stats().await;
    let received = stats["packetsReceived"].as_u64().unwrap_or(0);
    let sent = stats["packetsSent"].as_u64().unwrap_or(0);
    assert!(sent > 100, "the page sent its microphone: {stats}");
    assert!(
        received > 200,
        "audio from the caller and the echo: {stats}"
    );
    call.await.unwrap().assert_ok("the caller hung up");
    browser.wait_state("registered", "exposed-after-call").await;
    browser.close().await;
    drop(sys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reconnects_through_the_distributor_when_the_edge_comes_back() {
    let dir = agent_edge_tests::test_dir();
    let tunnel = agent_edge_tests::free_port();
    let d = dir.path().to_owned();
    let (dist, dist_udp) =
        tokio::task::spawn_blocking(move || agent_edge_tests::start_distributor(&d, tunnel))
            .await
            .unwrap();
    let public = SocketAddr::from(([127, 0, 0, 1], tunnel));
    let start = |log: &'static str| {
        let d = dir.path().to_owned();
        tokio::task::spawn_blocking(move || {
            let mut b = agent_edge_tests::start_buffer_with(&d, tunnel, None, log, EXPOSED);
            b.wait_line("tunnel-up edge-1", WAIT);
            let deadline = Instant::now() + WAIT;
            while https::get(&d, public, "/edge/edge-1/").status != 200 {
                assert!(Instant::now() < deadline, "edge-1 never exposed");
                std::thread::sleep(Duration::from_millis(50));
            }
            b
        })
    };
    let mut buffer = start("buffer1.log").await.unwrap();
    let d = dir.path().to_owned();
    let token = tokio::task::spawn_blocking(move || issue_token(&d, "alice"))
        .await
        .unwrap();
    let page = Browser::start().await;
    let url = format!("https://127.0.0.1:{tunnel}/edge/edge-1/?token={token}");
    page.client.goto(&url).await.unwrap();
    page.wait_state("registered", "exposed-restart-registered")
        .await;

    // The edge goes away: its tunnel with it, and every page's WebSocket through it.
    buffer.kill();
    page.wait_state("connecting", "exposed-restart-reconnecting")
        .await;
    assert!(page.text("#banner").await.contains("reconnecting"));
    let buffer = start("buffer2.log").await.unwrap();
    let mut dist = dist;
    let dist = tokio::task::spawn_blocking(move || {
        // Registered at the first start, then again through the new tunnel by itself.
        dist.wait_line("agent-up alice edge-1", WAIT);
        dist.wait_line("agent-up alice edge-1", WAIT);
        dist
    })
    .await
    .unwrap();
    page.wait_state("registered", "exposed-restart-back").await;
    let d = dir.path().to_owned();
    let call = tokio::task::spawn_blocking(move || {
        agent_edge_tests::caller("caller_call_hangup.xml", &d, "after-restart", dist_udp)
            .arg(&["-m", "1"])
            .run()
    });
    page.wait_state("ringing", "exposed-restart-ringing").await;
    page.click("#answer").await;
    call.await
        .unwrap()
        .assert_ok("the call after the edge came back");
    page.close().await;
    drop((buffer, dist));
}

#[test]
fn an_edge_cannot_reach_connections_that_are_not_its_own_and_is_counted_trying() {
    let mut sys = System::start_with("", EXPOSED);
    let public = sys.edge.addr("distributor.public");
    let admin = sys.edge.addr("distributor.admin");
    wait_exposed(&sys, public);
    let dir = sys.path().to_owned();
    let key = admin_key(&dir);
    let token = issue_token(&dir, "bob");
    let mut bob = websocket(&dir, public, "/edge/edge-1/sip", Some("sip")).unwrap();
    assert_eq!(sip_status(&register(&mut bob, "bob", Some(&token), 0)), 200);

    // edge-9, exposed on a tunnel of its own, writes to connection numbers it never got
    // (edge-1's browser is connection 1 or 2 of edge-1's tunnel), and tries to open one.
    let credential = agent_edge_tests::issue_edge_token(&dir, "edge-9");
    let mut edge_9 = tunnel(&dir, public, &credential, "edge-9");
    send(&mut edge_9, &Frame::Expose);
    for conn in 0..4 {
        let data = b"SIP/2.0 200 OK\r\n\r\n".to_vec().into();
        send(&mut edge_9, &Frame::WsMessage { conn, data });
    }
    let open = Frame::WsOpen {
        conn: 1,
        peer: "192.0.2.1:5060".into(),
    };
    send(&mut edge_9, &open);
    let deadline = Instant::now() + WAIT;
    let view = loop {
        let view = live(admin, &key);
        if view["exposed"]["dropped_frames"].as_u64() >= Some(5) {
            break view;
        }
        assert!(Instant::now() < deadline, "frames not counted: {view}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let edges: Vec<&str> = view["exposed"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["edge"].as_str().unwrap())
        .collect();
    assert_eq!(edges, ["edge-1", "edge-9"], "{view}");
    assert_eq!(view["exposed"]["edges"][0]["connections"], 1, "{view}");
    // bob's connection heard nothing of it, and still works.
    assert_eq!(sip_status(&register(&mut bob, "bob", Some(&token), 0)), 200);
}
