//! The distributor's side of exposed edges. An edge that accepts nothing inbound asks, over the
//! tunnel it dialled, to be exposed; the distributor then serves `/edge/<id>/` (the agent
//! page, fetched from the edge over the tunnel) and `/edge/<id>/sip` (SIP over WebSocket: each
//! browser's WebSocket is a virtual connection on that edge's tunnel) on its public listener,
//! the way a reverse tunnel exposes a private web server. Only bytes move here: tokens are
//! checked by the edge, as on its own listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use proto_tunnel::Frame;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::https::{SIP_SUBPROTOCOL, not_sip, read_messages, ws_message};
use super::tls_listener::PeerAddr;
use super::{agent_page, lock};
use crate::sip::ConnId;

/// Room for messages from the edge waiting to be written to one browser; a browser that
/// reads slower than this loses its connection rather than holding up the edge's tunnel.
const BROWSER_QUEUE: usize = 256;
/// Pieces of a page's answer waiting for its request.
const PAGE_QUEUE: usize = 64;
/// How long the edge has to answer a page request.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest page file relayed; the agent page's files are far smaller.
const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Room a tunnel frame needs around one WebSocket message (tag, connection, length).
const FRAME_OVERHEAD: usize = 64;

/// The exposed edges and their virtual connections, shared by the public listener's handlers
/// and the tunnel endpoint.
#[derive(Clone, Debug)]
pub struct Exposures {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    edges: Mutex<HashMap<String, Exposed>>,
    /// Largest browser WebSocket message: the SIP limit, and never more than one tunnel frame
    /// can carry (else the edge would refuse the frame and drop its tunnel).
    max_message: usize,
    /// Frames from edges for connections or requests that are not theirs or not open.
    dropped: AtomicU64,
    /// How long a browser's SIP WebSocket may stay silent after its upgrade.
    ws_first_message: Duration,
}

#[derive(Debug)]
struct Exposed {
    /// The tunnel that asked; frames from an older tunnel of the same edge are not its own.
    tunnel: ConnId,
    relay: mpsc::Sender<Frame>,
    conns: HashMap<u64, mpsc::Sender<Bytes>>,
    pages: HashMap<u64, mpsc::Sender<PagePart>>,
    next: u64,
}

/// The exposed edges in the live view.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExposureView {
    pub edges: Vec<ExposedEdgeView>,
    /// Frames from edges for connections or requests not open on their tunnel, or opening
    /// what only the distributor opens.
    pub dropped_frames: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExposedEdgeView {
    pub edge: String,
    /// Browsers' SIP WebSockets carried over its tunnel now.
    pub connections: usize,
    /// Page requests waiting for its answer.
    pub page_requests: usize,
}

#[derive(Debug)]
enum PagePart {
    Head { status: u16, content_type: String },
    Body { data: Bytes, last: bool },
}

impl Exposures {
    pub fn new(max_sip_message: usize, ws_first_message: Duration) -> Exposures {
        let tunnel_room = proto_tunnel::Limits::default().max_frame - FRAME_OVERHEAD;
        Exposures {
            inner: Arc::new(Inner {
                edges: Mutex::new(HashMap::new()),
                max_message: max_sip_message.min(tunnel_room),
                dropped: AtomicU64::new(0),
                ws_first_message,
            }),
        }
    }

    /// Frames from edges that named a connection or request not open on their tunnel.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// What the live view shows: each exposed edge with its open virtual connections, and the
    /// frames dropped.
    pub fn view(&self) -> ExposureView {
        let mut edges: Vec<ExposedEdgeView> = lock(&self.inner.edges)
            .iter()
            .map(|(edge, e)| ExposedEdgeView {
                edge: edge.clone(),
                connections: e.conns.len(),
                page_requests: e.pages.len(),
            })
            .collect();
        edges.sort_by(|a, b| a.edge.cmp(&b.edge));
        ExposureView {
            edges,
            dropped_frames: self.dropped(),
        }
    }

    /// The edge on `tunnel` asked to be exposed; frames for it go to `relay`. A previous
    /// tunnel's exposure of the same edge ends: its browsers reconnect through this one.
    pub(crate) fn expose(&self, edge: &str, tunnel: ConnId, relay: mpsc::Sender<Frame>) {
        let exposed = Exposed {
            tunnel,
            relay,
            conns: HashMap::new(),
            pages: HashMap::new(),
            next: 1,
        };
        info!(%edge, "edge exposed");
        lock(&self.inner.edges).insert(edge.to_owned(), exposed);
    }

