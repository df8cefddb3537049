//! Harness for the end-to-end tests: starts the real `agent-edge` binary and real SIPp
//! processes on loopback, waits for what they print instead of sleeping, and reads SIPp's own
//! statistics and message traces for the assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod https;
pub mod load;
pub mod netns;
pub mod tunnel;
pub mod turn_client;
pub mod webrtc_agent;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test: `AGENT_EDGE_BIN`, else the workspace's debug build.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("AGENT_EDGE_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/agent-edge");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p agent-edge` (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A temporary folder for one test's config, certificates, logs and SIPp traces. Kept after
/// the test when `AGENT_EDGE_KEEP_TEST_DIRS` is set, to read the logs of a failure.
pub fn test_dir() -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix("agent-edge-test-")
        .tempdir()
        .unwrap();
    if std::env::var_os("AGENT_EDGE_KEEP_TEST_DIRS").is_some() {
        eprintln!("test files kept in {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    dir
}

/// Where the SIPp scenarios live (an absolute path is taken as it is).
pub fn scenario(name: &str) -> PathBuf {
    if Path::new(name).is_absolute() {
        return PathBuf::from(name);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name)
}

/// A port free on loopback for both UDP and TCP right now (SIPp needs a port number before
/// it starts; the tiny race with other processes is accepted).
pub fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A config file with every listener on port 0 and certificates in `dir`, plus `extra` TOML
/// lines appended to the named sections (`[distributor]` lines go in `distributor_extra`).
pub fn write_config(dir: &Path, distributor_extra: &str, buffer_extra: &str) -> PathBuf {
    write_config_on(dir, LOOPBACK, LOOPBACK, distributor_extra, buffer_extra)
}

/// Loopback, where every listener of a one-host test binds.
pub const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// [`write_config`] with the distributor's listeners on `distributor` and the buffer server's
/// on `buffer` (a test across network namespaces); the admin API stays on loopback.
pub fn write_config_on(
    dir: &Path,
    distributor: IpAddr,
    buffer: IpAddr,
    distributor_extra: &str,
    buffer_extra: &str,
) -> PathBuf {
    let path = dir.join("agent-edge.toml");
    let (d, b) = (distributor, buffer);
    let text = format!(
        "[identity]\nkeys_dir = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ndb = \"{}\"\n\
         key_file = \"{}\"\n\n[tls]\ndir = \"{}\"\n\n[distributor]\nudp = \"{d}:0\"\ntcp = \"{d}:0\"\n\
         tls = \"{d}:0\"\npublic = \"{d}:0\"\nearly_media = \"{d}:0\"\n{distributor_extra}\n\n[buffer]\n\
         udp = \"{b}:0\"\ntcp = \"{b}:0\"\nhttps = \"{b}:0\"\nmedia = \"{b}:0\"\n{buffer_extra}\n",
        dir.join("keys").display(),
        dir.join("agent-edge.db").display(),
        dir.join("admin-key").display(),
        dir.join("certs").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A token for `agent` from `agent-edge token issue`, signed with the key of the config in
/// `dir` (the one [`write_config`] wrote).
pub fn issue_token(dir: &Path, agent: &str) -> String {
    token_cli(dir, "--agent", agent)
}

/// One HTTP/1.1 request to the admin API over plain TCP: (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // Chunked bodies from axum: keep only the JSON.
    let body = match (body.find(['{', '[']), body.rfind(['}', ']'])) {
        (Some(a), Some(b)) if a <= b => body[a..=b].to_owned(),
        _ => body,
    };
    (status, body)
}

/// The admin API's `/metrics` exposition in the format `accept` asks for, with its media type:
/// read whole (HTTP/1.0, so the body is not chunked).
pub fn metrics_text(admin: SocketAddr, key: &str, accept: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(admin).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: {admin}\r\nAuthorization: Bearer {key}\r\n\
         Accept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    let media_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (media_type, body.to_owned())
}

/// Revokes the token `jti` through the admin API at `admin`.
pub fn revoke(admin: SocketAddr, key: &str, jti: &str) {
    let body = format!(r#"{{"jti":"{jti}"}}"#);
    let (code, text) = http(admin, "POST", "/tokens/revoke", Some(key), Some(&body));
    assert_eq!(code, 204, "revoking {jti}: {text}");
}

/// A buffer server's tunnel credential from `agent-edge token issue --edge`.
pub fn issue_edge_token(dir: &Path, edge: &str) -> String {
    token_cli(dir, "--edge", edge)
}

fn token_cli(dir: &Path, kind: &str, subject: &str) -> String {
    let out = Command::new(binary())
        .args(["token", "issue", kind, subject, "--config"])
        .arg(dir.join("agent-edge.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "token issue failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A running `agent-edge` process; killed (by its own pid) when dropped.
#[derive(Debug)]
pub struct Edge {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: PathBuf,
}

impl Edge {
    /// Starts `agent-edge ARGS --config CONFIG`, logging stderr to `log`.
    pub fn start(args: &[&str], config: &Path, log: &Path) -> Edge {
        Edge::start_with_env(args, config, log, &[])
    }

    /// The same, with extra environment variables (an edge's credential).
    pub fn start_with_env(args: &[&str], config: &Path, log: &Path, env: &[(&str, &str)]) -> Edge {
        Edge::start_in(None, args, config, log, env)
    }

    /// [`Edge::start_with_env`] inside network namespace `netns` (see [`netns::command_in`]).
    pub fn start_in(
        netns: Option<&str>,
        args: &[&str],
        config: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> Edge {
        let stderr = std::fs::File::create(log).unwrap();
        let mut child = netns::command_in(netns, binary())
            .env_remove("AGENT_EDGE_EDGE_TOKEN")
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .args(args)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
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
        Edge {
            child,
            lines,
            seen: Vec::new(),
            stderr: log.to_owned(),
        }
    }

    /// Waits for a stdout line starting with `prefix` that was not returned before.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        if let Some(i) = self.seen.iter().position(|l| l.starts_with(prefix)) {
            return self.seen.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "agent-edge never printed `{prefix}…` within {timeout:?}; it printed {:?}\n{}",
                    self.seen,
                    self.log_tail()
                ),
            }
        }
    }

    /// Waits until `n` stdout lines starting with `prefix` were printed (counting those
    /// seen earlier and not yet returned), and consumes them.
    pub fn wait_count(&mut self, prefix: &str, n: usize, timeout: Duration) {
        let before = self.seen.len();
        self.seen.retain(|l| !l.starts_with(prefix));
        let mut count = before - self.seen.len();
        let deadline = Instant::now() + timeout;
        while count < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => count += 1,
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "agent-edge printed {count} of {n} `{prefix}…` lines within {timeout:?}\n{}",
                    self.log_tail()
                ),
            }
        }
    }

    /// The process id (for measuring it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address a listener was bound to (`distributor.udp`, `buffer.https`, …).
    pub fn addr(&mut self, name: &str) -> SocketAddr {
        let line = self.wait_line(&format!("listening {name} "), Duration::from_secs(20));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// The last lines of the process's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- last log lines of agent-edge ---\n{}",
            lines[from..].join("\n")
        )
    }

    /// Ends the process now (for restart tests).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Edge {
    /// Stops the process with SIGTERM (a clean stop: it drains) and waits until it has
    /// exited with status 0.
    pub fn stop_cleanly(self) {
        use rustix::process::{Pid, Signal, kill_process};
        let pid = self.pid();
        kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::TERM).unwrap();
        // Exited, it is a zombie until the Edge reaps it (when dropped): /proc still shows
        // its state (3rd field of `stat`) and its wait status (52nd).
        let deadline = Instant::now() + WAIT;
        let status = loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .collect();
            if fields[0] == "Z" {
                break fields[52 - 3].parse::<i32>().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "agent-edge did not exit within {WAIT:?} of SIGTERM\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            status,
            0,
            "agent-edge exited with wait status {status:#x} after SIGTERM\n{}",
            self.log_tail()
        );
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A SIPp run being described.
#[derive(Debug, Clone)]
pub struct Sipp {
    args: Vec<String>,
    name: String,
    dir: PathBuf,
    /// The network namespace it runs in (`None`: the root one).
    netns: Option<String>,
}

