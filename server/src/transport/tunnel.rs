//! The tunnel's IO: the distributor's `wss://…/tunnel` endpoint (on its public listener) and
//! the buffer server's dialler. Buffer servers dial out, so an edge behind NAT or an
//! outbound-only firewall still receives calls. Frames and liveness rules live in
//! `proto-tunnel`; this file only moves them. The frames of an exposed edge's page and virtual
//! connections are handed to `exposure.rs` (distributor) and `exposed_edge.rs` (edge) here and
//! never reach the roles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use proto_tunnel::{Backoff, Frame, Heartbeat, HeartbeatAction, Limits};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite;
use tracing::{debug, info, warn};

use super::Transports;
use super::exposed_edge::ExposedEdge;
use super::exposure::Exposures;
use super::next_conn_id;
use super::tls_listener::PeerAddr;
use crate::admin::tokens::{self, TokenIssuer, TokenVerifier};
use crate::app::status::{Status, StatusSink};
use crate::sip::ConnId;

/// Silence after which a ping is sent.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// Silence after which the other end is declared dead and the tunnel dropped.
const DEAD_AFTER: Duration = Duration::from_secs(15);
/// How long the dialling side has to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames waiting to be written to one tunnel.
const TUNNEL_QUEUE: usize = 4096;
/// Frames of an exposed edge's page and virtual connections waiting to be written to its
/// tunnel, beside the role's own queue.
const RELAY_QUEUE: usize = 1024;

/// What the distributor's tunnel endpoint reports.
#[derive(Debug)]
pub enum TunnelServerEvent {
    /// An edge said Hello and was welcomed; frames for it go to `sender`.
    Up {
        conn: ConnId,
        edge_id: String,
        handoffs: Vec<String>,
        sender: mpsc::Sender<Frame>,
    },
    /// A frame from an edge.
    Frame { conn: ConnId, frame: Frame },
    /// The edge's tunnel is gone: its agents with it.
    Down { conn: ConnId },
}

/// What the buffer server's dialler reports.
#[derive(Debug)]
pub enum TunnelClientEvent {
    /// Welcomed by the distributor; frames for it go to `sender`.
    Up {
        conn: ConnId,
        sender: mpsc::Sender<Frame>,
    },
    /// A frame from the distributor.
    Frame { conn: ConnId, frame: Frame },
    /// The tunnel dropped; the dialler is already backing off to dial again.
    Down { conn: ConnId },
}

#[derive(Clone)]
struct ServerState {
    distributor_id: Arc<str>,
    /// Whose keys check the credential every edge presents before its tunnel opens (read at
    /// each dial, so a key rotation applies at once).
    edges: TokenIssuer,
    events: mpsc::Sender<TunnelServerEvent>,
    limits: Arc<Limits>,
    exposures: Exposures,
}

/// The tunnel endpoint's route on the distributor's public listener.
pub fn routes(
    distributor_id: &str,
    edges: TokenIssuer,
    events: mpsc::Sender<TunnelServerEvent>,
    exposures: Exposures,
) -> Router {
    let state = ServerState {
        distributor_id: distributor_id.into(),
        edges,
        events,
        limits: Arc::new(Limits::default()),
        exposures,
    };
    Router::new()
        .route("/tunnel", get(tunnel_upgrade))
        .with_state(state)
}

async fn tunnel_upgrade(
    ws: WebSocketUpgrade,
    State(state): State<ServerState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
) -> Response {
    // The credential is checked before the upgrade: nothing unauthenticated ever holds a
    // tunnel, let alone passes SIP through it.
    let edge = match edge_credential(&state.edges, &headers, peer, "agent-edge-tunnel") {
        Ok(edge) => edge,
        Err(refusal) => return *refusal,
    };
    // One tunnel frame is one WebSocket message; a WebSocket frame is buffered whole before
    // the message limit applies, so both are capped.
    let ws = ws
        .protocols([proto_tunnel::SUBPROTOCOL])
        .max_frame_size(state.limits.max_frame)
        .max_message_size(state.limits.max_frame);
    if ws.selected_protocol().is_none() {
        debug!(%peer, "refusing tunnel without its subprotocol");
        return (
            StatusCode::BAD_REQUEST,
            "offer subprotocol agent-edge-tunnel.v1\n",
        )
            .into_response();
    }
    ws.on_upgrade(move |socket| serve_edge(state, socket, peer, edge))
}

