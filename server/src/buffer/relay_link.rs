//! The exposed edge's side of the caller media relay: the media WebSocket it dials to the
//! distributor (`wss://…/media`, beside the tunnel, never inside it), the flows it opens
//! there, one per bridged call, and the packets both ways. To the bridge a relayed caller
//! looks as if its datagrams came to a socket of the edge's own: the source address is the
//! caller's as the distributor saw it, so symmetric RTP latching works unchanged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use proto_tunnel::Backoff;
use proto_tunnel::media::{
    LateFilter, MAX_MEDIA_FRAME, MEDIA_SUBPROTOCOL, MediaFrame, decode_media, encode_media,
    encode_packet, encode_tcp_data, encode_turn_data,
};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite;
use tracing::{debug, info, warn};

use super::media::MediaIn;
use crate::app::status::{Status, StatusSink};
use crate::transport::drop_oldest::DropOldest;
use crate::transport::media_relay::{COALESCE, LATE_WINDOW, SILENCE};

/// Packets waiting to be written to the distributor (all calls): when full the oldest goes.
const TO_RELAY_QUEUE: usize = 512;
const CONTROL_QUEUE: usize = 256;
/// How often the edge pings the media connection and reports its drops.
const PING_EVERY: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the distributor has to answer a request for a port. Its answers never wait
/// behind media, so a connection that keeps one waiting longer is taken for dead (a NAT
/// that lost its state, a distributor gone without a reset) and dialled again.
const PORT_TIMEOUT: Duration = Duration::from_secs(3);

/// How the edge reaches the relay.
#[derive(Debug, Clone)]
pub struct RelayDial {
    /// `wss://HOST:PORT/media` on the distributor's public listener.
    pub url: String,
    pub tls: Arc<rustls::ClientConfig>,
    /// The edge's credential, as for the tunnel.
    pub token: Option<String>,
    pub edge_id: String,
    /// Added delay beyond which a packet from the distributor is dropped.
    pub max_age: Duration,
    pub status: StatusSink,
}

/// What the link tells the buffer's shell.
#[derive(Debug)]
pub enum RelayEvent {
    /// A flow's port, or why there is none: what [`RelayLink::open`] is answered with.
    Port {
        flow: u64,
        result: Result<SocketAddr, String>,
    },
    /// Where agents reach the distributor for ICE-TCP, on each new connection; none when it
    /// drops.
    IceTcp(Option<SocketAddr>),
}

/// The handle the buffer's shell holds; the connection itself lives in a task.
#[derive(Debug, Clone)]
pub struct RelayLink {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    current: Mutex<Option<Arc<Connection>>>,
    origin: Instant,
    late: AtomicU64,
    overflow: AtomicU64,
    /// The sessions open now, by ICE username fragment, registered again on every new
    /// connection.
    ice_sessions: Mutex<HashMap<String, IceSession>>,
}

/// One media connection: what is written to it, and the flows asked for and not answered.
#[derive(Debug)]
struct Connection {
    queue: DropOldest<Vec<u8>>,
    control: mpsc::Sender<Vec<u8>>,
    /// Flows asked for, by when the answer is due.
    pending: Mutex<HashMap<u64, Instant>>,
    /// Agents' ICE-TCP connections passed on to us: by the distributor's number, and by the
    /// agent's address (where the bridge sends).
    tcp: Mutex<TcpConns>,
}

/// Whose a WebRTC session is and its UDP candidate, as the distributor is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceSession {
    pub agent: String,
    pub webrtc: SocketAddr,
}

impl IceSession {
    fn frame(&self, ufrag: String, open: bool) -> MediaFrame {
        MediaFrame::IceSession {
            ufrag,
            open,
            agent: self.agent.clone(),
            webrtc: Some(self.webrtc),
        }
    }
}

