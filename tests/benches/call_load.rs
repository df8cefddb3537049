//! The end-to-end benchmark behind `just bench`: SIPp callers over UDP into the distributor,
//! through the tunnel, to the buffer server and the load agents (`agent-edge-load`, real WSS
//! with a token each). It measures what operators size by:
//!
//! 1. memory per idle registered WSS agent, at 1,000 and 10,000 agents;
//! 2. the highest call rate held for a step (30 s by default) with 0 failed calls and 0
//!    retransmissions, ramping by doubling then bisecting; at each step the post-dial delay
//!    (SIPp's response times: INVITE to the first 180, INVITE to the 200, in steps of SIPp's
//!    clock: 4 ms on the bench VM),
//!    the agent-edge process's CPU seconds per 1,000 calls and its resident memory;
//! 3. the criterion micro-benchmark of parse plus re-address (`cargo bench -p agent-edge
//!    --bench sip_path`, which `just bench` runs first), read from its estimates.
//!
//! The distributor and the buffer server run in one all-in-one process (joined by the real
//! WSS tunnel), logging at `warn`. SIPp, the load agents and agent-edge share the machine:
//! the table says how busy each was, so that a limit can be told from a saturated machine.
//! It appends a dated row per figure to `bench/results.md` (`BENCH_RESULTS`) and prints the
//! steps. Settings from the environment: `BENCH_STEP_S` (30), `BENCH_AGENTS` (4000, the call
//! agents), `BENCH_HOLD_MS` (1000), `BENCH_START_RATE` (100), `BENCH_MAX_RATE` (6400),
//! `BENCH_IDLE` (`1000,10000`), `BENCH_CONFIG` (TOML sections added to the configuration).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_edge_tests::load::{LoadAgents, LoadOptions};
use agent_edge_tests::{Edge, free_port, scenario, test_dir, write_config};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU ticks (user + system, 1/100 s) of a process.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// An all-in-one agent-edge for the benchmark: every port 0, logging at `warn`.
struct Bench {
    dir: tempfile::TempDir,
    edge: Edge,
    dist_udp: SocketAddr,
    https: SocketAddr,
    admin: SocketAddr,
}

impl Bench {
    fn start() -> Bench {
        let dir = test_dir();
        // Every load agent connects from the one loopback address: lift the per-address
        // limit of the edge's HTTPS listener above the 10,000 idle agents.
        // `BENCH_CONFIG`: more TOML sections, e.g. `[records]\nenabled = false` to measure
        // what a feature costs.
        let extra = std::env::var("BENCH_CONFIG").unwrap_or_default();
        let config = write_config(
            dir.path(),
            "",
            &format!("\n[limits]\nconnections_per_ip = 100000\n{extra}"),
        );
        let mut edge = Edge::start_with_env(
            &[],
            &config,
            &dir.path().join("agent-edge.log"),
            &[("RUST_LOG", "warn")],
        );
        let dist_udp = edge.addr("distributor.udp");
        let https = edge.addr("buffer.https");
        let admin = edge.addr("distributor.admin");
        edge.wait_line("tunnel-up edge-1", Duration::from_secs(30));
        Bench {
            dir,
            edge,
            dist_udp,
            https,
            admin,
        }
    }

    /// Starts `n` agents named `prefix-NNNNN` and waits until the distributor knows them all.
    fn agents(&mut self, prefix: &str, n: usize, hold_ms: u64) -> LoadAgents {
        let options = LoadOptions {
            agents: n,
            prefix: prefix.into(),
            answer_after_ms: 0,
            hold_ms,
        };
        let timeout = Duration::from_secs(120 + n as u64 / 50);
        let load = LoadAgents::start(self.dir.path(), self.https, self.admin, &options, timeout);
        self.edge
            .wait_count(&format!("agent-up {prefix}-"), n, timeout);
        load
    }
}

struct Idle {
    agents: usize,
    kib_per_agent: f64,
    load_kib_per_agent: f64,
    register_s: f64,
}

