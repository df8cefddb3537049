//! What an attacker on the network or on the host could try, and what they get: no memory
//! held for an oversized WebSocket frame, no token with a critical extension we do not know,
//! no WebSocket left open by a revoked token, an agent page that runs only its own script,
//! and a store no other user can read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_edge_tests::https::{self, closed_within, register, sip_status};
use agent_edge_tests::{System, WAIT, admin_key, http, issue_token};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// A TLS connection to the buffer server's HTTPS listener, trusting the system's own CA.
fn tls(sys: &System) -> https::Tls {
    https::tls(sys.path(), sys.buffer_https)
}

/// SIP over secure WebSocket to `/sip`, as a browser agent connects.
fn wss(sys: &System) -> https::Ws {
    https::websocket(sys.path(), sys.buffer_https, "/sip", Some("sip")).unwrap()
}

#[test]
fn an_oversized_websocket_frame_closes_the_connection_before_its_payload_arrives() {
    let sys = System::start("");
    let mut stream = tls(&sys);
    // The upgrade by hand, without any token: anyone on the network can do this much.
    let upgrade = format!(
        "GET /sip HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: sip\r\n\r\n",
        sys.buffer_https.port()
    );
    stream.write_all(upgrade.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    // A masked binary frame announcing 15 MiB, and the first 4 KiB of it.
    let announced: u64 = 15 * 1024 * 1024;
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&announced.to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend(std::iter::repeat_n(0x55, 4096));
    stream.write_all(&frame).unwrap();
    stream.flush().unwrap();

    stream
        .sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let sent = Instant::now();
    let mut buf = [0u8; 256];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            // A close frame (opcode 8), if the server says goodbye before going.
            Ok(_) if buf[0] == 0x88 => break true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false;
            }
            Err(_) => break true,
        }
    };
    assert!(
        closed,
        "the server still holds the connection {:?} after a frame header announcing {announced} bytes",
        sent.elapsed()
    );

    // A SIP message close to the limit (65,535 bytes) still goes through on a new WebSocket.
    let mut ws = wss(&sys);
    let answer = register(&mut ws, "alice", None, 60_000);
    assert_eq!(sip_status(&answer), 401, "{answer}");
}

/// The distributor's own key, and the kid and claims of a genuine token for alice.
fn genuine_parts(sys: &System) -> (EncodingKey, Option<String>, serde_json::Value) {
    let pem = std::fs::read(sys.path().join("keys").join("signing-key.pem")).unwrap();
    let key = EncodingKey::from_ec_pem(&pem).unwrap();
    let genuine = issue_token(sys.path(), "alice");
    let kid = jsonwebtoken::decode_header(&genuine).unwrap().kid;
    let payload = genuine.split('.').nth(1).unwrap();
    let claims = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
    (key, kid, claims)
}

#[test]
fn a_token_with_a_critical_extension_we_do_not_know_is_refused() {
    let sys = System::start("");
    let (key, kid, claims) = genuine_parts(&sys);
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid;
    let plain = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    header.crit = Some(vec!["exp-ext".into()]);
    header.extras.insert("exp-ext", true);
    let critical = jsonwebtoken::encode(&header, &claims, &key).unwrap();

    let mut ws = wss(&sys);
    let answer = register(&mut ws, "alice", Some(&critical), 0);
    assert_eq!(sip_status(&answer), 401, "{answer}");
    assert!(answer.contains("error=\"invalid_token\""), "{answer}");
    // The same claims, key and kid without `crit` register: only the header made the difference.
    let answer = register(&mut ws, "alice", Some(&plain), 0);
    assert_eq!(sip_status(&answer), 200, "{answer}");
}

