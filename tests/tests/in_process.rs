//! The whole system started in-process with `app::run` on port 0, the way a library user or
//! a test embeds it, and stopped with its shutdown handle while a call is up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use agent_edge::app::status::Status;
use agent_edge::app::{self, Roles};
use agent_edge::config::Config;
use agent_edge_tests::{
    Sipp, WAIT, admin_key, agent, caller, free_port, http, issue_token, test_dir, write_config,
};

/// Waits for a status event matching `pred`; returns it.
fn wait_status(status: &Receiver<Status>, what: &str, pred: impl Fn(&Status) -> bool) -> Status {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match status.recv_timeout(left) {
            Ok(s) if pred(&s) => return s,
            Ok(_) => {}
            Err(e) => panic!("no status event for {what}: {e}"),
        }
    }
}

/// The distributor's live view of its calls, from the admin API.
fn live_calls(admin: SocketAddr, key: &str) -> Vec<serde_json::Value> {
    let (code, body) = http(admin, "GET", "/live", Some(key), None);
    assert_eq!(code, 200, "{body}");
    let live: serde_json::Value = serde_json::from_str(&body).unwrap();
    live["calls"].as_array().cloned().unwrap_or_default()
}

#[test]
fn shutdown_with_a_call_up_refuses_new_calls_ends_both_legs_and_closes_every_listener() {
    let dir = test_dir();
    let path = write_config(dir.path(), "", "");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[shutdown]\ngrace_s = 2\nbye_wait_s = 5\n");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut running = app::run(config, Roles::AllInOne, async move {
        let _ = stopped.await;
    })
    .unwrap();
    let status = running.status().unwrap();
    let (d, b) = (
        running.addrs.distributor.unwrap(),
        running.addrs.buffer.unwrap(),
    );
    for addr in [
        d.udp, d.tcp, d.tls, d.public, d.admin, b.udp, b.tcp, b.https, b.media,
    ] {
        assert_ne!(addr.port(), 0, "{addr}");
    }
    wait_status(
        &status,
        "the tunnel",
        |s| matches!(s, Status::TunnelUp { edge } if edge == "edge-1"),
    );

    // Alice on a SIPp phone answers and waits for the far end to hang up; so does the caller.
    let (port, alice) = agent("agent_answer.xml", dir.path(), "agent", 1, &[]);
    Sipp::new("agent_register.xml", free_port(), dir.path(), "register")
        .to(b.udp)
        .token_file(dir.path(), &issue_token(dir.path(), "alice"))
        .key("agent", "alice")
        .key("contact_port", &port.to_string())
        .key("contact_transport", "")
        .arg(&["-m", "1"])
        .run()
        .assert_ok("registration");
    wait_status(
        &status,
        "alice signed in",
        |s| matches!(s, Status::AgentUp { agent, .. } if agent == "alice"),
    );
    let call = caller("caller_call_wait_bye.xml", dir.path(), "caller", d.udp)
        .arg(&["-m", "1"])
        .spawn();
    let key = admin_key(dir.path());
    let deadline = Instant::now() + WAIT;
    while !live_calls(d.admin, &key)
        .iter()
        .any(|c| c["state"] == "connected")
    {
        assert!(Instant::now() < deadline, "the call was never connected");
        std::thread::sleep(Duration::from_millis(50));
    }

    stop.send(()).unwrap();
    let draining = wait_status(&status, "the drain", |s| {
        matches!(s, Status::Draining { .. })
    });
    assert_eq!(draining, Status::Draining { calls: 1 });
    // A new call while draining is refused with 503; the call in progress runs on.
    caller("caller_expect_503.xml", dir.path(), "late-caller", d.udp)
        .arg(&["-m", "1"])
        .run()
        .assert_ok("a call arriving during the drain");

    // The grace ends with the call still up: both legs get a BYE and answer it.
    running.wait();
    call.wait().assert_ok("the caller's leg");
    alice.wait().assert_ok("the agent's leg");
    assert!(status.try_iter().any(|s| s == Status::Stopped));

    // Nothing is left listening.
    for addr in [d.tcp, d.tls, d.public, d.admin, b.tcp, b.https] {
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
            "{addr} still accepts connections"
        );
    }
    for addr in [d.udp, b.udp, b.media] {
        UdpSocket::bind(addr).unwrap_or_else(|e| panic!("{addr} is still bound: {e}"));
    }
}