/// Memory per idle registered agent: the agent-edge process's growth from no agents to
/// each count in `counts` (ascending), the agents registered in batches.
fn idle_memory(counts: &[usize]) -> Vec<Idle> {
    let mut bench = Bench::start();
    let pid = bench.edge.pid();
    std::thread::sleep(Duration::from_secs(2));
    let base = rss_kib(pid);
    let mut out = Vec::new();
    let mut running = Vec::new();
    let mut have = 0;
    for (batch, &count) in counts.iter().enumerate() {
        let more = count.saturating_sub(have);
        let load = bench.agents(&format!("idle{batch}"), more, 60_000);
        have = count;
        std::thread::sleep(Duration::from_secs(3));
        let rss = rss_kib(pid);
        let load_kib: u64 = running
            .iter()
            .chain(std::iter::once(&load))
            .map(|l: &LoadAgents| rss_kib(l.pid()))
            .sum();
        out.push(Idle {
            agents: count,
            kib_per_agent: rss.saturating_sub(base) as f64 / count as f64,
            load_kib_per_agent: load_kib as f64 / count as f64,
            register_s: load.register_seconds,
        });
        eprintln!(
            "idle agents {count}: agent-edge {} KiB (from {base}), {:.1} KiB per agent",
            rss,
            rss.saturating_sub(base) as f64 / count as f64
        );
        running.push(load);
    }
    out
}

#[derive(Debug, Clone)]
struct Step {
    rate: u64,
    calls: u64,
    successful: u64,
    failed: u64,
    retransmissions: u64,
    agent_failed: u64,
    ring_p50: Option<f64>,
    ring_p99: Option<f64>,
    answer_p50: Option<f64>,
    answer_p99: Option<f64>,
    cpu_s_per_1k: f64,
    edge_cpu_pct: f64,
    load_cpu_pct: f64,
    sipp_cpu_pct: f64,
    rss_mib: f64,
}

impl Step {
    fn passed(&self) -> bool {
        self.successful == self.calls
            && self.failed == 0
            && self.retransmissions == 0
            && self.agent_failed == 0
    }
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

/// Response times (ms) by RTD number from SIPp's `-trace_rtt` files in `dir`.
fn response_times(dir: &Path) -> [Vec<f64>; 2] {
    let mut out = [Vec::new(), Vec::new()];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with("_rtt.csv") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(';').collect();
            if let (Some(ms), Some(n)) = (
                f.get(1).and_then(|v| v.trim().parse::<f64>().ok()),
                f.get(2).and_then(|v| v.trim().parse::<usize>().ok()),
            ) && (1..=2).contains(&n)
            {
                out[n - 1].push(ms);
            }
        }
    }
    for v in &mut out {
        v.sort_by(f64::total_cmp);
    }
    out
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// One step: `rate` calls per second for `seconds`, every call held `hold_ms` by its agent.
fn step(bench: &Bench, load: &mut LoadAgents, rate: u64, seconds: u64, hold_ms: u64) -> Step {
    step_with(bench, load, "bench_caller.xml", rate, seconds, hold_ms)
}

