//! What relaying callers' media costs the distributor (issue 16's target: at most 0.1 % of one
//! core per relayed call): its CPU time and resident memory with N relayed calls up at once
//! (default 50 and 200). The distributor (`agent-edge distributor`) and an exposed buffer
//! server (`agent-edge buffer`, `[buffer] expose = "tunnel"`) run as two processes, so the
//! distributor's figures, read from /proc, are its own. Each call is a SIPp caller dialling the
//! distributor and playing G.711 from a pcap (echoing what it receives) to a relay port of the
//! distributor's, and a WebRTC agent (str0m, in this process) registered through the
//! distributor's `/edge/edge-1/sip` sending audio back. Measured over 10 s while every call
//! carries audio both ways; the relay's counters (the live view's `media_relay`) are printed at
//! both ends of that window.
//!
//! `AGENT_EDGE_BIN=target/release/agent-edge cargo bench -p agent-edge-tests --bench media_relay -- 50 200`
//! (`BENCH_LOG` sets both processes' `RUST_LOG`, `info` by default).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_edge_tests::process_usage as usage;
use agent_edge_tests::webrtc_agent::{Received, WebRtcAgent};
use agent_edge_tests::{
    Edge, LOOPBACK, WAIT, admin_key, caller, free_port, http, issue_edge_token, issue_token,
    test_dir, write_config_on,
};

/// The steady-state window measured.
const WINDOW: Duration = Duration::from_secs(10);
/// How long after the last call is answered the window opens: the caller's audio starts a
/// second after its ACK, the agent's once ICE and DTLS are done.
const SETTLE: Duration = Duration::from_millis(1500);
/// Payloads each agent sends, one every 20 ms: 16 s, past the window.
const AGENT_PACKETS: usize = 800;

/// The caller: g711a.pcap (236 packets of 30 ms, 7.05 s) twice, 1 s after the ACK, then BYE
/// at 15.7 s (the agent's harness gives up after 20 s of silence on its WebSocket, so the
/// call must end before that). Written next to the traces: the scenarios folder is shared.
const CALLER: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="relay bench caller">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller [call_number]" <sip:caller[call_number]@[local_ip]:[local_port]>;tag=[pid]SIPpTag09[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Subject: agent-edge relay bench call
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 8 101
      a=rtpmap:8 PCMA/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-16

    ]]>
  </send>
  <label id="1"/>
  <recv response="100" optional="true" next="1"/>
  <recv response="180" optional="true" next="1"/>
  <recv response="183" optional="true" next="1"/>
  <recv response="200" rrs="true" rtd="true"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: "Caller [call_number]" <sip:caller[call_number]@[local_ip]:[local_port]>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <pause milliseconds="1000"/>
  <nop>
    <action>
      <exec play_pcap_audio="/usr/share/sip-tester/g711a.pcap"/>
    </action>
  </nop>
  <pause milliseconds="7100"/>
  <nop>
    <action>
      <exec play_pcap_audio="/usr/share/sip-tester/g711a.pcap"/>
    </action>
  </nop>
  <pause milliseconds="7600"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: "Caller [call_number]" <sip:caller[call_number]@[local_ip]:[local_port]>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
</scenario>
"#;

/// The caller's packets per second: 236 in 7.05 s.
const CALLER_PPS: f64 = 236.0 / 7.05;

/// USER_HZ is 100 on every Linux this runs on (sysconf(_SC_CLK_TCK)).
const TICKS_PER_SECOND: f64 = 100.0;

/// The two processes, started as an operator would: the distributor, and the exposed edge
/// dialling its public listener.
struct Split {
    dir: tempfile::TempDir,
    distributor: Edge,
    buffer: Edge,
    sip: SocketAddr,
    public: SocketAddr,
    admin: SocketAddr,
}

