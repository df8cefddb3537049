//! The Prometheus metrics (issue 18), scraped by a real Prometheus (Debian's package, started
//! here on its own port and data directory) from the admin API's `/metrics` with the admin
//! key as bearer token, while SIPp makes calls that are answered, abandoned in the queue and
//! timed out; the counts (and the SIP, post-dial delay and tunnel figures) are read back
//! through Prometheus's query API. `promtool check metrics` reads the exposition, and
//! `/metrics` without the key is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_edge_tests::{System, admin_key, agent, caller, free_port, http, metrics_text, register};

/// A Prometheus of the test's own, ended (by its id) when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target`'s `/metrics` every second with `key`.
    fn start(target: SocketAddr, key: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: agent-edge\n    authorization:\n      type: Bearer\n      \
                 credentials: {key}\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus is not installed: scripts/test.sh installs it");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The value of an instant query that returns one number (none while it returns none).
    fn value(&self, query: &str) -> Option<f64> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        // Not listening yet while it starts.
        std::net::TcpStream::connect(self.addr).ok()?;
        let path = format!("/api/v1/query?query={encoded}");
        let (200, body) = http(self.addr, "GET", &path, None, None) else {
            return None;
        };
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = json["data"]["result"].as_array()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `query` reads `want`; what it read last when it never does.
    fn wait_for(&self, query: &str, want: f64) -> Result<(), Option<f64>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.value(query);
            if got == Some(want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(got);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const QUEUE: &str =
    "\n[[distributor.queues]]\nname = \"default\"\nmax_wait_s = 2\ntimeout_status = 503\n";

#[test]
fn prometheus_scrapes_the_calls_sipp_made() {
    let mut sys = System::start(QUEUE);
    let key = admin_key(sys.path());
    let admin = sys.edge.addr("distributor.admin");

    let (status, body) = http(admin, "GET", "/metrics", None, None);
    assert_eq!(status, 401, "/metrics without the admin key: {body}");
    let (status, _) = http(admin, "GET", "/metrics", Some("not-the-key"), None);
    assert_eq!(status, 401, "/metrics with a wrong key");

    let prometheus = Prometheus::start(admin, &key);
    prometheus
        .wait_for(r#"up{job="agent-edge"}"#, 1.0)
        .expect("Prometheus scrapes the distributor with the admin key");

    // Alice answers two calls; then, away, a caller gives up in the queue and another
    // waits out the queue's 2 s.
    let (port, alice) = agent("agent_answer.xml", sys.path(), "alice", 2, &[]);
    let (udp, dir) = (sys.buffer_udp, sys.path().to_owned());
    register(&mut sys.edge, &dir, udp, "alice", port, false);
    prometheus
        .wait_for(r#"agent_edge_agents{state="available"}"#, 1.0)
        .expect("one agent available");
    caller(
        "caller_call_hangup.xml",
        sys.path(),
        "answered",
        sys.dist_udp,
    )
    .arg(&["-m", "2"])
    .run()
    .assert_ok("two answered calls");
    alice.wait().assert_ok("alice answered both");
    let (status, text) = http(
        admin,
        "PUT",
        "/agents/alice/presence",
        Some(&key),
        Some(r#"{"state":"away","reason":"lunch"}"#),
    );
    assert_eq!(status, 204, "{text}");
    caller("caller_cancel.xml", sys.path(), "leaver", sys.dist_udp)
        .arg(&["-m", "1"])
        .run()
        .assert_ok("a caller who gives up while queued");
    caller(
        "caller_queue_timeout.xml",
        sys.path(),
        "patient",
        sys.dist_udp,
    )
    .arg(&["-m", "1"])
    .run()
    .assert_ok("a caller whose wait times out");

    for (query, want) in [
        (
            r#"sum(agent_edge_calls_queued_total{queue="default"})"#,
            4.0,
        ),
        (
            r#"sum(agent_edge_calls_ended_total{queue="default",outcome="answered"})"#,
            2.0,
        ),
        (
            r#"sum(agent_edge_calls_ended_total{outcome="abandoned",reason="caller hung up"})"#,
            1.0,
        ),
        (
            r#"sum(agent_edge_calls_ended_total{outcome="timed-out",reason="queue timeout"})"#,
            1.0,
        ),
        (
            r#"sum(agent_edge_calls_answered_in_target_total{queue="default"})"#,
            2.0,
        ),
        (
            r#"sum(agent_edge_call_wait_seconds_count{outcome="timed-out"})"#,
            1.0,
        ),
        // The timed-out call waited at least the queue's 2 s.
        (
            r#"sum(agent_edge_call_wait_seconds_bucket{outcome="timed-out",le="1.0"})"#,
            0.0,
        ),
        (r#"agent_edge_agents{state="away"}"#, 1.0),
        (r#"agent_edge_agents{state="available"}"#, 0.0),
        (r#"agent_edge_queue_waiting{queue="default"}"#, 0.0),
        (r#"agent_edge_service_level_target_seconds"#, 20.0),
        // SIP and the tunnel, as the distributor saw them (`bool` comparisons read 1 when
        // they hold).
        (
            r#"sum(agent_edge_sip_requests_total{direction="in",method="INVITE"}) >= bool 4"#,
            1.0,
        ),
        (
            r#"sum(agent_edge_sip_requests_total{direction="in",method="CANCEL"})"#,
            1.0,
        ),
        (
            r#"sum(agent_edge_sip_responses_total{direction="out",code="503"}) >= bool 1"#,
            1.0,
        ),
        (
            r#"sum(agent_edge_sip_responses_total{direction="out",code="487"}) >= bool 1"#,
            1.0,
        ),
        (r#"agent_edge_invite_to_answer_seconds_count"#, 2.0),
        (
            r#"agent_edge_invite_to_ringback_seconds_count >= bool 2"#,
            1.0,
        ),
        (r#"agent_edge_edges_connected"#, 1.0),
        (r#"agent_edge_edge_connections_total{edge="edge-1"}"#, 1.0),
        (
            r#"sum(agent_edge_tunnel_frames_total{edge="edge-1",direction="out"}) > bool 0"#,
            1.0,
        ),
    ] {
        if let Err(got) = prometheus.wait_for(query, want) {
            panic!("{query}: Prometheus read {got:?}, not {want}");
        }
    }

    // OpenMetrics for whoever asks (Prometheus did, above); the Prometheus text format
    // otherwise, which is what promtool reads.
    let (media_type, open_metrics) = metrics_text(admin, &key, "application/openmetrics-text");
    assert!(
        media_type.starts_with("application/openmetrics-text"),
        "{media_type}"
    );
    assert!(open_metrics.ends_with("# EOF\n"), "{open_metrics}");
    let (media_type, exposition) = metrics_text(admin, &key, "*/*");
    assert!(
        media_type.starts_with("text/plain; version=0.0.4"),
        "{media_type}"
    );
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool comes with Debian's prometheus package");
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
