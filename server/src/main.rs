//! `agent-edge`: runs a distributor, a buffer server, or (with no subcommand) both in one
//! process joined by a real WSS tunnel on loopback.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use agent_edge::admin::api::AdminState;
use agent_edge::admin::keys::KeyRing;
use agent_edge::admin::store::Store;
use agent_edge::admin::tokens::{
    MAX_AGENT_TOKEN_TTL_S, TokenIssuer, TokenVerifier, VerifierSettings,
};
use agent_edge::config::Config;
use agent_edge::transport::tunnel::{self, TunnelClientEvent, TunnelServerEvent};
use agent_edge::transport::{self, Transports};
use agent_edge::{announce, buffer, distributor};
use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::mpsc;

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

/// Room for SIP messages waiting for their role's task.
const EVENT_QUEUE: usize = 8192;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Both rustls and the WebSocket client pick the process-wide provider: set it first.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(Role::Token {
        action:
            TokenAction::Issue {
                agent,
                edge,
                name,
                ttl,
            },
    }) = &cli.role
    {
        let id = &config.identity;
        let ring = key_ring(&config)?;
        let (subject, issuer, default_ttl, max_ttl) = match (agent, edge) {
            (Some(agent), _) => (
                agent,
                token_issuer(&config, &ring),
                id.token_ttl_s,
                MAX_AGENT_TOKEN_TTL_S,
            ),
            (None, Some(edge)) => (
                edge,
                edge_token_issuer(&config, &ring),
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
            proto_tunnel::valid_id(subject, 128),
            "the agent or edge must be 1-128 visible characters without spaces"
        );
        let token = issuer.issue(subject, name.as_deref(), ttl)?;
        println!("{token}");
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        match cli.role {
            None => {
                let ring = key_ring(&config)?;
                let tunnel = start_distributor(&config, &ring).await?;
                let url = format!("wss://{tunnel}/tunnel");
                // One process, one key: the edge gets its credential directly.
                let token = edge_token_issuer(&config, &ring).issue(
                    &config.buffer.id,
                    None,
                    config.identity.edge_token_ttl_s,
                )?;
                let https = start_buffer(&config, url, Some(token)).await?;
                // Something to try at once: a sign-in link for a demo agent.
                let demo = token_issuer(&config, &ring).issue(
                    "demo",
                    Some("Demo agent"),
                    config.identity.token_ttl_s,
                )?;
                announce(&format!("demo agent: https://{https}/?token={demo}"));
            }
            Some(Role::Distributor) => {
                start_distributor(&config, &key_ring(&config)?).await?;
            }
            Some(Role::Buffer { connect }) => {
                let url = connect.unwrap_or_else(|| config.buffer.connect.clone());
                start_buffer(&config, url, edge_credential(&config)?).await?;
            }
            Some(Role::Token { .. }) => {}
        }
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        Ok(())
    })
}

/// The distributor's key ring. Retired keys stay published as long as any token they signed
/// can live: the longest lifetime an agent or edge token may be issued with.
fn key_ring(config: &Config) -> anyhow::Result<Arc<RwLock<KeyRing>>> {
    let id = &config.identity;
    let keep = MAX_AGENT_TOKEN_TTL_S.max(id.edge_token_ttl_s);
    let ring = KeyRing::load(&id.keys_dir, keep, unix_now())
        .with_context(|| format!("preparing the signing key in {}", id.keys_dir.display()))?;
    Ok(Arc::new(RwLock::new(ring)))
}

/// Issues agent tokens.
fn token_issuer(config: &Config, ring: &Arc<RwLock<KeyRing>>) -> TokenIssuer {
    let id = &config.identity;
    TokenIssuer::new(ring.clone(), &id.issuer, &id.audience)
}

/// Issues edge credentials: the same keys, the edge audience.
fn edge_token_issuer(config: &Config, ring: &Arc<RwLock<KeyRing>>) -> TokenIssuer {
    let id = &config.identity;
    TokenIssuer::new(ring.clone(), &id.issuer, &id.edge_audience)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The buffer server's tunnel credential: `AGENT_EDGE_EDGE_TOKEN`, else `buffer.token_file`.
fn edge_credential(config: &Config) -> anyhow::Result<Option<String>> {
    if let Ok(token) = std::env::var("AGENT_EDGE_EDGE_TOKEN") {
        return Ok(Some(token.trim().to_owned()));
    }
    match &config.buffer.token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("reading the edge token {}", path.display()))?;
            Ok(Some(token.trim().to_owned()))
        }
        None => {
            tracing::warn!(
                "no tunnel credential: set AGENT_EDGE_EDGE_TOKEN or buffer.token_file \
                 (agent-edge token issue --edge ID); the distributor will refuse this edge"
            );
            Ok(None)
        }
    }
}

