//! A whole system in one call: [`run`] binds every listener of the roles asked for, starts
//! them, and returns a [`Running`] with the bound addresses, so tests start a system
//! in-process on port 0 the way `main.rs` starts it on the configured ports (the shape of
//! mini-redis's `server::run(listener, shutdown)`).
//!
//! The system runs on a runtime of its own. When the `shutdown` future given to [`run`]
//! completes, it drains: new calls are refused with 503, calls in progress (and callers
//! waiting in queues) get `shutdown.grace_s` to end, then both legs of each remaining call
//! are hung up and their BYEs get `shutdown.bye_wait_s` to be answered. [`Running::wait`]
//! returns after that, with every task ended and every socket closed.

pub mod identity;
mod roles;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, ShutdownConfig};
use crate::{buffer, distributor};
use status::{Status, StatusSink};

/// Which roles one process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roles {
    /// A distributor and a buffer server joined by a real WSS tunnel on loopback.
    AllInOne,
    /// The distributor alone: callers' SIP, and the tunnel endpoint edges dial.
    Distributor,
    /// A buffer server alone, dialling a distributor's tunnel (`None`: `buffer.connect`).
    Buffer { connect: Option<String> },
}

/// Why a system could not start: what was being done, and the error underneath.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct StartError {
    what: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StartError {
    fn msg(what: &str) -> StartError {
        StartError {
            what: what.to_owned(),
            source: None,
        }
    }
}

/// Names what failed, the way `anyhow`'s context does, without `anyhow` in the library.
trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, StartError>;
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync>>> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, StartError> {
        self.map_err(|e| StartError {
            what: what(),
            source: Some(e.into()),
        })
    }
}

/// The distributor's bound addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DistributorAddrs {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub tls: SocketAddr,
    /// The public listener: edges' tunnels and exposed edges' pages.
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// Only when a queue plays an announcement.
    pub early_media: Option<SocketAddr>,
}

/// The buffer server's bound addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferAddrs {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub https: SocketAddr,
    /// The shared WebRTC media socket.
    pub media: SocketAddr,
}

/// What a running system is bound to, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    pub distributor: Option<DistributorAddrs>,
    pub buffer: Option<BufferAddrs>,
}

/// A started system. Dropping it stops everything at once, without draining; call
/// [`Running::wait`] for the graceful end.
#[derive(Debug)]
pub struct Running {
    pub addrs: Addrs,
    status: Option<std::sync::mpsc::Receiver<Status>>,
    runtime: Option<tokio::runtime::Runtime>,
    /// Told when the drain is over.
    drained: Option<std::sync::mpsc::Receiver<()>>,
}

impl Running {
    /// The status events (listening, edge and agent up and down, tunnel up…), to print or
    /// watch; once. Events nobody takes are dropped past a small backlog.
    pub fn status(&mut self) -> Option<std::sync::mpsc::Receiver<Status>> {
        self.status.take()
    }

