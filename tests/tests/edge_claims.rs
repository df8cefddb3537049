//! An edge speaks only for the agents it proved with their own tokens. With alice registered
//! on edge-1 (a WSS load agent through the real buffer server), a credential for edge-9 alone
//! cannot take her: neither an `AgentUp` frame on a tunnel of its own nor a REGISTER to the
//! distributor moves her without her valid token, and what edge-9 says about her (presence,
//! sign-out, leaving) changes nothing. A real registration on another edge does move her.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use agent_edge_tests::load::{LoadAgents, LoadOptions};
use agent_edge_tests::tunnel::{Ws, next_frame, send, tunnel};
use agent_edge_tests::{
    Edge, System, WAIT, admin_key, caller, http, issue_edge_token, issue_token, metrics_text,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proto_tunnel::Frame;

/// The agent the load agent registers (prefix `alice`, one agent).
const ALICE: &str = "alice-00000";

/// The system, alice on edge-1 answering calls, and the distributor's admin API.
fn alice_on_edge_1() -> (System, LoadAgents, SocketAddr) {
    let mut sys = System::start("");
    let admin = sys.edge.addr("distributor.admin");
    let alice = LoadAgents::start(sys.path(), sys.buffer_https, admin, &load_options(), WAIT);
    sys.edge
        .wait_line(&format!("agent-up {ALICE} edge-1"), WAIT);
    (sys, alice, admin)
}

fn load_options() -> LoadOptions {
    LoadOptions {
        agents: 1,
        prefix: "alice".into(),
        answer_after_ms: 50,
        hold_ms: 300,
    }
}

/// Every frame the distributor sends within `limit`.
fn frames_for(ws: &mut Ws, limit: Duration) -> Vec<Frame> {
    let deadline = Instant::now() + limit;
    let mut frames = Vec::new();
    while let Some(f) = next_frame(ws, deadline.saturating_duration_since(Instant::now())) {
        frames.push(f);
    }
    frames
}

/// Waits for the distributor to refuse a claim of `agent`: it tells the edge so.
fn wait_refusal(ws: &mut Ws, agent: &str, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_frame(ws, left) {
            Some(Frame::AgentDown { agent: a }) if a == agent => return,
            Some(_) => {}
            None => panic!("{what}: the claim of {agent} was not refused"),
        }
    }
}

