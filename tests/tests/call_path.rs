//! The call path end to end, with real SIPp callers and agents: caller → distributor → WSS
//! tunnel → buffer server → agent, and back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use agent_edge_tests::{
    Edge, Sipp, System, WAIT, agent, caller, free_port, header_values, ports_in, register, tags,
    write_config,
};

#[test]
fn udp_agent_answers_and_caller_hangs_up() {
    System::start("").one_call("agent_answer.xml", "caller_call_hangup.xml", "udp");
}

#[test]
fn tcp_agent_answers_and_caller_hangs_up() {
    let mut sys = System::start("");
    let (port, agent) = agent("agent_answer.xml", sys.path(), "agent", 1, &["-t", "t1"]);
    register(
        &mut sys.edge,
        sys.dir.path(),
        sys.buffer_tcp,
        "alice",
        port,
        true,
    );
    caller("caller_call_hangup.xml", sys.path(), "caller", sys.dist_udp)
        .arg(&["-m", "1"])
        .run()
        .assert_ok("caller");
    agent.wait().assert_ok("agent");
}

#[test]
fn agent_hangs_up() {
    System::start("").one_call("agent_answer_hangup.xml", "caller_call_wait_bye.xml", "bye");
}

#[test]
fn tcp_caller_is_hung_up_by_the_agent_over_its_own_connection() {
    let mut sys = System::start("");
    let (port, agent) = agent("agent_answer_hangup.xml", sys.path(), "agent", 1, &[]);
    register(
        &mut sys.edge,
        sys.dir.path(),
        sys.buffer_udp,
        "alice",
        port,
        false,
    );
    // The agent's BYE reaches the caller on the TCP connection the caller opened.
    caller(
        "caller_call_wait_bye.xml",
        sys.path(),
        "caller",
        sys.dist_tcp,
    )
    .arg(&["-m", "1", "-t", "t1"])
    .run()
    .assert_ok("TCP caller");
    agent.wait().assert_ok("agent");
}

#[tokio::test]
async fn tls_caller_reaches_the_agent_and_hangs_up() {
    let mut sys = tokio::task::spawn_blocking(|| System::start(""))
        .await
        .unwrap();
    let (port, agent) = agent("agent_answer.xml", sys.path(), "agent", 1, &[]);
    let dir = sys.dir.path().to_owned();
    let buffer_udp = sys.buffer_udp;
    sys = tokio::task::spawn_blocking(move || {
        register(&mut sys.edge, &dir, buffer_udp, "alice", port, false);
        sys
    })
    .await
    .unwrap();
    // Debian's SIPp has no TLS: this caller is a few lines of SIP over tokio-rustls.
    let tls = certs::client_config(&sys.path().join("certs").join("ca.pem")).unwrap();
    let tcp = tokio::net::TcpStream::connect(sys.dist_tls).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the distributor");
    let local = "127.0.0.1:5999";
    let dist = sys.dist_tls;
    let invite = format!(
        "INVITE sip:support@{dist} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKtls1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:carol@{local}>;tag=tls-caller\r\nTo: <sip:support@{dist}>\r\n\
         Call-ID: tls-call-1\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@{local};transport=tls>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    send(&mut stream, &invite).await;
    let ok = loop {
        let resp = read_message(&mut stream).await;
        if resp.starts_with("SIP/2.0 200") {
            break resp;
        }
        assert!(resp.starts_with("SIP/2.0 1"), "unexpected answer: {resp}");
    };
    let header = |name: &str| {
        ok.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_owned())
            .unwrap()
    };
    let to = header("To:");
    let route = header("Record-Route:");
    let contact = header("Contact:");
    let target = contact
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        target.contains(&dist.to_string()),
        "the caller sees only the distributor: {contact}"
    );
    for (method, cseq, branch) in [("ACK", 1, "z9hG4bKtls2"), ("BYE", 2, "z9hG4bKtls3")] {
        let req = format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch={branch}\r\nRoute: {route}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:carol@{local}>;tag=tls-caller\r\nTo: {to}\r\n\
             Call-ID: tls-call-1\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        );
        send(&mut stream, &req).await;
    }
    let bye_ok = read_message(&mut stream).await;
    assert!(
        bye_ok.starts_with("SIP/2.0 200") && bye_ok.contains("CSeq: 2 BYE"),
        "{bye_ok}"
    );
    tokio::task::spawn_blocking(move || agent.wait().assert_ok("agent"))
        .await
        .unwrap();
}

async fn send<S: tokio::io::AsyncWrite + Unpin>(stream: &mut S, text: &str) {
    use tokio::io::AsyncWriteExt;
    stream.write_all(text.as_bytes()).await.unwrap();
}