    /// Blocks until the shutdown future completed and the drain ended, then stops every
    /// task and closes every socket. Call it from synchronous code (not inside a runtime).
    pub fn wait(mut self) {
        if let Some(drained) = self.drained.take() {
            let _ = drained.recv();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Starts the roles named on the configured addresses (port 0 picks free ones; see
/// [`Running::addrs`]), and drains them when `shutdown` completes. Blocks while binding;
/// call it from synchronous code (it builds its own runtime).
pub fn run(
    config: Config,
    roles: Roles,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    // Both rustls and the WebSocket client pick the process-wide provider: set it first.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("agent-edge")
        .build()
        .context(|| "starting the runtime".into())?;
    let (sink, status_rx) = StatusSink::new();
    let (roles, addrs) = runtime.block_on(start(&config, roles, &sink))?;
    let (drained_tx, drained) = std::sync::mpsc::channel();
    let settings = config.shutdown.clone();
    runtime.spawn(async move {
        shutdown.await;
        drain(&roles, &settings, &sink).await;
        sink.emit(Status::Stopped);
        let _ = drained_tx.send(());
    });
    Ok(Running {
        addrs,
        status: Some(status_rx),
        runtime: Some(runtime),
        drained: Some(drained),
    })
}

/// How long the all-in-one demo agent's sign-in link works: enough to try the system.
const DEMO_TOKEN_TTL_S: u64 = 3600;

/// Whether every address the system listens on is a loopback one.
fn everything_on_loopback(d: &DistributorAddrs, b: &BufferAddrs) -> bool {
    let addrs = [
        d.udp, d.tcp, d.tls, d.public, d.admin, b.udp, b.tcp, b.https, b.media,
    ];
    addrs
        .iter()
        .chain(d.early_media.iter())
        .all(|a| a.ip().is_loopback())
}

/// The started roles' command channels, for the drain.
struct Started {
    distributor: Option<mpsc::Sender<distributor::service::Command>>,
    buffer: Option<mpsc::Sender<buffer::service::Command>>,
}

async fn start(
    config: &Config,
    roles: Roles,
    status: &StatusSink,
) -> Result<(Started, Addrs), StartError> {
    let mut started = Started {
        distributor: None,
        buffer: None,
    };
    let mut addrs = Addrs {
        distributor: None,
        buffer: None,
    };
    match roles {
        Roles::AllInOne => {
            let ring = identity::key_ring(config)?;
            let d = roles::start_distributor(config, &ring, status).await?;
            let url = format!("wss://{}/tunnel", d.addrs.public);
            // One process, one key: the edge gets its credential directly.
            let token = identity::edge_token_issuer(config, &ring)
                .issue(&config.buffer.id, None, config.identity.edge_token_ttl_s)
                .context(|| "issuing the edge's credential".into())?;
            let b = roles::start_buffer(config, url, Some(token), status).await?;
            let page =
                (b.exposed_page.clone()).unwrap_or_else(|| format!("https://{}/", b.addrs.https));
            // Sign-in links from the admin API open this system's own agent page.
            let _ = d.agent_page.set(page.clone());
            // Something to try at once: a sign-in link for a demo agent, short-lived, and only
            // where nobody else can reach the system (a link in a shared terminal or a log is a
            // credential).
            if everything_on_loopback(&d.addrs, &b.addrs) {
                let ttl = DEMO_TOKEN_TTL_S.min(config.identity.token_ttl_s);
                let demo = identity::token_issuer(config, &ring)
                    .issue("demo", Some("Demo agent"), ttl)
                    .context(|| "issuing the demo agent's token".into())?;
                status.emit(Status::DemoAgent {
                    url: format!("{page}?token={demo}"),
                });
            } else {
                status.emit(Status::NoDemoAgent);
            }
            (addrs.distributor, addrs.buffer) = (Some(d.addrs), Some(b.addrs));
            (started.distributor, started.buffer) = (Some(d.commands), Some(b.commands));
        }
        Roles::Distributor => {
            let ring = identity::key_ring(config)?;
            let d = roles::start_distributor(config, &ring, status).await?;
            addrs.distributor = Some(d.addrs);
            started.distributor = Some(d.commands);
        }
        Roles::Buffer { connect } => {
            let url = connect.unwrap_or_else(|| config.buffer.connect.clone());
            let token = identity::edge_credential(config)?;
            let b = roles::start_buffer(config, url, token, status).await?;
            addrs.buffer = Some(b.addrs);
            started.buffer = Some(b.commands);
        }
    }
    Ok((started, addrs))
}

/// How often the drain looks whether the calls have ended.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Refuses new calls, lets the calls in progress end within the grace, then ends the rest.
async fn drain(roles: &Started, settings: &ShutdownConfig, status: &StatusSink) {
    use buffer::service::Command as B;
    use distributor::service::Command as D;
    if let Some(d) = &roles.distributor {
        let _ = d.send(D::Drain).await;
    }
    if let Some(b) = &roles.buffer {
        let _ = b.send(B::Drain).await;
    }
    status.emit(Status::Draining {
        calls: calls_in_progress(roles).await,
    });
    let grace = tokio::time::Instant::now() + Duration::from_secs(settings.grace_s);
    while calls_in_progress(roles).await > 0 && tokio::time::Instant::now() < grace {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    if let Some(d) = &roles.distributor {
        let _ = d.send(D::RefuseWaiting).await;
    }
    if let Some(b) = &roles.buffer {
        let _ = b.send(B::HangUpAll).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(settings.bye_wait_s);
        while tokio::time::Instant::now() < deadline {
            match buffer_calls(b).await {
                Some((_, 0)) | None => break,
                Some(_) => tokio::time::sleep(DRAIN_POLL).await,
            }
        }
    }
    // The hang-ups' records wait a moment for the edge's last media statistics; then every
    // record still open is written before the process ends.
    if let Some(d) = &roles.distributor {
        tokio::time::sleep(crate::records::recorder::MEDIA_SETTLE).await;
        let (reply, written) = oneshot::channel();
        if d.send(D::FlushRecords { reply }).await.is_ok() {
            let _ = tokio::time::timeout(RECORDS_FLUSH_WAIT, written).await;
        }
    }
}

/// How long a shutdown waits for the last call records to be written.
const RECORDS_FLUSH_WAIT: Duration = Duration::from_secs(10);

/// The calls the system still carries: at the edge when it runs one (that is where calls
/// live), else those the distributor's ACD holds.
async fn calls_in_progress(roles: &Started) -> usize {
    if let Some(b) = &roles.buffer {
        let at_edge = buffer_calls(b).await.map_or(0, |(calls, _)| calls);
        return at_edge + distributor_waiting(roles).await;
    }
    distributor_calls(roles).await
}

/// (calls, BYEs of the shutdown still unanswered) at the buffer server.
async fn buffer_calls(b: &mpsc::Sender<buffer::service::Command>) -> Option<(usize, usize)> {
    let (reply, answer) = oneshot::channel();
    b.send(buffer::service::Command::Calls { reply })
        .await
        .ok()?;
    answer.await.ok()
}

/// Calls the distributor's ACD holds (waiting, ringing or connected).
async fn distributor_calls(roles: &Started) -> usize {
    live_calls(roles, |_| true).await
}

/// Calls not yet at an edge: waiting in a queue.
async fn distributor_waiting(roles: &Started) -> usize {
    live_calls(roles, |c| c.call.state == "queued").await
}

async fn live_calls(
    roles: &Started,
    count: impl Fn(&distributor::service::LiveCall) -> bool,
) -> usize {
    let Some(d) = &roles.distributor else {
        return 0;
    };
    let (reply, answer) = oneshot::channel();
    if d.send(distributor::service::Command::Live { reply })
        .await
        .is_err()
    {
        return 0;
    }
    answer
        .await
        .map_or(0, |view| view.calls.iter().filter(|c| count(c)).count())
}
