//! Agents register with a token (RFC 8898 bearer) whose subject is the agent; everything else
//! is refused with the right status, and the agent stays unregistered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_edge_tests::{System, WAIT, caller, issue_token};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// Sends one REGISTER for `agent` over UDP and returns the response.
fn register(buffer: SocketAddr, agent: &str, authorization: Option<&str>) -> String {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let msg = format!(
        "REGISTER sip:{buffer} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{port}\r\n\
         From: <sip:{agent}@{buffer}>;tag=r{port}\r\nTo: <sip:{agent}@{buffer}>\r\n\
         Call-ID: reg-{port}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{agent}@127.0.0.1:{port}>\r\n\
         Expires: 600\r\nMax-Forwards: 70\r\n{auth}Content-Length: 0\r\n\r\n"
    );
    socket.send_to(msg.as_bytes(), buffer).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = socket
        .recv_from(&mut buf)
        .expect("an answer to the REGISTER");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn status(response: &str) -> u16 {
    response.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims like the distributor's, signed with the distributor's own key and kid.
fn forged(
    sys: &System,
    key: &EncodingKey,
    alg: Algorithm,
    edit: impl FnOnce(&mut serde_json::Value),
) -> String {
    let genuine = issue_token(sys.path(), "alice");
    let header = jsonwebtoken::decode_header(&genuine).unwrap();
    let payload = genuine.split('.').nth(1).unwrap();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
    edit(&mut claims);
    let mut h = Header::new(alg);
    h.kid = header.kid;
    jsonwebtoken::encode(&h, &claims, key).unwrap()
}

#[test]
fn only_a_valid_token_for_the_agent_registers_it() {
    let mut sys = System::start("");
    let pem = std::fs::read(sys.path().join("keys").join("signing-key.pem")).unwrap();
    let ours = EncodingKey::from_ec_pem(&pem).unwrap();
    let stranger_pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    let stranger = EncodingKey::from_ec_pem(stranger_pem.as_bytes()).unwrap();
    let valid = issue_token(sys.path(), "alice");
    let parts: Vec<&str> = valid.split('.').collect();
    let tampered = {
        let mut claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        claims["exp"] = (now() + 10 * 365 * 86400).into();
        format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(claims.to_string()),
            parts[2]
        )
    };
    let alg_none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    // The classic key confusion: HS256 "signed" with the distributor's public key.
    let public_pem = rcgen::KeyPair::from_pem(std::str::from_utf8(&pem).unwrap())
        .unwrap()
        .public_key_pem();
    let hs256 = forged(
        &sys,
        &EncodingKey::from_secret(public_pem.as_bytes()),
        Algorithm::HS256,
        |_| {},
    );
    let cases: Vec<(&str, Option<String>, u16)> = vec![
        ("no token", None, 401),
        (
            "not a bearer token",
            Some("Basic YWxpY2U6c2VjcmV0".into()),
            401,
        ),
        (
            "expired",
            Some(forged(&sys, &ours, Algorithm::ES256, |c| {
                c["exp"] = (now() - 3600).into();
            })),
            401,
        ),
        (
            "not yet valid",
            Some(forged(&sys, &ours, Algorithm::ES256, |c| {
                c["nbf"] = (now() + 3600).into();
            })),
            401,
        ),
        (
            "wrong signature",
            Some(forged(&sys, &stranger, Algorithm::ES256, |_| {})),
            401,
        ),
        ("alg none", Some(alg_none), 401),
        ("HS256 keyed with our public key", Some(hs256), 401),
        (
            "wrong audience",
            Some(forged(&sys, &ours, Algorithm::ES256, |c| {
                c["aud"] = "another-service".into();
            })),
            401,
        ),
        ("tampered payload", Some(tampered), 401),
        (
            "token of bob used for alice",
            Some(issue_token(sys.path(), "bob")),
            403,
        ),
    ];
    for (what, token, expected) in cases {
        let auth = token.map(|t| {
            if t.starts_with("Basic") {
                t
            } else {
                format!("Bearer {t}")
            }
        });
        let response = register(sys.buffer_udp, "alice", auth.as_deref());
        assert_eq!(status(&response), expected, "{what}:\n{response}");
        if expected == 401 {
            // A bad token is told why in a Bearer challenge; with no token at all, a UDP
            // client is taken for a desk phone and asked for its SIP password instead.
            let challenge = if auth.as_deref().is_some_and(|a| a.starts_with("Bearer")) {
                "WWW-Authenticate: Bearer realm=\"agent-edge\""
            } else {
                "WWW-Authenticate: Digest realm=\"agent-edge\""
            };
            assert!(
                response.contains(challenge),
                "{what}: a 401 carries {challenge}:\n{response}"
            );
        }
    }
    // Nobody got in: a call finds no agent.
    caller("caller_expect_480.xml", sys.path(), "caller", sys.dist_udp)
        .arg(&["-m", "1"])
        .run()
        .assert_ok("no agent registered after the refusals");

    let response = register(sys.buffer_udp, "alice", Some(&format!("Bearer {valid}")));
    assert_eq!(status(&response), 200, "{response}");
    sys.edge.wait_line("agent-up alice edge-1", WAIT);
}
