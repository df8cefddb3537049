//! The memory soak behind `just bench-soak` (issue 22): does the process give back what a
//! burst of calls took, and is what it holds at a steady rate what RFC 3261's timers need?
//!
//! One all-in-one agent-edge (release, `AGENT_EDGE_BIN`, logging at `warn`), 50 desk-phone
//! agents registered over UDP on the buffer server (one SIPp UAS answers for all of them:
//! each agent's Contact is its port), then `SOAK_ROUNDS` rounds of `SOAK_CALLS` calls at
//! `SOAK_RATE` calls/s from a SIPp caller over UDP (`bench_caller.xml`; the agents'
//! `agent_answer_hangup.xml` answers at once, and hangs up 300 ms after the ACK). After each round it waits `SOAK_WAIT_S` (35 s: past
//! the 32 s that a UDP transaction and a 2xx's retransmission state live) and reads the
//! process's resident memory. During each round it samples, every second, the resident
//! memory and what the cores say they hold (`/live`'s `held`: the transactions and timers of
//! both roles, the distributor's calls and open call records), and keeps the sample with the
//! most transactions: the plateau.
//!
//! It prints a table (one row per round) and the figures `bench/results.md` keeps: the
//! resident memory after the first and the last round and their difference, and the bytes
//! per held transaction at the plateau, (RSS at the peak − RSS idle) / transactions held
//! then. Nothing is written to `bench/results.md` by it.
//!
//! Settings from the environment: `SOAK_ROUNDS` (10), `SOAK_CALLS` (15000), `SOAK_RATE`
//! (500), `SOAK_AGENTS` (50), `SOAK_WAIT_S` (35), `SOAK_SETTLE_S` (10: a second reading that much later, once the allocator's delay in
//! giving back what was freed last is over), `SOAK_CONFIG` (TOML sections added to the
//! configuration).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_edge_tests::{
    Edge, admin_key, free_port, http, register, scenario, test_dir, write_config,
};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of a process by kind, KiB: (total, anonymous, file, shared).
fn rss(pid: u32) -> (u64, u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:"),
        field("RssShmem:"),
    )
}

/// What the cores hold, from the admin API's `/live` (`held`, and the number of calls).
fn held(admin: SocketAddr, key: &str) -> serde_json::Value {
    let (status, body) = http(admin, "GET", "/live", Some(key), None);
    if status != 200 {
        return serde_json::Value::Null;
    }
    let view: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mut held = view["held"].clone();
    if let Some(o) = held.as_object_mut() {
        let calls = view["calls"].as_array().map_or(0, Vec::len);
        o.insert("live_calls".into(), calls.into());
    }
    held
}

/// Transactions of both roles in a `held` value.
fn transactions(held: &serde_json::Value) -> u64 {
    held["transactions"].as_u64().unwrap_or(0)
}