/// The edge an upgrade request's bearer credential proves, or the 401 that refuses it; read
/// with the issuer's keys of the moment, so a key rotation applies at once.
pub(super) fn edge_credential(
    edges: &TokenIssuer,
    headers: &HeaderMap,
    peer: SocketAddr,
    realm: &str,
) -> Result<String, Box<Response>> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let verifier = TokenVerifier::new(&edges.verifier_settings());
    match tokens::bearer(authorization).and_then(|t| verifier.verify(t)) {
        Ok(claims) => Ok(claims.sub),
        Err(e) => {
            info!(%peer, realm, error = %e, "refusing an edge without a valid edge credential");
            let challenge = format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{e}\""
            );
            Err(Box::new(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, challenge)],
                    "an edge credential is required: agent-edge token issue --edge ID\n",
                )
                    .into_response(),
            ))
        }
    }
}

async fn serve_edge(state: ServerState, socket: WebSocket, peer: SocketAddr, credential: String) {
    let (mut sink, mut stream) = socket.split();
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Binary(b) = msg {
                return proto_tunnel::decode(&b, &state.limits).ok();
            }
        }
        None
    });
    let Ok(Some(hello)) = hello.await else {
        debug!(%peer, "tunnel closed before Hello");
        return;
    };
    let checked = proto_tunnel::check_hello(&hello).map_err(|e| e.to_string());
    let checked = checked.and_then(|(edge_id, handoffs)| {
        if edge_id == credential {
            Ok((edge_id, handoffs))
        } else {
            Err(format!(
                "the credential is for edge {credential}, not {edge_id}"
            ))
        }
    });
    let (edge_id, handoffs) = match checked {
        Ok(h) => h,
        Err(e) => {
            warn!(%peer, error = %e, "refusing tunnel");
            let close = Frame::Close { reason: e };
            let _ = sink
                .send(Message::Binary(proto_tunnel::encode(&close)))
                .await;
            return;
        }
    };
    let welcome = Frame::Welcome {
        version: proto_tunnel::PROTOCOL_VERSION,
        distributor_id: state.distributor_id.to_string(),
    };
    if sink
        .send(Message::Binary(proto_tunnel::encode(&welcome)))
        .await
        .is_err()
    {
        return;
    }
    let conn = next_conn_id();
    let (sender, outbound) = mpsc::channel(TUNNEL_QUEUE);
    info!(%peer, edge = %edge_id, "edge connected");
    let up = TunnelServerEvent::Up {
        conn,
        edge_id: edge_id.clone(),
        handoffs,
        sender: sender.clone(),
    };
    if state.events.send(up).await.is_err() {
        return;
    }
    let sink = sink
        .with(|bytes: bytes::Bytes| async move { Ok::<_, axum::Error>(Message::Binary(bytes)) });
    let stream = stream.filter_map(|m| async move {
        match m {
            Ok(Message::Binary(b)) => Some(Ok(b)),
            Ok(Message::Close(_)) | Err(_) => Some(Err(())),
            Ok(_) => None,
        }
    });
    let events = state.events.clone();
    // The role holds the only sender: when it lets go of this edge, the queue closes and the
    // tunnel with it.
    drop(sender);
    let (relay, relay_rx) = mpsc::channel(RELAY_QUEUE);
    let exposures = state.exposures.clone();
    let edge = edge_id.clone();
    pump(
        Box::pin(sink),
        Box::pin(stream),
        outbound,
        relay_rx,
        &state.limits,
        |frame| {
            let events = events.clone();
            let exposures = exposures.clone();
            let relay = relay.clone();
            let edge = edge.clone();
            async move {
                match frame {
                    Frame::Expose => exposures.expose(&edge, conn, relay),
                    frame if frame.is_exposure() => exposures.edge_frame(&edge, conn, frame),
                    frame => {
                        return events
                            .send(TunnelServerEvent::Frame { conn, frame })
                            .await
                            .is_ok();
                    }
                }
                true
            }
        },
    )
    .await;
    state.exposures.tunnel_down(&edge_id, conn);
    info!(%peer, "edge disconnected");
    let _ = state.events.send(TunnelServerEvent::Down { conn }).await;
}

/// At most this many frames waiting to go out are written before one flush.
const MAX_BURST: usize = 64;

/// Writes `first` and the frames already waiting behind it, then flushes once: under load a
/// burst becomes one TLS record and one write instead of one of each per frame (a write per
/// frame was an eighth of the edge's CPU at 1,600 calls/s).
async fn send_burst<Si>(sink: &mut Si, first: Frame, outbound: &mut mpsc::Receiver<Frame>) -> bool
where
    Si: Sink<bytes::Bytes> + Unpin,
{
    if sink.feed(proto_tunnel::encode(&first)).await.is_err() {
        return false;
    }
    for _ in 1..MAX_BURST {
        let Ok(frame) = outbound.try_recv() else {
            break;
        };
        if sink.feed(proto_tunnel::encode(&frame)).await.is_err() {
            return false;
        }
    }
    sink.flush().await.is_ok()
}