/// The admin key: `AGENT_EDGE_ADMIN_KEY`, else `admin.key_file`, generated when missing.
fn admin_key(config: &Config) -> anyhow::Result<String> {
    if let Ok(key) = std::env::var("AGENT_EDGE_ADMIN_KEY") {
        anyhow::ensure!(
            key.trim().len() >= 16,
            "AGENT_EDGE_ADMIN_KEY must be at least 16 characters"
        );
        return Ok(key.trim().to_owned());
    }
    let path = &config.admin.key_file;
    if !path.is_file() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let key = format!("{:032x}", rand::random::<u128>());
        certs::write_atomic(path, key.as_bytes(), true)?;
        tracing::info!(path = %path.display(), "generated an admin key");
    }
    let key = std::fs::read_to_string(path)
        .with_context(|| format!("reading the admin key {}", path.display()))?;
    Ok(key.trim().to_owned())
}

fn tls_files(config: &Config) -> anyhow::Result<certs::TlsFiles> {
    match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => Ok(certs::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: config.tls.ca.clone().unwrap_or_else(|| cert.clone()),
        }),
        _ => certs::ensure_dev_certs(&config.tls.dir).with_context(|| {
            format!(
                "preparing development certificates in {}",
                config.tls.dir.display()
            )
        }),
    }
}

/// The announcements of queues that play early media, read now so a bad file stops the
/// start, and the socket they are played from.
async fn queue_media(
    d: &agent_edge::config::DistributorConfig,
) -> anyhow::Result<Option<distributor::service::QueueMedia>> {
    use agent_edge::media::announcement::Announcement;
    let mut announcements = std::collections::HashMap::new();
    for q in &d.queues {
        if let Some(path) = &q.announcement {
            announcements.insert(q.name.clone(), Announcement::load(path)?);
        }
    }
    if announcements.is_empty() {
        return Ok(None);
    }
    let player = agent_edge::media::early::EarlyMedia::bind(d.early_media)
        .await
        .with_context(|| format!("binding early media {}", d.early_media))?;
    announce(&format!(
        "listening distributor.early_media {}",
        player.local_addr()
    ));
    Ok(Some(distributor::service::QueueMedia {
        player,
        announcements,
    }))
}

/// Binds the distributor's listeners, starts its task and returns the tunnel address.
async fn start_distributor(
    config: &Config,
    ring: &Arc<RwLock<KeyRing>>,
) -> anyhow::Result<std::net::SocketAddr> {
    let d = &config.distributor;
    let tls = certs::server_config(&tls_files(config)?)?;
    let (sip_tx, sip_rx) = mpsc::channel(EVENT_QUEUE);
    let transports = Transports::new(sip_tx, config.sip.max_message_bytes);
    let udp = transport::udp::listen(&transports, d.udp)
        .await
        .with_context(|| format!("binding distributor UDP {}", d.udp))?;
    let tcp = transport::stream::listen_tcp(&transports, d.tcp)
        .await
        .with_context(|| format!("binding distributor TCP {}", d.tcp))?;
    let tls_addr = transport::stream::listen_tls(&transports, d.tls, tls.clone())
        .await
        .with_context(|| format!("binding distributor TLS {}", d.tls))?;
    let (tunnel_tx, tunnel_rx) = mpsc::channel::<TunnelServerEvent>(EVENT_QUEUE);
    let edges = edge_token_issuer(config, ring);
    let tunnel_addr = tunnel::listen(d.tunnel, tls, &d.id, edges, tunnel_tx)
        .await
        .with_context(|| format!("binding the tunnel endpoint {}", d.tunnel))?;
    let addrs = distributor::service::BoundAddrs {
        udp,
        tcp,
        tls: tls_addr,
    };
    let issuer = token_issuer(config, ring);
    let identity = serde_json::to_string(&issuer.verifier_settings())?;
    let store = Arc::new(
        Store::open(&config.admin.db)
            .with_context(|| format!("opening {}", config.admin.db.display()))?,
    );
    let revoked = store.revoked(unix_now())?;
    let service = distributor::service::Distributor::new(
        d.clone(),
        &config.sip,
        transports,
        addrs,
        distributor::service::Identities {
            verifier: identity,
            revoked,
            edge_issuer: edge_token_issuer(config, ring),
            store: Some(store.clone()),
        },
        queue_media(d).await?,
    );
    let (command_tx, command_rx) = mpsc::channel(64);
    tokio::spawn(service.run(sip_rx, tunnel_rx, command_rx));
    let admin = AdminState {
        store,
        issuer,
        token_ttl_s: config.identity.token_ttl_s,
        admin_key: admin_key(config)?.into(),
        commands: command_tx,
    };
    let admin_addr = agent_edge::admin::api::listen(config.admin.listen, admin)
        .await
        .with_context(|| format!("binding the admin API {}", config.admin.listen))?;
    announce(&format!("listening distributor.udp {udp}"));
    announce(&format!("listening distributor.tcp {tcp}"));
    announce(&format!("listening distributor.tls {tls_addr}"));
    announce(&format!("listening distributor.tunnel {tunnel_addr}"));
    announce(&format!("listening distributor.admin {admin_addr}"));
    Ok(tunnel_addr)
}

