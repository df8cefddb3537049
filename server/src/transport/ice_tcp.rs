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

/// One edge media connection, as the ICE-TCP connections it was given reach it.
#[derive(Debug, Clone)]
pub struct EdgeLink {
    /// Which media connection (a new one of the same edge is another link).
    pub connection: u64,
    pub control: mpsc::Sender<Vec<u8>>,
    pub queue: Arc<DropOldest<Vec<u8>>>,
    /// The agents' connections it was given, by number: where its frames for each go.
    pub conns: Arc<Mutex<HashMap<u64, mpsc::Sender<Vec<u8>>>>>,
}

/// Which edge media connection registered each ICE username fragment, and the counts of
/// connections that named none.
#[derive(Debug, Default)]
pub struct IceRoutes {
    owners: Mutex<HashMap<String, EdgeLink>>,
    next_conn: AtomicU64,
    /// Connections that did not start with a Binding request naming a registered session.
    pub refused: AtomicU64,
    /// Connections passed to an edge.
    pub passed: AtomicU64,
}

impl IceRoutes {
    /// `link` registers (or drops) `ufrag`; false when another connection holds it.
    pub fn register(&self, ufrag: &str, link: &EdgeLink, open: bool) -> bool {
        let mut owners = lock(&self.owners);
        match owners.get(ufrag) {
            Some(owner) if owner.connection != link.connection => false,
            Some(_) if !open => {
                owners.remove(ufrag);
                true
            }
            None if open => {
                owners.insert(ufrag.to_owned(), link.clone());
                true
            }
            _ => true,
        }
    }

    /// Everything `connection` registered goes with it.
    pub fn forget(&self, connection: u64) {
        lock(&self.owners).retain(|_, link| link.connection != connection);
    }

    fn owner(&self, ufrag: &str) -> Option<EdgeLink> {
        lock(&self.owners).get(ufrag).cloned()
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