/// Moves frames both ways until either side ends or the peer falls silent: the role's
/// `outbound` and the exposure's `relay` out, and every frame read to `deliver` but Pings
/// (answered here). The tunnel ends when the role lets go of `outbound`.
async fn pump<Si, St, D, F>(
    sink: Si,
    stream: St,
    mut outbound: mpsc::Receiver<Frame>,
    mut relay: mpsc::Receiver<Frame>,
    limits: &Limits,
    mut deliver: D,
) where
    Si: Sink<bytes::Bytes> + Unpin,
    St: Stream<Item = Result<bytes::Bytes, ()>> + Unpin,
    D: FnMut(Frame) -> F,
    F: std::future::Future<Output = bool>,
{
    let mut sink = sink;
    let mut stream = stream;
    let mut heartbeat = Heartbeat::new(PING_INTERVAL, DEAD_AFTER, Instant::now());
    loop {
        let wake = tokio::time::Instant::from_std(heartbeat.poll_timeout());
        tokio::select! {
            frame = outbound.recv() => {
                let Some(frame) = frame else { break };
                if !send_burst(&mut sink, frame, &mut outbound).await {
                    break;
                }
            }
            Some(frame) = relay.recv() => {
                if !send_burst(&mut sink, frame, &mut relay).await {
                    break;
                }
            }
            data = stream.next() => {
                let Some(Ok(data)) = data else { break };
                heartbeat.on_frame_received(Instant::now());
                match proto_tunnel::decode(&data, limits) {
                    Ok(Frame::Ping { nonce }) => {
                        if sink.send(proto_tunnel::encode(&Frame::Pong { nonce })).await.is_err() {
                            break;
                        }
                    }
                    Ok(Frame::Pong { .. }) => {}
                    Ok(Frame::Close { reason }) => {
                        info!(%reason, "tunnel closed by peer");
                        break;
                    }
                    Ok(frame) => {
                        if !deliver(frame).await {
                            break;
                        }
                    }
                    Err(e) => {
                        // A frame we cannot read means the peer speaks something else:
                        // carrying on would only misroute calls.
                        warn!(error = %e, "bad tunnel frame; closing");
                        let close = Frame::Close { reason: e.to_string() };
                        let _ = sink.send(proto_tunnel::encode(&close)).await;
                        break;
                    }
                }
            }
            () = tokio::time::sleep_until(wake) => {
                match heartbeat.handle_timeout(Instant::now()) {
                    HeartbeatAction::None => {}
                    HeartbeatAction::SendPing(nonce) => {
                        if sink.send(proto_tunnel::encode(&Frame::Ping { nonce })).await.is_err() {
                            break;
                        }
                    }
                    HeartbeatAction::Dead => {
                        warn!("tunnel peer silent; dropping the tunnel");
                        break;
                    }
                }
            }
        }
    }
}

/// Dials the distributor for ever: connect, Hello, pump frames, and on any end back off and
/// dial again.
/// How an edge dials its distributor.
#[derive(Debug, Clone)]
pub struct DialSettings {
    pub url: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub edge_id: String,
    pub handoffs: Vec<String>,
    /// The edge's credential (an edge token), sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// Where a refusal is reported to the operator.
    pub status: StatusSink,
    /// The agents' transports, when the edge asks the distributor to expose it: the page
    /// and the agents' WebSockets then come through the tunnel.
    pub expose: Option<Transports>,
}

pub fn spawn_dialler(settings: DialSettings, events: mpsc::Sender<TunnelClientEvent>) {
    tokio::spawn(async move {
        let limits = Limits::default();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut last_refusal = None;
        loop {
            match dial_once(&settings, &events, &limits).await {
                Ok(()) => {
                    backoff.reset();
                    last_refusal = None;
                }
                Err(DialError::Refused(why)) => {
                    // Said once per reason: a refused edge retries quietly.
                    if last_refusal.as_ref() != Some(&why) {
                        warn!(url = %settings.url, reason = %why, "distributor refused the tunnel");
                        settings.status.emit(Status::TunnelRefused {
                            edge: settings.edge_id.clone(),
                            reason: why.to_string(),
                        });
                        last_refusal = Some(why);
                    }
                }
                Err(e) => debug!(url = %settings.url, error = %e, "tunnel dial failed"),
            }
            if events.is_closed() {
                break;
            }
            let delay = backoff.next_delay(rand::random::<f64>());
            tokio::time::sleep(delay).await;
        }
    });
}