#[test]
fn revoking_a_token_closes_every_websocket_it_registered() {
    let mut sys = System::start("");
    let key = admin_key(sys.path());
    let admin = sys.edge.addr("distributor.admin");
    let alice = r#"{"id":"alice","name":"Alice"}"#;
    assert_eq!(
        http(admin, "POST", "/agents", Some(&key), Some(alice)).0,
        201
    );
    let (code, body) = http(
        admin,
        "POST",
        "/agents/alice/tokens",
        Some(&key),
        Some(r#"{"ttl_s":600}"#),
    );
    assert_eq!(code, 200, "{body}");
    let issued: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = issued["token"].as_str().unwrap();
    let jti = issued["jti"].as_str().unwrap();

    // The same token on two WebSockets: the second takes over the binding.
    let mut first = wss(&sys);
    assert_eq!(
        sip_status(&register(&mut first, "alice", Some(token), 0)),
        200
    );
    sys.edge.wait_line("agent-up alice edge-1", WAIT);
    let mut second = wss(&sys);
    assert_eq!(
        sip_status(&register(&mut second, "alice", Some(token), 0)),
        200
    );

    agent_edge_tests::revoke(admin, &key, jti);
    sys.edge
        .wait_line("agent-down alice edge-1", Duration::from_secs(2));
    let limit = Duration::from_secs(3);
    assert!(
        closed_within(&mut second, limit),
        "the WebSocket holding the binding is still open"
    );
    assert!(
        closed_within(&mut first, limit),
        "the first WebSocket the revoked token registered is still open"
    );
}

/// One GET over HTTPS: the status line and headers (names lower-cased).
fn https_get(sys: &System, path: &str) -> (String, Vec<(String, String)>) {
    let mut stream = tls(sys);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        sys.buffer_https.port()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    // The server may end without a TLS close_notify: what arrived is the response.
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let head = text.split("\r\n\r\n").next().unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

#[test]
fn the_agent_page_is_served_with_security_headers() {
    let sys = System::start("");
    for path in ["/", "/app.js", "/style.css"] {
        let (status, headers) = https_get(&sys, path);
        assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{path}: no {name} in {headers:?}"))
        };
        let csp: Vec<&str> = get("content-security-policy")
            .split(';')
            .map(str::trim)
            .collect();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ] {
            assert!(
                csp.contains(&directive),
                "{path}: {directive} not in {csp:?}"
            );
        }
        assert!(
            !csp.iter().any(|d| d.contains("unsafe-")),
            "{path}: {csp:?}"
        );
        assert_eq!(get("strict-transport-security"), "max-age=31536000");
        assert_eq!(get("x-content-type-options"), "nosniff");
        assert_eq!(get("referrer-policy"), "no-referrer");
    }
}

#[test]
fn the_store_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = agent_edge_tests::test_dir();
    let path = agent_edge_tests::write_config(dir.path(), "", "");
    let config = agent_edge::config::Config::load(&path).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = agent_edge::app::run(config, agent_edge::app::Roles::AllInOne, async move {
        let _ = stopped.await;
    })
    .unwrap();
    let db = dir.path().join("agent-edge.db");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&db), 0o600, "{}", db.display());
    // SQLite gives its write-ahead log the database's mode.
    let wal = dir.path().join("agent-edge.db-wal");
    if wal.exists() {
        assert_eq!(mode(&wal), 0o600, "{}", wal.display());
    }
    stop.send(()).unwrap();
    running.wait();
}

