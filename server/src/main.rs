//! `agent-edge`: runs a distributor, a buffer server, or (with no subcommand) both in one
//! process joined by a real WSS tunnel on loopback. The wiring is the library's
//! [`agent_edge::app`]; this file keeps the command line, logging and the status lines.

use std::io::Write;
use std::path::PathBuf;

use agent_edge::admin::tokens::MAX_AGENT_TOKEN_TTL_S;
use agent_edge::app::{self, Roles, identity};
use agent_edge::config::Config;
use clap::{Parser, Subcommand};

/// jemalloc rather than the C library's malloc: after a burst of calls glibc kept the freed
/// memory of its per-thread arenas (a soak left 450 MB resident with nothing held, of which
/// `malloc_trim` gave back 340 MB), while jemalloc's background threads give back pages unused
/// for 10 s, busy or idle. See ARCHITECTURE.md (Memory) and bench/results.md (the memory soak).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Contact-centre agent edge: distributor and buffer servers"
)]
struct Cli {
    /// TOML configuration file; every key is optional (see config/agent-edge.example.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// The distributor alone: callers' SIP, and the tunnel endpoint edges dial.
    Distributor,
    /// A buffer server alone, dialling a distributor's tunnel.
    Buffer {
        /// The distributor's tunnel, e.g. wss://127.0.0.1:7443/tunnel (default from config).
        #[arg(long)]
        connect: Option<String>,
    },
    /// Agent tokens, signed with the distributor's key (from the same config).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Prints a new token alone on stdout: for an agent, or an edge's tunnel credential.
    #[command(group(clap::ArgGroup::new("subject").required(true).args(["agent", "edge"])))]
    Issue {
        /// The agent's identifier (the user part of its SIP address).
        #[arg(long)]
        agent: Option<String>,
        /// A buffer server's id: the token lets it open the tunnel.
        #[arg(long)]
        edge: Option<String>,
        /// The agent's display name.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds (default: identity.token_ttl_s).
        #[arg(long)]
        ttl: Option<u64>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let roles = match cli.role {
        Some(Role::Token { action }) => return issue(&config, action),
        None => Roles::AllInOne,
        Some(Role::Distributor) => Roles::Distributor,
        Some(Role::Buffer { connect }) => Roles::Buffer { connect },
    };
    let mut running = app::run(config, roles, stop_signal())?;
    // The one place status lines are printed: operators and the end-to-end tests read them.
    if let Some(status) = running.status() {
        std::thread::spawn(move || {
            for line in status {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        });
    }
    running.wait();
    Ok(())
}

/// Ctrl-C or SIGTERM (what systemd and container runtimes send) starts the drain.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
}

/// `agent-edge token issue`: prints a new token alone on stdout.
fn issue(config: &Config, action: TokenAction) -> anyhow::Result<()> {
    let TokenAction::Issue {
        agent,
        edge,
        name,
        ttl,
    } = action;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let id = &config.identity;
    let ring = identity::key_ring(config)?;
    let (subject, issuer, default_ttl, max_ttl) = match (agent, edge) {
        (Some(agent), _) => (
            agent,
            identity::token_issuer(config, &ring),
            id.token_ttl_s,
            MAX_AGENT_TOKEN_TTL_S,
        ),
        (None, Some(edge)) => (
            edge,
            identity::edge_token_issuer(config, &ring),
            id.edge_token_ttl_s,
            id.edge_token_ttl_s.max(MAX_AGENT_TOKEN_TTL_S),
        ),
        (None, None) => anyhow::bail!("name --agent or --edge"),
    };
    let ttl = ttl.unwrap_or(default_ttl);
    anyhow::ensure!(
        (60..=max_ttl).contains(&ttl),
        "--ttl must be between 60 and {max_ttl} seconds"
    );
    anyhow::ensure!(
        proto_tunnel::valid_id(&subject, 128),
        "the agent or edge must be 1-128 visible characters without spaces"
    );
    let token = issuer.issue(&subject, name.as_deref(), ttl)?;
    println!("{token}");
    Ok(())
}
