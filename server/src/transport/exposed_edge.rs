//! The edge's side of being exposed through its distributor: page requests answered from the
//! bundled files, and each virtual connection the distributor opens made a WSS connection of
//! the edge's own transports, so the registrar, tokens, revocation and the call path treat a
//! browser reached through the tunnel exactly like one on the edge's HTTPS listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use proto_tunnel::Frame;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Transports, agent_page, ingest, lock};
use crate::sip::{ConnId, Target, TransportKind};

/// Most virtual connections one tunnel may hold open: more agents than an edge serves.
const MAX_VIRTUAL_CONNS: usize = 20_000;
/// Page files go back in pieces of this size, well inside one tunnel frame.
const PAGE_CHUNK: usize = 32 * 1024;

/// One tunnel's virtual connections, as the edge sees them. Cheap to clone: the tunnel's
/// reader hands each frame to a clone.
#[derive(Clone, Debug)]
pub struct ExposedEdge {
    transports: Transports,
    /// Frames to the distributor, beside the role's own.
    relay: mpsc::Sender<Frame>,
    conns: Arc<Mutex<HashMap<u64, (ConnId, SocketAddr)>>>,
}

impl ExposedEdge {
    pub fn new(transports: Transports, relay: mpsc::Sender<Frame>) -> ExposedEdge {
        ExposedEdge {
            transports,
            relay,
            conns: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Handles one exposure frame from the distributor ([`Frame::is_exposure`]; the answers'
    /// frames, which only an edge sends, are ignored). Returns false when the role has stopped
    /// listening. Never waits on the tunnel's own queue: this runs inside the tunnel's reader,
    /// which is also what drains it.
    pub async fn handle(&self, frame: Frame) -> bool {
        match frame {
            Frame::HttpRequest { stream, path } => {
                self.answer_page(stream, &path);
                true
            }
            Frame::WsOpen { conn, peer } => {
                self.open(conn, &peer);
                true
            }
            Frame::WsMessage { conn, data } => self.message(conn, &data).await,
            Frame::WsClose { conn, reason } => {
                let entry = lock(&self.conns).remove(&conn);
                if let Some((id, peer)) = entry {
                    debug!(%peer, conn, %reason, "virtual connection closed by the distributor");
                    self.transports.remove_conn(id).await;
                }
                true
            }
            _ => true,
        }
    }

    /// The tunnel is gone, and with it every virtual connection: the role hears each close
    /// (registrations made on them end), and the pages reconnect once the edge is back.
    pub async fn tunnel_down(&self) {
        let conns: Vec<ConnId> = lock(&self.conns).drain().map(|(_, (id, _))| id).collect();
        for id in conns {
            self.transports.remove_conn(id).await;
        }
    }

    fn answer_page(&self, stream: u64, path: &str) {
        let (status, content_type, body) = match agent_page::asset(path) {
            Some((content_type, body)) => (200, content_type, body.as_bytes()),
            None => (404, "text/plain", &b"no such file\n"[..]),
        };
        let relay = self.relay.clone();
        // Its own task: the answer may be several frames, and the tunnel's reader must not
        // wait for room in the queue it drains.
        tokio::spawn(async move {
            let head = Frame::HttpHead {
                stream,
                status,
                content_type: content_type.to_owned(),
            };
            if relay.send(head).await.is_err() {
                return;
            }
            let mut pieces = body.chunks(PAGE_CHUNK).peekable();
            if pieces.peek().is_none() {
                let _ = relay.send(body_frame(stream, &[], true)).await;
            }
            while let Some(piece) = pieces.next() {
                let last = pieces.peek().is_none();
                if relay.send(body_frame(stream, piece, last)).await.is_err() {
                    return;
                }
            }
        });
    }

    fn open(&self, conn: u64, peer: &str) {
        let refuse = |reason: &str| {
            warn!(conn, peer, reason, "refusing a virtual connection");
            self.tell_closed(conn, reason);
        };
        let Ok(addr) = peer.parse::<SocketAddr>() else {
            refuse("the peer is not an IP address and port");
            return;
        };
        let mut conns = lock(&self.conns);
        if conns.contains_key(&conn) {
            drop(conns);
            refuse("that connection is already open");
            return;
        }
        if conns.len() >= MAX_VIRTUAL_CONNS {
            drop(conns);
            refuse("too many connections through this tunnel");
            return;
        }
        let (id, outbound) = self.transports.add_conn(TransportKind::Wss, addr);
        conns.insert(conn, (id, addr));
        drop(conns);
        debug!(%addr, conn, ?id, "virtual connection open");
        tokio::spawn(forward(self.clone(), conn, id, outbound));
    }

    async fn message(&self, conn: u64, data: &[u8]) -> bool {
        let Some((id, addr)) = lock(&self.conns).get(&conn).copied() else {
            debug!(conn, "message for a virtual connection not open");
            return true;
        };
        if data.len() > self.transports.max_message() {
            // The distributor caps these; one that does not is closed, not trusted.
            warn!(%addr, conn, len = data.len(), "oversized message on a virtual connection");
            lock(&self.conns).remove(&conn);
            self.transports.remove_conn(id).await;
            self.tell_closed(conn, "message larger than the SIP limit");
            return true;
        }
        let from = Target {
            kind: TransportKind::Wss,
            addr,
            conn: Some(id),
        };
        ingest(&self.transports, data, from).await
    }

    fn tell_closed(&self, conn: u64, reason: &str) {
        let close = Frame::WsClose {
            conn,
            reason: reason.to_owned(),
        };
        let relay = self.relay.clone();
        tokio::spawn(async move {
            let _ = relay.send(close).await;
        });
    }
}

fn body_frame(stream: u64, data: &[u8], last: bool) -> Frame {
    Frame::HttpBody {
        stream,
        data: Bytes::copy_from_slice(data),
        last,
    }
}

/// Carries what the role sends on one virtual connection to the distributor. When the role
/// closes the connection (a revoked token) the queue ends and the distributor is told, so the
/// browser's WebSocket closes too.
async fn forward(edge: ExposedEdge, conn: u64, id: ConnId, mut outbound: mpsc::Receiver<Bytes>) {
    while let Some(data) = outbound.recv().await {
        if edge
            .relay
            .send(Frame::WsMessage { conn, data })
            .await
            .is_err()
        {
            return;
        }
    }
    let ours = lock(&edge.conns).remove(&conn).is_some();
    if ours {
        edge.transports.remove_conn(id).await;
        edge.tell_closed(conn, "closed by the edge");
    }
}