/// Why one dial of the tunnel ended without carrying traffic.
#[derive(Debug, thiserror::Error)]
enum DialError {
    /// TCP, TLS or the WebSocket handshake failed.
    #[error("connect: {0}")]
    Connect(#[from] tungstenite::Error),
    /// The distributor did not answer Hello with Welcome.
    #[error("distributor did not welcome us: {0}")]
    NotWelcomed(String),
    /// The distributor refused our credential or our Hello.
    #[error("refused: {0}")]
    Refused(String),
    /// The distributor did not select the tunnel subprotocol.
    #[error("distributor does not speak {}", proto_tunnel::SUBPROTOCOL)]
    NoSubprotocol,
}

async fn dial_once(
    settings: &DialSettings,
    events: &mpsc::Sender<TunnelClientEvent>,
    limits: &Limits,
) -> Result<(), DialError> {
    use tungstenite::client::IntoClientRequest;
    let mut request = settings.url.as_str().into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        tungstenite::http::HeaderValue::from_static(proto_tunnel::SUBPROTOCOL),
    );
    if let Some(token) = &settings.token {
        let value = tungstenite::http::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| DialError::Refused("the edge token is not a valid header value".into()))?;
        request.headers_mut().insert("Authorization", value);
    }
    let connector = tokio_tungstenite::Connector::Rustls(settings.tls.clone());
    // The distributor is held to the tunnel's frame limit too (tungstenite would buffer a
    // 16 MiB frame by default).
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_frame_size(Some(limits.max_frame))
        .max_message_size(Some(limits.max_frame));
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(config),
        true,
        Some(connector),
    );
    let (ws, response) = match tokio::time::timeout(HELLO_TIMEOUT, connect).await {
        Err(_) => return Err(DialError::NotWelcomed("connect timed out".into())),
        Ok(Err(tungstenite::Error::Http(resp))) if matches!(resp.status().as_u16(), 401 | 403) => {
            return Err(DialError::Refused(format!(
                "HTTP {}",
                resp.status().as_u16()
            )));
        }
        Ok(r) => r?,
    };
    if response.headers().get("Sec-WebSocket-Protocol").is_none() {
        return Err(DialError::NoSubprotocol);
    }
    let (mut sink, mut stream) = ws.split();
    let hello = Frame::Hello {
        version: proto_tunnel::PROTOCOL_VERSION,
        edge_id: settings.edge_id.clone(),
        handoffs: settings.handoffs.clone(),
    };
    sink.send(tungstenite::Message::Binary(proto_tunnel::encode(&hello)))
        .await?;
    let welcome = tokio::time::timeout(HELLO_TIMEOUT, async {
        while let Some(msg) = stream.next().await {
            if let tungstenite::Message::Binary(b) = msg? {
                return Ok(Some(proto_tunnel::decode(&b, limits)));
            }
        }
        Ok::<_, tungstenite::Error>(None)
    })
    .await
    .map_err(|_| DialError::NotWelcomed("no answer to Hello".into()))??;
    match welcome {
        Some(Ok(Frame::Welcome { version, .. })) if version == proto_tunnel::PROTOCOL_VERSION => {}
        Some(Ok(Frame::Close { reason })) => return Err(DialError::Refused(reason)),
        other => return Err(DialError::NotWelcomed(format!("{other:?}"))),
    }
    // The first frame after Welcome, before the role hears the tunnel is up: the distributor
    // exposes the edge before any of its agents could register through it.
    if settings.expose.is_some() {
        let expose = proto_tunnel::encode(&Frame::Expose);
        sink.send(tungstenite::Message::Binary(expose)).await?;
    }
    let conn = next_conn_id();
    let (sender, outbound) = mpsc::channel(TUNNEL_QUEUE);
    if events
        .send(TunnelClientEvent::Up {
            conn,
            sender: sender.clone(),
        })
        .await
        .is_err()
    {
        return Ok(());
    }
    let (relay, relay_rx) = mpsc::channel(RELAY_QUEUE);
    let exposed = settings
        .expose
        .clone()
        .map(|transports| ExposedEdge::new(transports, relay.clone()));
    let sink = sink.with(|bytes: bytes::Bytes| async move {
        Ok::<_, tungstenite::Error>(tungstenite::Message::Binary(bytes))
    });
    let stream = stream.filter_map(|m| async move {
        match m {
            Ok(tungstenite::Message::Binary(b)) => Some(Ok(b)),
            Ok(tungstenite::Message::Close(_)) | Err(_) => Some(Err(())),
            Ok(_) => None,
        }
    });
    drop(sender);
    drop(relay);
    pump(
        Box::pin(sink),
        Box::pin(stream),
        outbound,
        relay_rx,
        limits,
        |frame| {
            let events = events.clone();
            let exposed = exposed.clone();
            async move {
                if frame.is_exposure() {
                    return match exposed {
                        Some(exposed) => exposed.handle(frame).await,
                        None => {
                            debug!("the distributor sent an exposure frame to an edge not exposed");
                            true
                        }
                    };
                }
                events
                    .send(TunnelClientEvent::Frame { conn, frame })
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    if let Some(exposed) = exposed {
        exposed.tunnel_down().await;
    }
    let _ = events.send(TunnelClientEvent::Down { conn }).await;
    Ok(())
}
