//! The load agents (`agent-edge-load`) against the real system: agents provisioned through
//! the admin API register over WSS with their own tokens, and SIPp callers' calls are
//! answered, then hung up by the agents, each call counted on both sides.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agent_edge_tests::load::{LoadAgents, LoadOptions};
use agent_edge_tests::{System, WAIT, caller};

#[test]
fn load_agents_take_every_call_and_hang_up() {
    let mut sys = System::start("");
    let admin = sys.edge.addr("distributor.admin");
    let agents = 10;
    let options = LoadOptions {
        agents,
        prefix: "load".into(),
        answer_after_ms: 50,
        hold_ms: 300,
    };
    let mut load = LoadAgents::start(sys.path(), sys.buffer_https, admin, &options, WAIT);
    for i in 0..agents {
        sys.edge
            .wait_line(&format!("agent-up load-{i:05} edge-1"), WAIT);
    }
    let calls = 40;
    let run = caller("bench_caller.xml", sys.path(), "callers", sys.dist_udp)
        .arg(&[
            "-m",
            &calls.to_string(),
            "-r",
            "20",
            "-l",
            &agents.to_string(),
        ])
        .run();
    run.assert_ok("callers");
    assert_eq!(run.successful, calls);
    // Every caller heard ringing, then the answer, then the agent's BYE.
    for needed in ["SIP/2.0 180 ", "SIP/2.0 200 ", "BYE "] {
        let seen = run
            .received
            .iter()
            .filter(|m| m.starts_with(needed))
            .count() as u64;
        assert!(
            seen >= calls,
            "{seen} messages `{needed}…` for {calls} calls"
        );
    }
    // The last BYE's 200 may still be on its way to its agent when SIPp ends.
    let mut report = load.report();
    let deadline = std::time::Instant::now() + WAIT;
    while report["completed"] != calls && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let more = load.report();
        for key in ["offered", "answered", "completed", "failed", "disconnected"] {
            report[key] = (report[key].as_u64().unwrap() + more[key].as_u64().unwrap()).into();
        }
    }
    assert_eq!(report["offered"], calls, "{report}");
    assert_eq!(report["answered"], calls, "{report}");
    assert_eq!(report["completed"], calls, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["disconnected"], 0, "{report}");
    // Setup includes the 50 ms the agents let it ring.
    assert!(report["setup_p50_ms"].as_f64().unwrap() >= 50.0, "{report}");
}

#[test]
fn a_wrong_admin_key_stops_the_load_agents_with_the_apis_answer() {
    let sys = System::start("");
    let mut edge = sys.edge;
    let admin = edge.addr("distributor.admin");
    std::fs::write(sys.dir.path().join("admin-key"), "not-the-key").unwrap();
    let out = std::process::Command::new(agent_edge_tests::load::binary())
        .args([
            "--sip",
            &format!("wss://127.0.0.1:{}/sip", sys.buffer_https.port()),
        ])
        .arg("--ca")
        .arg(sys.dir.path().join("certs").join("ca.pem"))
        .args(["--admin", &format!("http://{admin}")])
        .arg("--admin-key-file")
        .arg(sys.dir.path().join("admin-key"))
        .args(["--agents", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing registered, nothing reported"
    );
}