/// What a finished SIPp run left behind.
#[derive(Debug)]
pub struct SippRun {
    pub status: ExitStatus,
    pub output: String,
    /// Messages this SIPp received, in order, as text.
    pub received: Vec<String>,
    pub successful: u64,
    pub failed: u64,
}

impl SippRun {
    /// Panics with SIPp's own words unless every call succeeded.
    pub fn assert_ok(&self, what: &str) {
        assert!(
            self.status.success() && self.failed == 0,
            "{what}: SIPp exited {:?} with {} successful and {} failed calls\n{}\nlast messages received:\n{}",
            self.status.code(),
            self.successful,
            self.failed,
            self.output,
            self.received[self.received.len().saturating_sub(12)..].join("\n---\n")
        );
    }
}

impl Sipp {
    /// A SIPp process for `scenario`, bound to 127.0.0.1:`port`, leaving its traces in `dir`
    /// under `name`.
    pub fn new(scenario_file: &str, port: u16, dir: &Path, name: &str) -> Sipp {
        let msg = dir.join(format!("{name}.msg"));
        let stat = dir.join(format!("{name}.csv"));
        let err = dir.join(format!("{name}.err"));
        let args = vec![
            "-sf".into(),
            scenario(scenario_file).display().to_string(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-nostdin".into(),
            "-trace_msg".into(),
            "-message_file".into(),
            msg.display().to_string(),
            "-trace_stat".into(),
            "-stf".into(),
            stat.display().to_string(),
            "-trace_err".into(),
            "-error_file".into(),
            err.display().to_string(),
            "-timeout".into(),
            "60".into(),
            "-timeout_error".into(),
        ];
        Sipp {
            args,
            name: name.to_owned(),
            dir: dir.to_owned(),
            netns: None,
        }
    }

    /// Adds raw SIPp arguments.
    pub fn arg(mut self, args: &[&str]) -> Sipp {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Runs inside network namespace `netns`, bound to `ip` there instead of loopback.
    pub fn in_netns(mut self, netns: &str, ip: IpAddr) -> Sipp {
        if let Some(i) = self.args.iter().position(|a| a == "-i") {
            self.args[i + 1] = ip.to_string();
        }
        self.netns = Some(netns.to_owned());
        self
    }

    /// Sends to `addr` (SIPp's remote host).
    pub fn to(self, addr: SocketAddr) -> Sipp {
        self.arg(&[&addr.to_string()])
    }

    /// Passes a token as field 0 of an injection file (`[field0]` in the scenario).
    /// SIPp reads the injection file while it loads the scenario, so it goes first.
    pub fn token_file(mut self, dir: &Path, token: &str) -> Sipp {
        let path = dir.join(format!("{}.token.csv", self.name));
        std::fs::write(&path, format!("SEQUENTIAL\n{token};\n")).unwrap();
        self.args
            .splice(0..0, ["-inf".to_owned(), path.display().to_string()]);
        self
    }

    pub fn key(self, key: &str, value: &str) -> Sipp {
        self.arg(&["-key", key, value])
    }

    /// Runs to completion.
    pub fn run(self) -> SippRun {
        self.spawn().wait()
    }

    /// Starts in the background (a UAS waiting for calls).
    pub fn spawn(self) -> RunningSipp {
        let out = self.dir.join(format!("{}.out", self.name));
        let child = netns::command_in(self.netns.as_deref(), "sipp")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&out).unwrap(),
            ))
            .spawn()
            .expect("sipp is not installed: scripts/test.sh installs sip-tester");
        RunningSipp {
            child: Some(child),
            sipp: self,
            out,
        }
    }
}