/// One SIP message from a stream, framed by Content-Length.
async fn read_message<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        loop {
            if buf.ends_with(b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                let mut body = vec![0u8; len];
                stream.read_exact(&mut body).await.unwrap();
                return head + &String::from_utf8_lossy(&body);
            }
            stream.read_exact(&mut byte).await.unwrap();
            if buf.is_empty() && (byte[0] == b'\r' || byte[0] == b'\n') {
                continue; // keep-alive CRLFs between messages
            }
            buf.push(byte[0]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a SIP message in time")
}

#[test]
fn caller_cancels_while_agent_rings() {
    // The agent's scenario requires the CANCEL: it passes only if the CANCEL reached it, and
    // the caller's only if it got 487.
    System::start("").one_call("agent_ring_cancel.xml", "caller_cancel.xml", "cancel");
}

#[test]
fn agent_busy_with_no_other_agent_gives_the_queue_failure() {
    // The ACD does not pass an agent's 486 to the caller: it offers the call to the next
    // agent, and with none left the queue answers its no_agent_status.
    System::start("").one_call("agent_busy.xml", "caller_expect_480.xml", "busy");
}

#[test]
fn no_agent_gives_the_configured_failure() {
    let sys = System::start("");
    caller("caller_expect_480.xml", sys.path(), "caller", sys.dist_udp)
        .arg(&["-m", "1"])
        .run()
        .assert_ok("caller (480)");
}

#[test]
fn caller_that_never_acks_is_hung_up_and_frees_its_agent() {
    // T1 of 50 ms makes 64*T1 3.2 s.
    let dir = agent_edge_tests::test_dir();
    let config = write_config(dir.path(), "", "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("[sip]\nt1_ms = 50\nt2_ms = 400\n{text}")).unwrap();
    let mut edge = Edge::start(&[], &config, &dir.path().join("agent-edge.log"));
    let dist_udp = edge.addr("distributor.udp");
    let buffer_udp = edge.addr("buffer.udp");
    edge.wait_line("tunnel-up edge-1", WAIT);
    let (port, agent) = agent("agent_answer.xml", dir.path(), "agent", 2, &[]);
    register(&mut edge, dir.path(), buffer_udp, "alice", port, false);
    caller("caller_no_ack.xml", dir.path(), "silent-caller", dist_udp)
        .arg(&["-m", "1"])
        .run()
        .assert_ok("the caller who never ACKs gets a BYE");
    // With one call per agent, this call only reaches alice if the first one freed her.
    caller(
        "caller_call_hangup.xml",
        dir.path(),
        "next-caller",
        dist_udp,
    )
    .arg(&["-m", "1"])
    .run()
    .assert_ok("the next call reaches the freed agent");
    agent.wait().assert_ok("agent: both calls ended with a BYE");
}

#[test]
fn ten_percent_udp_loss_still_completes() {
    let mut sys = System::start("agent_max_calls = 10");
    // Under loss the agent behaves as a phone does: it keeps each call's state 16 s after the
    // BYE (timer J's job), so a retransmitted BYE whose 200 was lost is answered again, and it
    // takes a BYE whose ACKs were all lost (SIPp's -lost drops received messages too) instead
    // of aborting the call. The loss-free tests check that the ACK arrives.
    let lossy = sys.path().join("agent_answer_lossy.xml");
    let text = std::fs::read_to_string(agent_edge_tests::scenario("agent_answer.xml")).unwrap();
    let text = text
        .replace(
            "<timewait milliseconds=\"4000\"/>",
            "<timewait milliseconds=\"16000\"/>",
        )
        .replace(
            "<recv request=\"ACK\" rtd=\"true\" crlf=\"true\"/>",
            "<recv request=\"ACK\" rtd=\"true\" crlf=\"true\" optional=\"true\"/>",
        );
    assert!(text.contains("16000") && text.matches("optional").count() == 3);
    std::fs::write(&lossy, text).unwrap();
    let (port, agent) = agent(
        lossy.to_str().unwrap(),
        sys.path(),
        "agent",
        10,
        &["-lost", "10"],
    );
    register(
        &mut sys.edge,
        sys.dir.path(),
        sys.buffer_udp,
        "alice",
        port,
        false,
    );
    // Talk for 3 s so that a lost ACK is repeated (on the agent's retransmitted 200) before
    // the BYE comes, as it would be for a real agent.
    Sipp::new("caller_call_hangup.xml", free_port(), sys.path(), "caller")
        .to(sys.dist_udp)
        .arg(&["-s", "support", "-d", "3000"])
        .arg(&["-m", "10", "-r", "5", "-lost", "10"])
        .run()
        .assert_ok("caller with 10% loss");
    agent.wait().assert_ok("agent with 10% loss");
}

#[test]
fn hundred_calls_at_twenty_per_second() {
    let mut sys = System::start("agent_max_calls = 100");
    let (port, agent) = agent("agent_answer.xml", sys.path(), "agent", 100, &[]);
    register(
        &mut sys.edge,
        sys.dir.path(),
        sys.buffer_udp,
        "alice",
        port,
        false,
    );
    let run = caller("caller_call_hangup.xml", sys.path(), "caller", sys.dist_udp)
        .arg(&["-m", "100", "-r", "20", "-l", "50"])
        .run();
    run.assert_ok("caller");
    assert_eq!(
        (run.successful, run.failed),
        (100, 0),
        "SIPp's own statistics"
    );
    agent.wait().assert_ok("agent");
}

#[test]
fn caller_sees_only_the_distributor_and_agent_only_the_buffer() {
    let mut sys = System::start("");
    let (agent_port, agent) = agent("agent_answer.xml", sys.path(), "agent", 1, &[]);
    register(
        &mut sys.edge,
        sys.dir.path(),
        sys.buffer_udp,
        "alice",
        agent_port,
        false,
    );
    let caller_port = free_port();
    let caller_run = Sipp::new("caller_call_hangup.xml", caller_port, sys.path(), "caller")
        .to(sys.dist_udp)
        .arg(&["-s", "support", "-d", "200", "-m", "1"])
        .run();
    caller_run.assert_ok("caller");
    let agent_run = agent.wait();
    agent_run.assert_ok("agent");
    let (caller_seen, agent_seen) = (&caller_run.received, &agent_run.received);
    assert!(
        caller_seen.len() >= 3 && agent_seen.len() >= 3,
        "traces are empty"
    );

    let addressing = ["Via", "Contact", "Record-Route", "Route"];
    for name in addressing {
        for value in header_values(caller_seen, name) {
            for port in ports_in(value) {
                assert!(
                    port == sys.dist_udp.port() || port == caller_port,
                    "caller saw {name}: {value} (not the distributor's address)"
                );
            }
            assert!(!value.contains(".invalid"), "caller saw {name}: {value}");
        }
        for value in header_values(agent_seen, name) {
            for port in ports_in(value) {
                assert!(
                    port == sys.buffer_udp.port() || port == agent_port,
                    "agent saw {name}: {value} (not the buffer server's address)"
                );
            }
        }
    }
    let caller_ids = header_values(caller_seen, "Call-ID");
    let agent_ids = header_values(agent_seen, "Call-ID");
    assert!(!caller_ids.is_empty() && !agent_ids.is_empty());
    for id in &caller_ids {
        assert!(!agent_ids.contains(id), "Call-ID {id} crossed legs");
    }
    let caller_tags = tags(caller_seen);
    let agent_tags = tags(agent_seen);
    assert!(
        caller_tags.len() >= 2 && agent_tags.len() >= 2,
        "{caller_tags:?} {agent_tags:?}"
    );
    for tag in &caller_tags {
        assert!(!agent_tags.contains(tag), "tag {tag} crossed legs");
    }
    for message in agent_seen {
        assert!(
            !message.contains(&caller_port.to_string())
                && !message.contains(&sys.dist_udp.port().to_string()),
            "the agent saw the caller's or the distributor's port:\n{message}"
        );
    }
}

fn distributor(dir: &Path, tunnel_port: u16) -> (Edge, SocketAddr) {
    agent_edge_tests::start_distributor(dir, tunnel_port)
}

fn buffer(dir: &Path, tunnel_port: u16, log: &str) -> (Edge, SocketAddr) {
    let mut edge = agent_edge_tests::start_buffer(dir, tunnel_port, None, log);
    let udp = edge.addr("buffer.udp");
    (edge, udp)
}

fn one_call(dist: &mut Edge, dist_udp: SocketAddr, buffer_udp: SocketAddr, dir: &Path, name: &str) {
    let (port, agent) = agent("agent_answer.xml", dir, &format!("{name}-agent"), 1, &[]);
    register(dist, dir, buffer_udp, "alice", port, false);
    caller(
        "caller_call_hangup.xml",
        dir,
        &format!("{name}-caller"),
        dist_udp,
    )
    .arg(&["-m", "1"])
    .run()
    .assert_ok(name);
    agent.wait().assert_ok(name);
}

#[test]
fn buffer_started_before_the_distributor_dials_until_it_answers() {
    let dir = agent_edge_tests::test_dir();
    let tunnel_port = free_port();
    let (mut buffer, buffer_udp) = buffer(dir.path(), tunnel_port, "buffer.log");
    std::thread::sleep(Duration::from_millis(700)); // a few refused dials first
    let (mut dist, dist_udp) = distributor(dir.path(), tunnel_port);
    buffer.wait_line("tunnel-up edge-1", WAIT);
    one_call(&mut dist, dist_udp, buffer_udp, dir.path(), "first");
}

#[test]
fn buffer_restarted_mid_run_redials_and_agents_register_again() {
    let dir = agent_edge_tests::test_dir();
    let tunnel_port = free_port();
    let (mut dist, dist_udp) = distributor(dir.path(), tunnel_port);
    let (mut buffer1, buffer_udp) = buffer(dir.path(), tunnel_port, "buffer1.log");
    buffer1.wait_line("tunnel-up edge-1", WAIT);
    one_call(&mut dist, dist_udp, buffer_udp, dir.path(), "before");

    buffer1.kill();
    dist.wait_line("agent-down alice edge-1", WAIT);
    caller("caller_expect_480.xml", dir.path(), "while-down", dist_udp)
        .arg(&["-m", "1"])
        .run()
        .assert_ok("a call while the buffer server is down gets 480");

    let (mut buffer2, buffer_udp) = buffer(dir.path(), tunnel_port, "buffer2.log");
    buffer2.wait_line("tunnel-up edge-1", WAIT);
    one_call(&mut dist, dist_udp, buffer_udp, dir.path(), "after");
}

fn sip_request(method: &str, extra: &str, body: &str, via_port: u16) -> String {
    format!(
        "{method} sip:support@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{via_port};branch=z9hG4bK{}\r\n\
         From: <sip:tester@127.0.0.1>;tag=t1\r\nTo: <sip:support@127.0.0.1>\r\n{extra}\
         Max-Forwards: 70\r\nContent-Length: {}\r\n\r\n{body}",
        free_port(),
        body.len()
    )
}

fn call_still_works(sys: &mut System) {
    sys.one_call("agent_answer.xml", "caller_call_hangup.xml", "after");
}

#[test]
fn malformed_invite_gets_400_and_the_next_call_works() {
    let mut sys = System::start("");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    // No Call-ID.
    let bad = sip_request("INVITE", "CSeq: 1 INVITE\r\n", "", port);
    socket.send_to(bad.as_bytes(), sys.dist_udp).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = socket
        .recv_from(&mut buf)
        .expect("an answer to the malformed INVITE");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("SIP/2.0 400 "), "{answer}");
    assert!(
        answer.contains("Call-ID"),
        "the reason names the problem: {answer}"
    );
    call_still_works(&mut sys);
}

#[test]
fn oversized_message_is_refused_and_the_next_call_works() {
    use std::io::{Read, Write};
    let mut sys = System::start("");
    let mut stream = std::net::TcpStream::connect(sys.dist_tcp).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let body = "x".repeat(70_000);
    let big = sip_request(
        "INVITE",
        "Call-ID: big@test\r\nCSeq: 1 INVITE\r\n",
        &body,
        5060,
    );
    let _ = stream.write_all(big.as_bytes());
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("SIP/2.0 513 "),
        "expected 513 then close, got {answer:?}"
    );
    call_still_works(&mut sys);
}