/// Binds the buffer server's listeners, starts its task and its tunnel dialler.
async fn start_buffer(
    config: &Config,
    connect: String,
    token: Option<String>,
) -> anyhow::Result<std::net::SocketAddr> {
    let b = &config.buffer;
    let files = tls_files(config)?;
    let tls = certs::server_config(&files)?;
    let ca = config.tls.ca.clone().unwrap_or(files.ca);
    let client_tls: Arc<rustls::ClientConfig> = certs::client_config(&ca)?;
    let (sip_tx, sip_rx) = mpsc::channel(EVENT_QUEUE);
    let transports = Transports::new(sip_tx, config.sip.max_message_bytes);
    let udp = transport::udp::listen(&transports, b.udp)
        .await
        .with_context(|| format!("binding buffer UDP {}", b.udp))?;
    let tcp = transport::stream::listen_tcp(&transports, b.tcp)
        .await
        .with_context(|| format!("binding buffer TCP {}", b.tcp))?;
    let https = transport::https::listen(&transports, b.https, tls)
        .await
        .with_context(|| format!("binding buffer HTTPS {}", b.https))?;
    let (tunnel_tx, tunnel_rx) = mpsc::channel::<TunnelClientEvent>(EVENT_QUEUE);
    let addrs = buffer::service::BoundAddrs { udp, tcp, https };
    // An edge with a public address may skip the tunnel and reach the distributor over SIP.
    let (link, verifier) = match b.link_target() {
        Some(target) => {
            let token = token.clone().context(
                "buffer.distributor_sip needs the edge credential (AGENT_EDGE_EDGE_TOKEN)",
            )?;
            let path = b
                .keys_file
                .clone()
                .context("buffer.keys_file is required")?;
            let jwks = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let settings = VerifierSettings {
                issuer: config.identity.issuer.clone(),
                audience: config.identity.audience.clone(),
                jwks: serde_json::from_str(&jwks)
                    .with_context(|| format!("{} is not a JWK set", path.display()))?,
            };
            let link = buffer::service::Link { target, token };
            (Some(link), Some(TokenVerifier::new(&settings)))
        }
        None => (None, None),
    };
    let linked = link.is_some();
    let (media, media_rx) = agent_edge::buffer::media::MediaIo::bind(
        b.media,
        b.media_public_ip,
        std::time::Duration::from_secs(b.media_timeout_s),
    )
    .await
    .with_context(|| format!("binding buffer media {}", b.media))?;
    announce(&format!("listening buffer.media {}", media.webrtc_addr()));
    let service = buffer::service::Buffer::new(
        b.clone(),
        &config.sip,
        transports,
        addrs,
        link,
        verifier,
        Some(media),
    );
    tokio::spawn(service.run(sip_rx, tunnel_rx, media_rx));
    if !linked {
        let dial = tunnel::DialSettings {
            url: connect,
            tls: client_tls,
            edge_id: b.id.clone(),
            handoffs: vec![b.handoff.clone()],
            token,
        };
        tunnel::spawn_dialler(dial, tunnel_tx);
    }
    announce(&format!("listening buffer.udp {udp}"));
    announce(&format!("listening buffer.tcp {tcp}"));
    announce(&format!("listening buffer.https {https}"));
    announce(&format!("agent page: https://{https}/"));
    Ok(https)
}
