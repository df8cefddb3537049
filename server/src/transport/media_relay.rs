//! The distributor's side of the caller media relay. An exposed edge opens no UDP socket for
//! callers: for each bridged call it asks, over a media WebSocket of its own (`/media` on the
//! public listener, its edge credential as bearer token), for a UDP port on the distributor's
//! public address, which its SDP then gives the caller. Datagrams from the caller go to the
//! edge one per message, and the edge's go out of that port, only to the address the caller's
//! SDP named or to one the caller sent from. Queues drop their oldest packet when full and the
//! receiver drops packets the connection held up too long: late audio is worse than lost
//! audio. Flows belong to the connection that opened them; nothing here can touch another
//! edge's.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use proto_tunnel::media::{
    LateFilter, MAX_DATAGRAM, MAX_MEDIA_FRAME, MEDIA_SUBPROTOCOL, MediaFrame, decode_media,
    encode_media, encode_packet,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::drop_oldest::DropOldest;
use super::ice_tcp::{EdgeLink, IceRoutes};
use super::lock;
use super::tls_listener::PeerAddr;
use crate::admin::tokens::TokenIssuer;

/// Packets waiting to be written to one edge's media connection (all its calls): about
/// 100 ms of 100 calls. When full the oldest goes.
const TO_EDGE_QUEUE: usize = 512;
/// Answers to the edge's requests (Opened, Refused, Close), which never wait behind media.
const CONTROL_QUEUE: usize = 64;
/// The caller addresses a flow remembers as allowed destinations (the caller's NAT may
/// move it, a forking trunk may send from two).
const HEARD: usize = 4;
/// Kernel socket buffers asked for each relayed port.
const SOCKET_BUFFER: usize = 256 * 1024;
/// How long a writer of relayed media waits after the first packet of a batch for more, both
/// ends: Nagle's idea bounded at a millisecond. Each packet's own TLS record and write cost
/// more than the relaying itself (`just bench-relay`: 1.74 ms of CPU per call-second at 50
/// calls without, 0.96 with), for at most about a millisecond more delay each way.
pub const COALESCE: Duration = Duration::from_millis(1);
/// Windows of the late-packet baseline.
pub const LATE_WINDOW: Duration = Duration::from_secs(10);
/// A media connection silent this long is dead (the edge pings every 5 s).
pub const SILENCE: Duration = Duration::from_secs(15);

/// Where and how the relay opens its ports (`[distributor] media_*`).
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The address the ports are bound on: the public listener's.
    pub bind_ip: IpAddr,
    /// The address announced to callers, when it is not `bind_ip` (1:1 NAT, or a listener on
    /// 0.0.0.0).
    pub public_ip: Option<IpAddr>,
    /// The range ports are taken from; any free port when none.
    pub ports: Option<(u16, u16)>,
    /// Added delay beyond which a packet from an edge is dropped.
    pub max_age: Duration,
    /// Flows one media connection may hold.
    pub max_flows: usize,
}

/// The relay: shared by the public listener's `/media` handler and the live view.
#[derive(Clone, Debug)]
pub struct MediaRelay {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: RelaySettings,
    edges: TokenIssuer,
    /// Next port of the range to try.
    cursor: AtomicUsize,
    connections: Mutex<HashMap<u64, Arc<Counters>>>,
    next_connection: AtomicU64,
    origin: Instant,
    /// Agents' ICE-TCP: which edge connection owns each session.
    ice: Arc<IceRoutes>,
    /// Where agents reach the public listener for ICE-TCP, once it is bound.
    ice_tcp: std::sync::OnceLock<Option<SocketAddr>>,
}

/// One media connection's counters, read by the live view.
#[derive(Debug)]
struct Counters {
    edge: String,
    flows: AtomicUsize,
    to_edge: AtomicU64,
    from_edge: AtomicU64,
    late: AtomicU64,
    unknown_flow: AtomicU64,
    bad_destination: AtomicU64,
    malformed: AtomicU64,
    send_failed: AtomicU64,
    refused: AtomicU64,
    edge_late: AtomicU64,
    edge_overflow: AtomicU64,
    ice_sessions: AtomicUsize,
    ice_refused: AtomicU64,
    queue: Arc<DropOldest<Vec<u8>>>,
    link: EdgeLink,
}

