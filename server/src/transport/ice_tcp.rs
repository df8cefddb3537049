//! Agents' ICE-TCP (RFC 6544) through the distributor: for agents whose network lets out
//! only TCP to 443. The bridge offers a passive TCP candidate on the distributor's public
//! port; a browser connects there and sends an RFC 4571-framed STUN Binding request whose
//! USERNAME starts with the edge session's ICE username fragment. Edges register their
//! sessions' fragments over their media connection ([`super::media_relay`]); the connection
//! goes to the edge that registered the one it names, each frame one `TcpData` message both
//! ways. Nothing is relayed for a fragment no edge registered, and the edge's ICE agent checks
//! every message's integrity with the session's password, which never leaves the edge.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto_tunnel::media::{
    MAX_DATAGRAM, MediaFrame, encode_media, encode_tcp_data, stun_binding_ufrag,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::debug;

use super::drop_oldest::DropOldest;
use super::lock;
use super::per_source::Admitted;

/// How long a new connection has to send its first frame.
const FIRST_FRAME: Duration = Duration::from_secs(10);
/// A connection silent this long is dead: ICE consent checks come every few seconds.
const SILENT: Duration = Duration::from_secs(30);
/// Frames from the edge waiting to be written to one agent's connection.
const TO_AGENT_QUEUE: usize = 256;

/// One edge media connection, as the ICE-TCP connections and TURN allocations it was given
/// reach it.
#[derive(Clone)]
pub struct EdgeLink {
    /// Which media connection (a new one of the same edge is another link).
    pub connection: u64,
    pub edge: Arc<str>,
    /// The credential the edge showed: the key of its browsers' TURN credentials.
    pub secret: Arc<str>,
    pub control: mpsc::Sender<Vec<u8>>,
    pub queue: Arc<DropOldest<Vec<u8>>>,
    /// The agents' connections it was given, by number: where its frames for each go.
    pub conns: Arc<Mutex<HashMap<u64, mpsc::Sender<Vec<u8>>>>>,
}

impl std::fmt::Debug for EdgeLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeLink")
            .field("connection", &self.connection)
            .field("edge", &self.edge)
            .finish_non_exhaustive()
    }
}

/// A registered WebRTC session: the media connection it came on, whose call it is, and its
/// UDP candidate.
#[derive(Debug, Clone)]
struct Owner {
    link: EdgeLink,
    agent: String,
    webrtc: Option<SocketAddr>,
}

/// Where datagrams from an edge to one TURN allocation go: the client connection's task.
pub type ToTurnClient = mpsc::Sender<(SocketAddr, Vec<u8>)>;

#[derive(Debug)]
struct TurnRoute {
    edge: Arc<str>,
    to_client: ToTurnClient,
}

/// Which edge media connection registered each ICE username fragment, the counts of
/// connections that named none, each edge's newest media connection and the TURN
/// allocations open for its agents.
#[derive(Debug, Default)]
pub struct IceRoutes {
    owners: Mutex<HashMap<String, Owner>>,
    edges: Mutex<HashMap<Arc<str>, EdgeLink>>,
    turn: Mutex<HashMap<SocketAddr, TurnRoute>>,
    next_conn: AtomicU64,
    /// Connections that did not start with a Binding request naming a registered session.
    pub refused: AtomicU64,
    /// Connections passed to an edge.
    pub passed: AtomicU64,
}

impl IceRoutes {
    /// `link` registers (or drops) `ufrag`, `agent`'s session with UDP candidate `webrtc`;
    /// false when another connection holds it.
    pub fn register(
        &self,
        ufrag: &str,
        link: &EdgeLink,
        open: bool,
        agent: &str,
        webrtc: Option<SocketAddr>,
    ) -> bool {
        let mut owners = lock(&self.owners);
        match owners.get(ufrag) {
            Some(owner) if owner.link.connection != link.connection => false,
            Some(_) if !open => {
                owners.remove(ufrag);
                true
            }
            None if open => {
                let owner = Owner {
                    link: link.clone(),
                    agent: agent.to_owned(),
                    webrtc,
                };
                owners.insert(ufrag.to_owned(), owner);
                true
            }
            _ => true,
        }
    }

    /// A media connection came up: the edge's newest, the one its TURN traffic takes.
    pub fn connected(&self, link: &EdgeLink) {
        lock(&self.edges).insert(link.edge.clone(), link.clone());
    }