    /// The edge's tunnel ended: its browsers' WebSockets close (their queues' senders go) and
    /// its page requests fail.
    pub(crate) fn tunnel_down(&self, edge: &str, tunnel: ConnId) {
        let mut edges = lock(&self.inner.edges);
        if edges.get(edge).is_some_and(|e| e.tunnel == tunnel) {
            edges.remove(edge);
            info!(%edge, "edge no longer exposed");
        }
    }

    /// A frame an exposed edge sent about its page or its virtual connections. Never waits:
    /// a browser that does not keep up is disconnected, so the tunnel never stalls.
    pub(crate) fn edge_frame(&self, edge: &str, tunnel: ConnId, frame: Frame) {
        let mut edges = lock(&self.inner.edges);
        let Some(exposed) = edges.get_mut(edge).filter(|e| e.tunnel == tunnel) else {
            self.drop_frame(edge, "the edge is not exposed on this tunnel");
            return;
        };
        match frame {
            Frame::WsMessage { conn, data } => {
                let Some(browser) = exposed.conns.get(&conn) else {
                    drop(edges);
                    self.drop_frame(edge, "a message for a connection not open");
                    return;
                };
                if browser.try_send(data).is_err() {
                    debug!(%edge, conn, "browser not reading; closing its connection");
                    exposed.conns.remove(&conn);
                    tell(
                        &exposed.relay,
                        Frame::WsClose {
                            conn,
                            reason: "the browser does not read its messages".into(),
                        },
                    );
                }
            }
            Frame::WsClose { conn, reason } => {
                if exposed.conns.remove(&conn).is_some() {
                    debug!(%edge, conn, %reason, "edge closed a virtual connection");
                }
            }
            Frame::HttpHead {
                stream,
                status,
                content_type,
            } => exposed.page_part(
                stream,
                PagePart::Head {
                    status,
                    content_type,
                },
            ),
            Frame::HttpBody { stream, data, last } => {
                exposed.page_part(stream, PagePart::Body { data, last });
            }
            _ => {
                drop(edges);
                self.drop_frame(edge, "only the distributor opens connections and requests");
            }
        }
    }

    fn drop_frame(&self, edge: &str, why: &str) {
        let n = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        debug!(%edge, why, dropped = n, "dropping an exposure frame");
    }

    /// Opens a virtual connection to `edge`: its number, the tunnel to write to, and the
    /// queue of what the edge sends back.
    fn open_conn(
        &self,
        edge: &str,
    ) -> Option<(u64, ConnId, mpsc::Sender<Frame>, mpsc::Receiver<Bytes>)> {
        let mut edges = lock(&self.inner.edges);
        let exposed = edges.get_mut(edge)?;
        let conn = exposed.next_id();
        let (tx, rx) = mpsc::channel(BROWSER_QUEUE);
        exposed.conns.insert(conn, tx);
        Some((conn, exposed.tunnel, exposed.relay.clone(), rx))
    }

    /// The browser's WebSocket ended: tell the edge, unless it was the edge that ended it.
    fn close_conn(&self, edge: &str, tunnel: ConnId, conn: u64, reason: &str) {
        let mut edges = lock(&self.inner.edges);
        let Some(exposed) = edges.get_mut(edge).filter(|e| e.tunnel == tunnel) else {
            return;
        };
        if exposed.conns.remove(&conn).is_some() {
            let reason = reason.to_owned();
            tell(&exposed.relay, Frame::WsClose { conn, reason });
        }
    }

    fn open_page(
        &self,
        edge: &str,
    ) -> Option<(u64, mpsc::Sender<Frame>, mpsc::Receiver<PagePart>)> {
        let mut edges = lock(&self.inner.edges);
        let exposed = edges.get_mut(edge)?;
        let stream = exposed.next_id();
        let (tx, rx) = mpsc::channel(PAGE_QUEUE);
        exposed.pages.insert(stream, tx);
        Some((stream, exposed.relay.clone(), rx))
    }

    fn close_page(&self, edge: &str, stream: u64) {
        if let Some(exposed) = lock(&self.inner.edges).get_mut(edge) {
            exposed.pages.remove(&stream);
        }
    }

    fn is_exposed(&self, edge: &str) -> bool {
        lock(&self.inner.edges).contains_key(edge)
    }
}

impl Exposed {
    fn next_id(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        id
    }

    fn page_part(&mut self, stream: u64, part: PagePart) {
        let Some(request) = self.pages.get(&stream) else {
            return;
        };
        let last = matches!(part, PagePart::Body { last: true, .. });
        if request.try_send(part).is_err() || last {
            self.pages.remove(&stream);
        }
    }
}