fn start(log: &str) -> Split {
    let dir = test_dir();
    let d = dir.path();
    let public_port = free_port();
    // One config for both: the distributor's copy has its public listener where the edge
    // dials; the [buffer] section (expose = "tunnel") is the edge's.
    let config = write_config_on(d, LOOPBACK, LOOPBACK, "", "expose = \"tunnel\"");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("public = \"{LOOPBACK}:0\""),
        &format!("public = \"{LOOPBACK}:{public_port}\""),
    );
    let dist_config = d.join("distributor.toml");
    std::fs::write(&dist_config, text).unwrap();
    let mut distributor = Edge::start_with_env(
        &["distributor"],
        &dist_config,
        &d.join("distributor.log"),
        &[("RUST_LOG", log)],
    );
    let sip = distributor.addr("distributor.udp");
    let public = distributor.addr("distributor.public");
    let admin = distributor.addr("distributor.admin");
    assert_eq!(public.port(), public_port);
    let token = issue_edge_token(d, "edge-1");
    let url = format!("wss://{public}/tunnel");
    let mut buffer = Edge::start_with_env(
        &["buffer", "--connect", &url],
        &config,
        &d.join("buffer.log"),
        &[("AGENT_EDGE_EDGE_TOKEN", &token), ("RUST_LOG", log)],
    );
    buffer.wait_line("tunnel-up edge-1", WAIT);
    buffer.wait_line("media-relay-up edge-1", WAIT);
    let deadline = Instant::now() + WAIT;
    while agent_edge_tests::https::get(d, public, "/edge/edge-1/").status != 200 {
        assert!(
            Instant::now() < deadline,
            "edge-1 never exposed\n{}",
            buffer.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Split {
        dir,
        distributor,
        buffer,
        sip,
        public,
        admin,
    }
}

/// edge-1's entry in the distributor's live view of the relay, and when it was read.
async fn relay_view(admin: SocketAddr, key: &str) -> (serde_json::Value, Instant) {
    let key = key.to_owned();
    tokio::task::spawn_blocking(move || {
        let (code, body) = http(admin, "GET", "/live", Some(&key), None);
        assert_eq!(code, 200, "{body}");
        let live: serde_json::Value = serde_json::from_str(&body).unwrap();
        let edge = live["media_relay"]
            .as_array()
            .and_then(|v| v.iter().find(|c| c["edge"] == "edge-1").cloned())
            .unwrap_or_else(|| panic!("no media connection of edge-1: {live}"));
        (edge, Instant::now())
    })
    .await
    .unwrap()
}

fn count(view: &serde_json::Value, key: &str) -> u64 {
    view[key].as_u64().unwrap_or(0)
}

/// Everything the relay dropped or failed to send, summed (the edge's own report included).
fn drops(view: &serde_json::Value) -> u64 {
    [
        "dropped_queue_full",
        "dropped_late",
        "dropped_unknown_flow",
        "dropped_bad_destination",
        "dropped_malformed",
        "send_failed",
        "refused",
        "edge_dropped_late",
        "edge_dropped_queue_full",
    ]
    .iter()
    .map(|k| count(view, k))
    .sum()
}

/// Per agent: (packets of the caller's audio, packets of its own audio echoed back).
fn heard(calls: &[Arc<Mutex<Vec<Received>>>]) -> Vec<(usize, usize)> {
    calls
        .iter()
        .map(|r| {
            let r = r.lock().unwrap();
            let echoed = r.iter().filter(|(_, p)| p.starts_with(b"AGENT-")).count();
            (r.len() - echoed, echoed)
        })
        .collect()
}

/// A log line without its colours (the binary colours its log even into a file).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Warnings and errors in a log so far: their number and the first few.
fn log_problems(path: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<String> = text
        .lines()
        .map(plain)
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    let first = lines.iter().take(6).cloned().collect();
    (lines.len(), first)
}

struct Figures {
    calls: usize,
    answer_spread_s: f64,
    idle_cpu_pct: f64,
    cpu_pct: f64,
    kernel_pct: f64,
    cpu_ms_per_call_s: f64,
    buffer_cpu_ms_per_call_s: f64,
    rss_idle_kib: u64,
    kib_per_call: f64,
    to_edge_pps_per_call: f64,
    from_edge_pps_per_call: f64,
    us_per_packet: f64,
    window_to_edge: u64,
    window_from_edge: u64,
    window_drops: u64,
    flows: u64,
    with_caller_audio: usize,
    with_echo: usize,
    callers_ok: u64,
    callers_failed: u64,
}

async fn measure(calls: usize, log: String) -> Figures {
    let sys = tokio::task::spawn_blocking(move || start(&log))
        .await
        .unwrap();
    let dist_pid = sys.distributor.pid();
    let buffer_pid = sys.buffer.pid();
    let key = admin_key(sys.dir.path());
    let ca = sys.dir.path().join("certs").join("ca.pem");
    let mut agents = Vec::new();
    for i in 0..calls {
        let (dir, name) = (sys.dir.path().to_owned(), format!("agent{i:03}"));
        let token = tokio::task::spawn_blocking(move || issue_token(&dir, &name))
            .await
            .unwrap();
        agents.push(
            WebRtcAgent::register_at(
                sys.public,
                "/edge/edge-1/sip",
                &ca,
                &format!("agent{i:03}"),
                &token,
            )
            .await,
        );
    }
    let Split {
        dir,
        distributor,
        buffer,
        sip,
        admin,
        ..
    } = sys;
    let mut distributor = distributor;
    let distributor = tokio::task::spawn_blocking(move || {
        distributor.wait_count("agent-up agent", calls, WAIT);
        distributor
    })
    .await
    .unwrap();

    // Idle: every agent signed in, no call.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle0, _, _) = usage(dist_pid);
    let idle_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle1, _, rss_idle) = usage(dist_pid);
    let idle_cpu_pct =
        (idle1 - idle0) as f64 / TICKS_PER_SECOND / idle_start.elapsed().as_secs_f64() * 100.0;

    let scenario = dir.path().join("relay_bench_caller.xml");
    std::fs::write(&scenario, CALLER).unwrap();
    let (n, rate) = (calls.to_string(), calls.min(100).to_string());
    let trace_dir = dir.path().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        caller(scenario.to_str().unwrap(), &trace_dir, "bench-callers", sip)
            .arg(&["-m", &n, "-r", &rate, "-l", &n, "-rtp_echo"])
            .run()
    });
    let payloads = agent_edge_tests::webrtc_agent::marked_payloads(AGENT_PACKETS);
    let (tx, mut answered) = tokio::sync::mpsc::channel(calls);
    let mut tasks = Vec::new();
    for mut agent in agents {
        let (payloads, tx) = (payloads.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let invite = agent.wait_invite().await;
            let media = agent.answer(&invite, payloads).await;
            let _ = tx.send((Instant::now(), media.received.clone())).await;
            agent.wait_bye().await;
            drop(media);
        }));
    }
    let mut received = Vec::new();
    let mut first = None;
    for _ in 0..calls {
        let (at, r) = tokio::time::timeout(WAIT, answered.recv())
            .await
            .expect("every call answered")
            .unwrap();
        first.get_or_insert(at);
        received.push(r);
    }
    let answer_spread_s = first.unwrap().elapsed().as_secs_f64();

    // Every call answered: once its audio runs both ways, the window.
    tokio::time::sleep(SETTLE).await;
    let before = heard(&received);
    let (v0, at0) = relay_view(admin, &key).await;
    let (t0, s0, _) = usage(dist_pid);
    let (b0, _, _) = usage(buffer_pid);
    let start = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let (t1, s1, rss_busy) = usage(dist_pid);
    let (b1, _, _) = usage(buffer_pid);
    let elapsed = start.elapsed().as_secs_f64();
    let (v1, at1) = relay_view(admin, &key).await;
    let after = heard(&received);
    println!("\n{calls} calls: the relay at the window's start: {v0}");
    println!("{calls} calls: the relay at the window's end:   {v1}");

    for t in tasks {
        t.await.unwrap();
    }
    let run = run.await.unwrap();
    let (v_end, _) = relay_view(admin, &key).await;
    println!("{calls} calls: the relay after the calls:      {v_end}");
    if !(run.status.success() && run.failed == 0) {
        println!(
            "{calls} calls: SIPp exited {:?}:\n{}",
            run.status.code(),
            run.output
        );
    }
    // Read before the processes go: the edge losing its relay as they stop is no finding.
    for (who, log) in [("distributor", "distributor.log"), ("buffer", "buffer.log")] {
        let (n, first) = log_problems(&dir.path().join(log));
        println!("{calls} calls: {who} log: {n} warnings or errors");
        for line in first {
            println!("    {line}");
        }
    }
    drop(buffer);
    drop(distributor);

    let cpu_s = (t1 - t0) as f64 / TICKS_PER_SECOND;
    let counters_s = at1.duration_since(at0).as_secs_f64();
    let window_to_edge = count(&v1, "packets_to_edge") - count(&v0, "packets_to_edge");
    let window_from_edge = count(&v1, "packets_from_edge") - count(&v0, "packets_from_edge");
    let packets_per_s = (window_to_edge + window_from_edge) as f64 / counters_s;
    let grew = |pick: fn(&(usize, usize)) -> usize| {
        before
            .iter()
            .zip(&after)
            .filter(|(b, a)| pick(a) > pick(b))
            .count()
    };
    Figures {
        calls,
        answer_spread_s,
        idle_cpu_pct,
        cpu_pct: cpu_s / elapsed * 100.0,
        kernel_pct: if t1 > t0 {
            (s1 - s0) as f64 * 100.0 / (t1 - t0) as f64
        } else {
            0.0
        },
        cpu_ms_per_call_s: cpu_s * 1000.0 / elapsed / calls as f64,
        buffer_cpu_ms_per_call_s: (b1 - b0) as f64 * 1000.0
            / TICKS_PER_SECOND
            / elapsed
            / calls as f64,
        rss_idle_kib: rss_idle,
        kib_per_call: rss_busy.saturating_sub(rss_idle) as f64 / calls as f64,
        to_edge_pps_per_call: window_to_edge as f64 / counters_s / calls as f64,
        from_edge_pps_per_call: window_from_edge as f64 / counters_s / calls as f64,
        us_per_packet: cpu_s / elapsed / packets_per_s * 1e6,
        window_to_edge,
        window_from_edge,
        window_drops: drops(&v1) - drops(&v0),
        flows: count(&v1, "flows"),
        with_caller_audio: grew(|h| h.0),
        with_echo: grew(|h| h.1),
        callers_ok: run.successful,
        callers_failed: run.failed,
    }
}

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![50, 200]
    } else {
        counts
    };
    let log = std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("binary: {}", agent_edge_tests::binary().display());
    println!(
        "RUST_LOG={log}; window {} s from {} ms after the last answer; expected per call: \
         {:.1} packets/s to the edge (caller audio {CALLER_PPS:.1} + echo 50), 50 from it",
        WINDOW.as_secs(),
        SETTLE.as_millis(),
        CALLER_PPS + 50.0
    );
    let mut rows = Vec::new();
    for calls in counts {
        let f = rt.block_on(measure(calls, log.clone()));
        println!(
            "{} calls: answered within {:.2} s; {} flows open in the window; {} of {} agents \
             heard the caller and {} their own echo in it; relayed in the window {} packets to \
             the edge and {} from it, {} dropped; callers {} ok, {} failed",
            f.calls,
            f.answer_spread_s,
            f.flows,
            f.with_caller_audio,
            f.calls,
            f.with_echo,
            f.window_to_edge,
            f.window_from_edge,
            f.window_drops,
            f.callers_ok,
            f.callers_failed
        );
        rows.push(f);
    }
    println!(
        "\n| calls | distributor CPU ms per call-second | % of a core per call | distributor CPU \
         (% of a core; share in the kernel) | idle, agents signed in (% of a core) | µs per packet | ms per call-second at 100 packets/s (20 ms both ways) | RSS idle (MiB) \
         | RSS per call (KiB) | packets/s per call to edge / from edge | dropped | buffer CPU ms \
         per call-second |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for f in rows {
        println!(
            "| {} | {:.3} | {:.4} % | {:.1} % ({:.0} % kernel) | {:.1} % | {:.1} | {:.2} | {:.1} | {:.0} | {:.1} / {:.1} | {} | {:.2} |",
            f.calls,
            f.cpu_ms_per_call_s,
            f.cpu_ms_per_call_s / 10.0,
            f.cpu_pct,
            f.kernel_pct,
            f.idle_cpu_pct,
            f.us_per_packet,
            f.us_per_packet * 100.0 / 1000.0,
            f.rss_idle_kib as f64 / 1024.0,
            f.kib_per_call,
            f.to_edge_pps_per_call,
            f.from_edge_pps_per_call,
            f.window_drops,
            f.buffer_cpu_ms_per_call_s
        );
    }
    println!("target: at most 0.1 % of one core (1 ms CPU per call-second) per relayed call");
}