/// Tokens naming alice that must not prove her: (what, token).
fn bad_tokens(sys: &System, admin: SocketAddr) -> Vec<(&'static str, String)> {
    let pem = std::fs::read(sys.path().join("keys").join("signing-key.pem")).unwrap();
    let ours = EncodingKey::from_ec_pem(&pem).unwrap();
    let genuine = issue_token(sys.path(), ALICE);
    let kid = jsonwebtoken::decode_header(&genuine).unwrap().kid;
    let payload = genuine.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid;

    let mut expired = claims.clone();
    let now = claims["iat"].as_u64().unwrap();
    expired["iat"] = (now - 7200).into();
    expired["nbf"] = (now - 7200).into();
    expired["exp"] = (now - 3600).into();
    let expired = jsonwebtoken::encode(&header, &expired, &ours).unwrap();

    let stranger = rcgen::KeyPair::generate().unwrap();
    let theirs = EncodingKey::from_ec_pem(stranger.serialize_pem().as_bytes()).unwrap();
    let forged = jsonwebtoken::encode(&header, &claims, &theirs).unwrap();

    // A real token of hers, revoked through the admin API.
    let key = admin_key(sys.path());
    let (code, body) = http(
        admin,
        "POST",
        &format!("/agents/{ALICE}/tokens"),
        Some(&key),
        Some(r#"{"ttl_s":600}"#),
    );
    assert_eq!(code, 200, "{body}");
    let issued: serde_json::Value = serde_json::from_str(&body).unwrap();
    let revoked = issued["token"].as_str().unwrap().to_owned();
    let jti = issued["jti"].as_str().unwrap();
    let (code, body) = http(
        admin,
        "POST",
        "/tokens/revoke",
        Some(&key),
        Some(&format!(r#"{{"jti":"{jti}"}}"#)),
    );
    assert_eq!(code, 204, "{body}");

    vec![
        ("no token", String::new()),
        ("not a token", "not.a.token".into()),
        ("forged", forged),
        ("expired", expired),
        ("revoked", revoked),
        ("another agent's", issue_token(sys.path(), "bob")),
        (
            "edge-9's own credential",
            issue_edge_token(sys.path(), "edge-9"),
        ),
    ]
}

/// Where the distributor has alice now, and her state: from the admin API's live view.
fn where_is_alice(admin: SocketAddr, dir: &Path) -> Option<(String, String)> {
    let (code, body) = http(admin, "GET", "/live", Some(&admin_key(dir)), None);
    assert_eq!(code, 200, "{body}");
    let live: serde_json::Value = serde_json::from_str(&body).unwrap();
    live["agents"].as_array().unwrap().iter().find_map(|a| {
        (a["id"] == ALICE).then(|| {
            (
                a["edge"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
            )
        })
    })
}

/// One call from a SIPp caller: it must be answered (and hung up) by the agent.
fn one_call(sys: &System, name: &str) {
    caller("bench_caller.xml", sys.path(), name, sys.dist_udp)
        .arg(&["-m", "1"])
        .run()
        .assert_ok(name);
}

/// The calls the load agents were offered and answered since their last report.
fn offered_answered(load: &mut LoadAgents) -> (u64, u64) {
    let deadline = Instant::now() + WAIT;
    let (mut offered, mut answered) = (0, 0);
    loop {
        let r = load.report();
        offered += r["offered"].as_u64().unwrap();
        answered += r["answered"].as_u64().unwrap();
        if answered >= offered && offered > 0 || Instant::now() > deadline {
            return (offered, answered);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_agent_up_frame_from_another_edge_cannot_take_an_agent() {
    let (mut sys, mut alice, admin) = alice_on_edge_1();
    let tunnel_addr = sys.edge.addr("distributor.public");
    let credential = issue_edge_token(sys.path(), "edge-9");
    let mut edge_9 = tunnel(sys.path(), tunnel_addr, &credential, "edge-9");
    sys.edge.wait_line("edge-up edge-9", WAIT);

    for (what, token) in bad_tokens(&sys, admin) {
        let claim = Frame::AgentUp {
            agent: ALICE.into(),
            token,
        };
        send(&mut edge_9, &claim);
        wait_refusal(&mut edge_9, ALICE, what);
        assert_eq!(
            where_is_alice(admin, sys.path()),
            Some(("edge-1".into(), "available".into())),
            "{what}"
        );
    }

    // edge-9 speaks for alice as if it had her; a last refused claim marks the end, since the
    // distributor takes one tunnel's frames in order.
    send(
        &mut edge_9,
        &Frame::Presence {
            agent: ALICE.into(),
            json: r#"{"state":"away","reason":"taken"}"#.into(),
        },
    );
    send(
        &mut edge_9,
        &Frame::AgentDown {
            agent: ALICE.into(),
        },
    );
    send(
        &mut edge_9,
        &Frame::AgentUp {
            agent: ALICE.into(),
            token: String::new(),
        },
    );
    wait_refusal(&mut edge_9, ALICE, "the last claim");
    // Each refusal counted by why, for the operator's dashboards.
    let (_, metrics) = metrics_text(admin, &admin_key(sys.path()), "*/*");
    for (reason, times) in [
        // The empty token twice, and "not.a.token".
        ("malformed", 3),
        ("bad-signature", 1),
        ("expired", 1),
        ("revoked", 1),
        ("another-agent", 1),
        ("wrong-audience", 1),
    ] {
        let series =
            format!("agent_edge_agent_claims_refused_total{{reason=\"{reason}\"}} {times}");
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
    }
    assert!(
        metrics.contains(r#"agent_edge_agents_signed_in{edge="edge-1"} 1"#),
        "{metrics}"
    );
    assert_eq!(
        where_is_alice(admin, sys.path()),
        Some(("edge-1".into(), "available".into())),
        "after edge-9's presence and sign-out"
    );

    // Her next call goes to edge-1 and she answers it there; edge-9 sees none of it.
    one_call(&sys, "call-while-edge-9-is-up");
    assert_eq!(offered_answered(&mut alice), (1, 1));
    let seen = frames_for(&mut edge_9, Duration::from_millis(500));
    assert!(
        !seen.iter().any(|f| matches!(f, Frame::Sip { .. })),
        "edge-9 got SIP: {seen:?}"
    );

    // edge-9 leaves (and comes back, which the distributor sees only once the old tunnel is
    // gone): alice stays signed in on edge-1 and takes calls.
    let _ = edge_9.close(None);
    drop(edge_9);
    let _again = tunnel(sys.path(), tunnel_addr, &credential, "edge-9");
    sys.edge.wait_line("edge-up edge-9", WAIT);
    assert_eq!(
        where_is_alice(admin, sys.path()),
        Some(("edge-1".into(), "available".into())),
        "after edge-9 left"
    );
    one_call(&sys, "call-after-edge-9-left");
    assert_eq!(offered_answered(&mut alice), (1, 1));
}

/// A REGISTER for `agent` to the distributor as an edge without a tunnel sends it, with the
/// edge's credential and `proof` as the agent's token; returns the final status.
fn link_register(
    socket: &UdpSocket,
    to: SocketAddr,
    credential: &str,
    proof: Option<&str>,
    expires: u32,
    n: u32,
) -> u16 {
    let me = socket.local_addr().unwrap();
    let proof = proof
        .map(|t| format!("X-AE-Agent-Token: {t}\r\n"))
        .unwrap_or_default();
    let msg = format!(
        "REGISTER sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKclaim{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{ALICE}@{to}>;tag=c{n}\r\nTo: <sip:{ALICE}@{to}>\r\n\
         Call-ID: claim-{n}@edge-9\r\nCSeq: {n} REGISTER\r\n\
         Contact: <sip:{ALICE}@{me};ae-handoff=uri>\r\nExpires: {expires}\r\n\
         Authorization: Bearer {credential}\r\n{proof}Content-Length: 0\r\n\r\n"
    );
    socket.send_to(msg.as_bytes(), to).unwrap();
    let mut buf = [0u8; 8192];
    loop {
        let (len, _) = socket
            .recv_from(&mut buf)
            .expect("no answer to the REGISTER");
        let text = String::from_utf8_lossy(&buf[..len]);
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if text.starts_with("SIP/2.0 ") && status >= 200 {
            return status;
        }
    }
}

#[test]
fn a_register_with_an_edge_credential_cannot_take_an_agent() {
    let (sys, mut alice, admin) = alice_on_edge_1();
    let credential = issue_edge_token(sys.path(), "edge-9");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut n = 0;
    let mut tokens: Vec<(&str, Option<String>)> = vec![("no token header", None)];
    tokens.extend(
        bad_tokens(&sys, admin)
            .into_iter()
            .map(|(w, t)| (w, Some(t))),
    );
    for (what, token) in &tokens {
        n += 1;
        let status = link_register(&socket, sys.dist_udp, &credential, token.as_deref(), 600, n);
        assert_eq!(status, 403, "{what}");
        assert_eq!(
            where_is_alice(admin, sys.path()),
            Some(("edge-1".into(), "available".into())),
            "{what}"
        );
    }
    // Un-registering her is not edge-9's to do either.
    n += 1;
    link_register(&socket, sys.dist_udp, &credential, None, 0, n);
    assert_eq!(
        where_is_alice(admin, sys.path()),
        Some(("edge-1".into(), "available".into())),
        "after edge-9's un-REGISTER"
    );

    // Her call goes to edge-1 and is answered there; nothing reaches edge-9's address.
    one_call(&sys, "call-after-registers");
    assert_eq!(offered_answered(&mut alice), (1, 1));
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 8192];
    if let Ok((len, _)) = socket.recv_from(&mut buf) {
        panic!(
            "edge-9's address got {}",
            String::from_utf8_lossy(&buf[..len])
        );
    }
}

#[test]
fn a_real_registration_on_another_edge_moves_her_calls_there() {
    let (mut sys, mut on_edge_1, admin) = alice_on_edge_1();
    let tunnel_addr = sys.edge.addr("distributor.public");
    // edge-2: its own buffer server process, dialling the same distributor with its own
    // credential.
    let config = std::fs::read_to_string(sys.path().join("agent-edge.toml"))
        .unwrap()
        .replace("[buffer]\n", "[buffer]\nid = \"edge-2\"\n");
    let edge_2_config = sys.path().join("edge-2.toml");
    std::fs::write(&edge_2_config, config).unwrap();
    let credential = issue_edge_token(sys.path(), "edge-2");
    let mut edge_2 = Edge::start_with_env(
        &[
            "buffer",
            "--connect",
            &format!("wss://{tunnel_addr}/tunnel"),
        ],
        &edge_2_config,
        &sys.path().join("edge-2.log"),
        &[("AGENT_EDGE_EDGE_TOKEN", &credential)],
    );
    let edge_2_https = edge_2.addr("buffer.https");
    edge_2.wait_line("tunnel-up edge-2", WAIT);

    // alice signs in on edge-2 with a token of her own (the load agent gets a new one).
    let mut on_edge_2 = LoadAgents::start(sys.path(), edge_2_https, admin, &load_options(), WAIT);
    sys.edge
        .wait_line(&format!("agent-up {ALICE} edge-2"), WAIT);
    // edge-1 is told: the distributor says she left it, and it drops her binding.
    sys.edge
        .wait_line(&format!("agent-down {ALICE} edge-1"), WAIT);
    assert_eq!(
        where_is_alice(admin, sys.path()),
        Some(("edge-2".into(), "available".into()))
    );
    let deadline = Instant::now() + WAIT;
    let log = sys.path().join("agent-edge.log");
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("binding dropped")
    {
        assert!(Instant::now() < deadline, "edge-1 kept alice's binding");
        std::thread::sleep(Duration::from_millis(100));
    }

    one_call(&sys, "call-after-move");
    assert_eq!(offered_answered(&mut on_edge_2), (1, 1));
    let edge_1 = on_edge_1.report();
    assert_eq!(edge_1["offered"], 0, "{edge_1}");
}
