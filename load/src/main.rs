//! `agent-edge-load`: thousands of agents from one process, for load tests and benchmarks.
//! Each agent is provisioned through the admin API with its own token, connects to the
//! buffer server over WSS (real TLS), registers, and takes the calls offered to it: 180 at
//! once, 200 after `--answer-after-ms`, BYE `--hold-ms` after the ACK.
//!
//! Stdout is for the program that drives it: `ready agents=N seconds=S` once every agent is
//! registered, then `report {json}` for each `report` line read on stdin (and every
//! `--report-every-s`), counting from the previous report. It ends at the end of stdin.

mod admin;
mod agent;
mod sip;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Semaphore, mpsc};

use crate::agent::{Agent, Settings};
use crate::stats::Stats;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Load agents for agent-edge: many WSS agents from one process"
)]
struct Cli {
    /// The buffer server's agent endpoint.
    #[arg(long, default_value = "wss://127.0.0.1:8443/sip")]
    sip: String,
    /// The CA certificate (PEM) the buffer server's certificate chains to.
    #[arg(long)]
    ca: PathBuf,
    /// The distributor's admin API, where the agents and their tokens are made.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    admin: String,
    /// A file holding the admin key (else the environment variable AGENT_EDGE_ADMIN_KEY).
    #[arg(long)]
    admin_key_file: Option<PathBuf>,
    /// How many agents.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Agent ids are PREFIX-NNNNN, numbered from --first.
    #[arg(long, default_value = "load")]
    prefix: String,
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// Skills given to every agent (comma-separated).
    #[arg(long, value_delimiter = ',')]
    skills: Vec<String>,
    /// Ringing time before the 200 OK.
    #[arg(long, default_value_t = 0)]
    answer_after_ms: u64,
    /// Talk time from the ACK to the agent's BYE.
    #[arg(long, default_value_t = 1000)]
    hold_ms: u64,
    /// Registration lifetime asked for (refreshed at half the granted time).
    #[arg(long, default_value_t = 3600)]
    expires: u32,
    /// Agents connecting and registering at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Also print a report every this many seconds (0: only when asked on stdin).
    #[arg(long, default_value_t = 0)]
    report_every_s: u64,
}

/// Admin API connections used at once to provision agents.
const PROVISIONING_CONNECTIONS: usize = 8;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a TLS crypto provider was already installed"))?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    anyhow::ensure!(cli.agents > 0, "--agents must be at least 1");
    let key = match &cli.admin_key_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the admin key from {}", path.display()))?,
        None => std::env::var("AGENT_EDGE_ADMIN_KEY")
            .context("give --admin-key-file or set AGENT_EDGE_ADMIN_KEY")?,
    };
    let key = key.trim().to_owned();
    let tls = certs::client_config(&cli.ca)
        .with_context(|| format!("reading the CA certificate {}", cli.ca.display()))?;
    let domain = cli
        .sip
        .strip_prefix("wss://")
        .and_then(|rest| rest.split(['/', ':']).next())
        .filter(|h| !h.is_empty())
        .context("--sip must be a wss:// URL: agents' WebSockets are always TLS")?
        .to_owned();
    let ids: Vec<String> = (cli.first..cli.first + cli.agents)
        .map(|i| format!("{}-{i:05}", cli.prefix))
        .collect();

    let started = Instant::now();
    let tokens = provision(&cli.admin, &key, &ids, &cli.skills).await?;
    eprintln!(
        "provisioned {} agents in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );

    let settings = Arc::new(Settings {
        url: cli.sip.clone(),
        tls,
        domain,
        answer_after: Duration::from_millis(cli.answer_after_ms),
        hold: Duration::from_millis(cli.hold_ms),
        expires: cli.expires,
    });
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(cli.concurrency.max(1)));
    let (registered, mut results) = mpsc::channel(ids.len());
    for (id, token) in ids.into_iter().zip(tokens) {
        let (settings, stats, gate, registered) = (
            settings.clone(),
            stats.clone(),
            gate.clone(),
            registered.clone(),
        );
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let agent = Agent::register(id, token, settings, stats).await;
            drop(permit);
            match agent {
                Ok(agent) => {
                    let _ = registered.send(Ok(())).await;
                    let why = agent.serve().await;
                    eprintln!("{why}");
                }
                Err(e) => {
                    let _ = registered.send(Err(e)).await;
                }
            }
        });
    }
    drop(registered);
    for _ in 0..cli.agents {
        match results.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => anyhow::bail!("registration failed: {e}"),
            None => anyhow::bail!("the agent tasks stopped"),
        }
    }
    println!(
        "ready agents={} seconds={:.2}",
        cli.agents,
        started.elapsed().as_secs_f64()
    );

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let every = Duration::from_secs(cli.report_every_s.max(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            line = stdin.next_line() => match line {
                Ok(Some(l)) if l.trim() == "report" => report(&stats)?,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
            _ = ticker.tick(), if cli.report_every_s > 0 => report(&stats)?,
        }
    }
    report(&stats)
}

fn report(stats: &Stats) -> anyhow::Result<()> {
    println!("report {}", serde_json::to_string(&stats.take())?);
    Ok(())
}

/// A token for each id, made through the admin API on a few connections at once.
async fn provision(
    admin: &str,
    key: &str,
    ids: &[String],
    skills: &[String],
) -> anyhow::Result<Vec<String>> {
    let per = ids.len().div_ceil(PROVISIONING_CONNECTIONS);
    let mut workers = Vec::new();
    for chunk in ids.chunks(per) {
        let (admin, key, chunk, skills) = (
            admin.to_owned(),
            key.to_owned(),
            chunk.to_vec(),
            skills.to_vec(),
        );
        workers.push(tokio::spawn(async move {
            let mut api = admin::Admin::connect(&admin, &key).await?;
            let mut tokens = Vec::with_capacity(chunk.len());
            for id in &chunk {
                tokens.push(api.agent_token(id, &skills).await?);
            }
            Ok::<_, admin::AdminError>(tokens)
        }));
    }
    let mut tokens = Vec::with_capacity(ids.len());
    for w in workers {
        tokens.extend(w.await.context("a provisioning task failed")??);
    }
    Ok(tokens)
}