/// The relay in the live view: one entry per media connection.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct RelayView {
    pub edge: String,
    /// Calls with a port open now.
    pub flows: usize,
    /// Datagrams from callers passed to the edge, and from the edge sent to callers.
    pub packets_to_edge: u64,
    pub packets_from_edge: u64,
    /// Dropped towards the edge because its queue was full.
    pub dropped_queue_full: u64,
    /// Packets towards the edge queued now.
    pub queue_depth: usize,
    /// From the edge, dropped here: held up too long, for a flow not open on this
    /// connection (an ended call, another edge's), to an address the flow does not allow,
    /// unreadable, or not sent (socket full).
    pub dropped_late: u64,
    pub dropped_unknown_flow: u64,
    pub dropped_bad_destination: u64,
    pub dropped_malformed: u64,
    pub send_failed: u64,
    /// Ports asked for and refused.
    pub refused: u64,
    /// What the edge reports it dropped of ours: late, and from its full queue.
    pub edge_dropped_late: u64,
    pub edge_dropped_queue_full: u64,
    /// WebRTC sessions registered for ICE-TCP, the agents' ICE-TCP connections passed to the
    /// edge now, and registrations refused (a fragment another connection holds).
    pub ice_sessions: usize,
    pub ice_tcp_connections: usize,
    pub ice_refused: u64,
}

/// The relay's whole view: each media connection, and the ICE-TCP connections on the public
/// port that named no registered session.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct RelayOverview {
    pub connections: Vec<RelayView>,
    pub ice_tcp_passed: u64,
    pub ice_tcp_refused: u64,
}