#[tokio::test]
async fn websocket_without_subprotocol_sip_is_refused() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let mut sys = tokio::task::spawn_blocking(|| System::start(""))
        .await
        .unwrap();
    let tls = certs::client_config(&sys.path().join("certs").join("ca.pem")).unwrap();
    let url = format!("wss://127.0.0.1:{}/sip", sys.buffer_https.port());

    let refused = tokio_tungstenite::connect_async_tls_with_config(
        url.clone(),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(tls.clone())),
    )
    .await;
    let err = refused.expect_err("a client without subprotocol sip must be refused");
    assert!(err.to_string().contains("400"), "{err}");

    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "sip".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(tls)),
    )
    .await
    .expect("a client offering sip is accepted");
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "sip");

    let dir = sys.path().to_owned();
    let token = tokio::task::spawn_blocking(move || agent_edge_tests::issue_token(&dir, "bob"))
        .await
        .unwrap();
    let register = format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WSS client.invalid;branch=z9hG4bKws1\r\n\
        From: <sip:bob@127.0.0.1>;tag=w1\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: ws-reg-1\r\nCSeq: 1 REGISTER\r\n\
        Contact: <sip:bob@client.invalid;transport=ws>\r\nExpires: 600\r\nMax-Forwards: 70\r\n\
        Authorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    );
    ws.send(Message::text(register)).await.unwrap();
    let answer = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        answer.to_text().unwrap().starts_with("SIP/2.0 200 "),
        "{answer}"
    );
    let line = tokio::task::spawn_blocking(move || sys.edge.wait_line("agent-up bob edge-1", WAIT))
        .await
        .unwrap();
    assert_eq!(line, "agent-up bob edge-1");
}

#[test]
fn a_caller_that_ignores_record_route_is_routed_by_the_distributors_dialog_state() {
    // Its ACK and BYE name neither our route nor the edge: the distributor finds the edge
    // from the call's Call-ID, as trunk-facing elements do.
    System::start("").one_call(
        "agent_answer.xml",
        "caller_ignores_record_route.xml",
        "no-record-route",
    );
}