/// A SIPp process in the background; killed (by its own pid) if dropped unfinished.
#[derive(Debug)]
pub struct RunningSipp {
    child: Option<Child>,
    sipp: Sipp,
    out: PathBuf,
}

impl RunningSipp {
    /// The messages received so far (SIPp writes its message trace as it goes).
    pub fn received_so_far(&self) -> Vec<String> {
        read_received(&self.sipp.dir.join(format!("{}.msg", self.sipp.name)))
    }

    /// Waits for SIPp to finish by itself (at most its own -timeout), and reads its results.
    pub fn wait(mut self) -> SippRun {
        let status = self.child.take().unwrap().wait().unwrap();
        let dir = &self.sipp.dir;
        let name = &self.sipp.name;
        let mut output = std::fs::read_to_string(&self.out).unwrap_or_default();
        if let Ok(err) = std::fs::read_to_string(dir.join(format!("{name}.err"))) {
            output.push_str("\n--- SIPp errors ---\n");
            output.push_str(&err);
        }
        let (successful, failed) = read_stats(&dir.join(format!("{name}.csv")));
        SippRun {
            status,
            output,
            received: read_received(&dir.join(format!("{name}.msg"))),
            successful,
            failed,
        }
    }
}

impl Drop for RunningSipp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Successful and failed call counts from SIPp's `-trace_stat` CSV (its last row).
fn read_stats(path: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return (0, 0);
    };
    let Some(last) = lines.next_back() else {
        return (0, 0);
    };
    let names: Vec<&str> = header.split(';').collect();
    let values: Vec<&str> = last.split(';').collect();
    let get = |col: &str| {
        names
            .iter()
            .position(|n| *n == col)
            .and_then(|i| values.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("SuccessfulCall(C)"), get("FailedCall(C)"))
}