#[derive(Debug, Default)]
struct TcpConns {
    peers: HashMap<u64, SocketAddr>,
    conns: HashMap<SocketAddr, u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RelayLink {
    /// Dials the relay for ever, in the background. Caller datagrams go to `media`, answers
    /// to [`RelayLink::open`] to `answers`.
    pub fn spawn(
        dial: RelayDial,
        media: mpsc::Sender<MediaIn>,
        answers: mpsc::Sender<RelayEvent>,
    ) -> RelayLink {
        let link = RelayLink {
            shared: Arc::new(Shared {
                current: Mutex::new(None),
                origin: Instant::now(),
                late: AtomicU64::new(0),
                overflow: AtomicU64::new(0),
                ice_sessions: Mutex::new(HashMap::new()),
            }),
        };
        tokio::spawn(link.clone().dial_forever(dial, media, answers));
        link
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.shared.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn connection(&self) -> Option<Arc<Connection>> {
        lock(&self.shared.current).clone()
    }

    /// A WebRTC session whose agent may come over ICE-TCP or TURN opened (`Some`) or closed
    /// (`None`): the distributor passes on connections naming `ufrag` to us, and lets that
    /// agent's TURN allocations reach the session's UDP candidate.
    pub fn ice_session(&self, ufrag: &str, session: Option<IceSession>) {
        let frame = {
            let mut sessions = lock(&self.shared.ice_sessions);
            match session {
                Some(session) => {
                    let frame = session.frame(ufrag.to_owned(), true);
                    sessions.insert(ufrag.to_owned(), session);
                    frame
                }
                None => match sessions.remove(ufrag) {
                    Some(gone) => gone.frame(ufrag.to_owned(), false),
                    None => return,
                },
            }
        };
        if let Some(conn) = self.connection() {
            let _ = conn.control.try_send(encode_media(&frame));
        }
    }

    /// A datagram from the edge's WebRTC socket (`from`) to a browser's TURN allocation
    /// (`relayed`); false when there is no connection.
    pub fn send_turn(&self, relayed: SocketAddr, from: SocketAddr, bytes: &[u8]) -> bool {
        match self.connection() {
            Some(conn) => conn.queue.push(encode_turn_data(relayed, from, bytes)),
            None => false,
        }
    }

    /// One frame for an agent's ICE-TCP connection (the bridge names the agent's address);
    /// false when there is no such connection.
    pub fn send_tcp(&self, to: SocketAddr, bytes: &[u8]) -> bool {
        let Some(conn) = self.connection() else {
            return false;
        };
        let number = lock(&conn.tcp).conns.get(&to).copied();
        match number {
            Some(number) => conn.queue.push(encode_tcp_data(number, bytes)),
            None => false,
        }
    }

    /// Asks for a port for `flow`; the answer comes as a [`RelayEvent::Port`]. Refused at once
    /// while the relay is not connected.
    pub fn open(&self, flow: u64, remote: Option<SocketAddr>) -> Result<(), String> {
        let conn = self
            .connection()
            .ok_or("the media relay to the distributor is not connected")?;
        lock(&conn.pending).insert(flow, Instant::now() + PORT_TIMEOUT);
        conn.control
            .try_send(encode_media(&MediaFrame::Open { flow, remote }))
            .map_err(|_| {
                lock(&conn.pending).remove(&flow);
                "the media relay's control queue is full".to_owned()
            })
    }

    /// The call is over: the distributor frees its port (also when it was still being
    /// opened: the Open went first on the same connection).
    pub fn close(&self, flow: u64) {
        if let Some(conn) = self.connection() {
            lock(&conn.pending).remove(&flow);
            let _ = conn
                .control
                .try_send(encode_media(&MediaFrame::Close { flow }));
        }
    }

    /// A datagram to the caller; false when it could not be queued (no connection).
    pub fn send(&self, flow: u64, to: SocketAddr, bytes: &[u8]) -> bool {
        match self.connection() {
            Some(conn) => conn
                .queue
                .push(encode_packet(flow, to, self.now_us(), bytes)),
            None => false,
        }
    }

    async fn dial_forever(
        self,
        dial: RelayDial,
        media: mpsc::Sender<MediaIn>,
        answers: mpsc::Sender<RelayEvent>,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut last_error = String::new();
        loop {
            match self.connect(&dial).await {
                Ok(ws) => {
                    backoff.reset();
                    last_error.clear();
                    self.serve(ws, &dial, &media, &answers).await;
                }
                Err(e) => {
                    // Said once per reason; the link keeps trying quietly.
                    if e != last_error {
                        warn!(url = %dial.url, error = %e, "media relay connection failed");
                        last_error = e;
                    }
                }
            }
            if answers.is_closed() {
                break;
            }
            tokio::time::sleep(backoff.next_delay(rand::random::<f64>())).await;
        }
    }

    async fn connect(
        &self,
        dial: &RelayDial,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        String,
    > {
        use tungstenite::client::IntoClientRequest;
        let mut request = dial
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let headers = request.headers_mut();
        headers.insert(
            "Sec-WebSocket-Protocol",
            tungstenite::http::HeaderValue::from_static(MEDIA_SUBPROTOCOL),
        );
        if let Some(token) = &dial.token {
            let value = tungstenite::http::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| "the edge token is not a valid header value".to_owned())?;
            headers.insert("Authorization", value);
        }
        let config = tungstenite::protocol::WebSocketConfig::default()
            .max_frame_size(Some(MAX_MEDIA_FRAME))
            .max_message_size(Some(MAX_MEDIA_FRAME));
        let connector = tokio_tungstenite::Connector::Rustls(dial.tls.clone());
        // Nagle off: a packet waits for no other.
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            Some(connector),
        );
        let (ws, response) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if response.headers().get("Sec-WebSocket-Protocol").is_none() {
            return Err(format!(
                "the distributor does not speak {MEDIA_SUBPROTOCOL}"
            ));
        }
        Ok(ws)
    }

    async fn serve(
        &self,
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        dial: &RelayDial,
        media: &mpsc::Sender<MediaIn>,
        answers: &mpsc::Sender<RelayEvent>,
    ) {
        let (sink, mut stream) = ws.split();
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let conn = Arc::new(Connection {
            queue: DropOldest::new(TO_RELAY_QUEUE),
            control,
            pending: Mutex::new(HashMap::new()),
            tcp: Mutex::new(TcpConns::default()),
        });
        // The sessions open now, so agents reconnecting over ICE-TCP find them again.
        let sessions: Vec<MediaFrame> = lock(&self.shared.ice_sessions)
            .iter()
            .map(|(ufrag, session)| session.frame(ufrag.clone(), true))
            .collect();
        for frame in sessions {
            let _ = conn.control.try_send(encode_media(&frame));
        }
        let writer = tokio::spawn(write_to_relay(
            sink,
            conn.clone(),
            control_rx,
            self.shared.clone(),
        ));
        *lock(&self.shared.current) = Some(conn.clone());
        info!(url = %dial.url, "media relay connected");
        dial.status.emit(Status::MediaRelayUp {
            edge: dial.edge_id.clone(),
        });
        let mut late = LateFilter::new(dial.max_age, LATE_WINDOW);
        let mut check = tokio::time::interval(Duration::from_millis(250));
        let mut heard = Instant::now();
        loop {
            let message = tokio::select! {
                message = stream.next() => message,
                _ = check.tick() => {
                    if heard.elapsed() > SILENCE {
                        warn!(url = %dial.url, "the media relay went silent");
                        break;
                    }
                    let now = Instant::now();
                    if lock(&conn.pending).values().any(|due| *due < now) {
                        warn!(url = %dial.url, "the media relay did not answer a request for a port");
                        break;
                    }
                    continue;
                }
            };
            let Some(Ok(message)) = message else {
                break;
            };
            heard = Instant::now();
            let bytes = match message {
                tungstenite::Message::Binary(b) => b,
                tungstenite::Message::Close(_) => break,
                _ => continue,
            };
            match decode_media(&bytes) {
                Ok(MediaFrame::Packet {
                    flow,
                    peer,
                    sent_us,
                    payload,
                }) => {
                    if late.is_late(sent_us, self.now_us()) {
                        self.shared.late.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let packet = MediaIn::Caller {
                        id: flow,
                        bytes: payload,
                        from: peer,
                    };
                    if media.try_send(packet).is_err() {
                        self.shared.overflow.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(MediaFrame::Opened { flow, public }) => {
                    self.answer(&conn, answers, flow, Ok(public)).await;
                }
                Ok(MediaFrame::Refused { flow, reason }) => {
                    self.answer(&conn, answers, flow, Err(reason)).await;
                }
                Ok(MediaFrame::Close { flow }) => {
                    debug!(flow, "the distributor closed a relayed flow");
                }
                Ok(MediaFrame::IceTcp { addr }) => {
                    let _ = answers.send(RelayEvent::IceTcp(addr)).await;
                }
                Ok(MediaFrame::TcpOpen { conn: number, peer }) => {
                    let mut tcp = lock(&conn.tcp);
                    if let Some(old) = tcp.conns.insert(peer, number) {
                        tcp.peers.remove(&old);
                    }
                    tcp.peers.insert(number, peer);
                }
                Ok(MediaFrame::TcpData {
                    conn: number,
                    payload,
                }) => {
                    let peer = lock(&conn.tcp).peers.get(&number).copied();
                    if let Some(from) = peer {
                        let frame = MediaIn::WebRtcTcp {
                            bytes: payload,
                            from,
                        };
                        if media.try_send(frame).is_err() {
                            self.shared.overflow.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(MediaFrame::TurnData {
                    relayed, payload, ..
                }) => {
                    let frame = MediaIn::WebRtcTurn {
                        bytes: payload,
                        from: relayed,
                    };
                    if media.try_send(frame).is_err() {
                        self.shared.overflow.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(MediaFrame::TcpClose { conn: number }) => {
                    let mut tcp = lock(&conn.tcp);
                    if let Some(peer) = tcp.peers.remove(&number) {
                        tcp.conns.remove(&peer);
                    }
                }
                Ok(other) => debug!(?other, "unexpected media frame from the distributor"),
                Err(e) => debug!(error = %e, "unreadable media frame from the distributor"),
            }
        }
        *lock(&self.shared.current) = None;
        conn.queue.close();
        writer.abort();
        // Calls waiting for a port get none; calls with one lose their media, and the bridge's
        // inactivity timer ends them.
        let pending: Vec<u64> = lock(&conn.pending).drain().map(|(flow, _)| flow).collect();
        for flow in pending {
            let result = Err("the media relay connection was lost".to_owned());
            let _ = answers.send(RelayEvent::Port { flow, result }).await;
        }
        let _ = answers.send(RelayEvent::IceTcp(None)).await;
        warn!(url = %dial.url, "media relay connection lost");
        dial.status.emit(Status::MediaRelayDown {
            edge: dial.edge_id.clone(),
        });
    }

    /// Passes an answer on, unless the call ended while it was asked for.
    async fn answer(
        &self,
        conn: &Connection,
        answers: &mpsc::Sender<RelayEvent>,
        flow: u64,
        result: Result<SocketAddr, String>,
    ) {
        if lock(&conn.pending).remove(&flow).is_some() {
            let _ = answers.send(RelayEvent::Port { flow, result }).await;
        }
    }
}

/// Writes to the distributor: control frames first, queued packets in one flush, a ping and
/// a report of our drops every few seconds.
async fn write_to_relay<S>(
    mut sink: S,
    conn: Arc<Connection>,
    mut control: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
) where
    S: futures_util::Sink<tungstenite::Message> + Unpin,
{
    let mut batch = Vec::new();
    let mut tick = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            biased;
            Some(frame) = control.recv() => {
                if sink.send(tungstenite::Message::Binary(frame.into())).await.is_err() {
                    break;
                }
            }
            _ = tick.tick() => {
                let report = encode_media(&MediaFrame::Report {
                    late: shared.late.load(Ordering::Relaxed),
                    overflow: shared.overflow.load(Ordering::Relaxed) + conn.queue.dropped(),
                });
                let ping = tungstenite::Message::Ping(Vec::new().into());
                if sink.feed(ping).await.is_err()
                    || sink.send(tungstenite::Message::Binary(report.into())).await.is_err()
                {
                    break;
                }
            }
            more = conn.queue.pop_all(&mut batch) => {
                if !more {
                    break;
                }
                // What the other calls send in the next millisecond goes in the same write:
                // one TLS record and one system call for all of them instead of one each.
                tokio::time::sleep(COALESCE).await;
                conn.queue.take_all(&mut batch);
                for packet in batch.drain(..) {
                    if sink.feed(tungstenite::Message::Binary(packet.into())).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
        }
    }
}