/// Queues a frame for the edge without waiting: these are sent from inside the tunnel's
/// reader, which also drains the queue, so waiting there could wait for ever.
fn tell(relay: &mpsc::Sender<Frame>, frame: Frame) {
    if let Err(mpsc::error::TrySendError::Full(frame)) = relay.try_send(frame) {
        let relay = relay.clone();
        tokio::spawn(async move {
            let _ = relay.send(frame).await;
        });
    }
}

/// The public listener's routes for exposed edges.
pub fn routes(exposures: Exposures) -> Router {
    Router::new()
        .route("/edge/{edge}", get(add_slash))
        .route("/edge/{edge}/", get(page_index))
        .route("/edge/{edge}/sip", get(sip_upgrade))
        .route("/edge/{edge}/{file}", get(page_file))
        .with_state(exposures)
}

/// The page's links are relative: `/edge/edge-1` must become `/edge/edge-1/`, its query (a
/// sign-in link's token) kept.
async fn add_slash(Path(edge): Path<String>, RawQuery(query): RawQuery) -> Redirect {
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    Redirect::permanent(&format!("/edge/{edge}/{query}"))
}

async fn page_index(State(exposures): State<Exposures>, Path(edge): Path<String>) -> Response {
    relay_page(&exposures, &edge, String::new()).await
}

async fn page_file(
    State(exposures): State<Exposures>,
    Path((edge, file)): Path<(String, String)>,
) -> Response {
    relay_page(&exposures, &edge, file).await
}

fn unknown_edge(edge: &str) -> Response {
    debug!(%edge, "request for an edge not exposed here");
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain")],
        "no edge of that name is exposed here\n",
    )
        .into_response()
}

