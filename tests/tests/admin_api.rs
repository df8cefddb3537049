//! The admin API over real HTTP: authentication, agents that survive a restart, tokens issued
//! for stored agents, the public keys, and revocation reaching the buffer server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use agent_edge_tests::{Edge, System, WAIT, caller, http, test_dir, write_config};

const KEY: &str = "test-admin-key-0123456789";

fn start(dir: &std::path::Path) -> (Edge, SocketAddr) {
    let config = write_config(dir, "", "");
    let mut edge = Edge::start_with_env(
        &[],
        &config,
        &dir.join("agent-edge.log"),
        &[("AGENT_EDGE_ADMIN_KEY", KEY)],
    );
    let admin = edge.addr("distributor.admin");
    edge.wait_line("tunnel-up edge-1", WAIT);
    (edge, admin)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn the_api_needs_the_admin_key() {
    let dir = test_dir();
    let (_edge, admin) = start(dir.path());
    for key in [None, Some("wrong-key-wrong-key-wrong")] {
        let (status, body) = http(admin, "GET", "/agents", key, None);
        assert_eq!(status, 401, "{body}");
        assert_eq!(json(&body)["status"], 401, "a problem document: {body}");
    }
    let (status, _) = http(admin, "GET", "/agents", Some(KEY), None);
    assert_eq!(status, 200);
    // Public: the keys that verify tokens, and the API's description.
    let (status, body) = http(admin, "GET", "/.well-known/jwks.json", None, None);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["keys"][0]["alg"], "ES256", "{body}");
    let (status, body) = http(admin, "GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["openapi"], "3.1.0");
}

#[test]
fn agents_survive_a_distributor_restart() {
    let dir = test_dir();
    let (mut edge, admin) = start(dir.path());
    let alice = r#"{"id":"alice","name":"Alice Smith","skills":{"billing":80},"max_calls":1}"#;
    let (status, body) = http(admin, "POST", "/agents", Some(KEY), Some(alice));
    assert_eq!(status, 201, "{body}");
    let (status, _) = http(admin, "POST", "/agents", Some(KEY), Some(alice));
    assert_eq!(status, 409, "a second create is a conflict");
    let (status, body) = http(
        admin,
        "POST",
        "/agents",
        Some(KEY),
        Some(r#"{"id":"a b","name":"x"}"#),
    );
    assert_eq!(status, 422, "{body}");
    edge.kill();
    drop(edge);

    let (_edge, admin) = start(dir.path());
    let (status, body) = http(admin, "GET", "/agents/alice", Some(KEY), None);
    assert_eq!(status, 200, "{body}");
    let agent = json(&body);
    assert_eq!(agent["name"], "Alice Smith");
    assert_eq!(agent["skills"]["billing"], 80);
    let (status, _) = http(admin, "DELETE", "/agents/alice", Some(KEY), None);
    assert_eq!(status, 204);
    let (status, _) = http(admin, "GET", "/agents/alice", Some(KEY), None);
    assert_eq!(status, 404);
    let (status, _) = http(admin, "POST", "/agents/alice/tokens", Some(KEY), None);
    assert_eq!(status, 404, "no token for an agent that does not exist");
}

/// Registers over UDP with a token; returns the status.
fn register(buffer: SocketAddr, agent: &str, token: &str) -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    let msg = format!(
        "REGISTER sip:{buffer} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{port}x\r\n\
         From: <sip:{agent}@{buffer}>;tag=r{port}\r\nTo: <sip:{agent}@{buffer}>\r\n\
         Call-ID: reg-{port}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{agent}@127.0.0.1:{port}>\r\n\
         Expires: 600\r\nMax-Forwards: 70\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    );
    socket.send_to(msg.as_bytes(), buffer).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn revoking_a_token_unregisters_its_agent_within_a_second() {
    let mut sys = System::start("");
    // System::start uses a generated admin key: read it from its file.
    let key = std::fs::read_to_string(sys.path().join("admin-key")).unwrap();
    let admin = sys.edge.addr("distributor.admin");
    let alice = r#"{"id":"alice","name":"Alice","skills":{},"max_calls":1}"#;
    assert_eq!(
        http(admin, "POST", "/agents", Some(&key), Some(alice)).0,
        201
    );
    let (status, body) = http(
        admin,
        "POST",
        "/agents/alice/tokens",
        Some(&key),
        Some(r#"{"ttl_s":600}"#),
    );
    assert_eq!(status, 200, "{body}");
    let issued = json(&body);
    let token = issued["token"].as_str().unwrap().to_owned();
    let jti = issued["jti"].as_str().unwrap().to_owned();

    assert_eq!(register(sys.buffer_udp, "alice", &token), 200);
    sys.edge.wait_line("agent-up alice edge-1", WAIT);
    let (_, live) = http(admin, "GET", "/live", Some(&key), None);
    assert_eq!(json(&live)["agents"][0]["id"], "alice", "{live}");

    let revoked_at = Instant::now();
    let (status, body) = http(
        admin,
        "POST",
        "/tokens/revoke",
        Some(&key),
        Some(&format!(r#"{{"jti":"{jti}"}}"#)),
    );
    assert_eq!(status, 204, "{body}");
    sys.edge
        .wait_line("agent-down alice edge-1", Duration::from_secs(1));
    assert!(revoked_at.elapsed() < Duration::from_secs(1));

    // Offered no more calls, and the token no longer registers.
    caller("caller_expect_480.xml", sys.path(), "caller", sys.dist_udp)
        .arg(&["-m", "1"])
        .run()
        .assert_ok("no call for a revoked agent");
    assert_eq!(register(sys.buffer_udp, "alice", &token), 401);
}

#[test]
fn after_a_key_rotation_old_and_new_tokens_both_register() {
    let mut sys = System::start("");
    let key = std::fs::read_to_string(sys.path().join("admin-key")).unwrap();
    let admin = sys.edge.addr("distributor.admin");
    for id in ["alice", "bob"] {
        let agent = format!(r#"{{"id":"{id}","name":"{id}"}}"#);
        assert_eq!(
            http(admin, "POST", "/agents", Some(&key), Some(&agent)).0,
            201
        );
    }
    let token_of = |id: &str| {
        let (status, body) = http(
            admin,
            "POST",
            &format!("/agents/{id}/tokens"),
            Some(&key),
            None,
        );
        assert_eq!(status, 200, "{body}");
        json(&body)["token"].as_str().unwrap().to_owned()
    };
    let old = token_of("alice");
    let (status, body) = http(admin, "POST", "/keys/rotate", Some(&key), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["keys"].as_array().unwrap().len(), 2, "{body}");
    let new = token_of("bob");
    let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
    assert_ne!(
        kid(&old),
        kid(&new),
        "the new token is signed with the new key"
    );
    let (_, jwks) = http(admin, "GET", "/.well-known/jwks.json", None, None);
    assert_eq!(json(&jwks)["keys"].as_array().unwrap().len(), 2);

    // The edge learns the new key within a second (the Keys frame follows the rotation), and
    // still accepts the old one.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut status = register(sys.buffer_udp, "bob", &new);
    while status != 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        status = register(sys.buffer_udp, "bob", &new);
    }
    assert_eq!(
        status, 200,
        "a token signed with the new key registers within a second"
    );
    sys.edge.wait_line("agent-up bob edge-1", WAIT);
    assert_eq!(register(sys.buffer_udp, "alice", &old), 200);
    sys.edge.wait_line("agent-up alice edge-1", WAIT);
}