    /// Everything `connection` registered goes with it.
    pub fn forget(&self, connection: u64) {
        lock(&self.owners).retain(|_, owner| owner.link.connection != connection);
        lock(&self.edges).retain(|_, link| link.connection != connection);
    }

    fn owner(&self, ufrag: &str) -> Option<EdgeLink> {
        lock(&self.owners).get(ufrag).map(|o| o.link.clone())
    }

    /// The edge's media connection now, if it has one.
    pub fn edge(&self, edge: &str) -> Option<EdgeLink> {
        lock(&self.edges).get(edge).cloned()
    }

    /// Whether `peer` is the UDP candidate of one of `agent`'s sessions on `edge`: the only
    /// peers a TURN allocation with that agent's credentials may reach.
    pub fn is_session_of(&self, edge: &str, agent: &str, peer: SocketAddr) -> bool {
        lock(&self.owners)
            .values()
            .any(|o| &*o.link.edge == edge && o.agent == agent && o.webrtc == Some(peer))
    }

    /// A TURN allocation of one of `edge`'s agents is open at `relayed`.
    pub fn turn_open(&self, relayed: SocketAddr, edge: Arc<str>, to_client: ToTurnClient) {
        lock(&self.turn).insert(relayed, TurnRoute { edge, to_client });
    }

    pub fn turn_close(&self, relayed: SocketAddr) {
        lock(&self.turn).remove(&relayed);
    }

    /// Where `edge`'s datagram for the allocation at `relayed` goes; none when there is no
    /// such allocation or it is another edge's agent's.
    pub fn turn_client(&self, relayed: SocketAddr, edge: &str) -> Option<ToTurnClient> {
        lock(&self.turn)
            .get(&relayed)
            .filter(|route| &*route.edge == edge)
            .map(|route| route.to_client.clone())
    }

    /// TURN allocations open now.
    pub fn turn_allocations(&self) -> usize {
        lock(&self.turn).len()
    }
}

/// Reads one RFC 4571 frame: a 16-bit length, then that many bytes (at most a datagram's).
async fn read_frame(reader: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Vec<u8>> {
    let len = usize::from(reader.read_u16().await?);
    if len == 0 || len > MAX_DATAGRAM {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("an ICE-TCP frame of {len} bytes"),
        ));
    }
    let mut frame = vec![0u8; len];
    reader.read_exact(&mut frame).await?;
    Ok(frame)
}

/// Serves one agent connection that did not start with TLS, until either side ends it.
pub async fn serve(routes: Arc<IceRoutes>, stream: TcpStream, peer: SocketAddr, place: Admitted) {
    let _place = place;
    let (mut reader, mut writer) = stream.into_split();
    let first = match tokio::time::timeout(FIRST_FRAME, read_frame(&mut reader)).await {
        Ok(Ok(frame)) => frame,
        _ => {
            routes.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let Some(link) = stun_binding_ufrag(&first).and_then(|ufrag| routes.owner(ufrag)) else {
        routes.refused.fetch_add(1, Ordering::Relaxed);
        debug!(%peer, "a connection on the public port that is neither TLS nor ICE-TCP for a known session");
        return;
    };
    routes.passed.fetch_add(1, Ordering::Relaxed);
    let conn = routes.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut to_agent) = mpsc::channel::<Vec<u8>>(TO_AGENT_QUEUE);
    lock(&link.conns).insert(conn, tx);
    let open = MediaFrame::TcpOpen { conn, peer };
    if link.control.try_send(encode_media(&open)).is_err() {
        lock(&link.conns).remove(&conn);
        return;
    }
    link.queue.push(encode_tcp_data(conn, &first));
    let from_agent = async {
        while let Ok(Ok(frame)) = tokio::time::timeout(SILENT, read_frame(&mut reader)).await {
            link.queue.push(encode_tcp_data(conn, &frame));
        }
    };
    let to_agent = async {
        while let Some(frame) = to_agent.recv().await {
            let Ok(len) = u16::try_from(frame.len()) else {
                continue;
            };
            let mut framed = Vec::with_capacity(frame.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&frame);
            if writer.write_all(&framed).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    };
    tokio::select! {
        () = from_agent => {}
        () = to_agent => {}
    }
    if lock(&link.conns).remove(&conn).is_some() {
        let _ = link
            .control
            .try_send(encode_media(&MediaFrame::TcpClose { conn }));
    }
    debug!(%peer, conn, "agent ICE-TCP connection ended");
}
