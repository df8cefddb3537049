//! `uri` and `message` hand-offs to a buffer server reached over plain SIP (UDP and TCP), with
//! no tunnel: the edge registers its agents with the distributor using its own credential
//! and verifies agent tokens with the distributor's published keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use agent_edge_tests::{
    Edge, WAIT, agent, caller, http, issue_edge_token, register, test_dir, write_config,
};

const KEY: &str = "plain-sip-admin-key-0123456789";

/// One call through a distributor and a tunnel-less buffer server, in their own processes.
fn one_call(dir: &Path, mode: &str, transport: &str, agent_scenario: &str, caller_scenario: &str) {
    let config = write_config(dir, "", "");
    let mut dist = Edge::start_with_env(
        &["distributor"],
        &config,
        &dir.join("distributor.log"),
        &[("AGENT_EDGE_ADMIN_KEY", KEY)],
    );
    let dist_udp = dist.addr("distributor.udp");
    let dist_tcp = dist.addr("distributor.tcp");
    let admin = dist.addr("distributor.admin");
    // The keys, as an operator fetches them for an edge that has no tunnel to learn them by.
    let (status, jwks) = http(admin, "GET", "/.well-known/jwks.json", None, None);
    assert_eq!(status, 200);
    std::fs::write(dir.join("jwks.json"), jwks).unwrap();
    let link = match transport {
        "udp" => format!("udp:{dist_udp}"),
        _ => format!("tcp:{dist_tcp}"),
    };
    let buffer_config = write_config(
        dir,
        "",
        &format!(
            "handoff = \"{mode}\"\ndistributor_sip = \"{link}\"\nkeys_file = \"{}\"",
            dir.join("jwks.json").display()
        ),
    );
    let token = issue_edge_token(dir, "edge-1");
    let mut buffer = Edge::start_with_env(
        &["buffer"],
        &buffer_config,
        &dir.join("buffer.log"),
        &[("AGENT_EDGE_EDGE_TOKEN", &token)],
    );
    let buffer_udp = buffer.addr("buffer.udp");

    let (port, uas) = agent(agent_scenario, dir, "agent", 1, &[]);
    // The agent registers on the edge; the edge registers it with the distributor.
    register(&mut dist, dir, buffer_udp, "alice", port, false);
    dist.wait_line(&format!("edge-up edge-1 {mode}"), WAIT);
    caller(caller_scenario, dir, "caller", dist_udp)
        .arg(&["-m", "1"])
        .run()
        .assert_ok(&format!("{mode} over {transport}: caller"));
    uas.wait()
        .assert_ok(&format!("{mode} over {transport}: agent"));
}

fn calls(mode: &str, transport: &str) {
    for (agent_scenario, caller_scenario) in [
        ("agent_answer.xml", "caller_call_hangup.xml"),
        ("agent_answer_hangup.xml", "caller_call_wait_bye.xml"),
        ("agent_ring_cancel.xml", "caller_cancel.xml"),
    ] {
        let dir = test_dir();
        one_call(dir.path(), mode, transport, agent_scenario, caller_scenario);
    }
}

#[test]
fn uri_handoff_over_udp() {
    calls("uri", "udp");
}

#[test]
fn uri_handoff_over_tcp() {
    calls("uri", "tcp");
}

#[test]
fn message_handoff_over_udp() {
    calls("message", "udp");
}

#[test]
fn message_handoff_over_tcp() {
    calls("message", "tcp");
}

/// Reads responses on `socket` until a final one; returns its status line.
fn final_response(socket: &std::net::UdpSocket) -> String {
    let mut buf = [0u8; 8192];
    loop {
        let (n, _) = socket
            .recv_from(&mut buf)
            .expect("an answer from the buffer server");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let line = text.lines().next().unwrap_or_default().to_owned();
        if !line.starts_with("SIP/2.0 1") {
            return line;
        }
    }
}

/// The test plays the distributor: the buffer server takes hand-offs from its address only.
#[test]
fn bad_handoffs_are_refused_with_their_status() {
    for mode in ["message", "uri"] {
        let dir = test_dir();
        let fake = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        fake.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let fake_addr = fake.local_addr().unwrap();
        std::fs::write(dir.path().join("jwks.json"), r#"{"keys":[]}"#).unwrap();
        let config = write_config(
            dir.path(),
            "",
            &format!(
                "handoff = \"{mode}\"\ndistributor_sip = \"udp:{fake_addr}\"\nkeys_file = \"{}\"",
                dir.path().join("jwks.json").display()
            ),
        );
        let mut buffer = Edge::start_with_env(
            &["buffer"],
            &config,
            &dir.path().join("buffer.log"),
            &[("AGENT_EDGE_EDGE_TOKEN", "unused-by-this-test")],
        );
        let buffer_udp = buffer.addr("buffer.udp");
        let request = |method: &str, uri: &str, call_id: &str, content_type: &str, body: &str| {
            format!(
                "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {fake_addr};branch=z9hG4bK{call_id}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:dist@{fake_addr}>;tag=d\r\nTo: <{uri}>\r\n\
                 Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nContact: <sip:dist@{fake_addr}>\r\n\
                 Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let exchange = |msg: String| {
            fake.send_to(msg.as_bytes(), buffer_udp).unwrap();
            final_response(&fake)
        };
        if mode == "message" {
            let not_sip = request(
                "MESSAGE",
                &format!("sip:alice@{buffer_udp}"),
                "ae-wrap-1",
                "message/sip",
                "this is not a SIP message",
            );
            let status = exchange(not_sip);
            assert!(status.starts_with("SIP/2.0 400 "), "{status}");
            let text = request(
                "MESSAGE",
                &format!("sip:alice@{buffer_udp}"),
                "ae-wrap-2",
                "text/plain",
                "hello",
            );
            let status = exchange(text);
            assert!(status.starts_with("SIP/2.0 415 "), "{status}");
        } else {
            let unknown = request(
                "INVITE",
                &format!("sip:{buffer_udp};agent=nobody"),
                "uri-1",
                "application/sdp",
                "v=0\r\n",
            );
            let status = exchange(unknown);
            assert!(status.starts_with("SIP/2.0 404 "), "{status}");
        }
    }
}
