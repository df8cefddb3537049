//! What a bridged call costs the buffer server: CPU time and resident memory per call with
//! N calls up at once (default 50 and 200), each a SIPp caller playing G.711 from a pcap and
//! a WebRTC agent (str0m, in this process) sending audio back. Measured on the agent-edge
//! process from /proc while every call is carrying audio both ways.
//!
//! `just bench-media` builds the release binary and runs this; or
//! `AGENT_EDGE_BIN=target/release/agent-edge cargo bench -p agent-edge-tests --bench media_bridge -- 50 200`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use agent_edge_tests::webrtc_agent::WebRtcAgent;
use agent_edge_tests::{System, WAIT, caller, issue_token};

/// (CPU ticks used, resident KiB) of a process.
fn usage(pid: u32) -> (u64, u64) {
    let (ticks, _, rss) = agent_edge_tests::process_usage(pid);
    (ticks, rss)
}

fn ticks_per_second() -> u64 {
    // USER_HZ is 100 on every Linux this runs on (sysconf(_SC_CLK_TCK)).
    100
}

struct Figures {
    calls: usize,
    cpu_ms_per_call_s: f64,
    rss_idle_kib: u64,
    kib_per_call: f64,
    packets_to_agents: usize,
}

async fn measure(calls: usize) -> Figures {
    let sys = tokio::task::spawn_blocking(move || {
        System::start_with("agent_max_calls = 1", "media_timeout_s = 60")
    })
    .await
    .unwrap();
    let pid = sys.edge.pid();
    let ca = sys.path().join("certs").join("ca.pem");
    let mut agents = Vec::new();
    for i in 0..calls {
        let (dir, name) = (sys.path().to_owned(), format!("agent{i:03}"));
        let token = tokio::task::spawn_blocking(move || issue_token(&dir, &name))
            .await
            .unwrap();
        agents.push(
            WebRtcAgent::register(sys.buffer_https, &ca, &format!("agent{i:03}"), &token).await,
        );
    }
    let (dir, mut edge) = (sys.path().to_owned(), sys.edge);
    let edge = tokio::task::spawn_blocking(move || {
        for i in 0..calls {
            edge.wait_line(&format!("agent-up agent{i:03} edge-1"), WAIT);
        }
        edge
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, rss_idle) = usage(pid);
    let dist = sys.dist_udp;
    let n = calls.to_string();
    let rate = calls.min(100).to_string();
    let run = tokio::task::spawn_blocking(move || {
        caller("caller_pcap_audio.xml", &dir, "bench-callers", dist)
            .arg(&["-m", &n, "-r", &rate, "-l", &n, "-rtp_echo"])
            .run()
    });
    let mut tasks = Vec::new();
    let payloads: Vec<Vec<u8>> = (0..400).map(|i| vec![(i % 250) as u8; 160]).collect();
    let (tx, mut answered) = tokio::sync::mpsc::channel(calls);
    for mut agent in agents {
        let (payloads, tx) = (payloads.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let invite = agent.wait_invite().await;
            let media = agent.answer(&invite, payloads).await;
            let _ = tx.send(()).await;
            agent.wait_bye().await;
            let received = media.received.lock().unwrap().len();
            drop(media);
            received
        }));
    }
    for _ in 0..calls {
        tokio::time::timeout(WAIT, answered.recv()).await.unwrap();
    }
    // Every call answered; the pcap starts a second after each answer. Measure 4 s in the
    // middle of the audio.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (t0, _) = usage(pid);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (t1, rss_busy) = usage(pid);
    let elapsed = start.elapsed().as_secs_f64();
    let mut packets = 0;
    for t in tasks {
        packets += t.await.unwrap();
    }
    run.await.unwrap().assert_ok("bench callers");
    drop(edge);
    let cpu_ms = (t1 - t0) as f64 * 1000.0 / ticks_per_second() as f64;
    Figures {
        calls,
        cpu_ms_per_call_s: cpu_ms / elapsed / calls as f64,
        rss_idle_kib: rss_idle,
        kib_per_call: rss_busy.saturating_sub(rss_idle) as f64 / calls as f64,
        packets_to_agents: packets,
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("binary: {}", agent_edge_tests::binary().display());
    println!(
        "| calls | CPU ms per call-second | RSS idle (MiB) | RSS per call (KiB) | RTP to agents |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for calls in counts {
        let f = rt.block_on(measure(calls));
        println!(
            "| {} | {:.2} | {:.1} | {:.0} | {} |",
            f.calls,
            f.cpu_ms_per_call_s,
            f.rss_idle_kib as f64 / 1024.0,
            f.kib_per_call,
            f.packets_to_agents
        );
    }
}