/// A step whose callers run `caller_scenario`.
fn step_with(
    bench: &Bench,
    load: &mut LoadAgents,
    caller_scenario: &str,
    rate: u64,
    seconds: u64,
    hold_ms: u64,
) -> Step {
    let dir = bench
        .dir
        .path()
        .join(format!("step-{rate}-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let calls = rate * seconds;
    let limit = (rate * (hold_ms / 1000 + 3)).max(100);
    let _ = load.report(); // start the agents' window here
    let (edge_pid, load_pid) = (bench.edge.pid(), load.pid());
    let (edge0, load0) = (cpu_ticks(edge_pid), cpu_ticks(load_pid));
    let started = Instant::now();
    let mut sipp = Command::new("sipp")
        .current_dir(&dir)
        .arg("-sf")
        .arg(scenario(caller_scenario))
        .args(["-i", "127.0.0.1", "-p", &free_port().to_string()])
        .args(["-s", "support", "-nostdin", "-buff_size", "8388608"])
        .args(["-r", &rate.to_string(), "-rp", "1000"])
        .args(["-m", &calls.to_string(), "-l", &limit.to_string()])
        .args(["-trace_stat", "-stf", "stat.csv", "-fd", "1"])
        .args(["-trace_rtt", "-rtt_freq", "100"])
        .args(["-trace_err", "-error_file", "errors.txt"])
        .args(["-timeout", &(seconds + 90).to_string(), "-timeout_error"])
        .arg(bench.dist_udp.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sipp.err")).unwrap())
        .spawn()
        .expect("sipp is not installed: scripts/bench.sh installs sip-tester");
    let sipp_pid = sipp.id();
    // SIPp's own CPU is read while it runs (a finished child's /proc entry is gone).
    let mut sipp_ticks = 0;
    while sipp.try_wait().unwrap().is_none() {
        sipp_ticks = cpu_ticks(sipp_pid).max(sipp_ticks);
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (edge1, load1) = (cpu_ticks(edge_pid), cpu_ticks(load_pid));
    // The agents' BYEs of the last calls are answered after SIPp's last call ends.
    std::thread::sleep(Duration::from_millis(hold_ms + 500));
    let agents = load.report();
    let [successful, failed, retransmissions] = sipp_counters(
        &dir.join("stat.csv"),
        &["SuccessfulCall(C)", "FailedCall(C)", "Retransmissions(C)"],
    )[..] else {
        unreachable!()
    };
    let [ring, answer] = response_times(&dir);
    let pct = |ticks: u64| ticks as f64 / elapsed;
    let result = Step {
        rate,
        calls,
        successful,
        failed,
        retransmissions,
        agent_failed: agents["failed"].as_u64().unwrap_or(0),
        ring_p50: quantile(&ring, 0.5),
        ring_p99: quantile(&ring, 0.99),
        answer_p50: quantile(&answer, 0.5),
        answer_p99: quantile(&answer, 0.99),
        cpu_s_per_1k: (edge1 - edge0) as f64 / 100.0 / successful.max(1) as f64 * 1000.0,
        edge_cpu_pct: pct(edge1 - edge0),
        load_cpu_pct: pct(load1 - load0),
        sipp_cpu_pct: pct(sipp_ticks),
        rss_mib: rss_kib(edge_pid) as f64 / 1024.0,
    };
    eprintln!("{result:?}");
    result
}

/// A system with its call agents, ready for a step.
fn fresh(call_agents: usize, hold_ms: u64) -> (Bench, LoadAgents) {
    let mut bench = Bench::start();
    let load = bench.agents("call", call_agents, hold_ms);
    std::thread::sleep(Duration::from_secs(2));
    (bench, load)
}

/// Rates tried: doubling from `start` while steps pass (up to `max`), then two bisections
/// between the last pass and the first failure. An overloaded step leaves calls queued and
/// agents busy for minutes, so every step after a failure runs on a fresh system.
fn ramp(call_agents: usize, seconds: u64, hold_ms: u64) -> Vec<Step> {
    let (start, max) = (
        env_or("BENCH_START_RATE", 100u64),
        env_or("BENCH_MAX_RATE", 6400u64),
    );
    let mut steps = Vec::new();
    let mut rate = start;
    let mut passed: Option<u64> = None;
    let mut failed: Option<u64> = None;
    let (mut bench, mut load) = fresh(call_agents, hold_ms);
    while rate <= max {
        let s = step(&bench, &mut load, rate, seconds, hold_ms);
        let ok = s.passed();
        steps.push(s);
        if !ok {
            failed = Some(rate);
            break;
        }
        passed = Some(rate);
        rate *= 2;
    }
    if let (Some(mut lo), Some(mut hi)) = (passed, failed) {
        for _ in 0..2 {
            let mid = (lo + hi) / 2;
            if mid <= lo {
                break;
            }
            if !steps.last().is_some_and(Step::passed) {
                drop(load);
                drop(bench);
                (bench, load) = fresh(call_agents, hold_ms);
            }
            let s = step(&bench, &mut load, mid, seconds, hold_ms);
            if s.passed() {
                lo = mid;
            } else {
                hi = mid;
            }
            steps.push(s);
        }
    }
    steps
}

/// The criterion median of `name` in ns, from `target/criterion/*/new/`.
fn criterion_median(name: &str) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    for entry in std::fs::read_dir(target.join("criterion")).ok()?.flatten() {
        let new = entry.path().join("new");
        let Ok(meta) = std::fs::read_to_string(new.join("benchmark.json")) else {
            continue;
        };
        let meta: serde_json::Value = serde_json::from_str(&meta).ok()?;
        if meta["full_id"] == name {
            let est: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(new.join("estimates.json")).ok()?)
                    .ok()?;
            return est["median"]["point_estimate"].as_f64();
        }
    }
    None
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {mem_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.0} ms"))
}

/// The distributor's count of new calls it refused as overloaded, from `/metrics`.
fn refused_overloaded(bench: &Bench) -> u64 {
    let key = agent_edge_tests::admin_key(bench.dir.path());
    let (_, text) = agent_edge_tests::metrics_text(bench.admin, &key, "text/plain");
    text.lines()
        .find_map(|l| l.strip_prefix("agent_edge_calls_refused_overloaded_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// `BENCH_OVERLOAD=RATE`: callers at RATE (twice the highest clean rate, say) for a step,
/// each accepting a 503 with Retry-After as an end; then at once a step at
/// `BENCH_RECOVER_RATE` (RATE / 2) with the ordinary callers, which must be clean. Prints
/// the figures and appends them to bench/results.md.
fn overload(rate: u64, seconds: u64, call_agents: usize, hold_ms: u64, date: &str, machine: &str) {
    let recover_rate = env_or("BENCH_RECOVER_RATE", rate / 2);
    let (bench, mut load) = fresh(call_agents, hold_ms);
    let over = step_with(
        &bench,
        &mut load,
        "bench_caller_overload.xml",
        rate,
        seconds,
        hold_ms,
    );
    let refused = refused_overloaded(&bench);
    let after = step(&bench, &mut load, recover_rate, seconds, hold_ms);
    let refused_after = refused_overloaded(&bench) - refused;
    let accepted = over.successful.saturating_sub(refused);
    let row = format!(
        "| {date} | {machine} | {rate} for {seconds} s | {} | {accepted} | {refused} | {} | {} | {:.0}% | {recover_rate} for {seconds} s: {} ({} failed, {} retransmissions, {refused_after} refused) |",
        over.calls,
        over.failed + over.agent_failed,
        over.retransmissions,
        over.edge_cpu_pct,
        if after.passed() { "clean" } else { "not clean" },
        after.failed + after.agent_failed,
        after.retransmissions,
    );
    println!("{row}");
    append_row(
        "## Overload (`BENCH_OVERLOAD=RATE just bench`)",
        "SIPp callers at RATE (twice the highest clean rate) for a step, each \
             taking a 503 with Retry-After as an end (a 503 without it fails the call), then at \
             once the ordinary callers at half that rate, on the same system. Accepted: calls \
             answered and hung up; refused: the distributor's calls_refused_overloaded; failed: \
             SIPp's failed calls and the load agents' (a call accepted and not completed); \
             retransmissions: SIPp's, of the INVITEs and BYEs.\n\n\
             | date | machine | callers | calls | accepted | refused (503) | failed | retransmissions | agent-edge CPU | then |\n\
             |---|---|---|---:|---:|---:|---:|---:|---:|---|\n",
        &row,
    );
}

/// Adds `row` at the end of the table under `heading` in bench/results.md (`BENCH_RESULTS`),
/// writing the heading and `intro` (the text and the table's head) first when missing.
fn append_row(heading: &str, intro: &str, row: &str) {
    let results = std::env::var_os("BENCH_RESULTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results.md"));
    let mut text = std::fs::read_to_string(&results).unwrap_or_default();
    if !text.contains(heading) {
        text.push_str(&format!("\n{heading}\n\n{intro}"));
    }
    // The row goes at the end of the section's last table.
    let at = text.find(heading).unwrap_or(0);
    let section_end = text[at + heading.len()..]
        .find("\n## ")
        .map_or(text.len(), |i| at + heading.len() + i + 1);
    let insert = text[..section_end].trim_end_matches('\n').len();
    text.insert_str(insert, &format!("\n{}", row.trim_end()));
    std::fs::write(&results, text).unwrap();
}

fn main() {
    let seconds = env_or("BENCH_STEP_S", 30u64);
    let call_agents = env_or("BENCH_AGENTS", 4000usize);
    let hold_ms = env_or("BENCH_HOLD_MS", 1000u64);
    let idle_counts: Vec<usize> = std::env::var("BENCH_IDLE")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let date = Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let machine = machine();
    eprintln!(
        "binary: {}\nmachine: {machine}",
        agent_edge_tests::binary().display()
    );

    if let Some(rate) = std::env::var("BENCH_OVERLOAD")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        overload(rate, seconds, call_agents, hold_ms, &date, &machine);
        return;
    }

    let idle = idle_memory(&idle_counts);

    let steps = ramp(call_agents, seconds, hold_ms);

    println!(
        "| rate (calls/s) | result | INVITE→180 p50 / p99 | INVITE→200 p50 / p99 | CPU s per 1k calls | agent-edge CPU | load agents CPU | SIPp CPU | RSS |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for s in &steps {
        let verdict = if s.passed() {
            "pass".to_owned()
        } else {
            format!(
                "{} failed, {} retransmissions, {} of {} ok",
                s.failed + s.agent_failed,
                s.retransmissions,
                s.successful,
                s.calls
            )
        };
        println!(
            "| {} | {verdict} | {} / {} | {} / {} | {:.2} | {:.0}% | {:.0}% | {:.0}% | {:.0} MiB |",
            s.rate,
            ms(s.ring_p50),
            ms(s.ring_p99),
            ms(s.answer_p50),
            ms(s.answer_p99),
            s.cpu_s_per_1k,
            s.edge_cpu_pct,
            s.load_cpu_pct,
            s.sipp_cpu_pct,
            s.rss_mib
        );
    }
    let best = steps.iter().filter(|s| s.passed()).max_by_key(|s| s.rate);
    let at200 = steps.iter().find(|s| s.rate == 200);
    let micro = criterion_median("parse + re-address + serialise");

    let heading = "## Call load (`just bench`)";
    let intro = "SIPp over UDP → distributor → WSS tunnel → buffer server → load agents over WSS, \
             all on one machine. The highest rate held for the step (its length in brackets) \
             with 0 failed calls and 0 retransmissions; post-dial delay at 200 calls/s (SIPp's \
             response times, in its clock's steps); the agent-edge process's CPU per 1,000 \
             calls and resident memory at the highest rate; memory per idle registered WSS \
             agent; the criterion median of parse + re-address + serialise.\n\n\
             | date | machine | calls/s | INVITE→180 p50 / p99 @200 | INVITE→200 p50 / p99 @200 | CPU s per 1k calls | RSS | idle agent, 1k | idle agent, 10k | parse + re-address |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    let idle_at = |n: usize| {
        idle.iter()
            .find(|i| i.agents == n)
            .map_or("–".into(), |i| format!("{:.1} KiB", i.kib_per_agent))
    };
    let row = format!(
        "| {date} | {machine} | {} | {} / {} | {} / {} | {} | {} | {} | {} | {} |\n",
        best.map_or(format!("none ({seconds} s)"), |s| format!(
            "{} ({seconds} s)",
            s.rate
        )),
        ms(at200.and_then(|s| s.ring_p50)),
        ms(at200.and_then(|s| s.ring_p99)),
        ms(at200.and_then(|s| s.answer_p50)),
        ms(at200.and_then(|s| s.answer_p99)),
        best.map_or("–".into(), |s| format!("{:.2}", s.cpu_s_per_1k)),
        best.map_or("–".into(), |s| format!("{:.0} MiB", s.rss_mib)),
        idle_at(1000),
        idle_at(10000),
        micro.map_or("not run".into(), |ns| format!("{:.2} µs", ns / 1000.0)),
    );
    append_row(heading, intro, &row);
    for i in &idle {
        println!(
            "idle: {} agents registered in {:.1} s; agent-edge {:.1} KiB per agent; load agents {:.1} KiB per agent",
            i.agents, i.register_s, i.kib_per_agent, i.load_kib_per_agent
        );
    }
    println!("row appended to bench/results.md (or BENCH_RESULTS):\n{row}");
}