#[test]
fn an_address_holding_its_limit_of_connections_gets_no_more_until_one_closes() {
    // `[limits]` after the buffer's lines: the last section of the test config.
    let mut sys = System::start_with("", "\n[limits]\nconnections_per_ip = 4");
    let public = sys.edge.addr("distributor.public");
    // On the public listener the edge's own tunnel and media connection, from the same
    // loopback address, hold two of the four places.
    sys.edge.wait_line("media-relay-up edge-1", WAIT);
    for (what, addr, free) in [
        ("buffer.https", sys.buffer_https, 4),
        ("distributor.public", public, 2),
    ] {
        // Connections past their handshake, holding their places without a request.
        let mut held: Vec<https::Tls> = (0..free)
            .map(|_| {
                let mut c = https::tls(sys.path(), addr);
                while c.conn.is_handshaking() {
                    c.conn.complete_io(&mut c.sock).unwrap();
                }
                c
            })
            .collect();
        let refused = https::get(sys.path(), addr, "/");
        assert_eq!(refused.status, 0, "{what}: a fifth connection was served");
        held.pop();
        // The server frees the place when it sees the close; the next one is served.
        let deadline = Instant::now() + WAIT;
        loop {
            if https::get(sys.path(), addr, "/").status != 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{what}: no place freed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // SIP over TCP: the fifth connection is closed at once; the four held stay open.
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(sys.dist_tcp).unwrap())
        .collect();
    let mut fifth = TcpStream::connect(sys.dist_tcp).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        server_closes(&mut fifth, Duration::from_secs(3), false),
        "distributor.tcp: a fifth connection was kept"
    );
    for mut c in held {
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        assert!(
            !server_closes(&mut c, Duration::from_millis(500), false),
            "distributor.tcp: a held connection was closed"
        );
    }
}

/// Whether the server ends `stream` within `limit` while we send nothing (or, with
/// `trickle`, one header byte every 200 ms).
fn server_closes<S: Read + Write>(stream: &mut S, limit: Duration, trickle: bool) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if trickle
            && stream
                .write_all(b"X")
                .and_then(|()| stream.flush())
                .is_err()
        {
            return true;
        }
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn peers_that_hold_a_connection_without_finishing_are_cut_at_their_deadline() {
    let deadlines = "\n[limits]\nheader_read_s = 2\nmessage_s = 2\nws_first_message_s = 2";
    let mut sys = System::start_with("", deadlines);
    let public = sys.edge.addr("distributor.public");
    let limit = Duration::from_secs(6);
    let poll = Some(Duration::from_millis(200));
    for (what, addr) in [
        ("buffer.https", sys.buffer_https),
        ("distributor.public", public),
    ] {
        // Silent after the handshake.
        let mut silent = https::tls(sys.path(), addr);
        while silent.conn.is_handshaking() {
            silent.conn.complete_io(&mut silent.sock).unwrap();
        }
        silent.sock.set_read_timeout(poll).unwrap();
        assert!(server_closes(&mut silent, limit, false), "{what}: silent");
        // Headers that never end, a byte at a time.
        let mut trickling = https::tls(sys.path(), addr);
        trickling.sock.set_read_timeout(poll).unwrap();
        trickling.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").unwrap();
        assert!(
            server_closes(&mut trickling, limit, true),
            "{what}: trickling"
        );
        // A request in time is still served.
        assert_eq!(https::get(sys.path(), addr, "/edge/edge-1/").status, 404);
    }

    // SIP over TCP: a message begun and never finished.
    let mut half = TcpStream::connect(sys.dist_tcp).unwrap();
    half.set_read_timeout(poll).unwrap();
    half.write_all(b"OPTIONS sip:support@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKhalf\r\n")
        .unwrap();
    assert!(
        server_closes(&mut half, limit, false),
        "SIP over TCP: half a message"
    );

    // A SIP WebSocket that says nothing is closed; one that registered is not.
    let mut mute = wss(&sys);
    assert!(closed_within(&mut mute, limit), "a silent SIP WebSocket");
    let token = issue_token(sys.path(), "alice");
    let mut agent = wss(&sys);
    assert_eq!(
        sip_status(&register(&mut agent, "alice", Some(&token), 0)),
        200
    );
    assert!(
        !closed_within(&mut agent, Duration::from_secs(4)),
        "an agent's WebSocket is not cut by the first-message deadline"
    );
}

