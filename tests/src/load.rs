//! Drives `agent-edge-load` (the load agents) as a child process: starts it, waits until
//! every agent is registered, and asks it for reports on its stdin.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The load agent binary: `AGENT_EDGE_LOAD_BIN`, else beside the binary under test.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("AGENT_EDGE_LOAD_BIN") {
        return PathBuf::from(p);
    }
    let p = crate::binary().with_file_name("agent-edge-load");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p agent-edge-load` (scripts/test.sh does)",
        p.display()
    );
    p
}

/// What agents are started, and how they behave.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub agents: usize,
    pub prefix: String,
    pub answer_after_ms: u64,
    pub hold_ms: u64,
}

/// A running `agent-edge-load`; killed (by its own pid) when dropped.
#[derive(Debug)]
pub struct LoadAgents {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// How long registering every agent took, as it said.
    pub register_seconds: f64,
}

impl LoadAgents {
    /// Starts the agents on the system whose folder is `dir` (its CA and admin key), against
    /// the buffer server's HTTPS address and the admin API; returns once all are registered.
    pub fn start(
        dir: &Path,
        https: SocketAddr,
        admin: SocketAddr,
        options: &LoadOptions,
        timeout: Duration,
    ) -> LoadAgents {
        let log = std::fs::File::create(dir.join(format!("{}.log", options.prefix))).unwrap();
        let mut child = Command::new(binary())
            .arg("--sip")
            .arg(format!("wss://127.0.0.1:{}/sip", https.port()))
            .arg("--ca")
            .arg(dir.join("certs").join("ca.pem"))
            .arg("--admin")
            .arg(format!("http://{admin}"))
            .arg("--admin-key-file")
            .arg(dir.join("admin-key"))
            .args(["--agents", &options.agents.to_string()])
            .args(["--prefix", &options.prefix])
            .args(["--answer-after-ms", &options.answer_after_ms.to_string()])
            .args(["--hold-ms", &options.hold_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut me = LoadAgents {
            child,
            stdin,
            lines,
            register_seconds: 0.0,
        };
        let ready = me.line("ready ", timeout, dir, &options.prefix);
        me.register_seconds = ready
            .split("seconds=")
            .nth(1)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0.0);
        me
    }

    fn line(&mut self, prefix: &str, timeout: Duration, dir: &Path, name: &str) -> String {
        loop {
            match self.lines.recv_timeout(timeout) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "agent-edge-load printed no `{prefix}…` within {timeout:?}:\n{}",
                    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
                ),
            }
        }
    }

    /// The process id (for measuring it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the agents saw since the previous report.
    pub fn report(&mut self) -> serde_json::Value {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"report\n").unwrap();
        stdin.flush().unwrap();
        let line = loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(10))
                .expect("agent-edge-load did not report");
            if let Some(json) = line.strip_prefix("report ") {
                break json.to_owned();
            }
        };
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for LoadAgents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