impl MediaRelay {
    pub fn new(settings: RelaySettings, edges: TokenIssuer) -> MediaRelay {
        MediaRelay {
            inner: Arc::new(Inner {
                settings,
                edges,
                cursor: AtomicUsize::new(0),
                connections: Mutex::new(HashMap::new()),
                next_connection: AtomicU64::new(1),
                origin: Instant::now(),
                ice: Arc::new(IceRoutes::default()),
                ice_tcp: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The public listener is bound on `port`: agents reach it for ICE-TCP at the announced
    /// address (none when the distributor has no public address to announce).
    pub fn set_public_port(&self, port: u16) {
        let _ = self
            .inner
            .ice_tcp
            .set(self.public_ip().ok().map(|ip| SocketAddr::new(ip, port)));
    }

    /// Where the public listener hands connections that are not TLS: agents' ICE-TCP.
    pub fn ice_tcp_acceptor(&self) -> super::tls_listener::RawConnections {
        let (tx, mut rx) = mpsc::channel::<(tokio::net::TcpStream, SocketAddr, _)>(256);
        let routes = self.inner.ice.clone();
        tokio::spawn(async move {
            while let Some((stream, peer, place)) = rx.recv().await {
                tokio::spawn(super::ice_tcp::serve(routes.clone(), stream, peer, place));
            }
        });
        tx
    }

    /// Agents' routes to edges (ICE-TCP, TURN), shared with the TURN server.
    pub fn ice_routes(&self) -> Arc<IceRoutes> {
        self.inner.ice.clone()
    }

    /// Everything the live view shows of the relay.
    pub fn overview(&self) -> RelayOverview {
        RelayOverview {
            connections: self.connections(),
            ice_tcp_passed: self.inner.ice.passed.load(Ordering::Relaxed),
            ice_tcp_refused: self.inner.ice.refused.load(Ordering::Relaxed),
        }
    }

    fn public_ip(&self) -> Result<IpAddr, String> {
        let s = &self.inner.settings;
        match s.public_ip {
            Some(ip) => Ok(ip),
            None if !s.bind_ip.is_unspecified() => Ok(s.bind_ip),
            None => {
                Err("the distributor has no media address: set distributor.media_public_ip".into())
            }
        }
    }

    /// Each media connection's figures, by edge.
    fn connections(&self) -> Vec<RelayView> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut views: Vec<RelayView> = lock(&self.inner.connections)
            .values()
            .map(|c| RelayView {
                edge: c.edge.clone(),
                flows: c.flows.load(Ordering::Relaxed),
                packets_to_edge: get(&c.to_edge),
                packets_from_edge: get(&c.from_edge),
                dropped_queue_full: c.queue.dropped(),
                queue_depth: c.queue.len(),
                dropped_late: get(&c.late),
                dropped_unknown_flow: get(&c.unknown_flow),
                dropped_bad_destination: get(&c.bad_destination),
                dropped_malformed: get(&c.malformed),
                send_failed: get(&c.send_failed),
                refused: get(&c.refused),
                edge_dropped_late: get(&c.edge_late),
                edge_dropped_queue_full: get(&c.edge_overflow),
                ice_sessions: c.ice_sessions.load(Ordering::Relaxed),
                ice_tcp_connections: lock(&c.link.conns).len(),
                ice_refused: get(&c.ice_refused),
            })
            .collect();
        views.sort_by(|a, b| a.edge.cmp(&b.edge));
        views
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.inner.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Binds a port for a flow: from the range, trying each once from where the last search
    /// stopped, or any free one.
    pub(super) fn bind_port(&self) -> Result<(std::net::UdpSocket, SocketAddr), String> {
        let s = &self.inner.settings;
        let public_ip = self.public_ip()?;
        let bind = |port: u16| {
            let socket = std::net::UdpSocket::bind(SocketAddr::new(s.bind_ip, port))?;
            socket.set_nonblocking(true)?;
            let sock = socket2::SockRef::from(&socket);
            let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
            let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
            let port = socket.local_addr()?.port();
            Ok::<_, std::io::Error>((socket, SocketAddr::new(public_ip, port)))
        };
        let Some((low, high)) = s.ports else {
            return bind(0).map_err(|e| format!("no UDP port: {e}"));
        };
        let count = usize::from(high - low) + 1;
        for _ in 0..count {
            let i = self.inner.cursor.fetch_add(1, Ordering::Relaxed) % count;
            // i < count <= 65536, and low + i <= high.
            let port = low.saturating_add(u16::try_from(i).unwrap_or(u16::MAX));
            if let Ok(bound) = bind(port) {
                return Ok(bound);
            }
        }
        Err(format!("no UDP port free in {low}-{high}"))
    }
}

/// The media endpoint's route on the distributor's public listener.
pub fn routes(relay: MediaRelay) -> Router {
    Router::new()
        .route("/media", get(media_upgrade))
        .with_state(relay)
}

async fn media_upgrade(
    ws: WebSocketUpgrade,
    State(relay): State<MediaRelay>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
) -> Response {
    let edge = match super::tunnel::edge_credential(
        &relay.inner.edges,
        &headers,
        peer,
        "agent-edge-media",
    ) {
        Ok(edge) => edge,
        Err(refusal) => return *refusal,
    };
    // Verified just now, so present: the key its browsers' TURN credentials are minted with.
    let secret: Arc<str> = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::admin::tokens::bearer(Some(v)).ok())
        .unwrap_or_default()
        .into();
    let ws = ws
        .protocols([MEDIA_SUBPROTOCOL])
        .max_frame_size(MAX_MEDIA_FRAME)
        .max_message_size(MAX_MEDIA_FRAME);
    if ws.selected_protocol().is_none() {
        debug!(%peer, "refusing a media connection without its subprotocol");
        return (
            StatusCode::BAD_REQUEST,
            format!("offer subprotocol {MEDIA_SUBPROTOCOL}\n"),
        )
            .into_response();
    }
    ws.on_upgrade(move |socket| serve(relay, socket, edge, secret, peer))
}

/// One relayed call: its port and who may be sent to from it.
#[derive(Debug)]
struct Flow {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
    /// Where the caller's SDP said it receives.
    remote: Option<SocketAddr>,
    /// Addresses the caller sent from, newest last.
    heard: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Flow {
    fn allows(&self, to: SocketAddr) -> bool {
        self.remote == Some(to) || lock(&self.heard).contains(&to)
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn serve(
    relay: MediaRelay,
    socket: WebSocket,
    edge: String,
    secret: Arc<str>,
    peer: SocketAddr,
) {
    let id = relay.inner.next_connection.fetch_add(1, Ordering::Relaxed);
    let queue = Arc::new(DropOldest::new(TO_EDGE_QUEUE));
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let link = EdgeLink {
        connection: id,
        edge: edge.as_str().into(),
        secret,
        control: control.clone(),
        queue: queue.clone(),
        conns: Arc::new(Mutex::new(HashMap::new())),
    };
    let counters = Arc::new(Counters {
        edge: edge.clone(),
        flows: AtomicUsize::new(0),
        to_edge: AtomicU64::new(0),
        from_edge: AtomicU64::new(0),
        late: AtomicU64::new(0),
        unknown_flow: AtomicU64::new(0),
        bad_destination: AtomicU64::new(0),
        malformed: AtomicU64::new(0),
        send_failed: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        edge_late: AtomicU64::new(0),
        edge_overflow: AtomicU64::new(0),
        ice_sessions: AtomicUsize::new(0),
        ice_refused: AtomicU64::new(0),
        queue: queue.clone(),
        link: link.clone(),
    });
    lock(&relay.inner.connections).insert(id, counters.clone());
    relay.inner.ice.connected(&link);
    info!(%edge, %peer, "media relay connection up");
    let (sink, mut stream) = socket.split();
    // First, where its agents reach us for ICE-TCP.
    let ice_tcp = relay.inner.ice_tcp.get().copied().flatten();
    let _ = control.try_send(encode_media(&MediaFrame::IceTcp { addr: ice_tcp }));
    let writer = tokio::spawn(write_to_edge(sink, queue.clone(), control_rx));
    let mut ice_sessions: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut flows: HashMap<u64, Flow> = HashMap::new();
    let mut late = LateFilter::new(relay.inner.settings.max_age, LATE_WINDOW);
    let mut first_malformed = true;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(SILENCE, stream.next()).await {
        let bytes = match message {
            Message::Binary(b) => b,
            Message::Close(_) => break,
            _ => continue,
        };
        let frame = match decode_media(&bytes) {
            Ok(f) => f,
            Err(e) => {
                counters.malformed.fetch_add(1, Ordering::Relaxed);
                if std::mem::take(&mut first_malformed) {
                    warn!(%edge, error = %e, "unreadable media frame from an edge: dropped");
                }
                continue;
            }
        };
        match frame {
            MediaFrame::Packet {
                flow,
                peer: to,
                sent_us,
                payload,
            } => {
                if late.is_late(sent_us, relay.now_us()) {
                    counters.late.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Some(f) = flows.get(&flow) else {
                    counters.unknown_flow.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if !f.allows(to) {
                    counters.bad_destination.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match f.socket.try_send_to(&payload, to) {
                    Ok(_) => counters.from_edge.fetch_add(1, Ordering::Relaxed),
                    Err(_) => counters.send_failed.fetch_add(1, Ordering::Relaxed),
                };
            }
            MediaFrame::Open { flow, remote } => {
                let answer = open_flow(&relay, &mut flows, flow, remote, &queue, &counters);
                if let MediaFrame::Refused { reason, .. } = &answer {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    warn!(%edge, flow, %reason, "no relay port for a call");
                }
                if control.try_send(encode_media(&answer)).is_err() {
                    debug!(%edge, "media control queue full");
                }
                counters.flows.store(flows.len(), Ordering::Relaxed);
            }
            MediaFrame::Close { flow } => {
                if flows.remove(&flow).is_none() {
                    counters.unknown_flow.fetch_add(1, Ordering::Relaxed);
                }
                counters.flows.store(flows.len(), Ordering::Relaxed);
            }
            MediaFrame::Report {
                late,
                overflow: full,
            } => {
                counters.edge_late.store(late, Ordering::Relaxed);
                counters.edge_overflow.store(full, Ordering::Relaxed);
            }
            MediaFrame::IceSession {
                ufrag,
                open,
                agent,
                webrtc,
            } => {
                let known = ice_sessions.contains(&ufrag);
                if open && !known && ice_sessions.len() >= relay.inner.settings.max_flows {
                    counters.ice_refused.fetch_add(1, Ordering::Relaxed);
                } else if relay
                    .inner
                    .ice
                    .register(&ufrag, &link, open, &agent, webrtc)
                {
                    if open {
                        ice_sessions.insert(ufrag);
                    } else {
                        ice_sessions.remove(&ufrag);
                    }
                } else {
                    counters.ice_refused.fetch_add(1, Ordering::Relaxed);
                }
                counters
                    .ice_sessions
                    .store(ice_sessions.len(), Ordering::Relaxed);
            }
            MediaFrame::TcpData { conn, payload } => {
                let to = lock(&link.conns).get(&conn).cloned();
                match to {
                    Some(to) => {
                        if to.try_send(payload).is_err() {
                            counters.send_failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        counters.unknown_flow.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            MediaFrame::TcpClose { conn } => {
                lock(&link.conns).remove(&conn);
            }
            MediaFrame::TurnData {
                relayed,
                peer,
                payload,
            } => match relay.inner.ice.turn_client(relayed, &edge) {
                Some(client) => {
                    if client.try_send((peer, payload)).is_err() {
                        counters.send_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {
                    counters.unknown_flow.fetch_add(1, Ordering::Relaxed);
                }
            },
            MediaFrame::Opened { .. }
            | MediaFrame::Refused { .. }
            | MediaFrame::IceTcp { .. }
            | MediaFrame::TcpOpen { .. } => {
                // Only the distributor says these: an edge saying so is counted, not believed.
                counters.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let open = flows.len();
    drop(flows);
    relay.inner.ice.forget(id);
    // Dropping the senders ends each agent connection it was given.
    lock(&link.conns).clear();
    queue.close();
    drop(control);
    let _ = writer.await;
    lock(&relay.inner.connections).remove(&id);
    info!(%edge, %peer, open_flows = open, "media relay connection down: its ports are closed");
}

/// Opens a flow's port and starts reading it: the answer for the edge.
fn open_flow(
    relay: &MediaRelay,
    flows: &mut HashMap<u64, Flow>,
    flow: u64,
    remote: Option<SocketAddr>,
    queue: &Arc<DropOldest<Vec<u8>>>,
    counters: &Arc<Counters>,
) -> MediaFrame {
    let refuse = |reason: String| MediaFrame::Refused { flow, reason };
    if flows.contains_key(&flow) {
        return refuse("flow already open".into());
    }
    if flows.len() >= relay.inner.settings.max_flows {
        return refuse(format!(
            "{} calls relayed for this edge already",
            flows.len()
        ));
    }
    let (socket, public) = match relay.bind_port() {
        Ok(bound) => bound,
        Err(e) => return refuse(e),
    };
    let socket = match UdpSocket::from_std(socket) {
        Ok(s) => Arc::new(s),
        Err(e) => return refuse(format!("no UDP port: {e}")),
    };
    let heard = Arc::new(Mutex::new(Vec::new()));
    let reader = tokio::spawn(read_caller(
        relay.clone(),
        socket.clone(),
        flow,
        heard.clone(),
        queue.clone(),
        counters.clone(),
    ));
    flows.insert(
        flow,
        Flow {
            socket,
            reader,
            remote,
            heard,
        },
    );
    MediaFrame::Opened { flow, public }
}

/// Passes a flow's datagrams from the caller to the edge, each with its source.
async fn read_caller(
    relay: MediaRelay,
    socket: Arc<UdpSocket>,
    flow: u64,
    heard: Arc<Mutex<Vec<SocketAddr>>>,
    queue: Arc<DropOldest<Vec<u8>>>,
    counters: Arc<Counters>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut last = None;
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        if n > MAX_DATAGRAM {
            continue;
        }
        if last != Some(from) {
            let mut heard = lock(&heard);
            if !heard.contains(&from) {
                if heard.len() >= HEARD {
                    heard.remove(0);
                }
                heard.push(from);
            }
            last = Some(from);
        }
        if !queue.push(encode_packet(flow, from, relay.now_us(), &buf[..n])) {
            break;
        }
        counters.to_edge.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes to the edge: its answers first, then every queued packet in one flush.
async fn write_to_edge(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    queue: Arc<DropOldest<Vec<u8>>>,
    mut control: mpsc::Receiver<Vec<u8>>,
) {
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            biased;
            Some(answer) = control.recv() => {
                if sink.send(Message::Binary(answer.into())).await.is_err() {
                    break;
                }
            }
            more = queue.pop_all(&mut batch) => {
                if !more {
                    break;
                }
                // What the other calls send in the next millisecond goes in the same write:
                // one TLS record and one system call for all of them instead of one each.
                tokio::time::sleep(COALESCE).await;
                queue.take_all(&mut batch);
                for packet in batch.drain(..) {
                    if sink.feed(Message::Binary(packet.into())).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = sink.close().await;
}