/// The messages SIPp logged as received, from its `-trace_msg` file.
fn read_received(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("-----------------------------------------------") {
            if let Some(m) = current.take() {
                out.push(m.trim().to_owned());
            }
            continue;
        }
        if line.contains("message received") {
            current = Some(String::new());
            continue;
        }
        if line.contains("message sent") {
            if let Some(m) = current.take() {
                out.push(m.trim().to_owned());
            }
            continue;
        }
        if let Some(m) = current.as_mut() {
            m.push_str(line);
            m.push('\n');
        }
    }
    if let Some(m) = current.take() {
        out.push(m.trim().to_owned());
    }
    out
}

/// Values of a header (by full name, case-insensitive) across messages.
pub fn header_values<'a>(messages: &'a [String], name: &str) -> Vec<&'a str> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    messages
        .iter()
        .flat_map(|m| m.lines())
        .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim())
        .collect()
}

/// The `tag=` parameters found in From and To headers.
pub fn tags(messages: &[String]) -> Vec<String> {
    let mut out: Vec<String> = header_values(messages, "From")
        .into_iter()
        .chain(header_values(messages, "To"))
        .filter_map(|v| v.split(";tag=").nth(1))
        .map(|t| t.split([';', '>', ' ']).next().unwrap_or("").to_owned())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Ports named in `127.0.0.1:PORT` forms within a header value.
pub fn ports_in(value: &str) -> Vec<u16> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(i) = rest.find("127.0.0.1:") {
        rest = &rest[i + "127.0.0.1:".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(p) = digits.parse() {
            out.push(p);
        }
    }
    out
}

/// How long to wait for the binary's status lines.
pub const WAIT: Duration = Duration::from_secs(20);

/// A distributor and a buffer server in one process, tunnel up.
#[derive(Debug)]
pub struct System {
    pub dir: tempfile::TempDir,
    pub edge: Edge,
    pub dist_udp: SocketAddr,
    pub dist_tcp: SocketAddr,
    pub dist_tls: SocketAddr,
    pub buffer_udp: SocketAddr,
    pub buffer_tcp: SocketAddr,
    pub buffer_https: SocketAddr,
}

impl System {
    pub fn start(distributor_extra: &str) -> System {
        System::start_with(distributor_extra, "")
    }

    /// With extra lines for the `[distributor]` and `[buffer]` sections.
    pub fn start_with(distributor_extra: &str, buffer_extra: &str) -> System {
        let dir = test_dir();
        let config = write_config(dir.path(), distributor_extra, buffer_extra);
        let mut edge = Edge::start(&[], &config, &dir.path().join("agent-edge.log"));
        let dist_udp = edge.addr("distributor.udp");
        let dist_tcp = edge.addr("distributor.tcp");
        let dist_tls = edge.addr("distributor.tls");
        let buffer_udp = edge.addr("buffer.udp");
        let buffer_tcp = edge.addr("buffer.tcp");
        let buffer_https = edge.addr("buffer.https");
        edge.wait_line("tunnel-up edge-1", WAIT);
        System {
            dir,
            edge,
            dist_udp,
            dist_tcp,
            dist_tls,
            buffer_udp,
            buffer_tcp,
            buffer_https,
        }
    }

    /// One call: agent `alice` registered over UDP runs `agent_scenario`, a caller runs
    /// `caller_scenario`; both SIPp runs must succeed.
    pub fn one_call(&mut self, agent_scenario: &str, caller_scenario: &str, name: &str) {
        let (port, uas) = agent(
            agent_scenario,
            self.dir.path(),
            &format!("{name}-agent"),
            1,
            &[],
        );
        register(
            &mut self.edge,
            self.dir.path(),
            self.buffer_udp,
            "alice",
            port,
            false,
        );
        caller(
            caller_scenario,
            self.dir.path(),
            &format!("{name}-caller"),
            self.dist_udp,
        )
        .arg(&["-m", "1"])
        .run()
        .assert_ok(&format!("{name}: caller"));
        uas.wait().assert_ok(&format!("{name}: agent"));
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Registers `agent` on the buffer server with its Contact at `contact_port`, over UDP or
/// TCP, and waits for the distributor to learn of it.
pub fn register(
    edge: &mut Edge,
    dir: &Path,
    buffer: SocketAddr,
    agent: &str,
    contact_port: u16,
    tcp: bool,
) {
    let mut sipp = Sipp::new(
        "agent_register.xml",
        free_port(),
        dir,
        &format!("register-{agent}-{contact_port}"),
    )
    .to(buffer)
    .token_file(dir, &issue_token(dir, agent))
    .key("agent", agent)
    .key("contact_port", &contact_port.to_string())
    .arg(&["-m", "1"]);
    sipp = if tcp {
        sipp.key("contact_transport", ";transport=tcp")
            .arg(&["-t", "t1"])
    } else {
        sipp.key("contact_transport", "")
    };
    sipp.run().assert_ok("registration");
    edge.wait_line(&format!("agent-up {agent} edge-1"), WAIT);
}

/// An agent UAS listening on a fresh port for `calls` calls.
pub fn agent(
    scenario: &str,
    dir: &Path,
    name: &str,
    calls: u32,
    extra: &[&str],
) -> (u16, RunningSipp) {
    let port = free_port();
    let sipp = Sipp::new(scenario, port, dir, name)
        .arg(&["-m", &calls.to_string()])
        .arg(extra)
        .spawn();
    (port, sipp)
}

pub fn caller(scenario: &str, dir: &Path, name: &str, to: SocketAddr) -> Sipp {
    Sipp::new(scenario, free_port(), dir, name)
        .to(to)
        .arg(&["-s", "support", "-d", "200"])
}

/// The admin API's live event stream (`GET /events`, server-sent events), read in the
/// background: every `data:` line, parsed, in order.
#[derive(Debug, Clone)]
pub struct EventStream {
    events: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl EventStream {
    pub fn subscribe(admin: SocketAddr, key: &str) -> EventStream {
        use std::io::{BufRead, BufReader, Write};
        let mut stream = std::net::TcpStream::connect(admin).unwrap();
        let request = format!(
            "GET /events HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {key}\r\n\
             Accept: text/event-stream\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                // Chunked transfer: the SSE lines arrive whole inside the chunks.
                if let Some(data) = line.strip_prefix("data:")
                    && let Ok(value) = serde_json::from_str(data.trim())
                {
                    sink.lock().unwrap().push(value);
                }
            }
        });
        let stream = EventStream { events };
        stream.wait_for("the snapshot", |e| e["type"] == "snapshot");
        stream
    }

    pub fn all(&self) -> Vec<serde_json::Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits (up to [`WAIT`]) for an event matching `pred`, and returns it.
    pub fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(e) = self.all().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no event for {what} in the stream:\n{:#?}",
                self.all()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The admin key of a system started by [`System`] (generated into its folder).
pub fn admin_key(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("admin-key"))
        .unwrap()
        .trim()
        .to_owned()
}

/// The distributor alone (`agent-edge distributor`), its tunnel on `tunnel_port`: returns it
/// and its SIP UDP address.
pub fn start_distributor(dir: &Path, tunnel_port: u16) -> (Edge, SocketAddr) {
    start_distributor_in(dir, None, LOOPBACK, tunnel_port)
}

/// [`start_distributor`] inside network namespace `netns` (when given), every listener on
/// `ip` and its public listener on `ip:public_port`.
pub fn start_distributor_in(
    dir: &Path,
    netns: Option<&str>,
    ip: IpAddr,
    public_port: u16,
) -> (Edge, SocketAddr) {
    let config = write_config_on(dir, ip, LOOPBACK, "", "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("public = \"{ip}:0\""),
        &format!("public = \"{}\"", SocketAddr::new(ip, public_port)),
    );
    let config = dir.join("distributor.toml");
    std::fs::write(&config, text).unwrap();
    let mut edge = Edge::start_in(
        netns,
        &["distributor"],
        &config,
        &dir.join("distributor.log"),
        &[],
    );
    let udp = edge.addr("distributor.udp");
    edge.addr("distributor.public");
    (edge, udp)
}

/// A buffer server alone (`agent-edge buffer`) dialling the distributor's tunnel on
/// `tunnel_port`, with its HTTPS (agent page and WSS) on `https_port` when given, so that a
/// restarted one is found where browsers left it.
pub fn start_buffer(dir: &Path, tunnel_port: u16, https_port: Option<u16>, log: &str) -> Edge {
    start_buffer_with(dir, tunnel_port, https_port, log, "")
}

/// [`start_buffer`] with extra lines for its `[buffer]` section.
pub fn start_buffer_with(
    dir: &Path,
    tunnel_port: u16,
    https_port: Option<u16>,
    log: &str,
    buffer_extra: &str,
) -> Edge {
    let public = SocketAddr::new(LOOPBACK, tunnel_port);
    start_buffer_in(dir, None, LOOPBACK, public, https_port, log, buffer_extra)
}

/// [`start_buffer_with`] inside network namespace `netns` (when given), its listeners on
/// `ip`, dialling `wss://<public>/tunnel`.
pub fn start_buffer_in(
    dir: &Path,
    netns: Option<&str>,
    ip: IpAddr,
    public: SocketAddr,
    https_port: Option<u16>,
    log: &str,
    buffer_extra: &str,
) -> Edge {
    let config = write_config_on(dir, LOOPBACK, ip, "", buffer_extra);
    let config = match https_port {
        Some(port) => {
            let text = std::fs::read_to_string(&config).unwrap().replace(
                &format!("https = \"{ip}:0\""),
                &format!("https = \"{}\"", SocketAddr::new(ip, port)),
            );
            let path = dir.join("buffer.toml");
            std::fs::write(&path, text).unwrap();
            path
        }
        None => config,
    };
    let url = format!("wss://{public}/tunnel");
    let token = issue_edge_token(dir, "edge-1");
    Edge::start_in(
        netns,
        &["buffer", "--connect", &url],
        &config,
        &dir.join(log),
        &[("AGENT_EDGE_EDGE_TOKEN", &token)],
    )
}

/// What a process has used, from /proc: (CPU ticks in all, of which in the kernel, resident
/// KiB). Ticks are USER_HZ, 100 a second on every Linux this runs on. For the benchmarks.
pub fn process_usage(pid: u32) -> (u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (which may contain spaces) start after ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let system = fields[12].parse::<u64>().unwrap();
    let ticks = fields[11].parse::<u64>().unwrap() + system;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (ticks, system, rss)
}

/// An RFC 4180 text whose fields are all quoted: its rows of fields. Line ends must be CRLF
/// (the last may be left off).
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let mut row = Vec::new();
        loop {
            assert_eq!(
                chars.next(),
                Some('"'),
                "every field is quoted; row {} of {text:?}",
                rows.len()
            );
            let mut field = String::new();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => panic!("a field never ends in {text:?}"),
                }
            }
            row.push(field);
            match chars.next() {
                Some(',') => {}
                Some('\r') => {
                    assert_eq!(chars.next(), Some('\n'), "CRLF line ends: {text:?}");
                    break;
                }
                None => break,
                Some(c) => panic!("{c:?} after a field in {text:?}"),
            }
        }
        rows.push(row);
    }
    rows
}

/// The newest call record once it has its media statistics (a record is written a second
/// after the hang-up, with the edge's last statistics of the call).
pub fn record_with_media(admin: SocketAddr, key: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, text) = http(admin, "GET", "/calls", Some(key), None);
        assert_eq!(status, 200, "{text}");
        let page: serde_json::Value = serde_json::from_str(&text).unwrap();
        if let Some(r) = page["calls"]
            .as_array()
            .and_then(|c| c.first())
            .filter(|r| !r["media"].is_null())
        {
            return r.clone();
        }
        assert!(Instant::now() < deadline, "no record with media: {page}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