#[test]
fn the_demo_link_lives_an_hour_and_only_a_system_on_loopback_prints_one() {
    let mut sys = System::start("");
    let line = sys.edge.wait_line("demo agent: https://", WAIT);
    let token = line.split("?token=").nth(1).unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!(
        (60..=3600).contains(&lifetime),
        "the demo token lives {lifetime} s: {claims}"
    );

    // The same system with one listener on every address: no link, and the line says why.
    let dir = agent_edge_tests::test_dir();
    let config = agent_edge_tests::write_config(dir.path(), "", "");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        "[buffer]\nudp = \"127.0.0.1:0\"",
        "[buffer]\nudp = \"0.0.0.0:0\"",
        1,
    );
    assert!(text.contains("udp = \"0.0.0.0:0\""), "{text}");
    std::fs::write(&config, text).unwrap();
    let mut open = agent_edge_tests::Edge::start(&[], &config, &dir.path().join("open.log"));
    let line = open.wait_line("demo agent: ", WAIT);
    assert!(line.starts_with("demo agent: none"), "{line}");
    assert!(!line.contains("token="), "{line}");
}

/// alice's state in the distributor's live view.
fn acd_state(admin: std::net::SocketAddr, key: &str) -> Option<String> {
    let (_, live) = http(admin, "GET", "/live", Some(key), None);
    let live: serde_json::Value = serde_json::from_str(&live).unwrap();
    live["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "alice")
        .map(|a| a["state"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn the_connection_an_agent_registered_on_may_set_presence_and_sign_out_without_the_token() {
    // As SIP.js does: its presence MESSAGEs and its un-REGISTER carry no token.
    let mut sys = System::start("");
    let admin = sys.edge.addr("distributor.admin");
    let key = admin_key(sys.path());
    let token = issue_token(sys.path(), "alice");
    let mut own = wss(&sys);
    assert_eq!(
        sip_status(&register(&mut own, "alice", Some(&token), 0)),
        200
    );
    sys.edge.wait_line("agent-up alice edge-1", WAIT);

    // Another connection without the token is not her.
    let mut stranger = wss(&sys);
    let answer = https::presence(&mut stranger, "alice", "away");
    assert_eq!(sip_status(&answer), 401, "{answer}");
    let answer = https::unregister(&mut stranger, "alice", None);
    assert_eq!(sip_status(&answer), 401, "{answer}");
    assert_eq!(acd_state(admin, &key).as_deref(), Some("available"));

    // Her own connection is.
    let answer = https::presence(&mut own, "alice", "away");
    assert_eq!(sip_status(&answer), 200, "{answer}");
    let deadline = Instant::now() + WAIT;
    while acd_state(admin, &key).as_deref() != Some("away") {
        assert!(Instant::now() < deadline, "alice never went away");
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = https::unregister(&mut own, "alice", None);
    assert_eq!(sip_status(&answer), 200, "{answer}");
    sys.edge.wait_line("agent-down alice edge-1", WAIT);
}

#[test]
fn a_websocket_that_talks_without_registering_is_closed_at_its_deadline() {
    let mut sys = System::start_with("", "ws_register_s = 2");
    let mut chatty = wss(&sys);
    let token = issue_token(sys.path(), "alice");
    let mut agent = wss(&sys);
    assert_eq!(
        sip_status(&register(&mut agent, "alice", Some(&token), 0)),
        200
    );
    sys.edge.wait_line("agent-up alice edge-1", WAIT);
    // OPTIONS every 300 ms, never a REGISTER: answered, then cut.
    let started = Instant::now();
    let mut n = 0;
    let cut = loop {
        let options = format!(
            "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WSS chatty.invalid;branch=z9hG4bKopt{n}\r\n\
             From: <sip:nobody@127.0.0.1>;tag=o{n}\r\nTo: <sip:127.0.0.1>\r\nCall-ID: opt-{n}\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        n += 1;
        if chatty
            .send(tokio_tungstenite::tungstenite::Message::text(options))
            .is_err()
        {
            break true;
        }
        if closed_within(&mut chatty, Duration::from_millis(300)) {
            break true;
        }
        if started.elapsed() > Duration::from_secs(8) {
            break false;
        }
    };
    assert!(
        cut,
        "a WebSocket that never registered is still open after {n} OPTIONS"
    );
    // The agent's own connection, registered, stays.
    assert_eq!(
        sip_status(&register(&mut agent, "alice", Some(&token), 0)),
        200
    );
}