/// The agents' UAS: one SIPp answering every agent's calls, hanging up after its pause.
fn agents_uas(dir: &Path, port: u16) -> Child {
    Command::new("sipp")
        .current_dir(dir)
        .arg("-sf")
        .arg(scenario("agent_answer_hangup.xml"))
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-nostdin", "-buff_size", "8388608"])
        .args(["-trace_stat", "-stf", "agents.csv", "-fd", "5"])
        .args(["-trace_err", "-error_file", "agents-errors.txt"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agents.err")).unwrap())
        .spawn()
        .expect("sipp is not installed: scripts/bench.sh installs sip-tester")
}

/// Columns of the last row of SIPp's `-trace_stat` CSV.
fn sipp_counters(path: &Path, names: &[&str]) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().unwrap_or_default().split(';').collect();
    let last: Vec<&str> = lines.next_back().unwrap_or_default().split(';').collect();
    names
        .iter()
        .map(|n| {
            header
                .iter()
                .position(|h| h == n)
                .and_then(|i| last.get(i))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

struct Round {
    successful: u64,
    failed: u64,
    retransmissions: u64,
    seconds: f64,
    /// The sample with the most transactions held during the round: (RSS KiB, held).
    peak_rss_kib: u64,
    peak: serde_json::Value,
    /// After the wait.
    after: (u64, u64, u64, u64),
    after_held: serde_json::Value,
    /// `settle_s` later: the allocator's own delay in giving back what was freed last
    /// (jemalloc's 10 s decay) is over.
    settled_kib: u64,
}

/// What every round runs against, and how.
struct Soak<'a> {
    dir: &'a Path,
    pid: u32,
    dist: SocketAddr,
    admin: SocketAddr,
    key: &'a str,
    calls: u64,
    rate: u64,
    wait_s: u64,
    settle_s: u64,
}

fn round(n: usize, soak: &Soak) -> Round {
    let Soak {
        dir,
        pid,
        dist,
        admin,
        key,
        calls,
        rate,
        wait_s,
        settle_s,
    } = *soak;
    let dir = dir.join(format!("round-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    let started = Instant::now();
    let mut sipp = Command::new("sipp")
        .current_dir(&dir)
        .arg("-sf")
        .arg(scenario("bench_caller.xml"))
        .args(["-i", "127.0.0.1", "-p", &free_port().to_string()])
        .args(["-s", "support", "-nostdin", "-buff_size", "8388608"])
        .args(["-r", &rate.to_string(), "-rp", "1000"])
        .args([
            "-m",
            &calls.to_string(),
            "-l",
            &(rate * 4).max(100).to_string(),
        ])
        .args(["-trace_stat", "-stf", "stat.csv", "-fd", "1"])
        .args(["-trace_err", "-error_file", "errors.txt"])
        .args([
            "-timeout",
            &(calls / rate.max(1) + 90).to_string(),
            "-timeout_error",
        ])
        .arg(dist.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sipp.err")).unwrap())
        .spawn()
        .expect("sipp is not installed");
    let mut peak = serde_json::Value::Null;
    let mut peak_rss_kib = 0;
    while sipp.try_wait().unwrap().is_none() {
        let h = held(admin, key);
        let r = rss(pid).0;
        if transactions(&h) >= transactions(&peak) {
            peak = h;
            peak_rss_kib = r;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let seconds = started.elapsed().as_secs_f64();
    let [successful, failed, retransmissions] = sipp_counters(
        &dir.join("stat.csv"),
        &["SuccessfulCall(C)", "FailedCall(C)", "Retransmissions(C)"],
    )[..] else {
        unreachable!()
    };
    std::thread::sleep(Duration::from_secs(wait_s));
    let (after, after_held) = (rss(pid), held(admin, key));
    std::thread::sleep(Duration::from_secs(settle_s));
    Round {
        successful,
        failed,
        retransmissions,
        seconds,
        peak_rss_kib,
        peak,
        after,
        after_held,
        settled_kib: rss(pid).0,
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    let rounds = env_or("SOAK_ROUNDS", 10usize);
    let calls = env_or("SOAK_CALLS", 15_000u64);
    let rate = env_or("SOAK_RATE", 500u64);
    let agents = env_or("SOAK_AGENTS", 50usize);
    let wait_s = env_or("SOAK_WAIT_S", 35u64);
    let settle_s = env_or("SOAK_SETTLE_S", 10u64);
    let extra = std::env::var("SOAK_CONFIG").unwrap_or_default();
    eprintln!(
        "binary: {}\n{rounds} rounds of {calls} calls at {rate} calls/s through {agents} UDP agents, {wait_s} s after each",
        agent_edge_tests::binary().display()
    );

    let dir = test_dir();
    // Each agent takes several calls at once: 500 calls/s through 50 agents is 10 calls/s
    // each, every call up for about 0.4 s.
    // The queue takes what a busy machine leaves waiting for a moment (each agent has one
    // offer at a time), rather than refusing it past 100 callers.
    let config = write_config(
        dir.path(),
        "agent_max_calls = 100\n\n[[distributor.queues]]\nname = \"default\"\nmax_length = 10000",
        &format!("\n{extra}"),
    );
    let mut edge = Edge::start_with_env(
        &[],
        &config,
        &dir.path().join("agent-edge.log"),
        &[("RUST_LOG", "warn")],
    );
    let dist = edge.addr("distributor.udp");
    let buffer = edge.addr("buffer.udp");
    let admin = edge.addr("distributor.admin");
    edge.wait_line("tunnel-up edge-1", Duration::from_secs(30));
    let key = admin_key(dir.path());
    let pid = edge.pid();

    let uas_port = free_port();
    let mut uas = agents_uas(dir.path(), uas_port);
    for i in 0..agents {
        register(
            &mut edge,
            dir.path(),
            buffer,
            &format!("desk{i:02}"),
            uas_port,
            false,
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let idle = rss(pid);
    eprintln!(
        "idle with {agents} agents: {:.1} MiB (anon {:.1}, file {:.1}, shmem {:.1}); held {}",
        mib(idle.0),
        mib(idle.1),
        mib(idle.2),
        mib(idle.3),
        held(admin, &key)
    );

    let soak = Soak {
        dir: dir.path(),
        pid,
        dist,
        admin,
        key: &key,
        calls,
        rate,
        wait_s,
        settle_s,
    };
    let mut results = Vec::new();
    for n in 1..=rounds {
        let r = round(n, &soak);
        eprintln!(
            "round {n}: {} ok, {} failed, {} retransmissions in {:.1} s; peak {:.1} MiB with {}; \
             after {wait_s} s {:.1} MiB (anon {:.1}, file {:.1}, shmem {:.1}), held {}",
            r.successful,
            r.failed,
            r.retransmissions,
            r.seconds,
            mib(r.peak_rss_kib),
            r.peak,
            mib(r.after.0),
            mib(r.after.1),
            mib(r.after.2),
            mib(r.after.3),
            r.after_held
        );
        results.push(r);
    }
    let _ = uas.kill();
    let _ = uas.wait();

    println!(
        "| round | calls ok / failed / retransmissions | peak RSS | transactions held at the peak | RSS {wait_s} s after | anon / file / shmem | RSS {} s after | held {wait_s} s after |",
        wait_s + settle_s
    );
    println!("|---:|---|---:|---:|---:|---|---:|---|");
    for (i, r) in results.iter().enumerate() {
        println!(
            "| {} | {} / {} / {} | {:.1} MiB | {} | {:.1} MiB | {:.1} / {:.1} / {:.1} MiB | {:.1} MiB | {} |",
            i + 1,
            r.successful,
            r.failed,
            r.retransmissions,
            mib(r.peak_rss_kib),
            transactions(&r.peak),
            mib(r.after.0),
            mib(r.after.1),
            mib(r.after.2),
            mib(r.after.3),
            mib(r.settled_kib),
            r.after_held
        );
    }
    if let (Some(first), Some(last)) = (results.first(), results.last()) {
        let diff = last.after.0 as f64 - first.after.0 as f64;
        println!(
            "idle {:.1} MiB; after round 1 {:.1} MiB, after round {} {:.1} MiB: {:+.2} % ({:+.0} bytes per call of rounds 2-{})",
            mib(idle.0),
            mib(first.after.0),
            results.len(),
            mib(last.after.0),
            diff / first.after.0 as f64 * 100.0,
            diff * 1024.0 / (calls as f64 * (results.len() as f64 - 1.0)).max(1.0),
            results.len()
        );
        let settled = last.settled_kib as f64 - first.settled_kib as f64;
        println!(
            "{} s after: round 1 {:.1} MiB, round {} {:.1} MiB: {:+.2} %",
            wait_s + settle_s,
            mib(first.settled_kib),
            results.len(),
            mib(last.settled_kib),
            settled / first.settled_kib as f64 * 100.0
        );
        // The plateau: the round whose peak held the most transactions.
        if let Some(p) = results
            .iter()
            .max_by_key(|r| transactions(&r.peak))
            .filter(|r| transactions(&r.peak) > 0)
        {
            let tx = transactions(&p.peak);
            println!(
                "plateau: {tx} transactions held, RSS {:.1} MiB: {:.0} bytes per held transaction above idle",
                mib(p.peak_rss_kib),
                p.peak_rss_kib.saturating_sub(idle.0) as f64 * 1024.0 / tx as f64
            );
        }
    }
    // Killed (by its pid) when dropped: a clean stop would wait out the shutdown's grace
    // for any call a failed round left up.
    drop(edge);
}