/// Fetches one page file from the edge over its tunnel and serves it with the page's own
/// security headers (only the status, the media type and the body come from the edge).
async fn relay_page(exposures: &Exposures, edge: &str, path: String) -> Response {
    let Some((stream, relay, mut parts)) = exposures.open_page(edge) else {
        return unknown_edge(edge);
    };
    let answer = tokio::time::timeout(PAGE_TIMEOUT, async {
        relay.send(Frame::HttpRequest { stream, path }).await.ok()?;
        let Some(PagePart::Head {
            status,
            content_type,
        }) = parts.recv().await
        else {
            return None;
        };
        let mut body = Vec::new();
        loop {
            match parts.recv().await? {
                PagePart::Body { data, last } => {
                    if body.len() + data.len() > MAX_PAGE_BYTES {
                        return None;
                    }
                    body.extend_from_slice(&data);
                    if last {
                        return Some((status, content_type, body));
                    }
                }
                PagePart::Head { .. } => return None,
            }
        }
    })
    .await;
    exposures.close_page(edge, stream);
    let Ok(Some((status, content_type, body))) = answer else {
        info!(%edge, "the edge did not answer a page request");
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let Ok(status) = StatusCode::from_u16(status) else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let response = (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
    agent_page::with_headers(response).await
}

async fn sip_upgrade(
    ws: WebSocketUpgrade,
    State(exposures): State<Exposures>,
    Path(edge): Path<String>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
) -> Response {
    // Refused before the upgrade: nothing reaches an edge that is not exposed here.
    if !exposures.is_exposed(&edge) {
        return unknown_edge(&edge);
    }
    let max = exposures.inner.max_message;
    let ws = ws
        .protocols([SIP_SUBPROTOCOL])
        .max_frame_size(max)
        .max_message_size(max);
    if ws.selected_protocol().is_none() {
        debug!(%peer, %edge, "refusing WebSocket without subprotocol sip");
        return not_sip();
    }
    ws.on_upgrade(move |socket| serve_virtual(exposures, edge, socket, peer))
}

/// Carries one browser's WebSocket over its edge's tunnel until either side ends it.
async fn serve_virtual(exposures: Exposures, edge: String, socket: WebSocket, peer: SocketAddr) {
    let Some((conn, tunnel, relay, mut from_edge)) = exposures.open_conn(&edge) else {
        return;
    };
    let open = Frame::WsOpen {
        conn,
        peer: peer.to_string(),
    };
    if relay.send(open).await.is_err() {
        return;
    }
    debug!(%peer, %edge, conn, "virtual connection open");
    let (mut sink, mut stream) = socket.split();
    let write = async {
        while let Some(bytes) = from_edge.recv().await {
            if sink.send(ws_message(bytes)).await.is_err() {
                return;
            }
        }
        // The edge closed it, or its tunnel went: the page's reconnecting logic takes over.
        let _ = sink.send(Message::Close(None)).await;
    };
    let first_within = exposures.inner.ws_first_message;
    let read = read_messages(&mut stream, first_within, |data| {
        let relay = &relay;
        async move { relay.send(Frame::WsMessage { conn, data }).await.is_ok() }
    });
    tokio::select! {
        () = write => {}
        () = read => {}
    }
    debug!(%peer, %edge, conn, "virtual connection closed");
    exposures.close_conn(&edge, tunnel, conn, "the browser closed its WebSocket");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposed(edge: &str, tunnel: u64) -> (Exposures, mpsc::Receiver<Frame>) {
        let exposures = Exposures::new(65_535, Duration::from_secs(30));
        let (relay, rx) = mpsc::channel(8);
        exposures.expose(edge, ConnId(tunnel), relay);
        (exposures, rx)
    }

    #[tokio::test]
    async fn an_edge_reaches_only_its_own_virtual_connections_on_its_current_tunnel() {
        let (exposures, _relay) = exposed("edge-1", 1);
        let (conn, tunnel, _, mut browser) = exposures.open_conn("edge-1").unwrap();
        assert_eq!(tunnel, ConnId(1));
        let message = |conn| Frame::WsMessage {
            conn,
            data: Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"),
        };
        exposures.edge_frame("edge-1", ConnId(1), message(conn));
        assert!(browser.try_recv().is_ok(), "its own connection gets it");
        // Another edge, an old tunnel of the same edge, a connection never opened.
        exposures.edge_frame("edge-2", ConnId(1), message(conn));
        exposures.edge_frame("edge-1", ConnId(7), message(conn));
        exposures.edge_frame("edge-1", ConnId(1), message(conn + 1));
        assert!(browser.try_recv().is_err());
        assert_eq!(exposures.dropped(), 3);
    }

    #[tokio::test]
    async fn an_edge_cannot_open_connections_or_requests() {
        let (exposures, _relay) = exposed("edge-1", 1);
        let open = Frame::WsOpen {
            conn: 1,
            peer: "192.0.2.1:5000".into(),
        };
        exposures.edge_frame("edge-1", ConnId(1), open);
        let request = Frame::HttpRequest {
            stream: 1,
            path: String::new(),
        };
        exposures.edge_frame("edge-1", ConnId(1), request);
        assert_eq!(exposures.dropped(), 2);
    }

    #[tokio::test]
    async fn a_browser_that_does_not_read_is_closed_and_the_edge_told() {
        let (exposures, mut relay) = exposed("edge-1", 1);
        let (conn, _, _, browser) = exposures.open_conn("edge-1").unwrap();
        for _ in 0..=BROWSER_QUEUE {
            let data = Bytes::from_static(b"x");
            exposures.edge_frame("edge-1", ConnId(1), Frame::WsMessage { conn, data });
        }
        assert!(
            matches!(relay.try_recv(), Ok(Frame::WsClose { conn: c, .. }) if c == conn),
            "the edge hears the connection is gone"
        );
        drop(browser);
    }

    #[tokio::test]
    async fn a_new_tunnel_of_the_same_edge_ends_the_old_ones_connections() {
        let (exposures, _old) = exposed("edge-1", 1);
        let (_, _, _, mut browser) = exposures.open_conn("edge-1").unwrap();
        let (relay, _new) = mpsc::channel(8);
        exposures.expose("edge-1", ConnId(2), relay);
        assert!(browser.recv().await.is_none(), "the old connection closed");
        // The old tunnel going down later leaves the new exposure alone.
        exposures.tunnel_down("edge-1", ConnId(1));
        assert!(exposures.is_exposed("edge-1"));
        exposures.tunnel_down("edge-1", ConnId(2));
        assert!(!exposures.is_exposed("edge-1"));
    }

    #[tokio::test]
    async fn page_parts_reach_their_request_until_the_last() {
        let (exposures, _relay) = exposed("edge-1", 1);
        let (stream, _, mut parts) = exposures.open_page("edge-1").unwrap();
        let head = Frame::HttpHead {
            stream,
            status: 200,
            content_type: "text/css".into(),
        };
        exposures.edge_frame("edge-1", ConnId(1), head);
        let body = |last| Frame::HttpBody {
            stream,
            data: Bytes::from_static(b"p{}"),
            last,
        };
        exposures.edge_frame("edge-1", ConnId(1), body(false));
        exposures.edge_frame("edge-1", ConnId(1), body(true));
        exposures.edge_frame("edge-1", ConnId(1), body(true));
        let mut got = 0;
        while parts.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 3, "head and two pieces; nothing after the last");
    }
}
