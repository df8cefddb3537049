//! The media bridge's sockets, owned by the buffer server's shell: one shared UDP socket for
//! every agent's WebRTC, and for the callers' RTP either one socket per call with a reader
//! task each feeding the buffer's task, or, on an exposed edge, a flow per call on the
//! distributor's relay ([`super::relay_link`]); a desk-phone agent's relayed call also has
//! a socket of its own facing the agent. The decisions are the core's
//! ([`super::media::CallMedia`]). A call's sockets close with its
//! [`MediaSockets::close`] (their reader tasks end, dropping the last handle).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::media::MediaIn;
use super::relay_link::{IceSession, RelayLink};
use crate::media::bridge::{SessionId, Via};

/// Datagrams queued from the sockets to the buffer's task.
const MEDIA_QUEUE: usize = 8192;
/// Largest datagram read (WebRTC keeps under the 1200-byte MTU; RTP G.711 is 172).
const MAX_DATAGRAM: usize = 2048;
/// Socket buffers asked of the kernel (capped by net.core.rmem_max / wmem_max): the shared
/// WebRTC socket takes every agent's packets, and a burst must wait out a busy moment.
const SOCKET_BUFFER: usize = 4 << 20;

/// Larger kernel buffers for a media socket; the kernel's caps apply, failures are harmless.
fn enlarge_buffers(socket: &UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
}

/// Reads a socket into the buffer's task until either goes away.
fn spawn_reader(
    socket: Arc<UdpSocket>,
    tx: mpsc::Sender<MediaIn>,
    wrap: impl Fn(Vec<u8>, SocketAddr) -> MediaIn + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            if tx.send(wrap(buf[..n].to_vec(), from)).await.is_err() {
                break;
            }
        }
    })
}

#[derive(Debug)]
pub struct MediaSockets {
    webrtc: Arc<UdpSocket>,
    /// The shared WebRTC address as announced.
    webrtc_announced: SocketAddr,
    /// Address caller-leg sockets bind to; `public_ip` is announced instead when set.
    bind_ip: IpAddr,
    public_ip: Option<IpAddr>,
    callers: HashMap<SessionId, (Arc<UdpSocket>, JoinHandle<()>)>,
    /// Relayed calls' agent-side sockets.
    agents: HashMap<SessionId, (Arc<UdpSocket>, JoinHandle<()>)>,
    /// The media connection to the distributor (an edge with a tunnel): agents' ICE-TCP.
    link: Option<RelayLink>,
    /// Callers' ports are the distributor's relay's (an exposed edge): no caller socket is
    /// opened here.
    relay_callers: bool,
    /// The ICE username fragment each call registered for ICE-TCP.
    ice_sessions: HashMap<SessionId, String>,
    tx: mpsc::Sender<MediaIn>,
    webrtc_reader: JoinHandle<()>,
    /// Datagrams not sent (socket full or gone).
    pub send_failures: u64,
}

impl MediaSockets {
    /// Binds the shared WebRTC socket. `public` is the address announced in SDP when the
    /// edge sits behind 1:1 NAT.
    pub async fn bind(
        addr: SocketAddr,
        public: Option<IpAddr>,
    ) -> std::io::Result<(MediaSockets, mpsc::Receiver<MediaIn>)> {
        let webrtc = UdpSocket::bind(addr).await?;
        enlarge_buffers(&webrtc);
        let webrtc = Arc::new(webrtc);
        let local = webrtc.local_addr()?;
        let (tx, rx) = mpsc::channel(MEDIA_QUEUE);
        let webrtc_reader = spawn_reader(webrtc.clone(), tx.clone(), |bytes, from| {
            MediaIn::WebRtc { bytes, from }
        });
        let sockets = MediaSockets {
            webrtc,
            webrtc_announced: SocketAddr::new(public.unwrap_or(local.ip()), local.port()),
            bind_ip: local.ip(),
            public_ip: public,
            callers: HashMap::new(),
            agents: HashMap::new(),
            link: None,
            relay_callers: false,
            ice_sessions: HashMap::new(),
            tx,
            webrtc_reader,
            send_failures: 0,
        };
        Ok((sockets, rx))
    }

    /// The shared WebRTC address as announced.
    pub fn webrtc_addr(&self) -> SocketAddr {
        self.webrtc_announced
    }

    /// Where relayed callers' datagrams must go: into the bridge's input like a socket's.
    pub fn media_sender(&self) -> mpsc::Sender<MediaIn> {
        self.tx.clone()
    }

    /// The edge's media connection to the distributor: agents' ICE-TCP comes through it,
    /// and with `relay_callers` callers' ports are the distributor's.
    pub fn link_to(&mut self, link: RelayLink, relay_callers: bool) {
        self.link = Some(link);
        self.relay_callers = relay_callers;
    }

    /// Registers a call's WebRTC session, `agent`'s, for ICE-TCP and TURN through the
    /// distributor.
    pub fn ice_session(&mut self, id: SessionId, ufrag: String, agent: String) {
        if let Some(link) = &self.link {
            let session = IceSession {
                agent,
                webrtc: self.webrtc_announced,
            };
            link.ice_session(&ufrag, Some(session));
            self.ice_sessions.insert(id, ufrag);
        }
    }

    fn relay(&self) -> Option<&RelayLink> {
        self.link.as_ref().filter(|_| self.relay_callers)
    }

    /// Opens a call's caller-side port: its address as announced in SDP now, or `None` when
    /// the relay answers later (as a [`super::relay_link::RelayEvent::Port`]).
    pub fn open(
        &mut self,
        id: SessionId,
        remote: Option<SocketAddr>,
    ) -> Result<Option<SocketAddr>, String> {
        match self.relay() {
            Some(relay) => relay.open(id, remote).map(|()| None),
            None => self.open_socket(id).map(Some).map_err(|e| e.to_string()),
        }
    }

    fn open_socket(&mut self, id: SessionId) -> std::io::Result<SocketAddr> {
        let (socket, reader, announced) =
            self.bind_call_socket(move |bytes, from| MediaIn::Caller { id, bytes, from })?;
        self.callers.insert(id, (socket, reader));
        Ok(announced)
    }

    /// Opens a relayed call's agent-side socket (always the edge's own: desk phones reach
    /// the edge directly): its address as announced in SDP.
    pub fn open_agent(&mut self, id: SessionId) -> std::io::Result<SocketAddr> {
        let (socket, reader, announced) =
            self.bind_call_socket(move |bytes, from| MediaIn::Agent { id, bytes, from })?;
        if let Some((_, old)) = self.agents.insert(id, (socket, reader)) {
            old.abort();
        }
        Ok(announced)
    }

    /// A UDP socket of one call's on a port the kernel picks, read into the core.
    fn bind_call_socket(
        &self,
        wrap: impl Fn(Vec<u8>, SocketAddr) -> MediaIn + Send + 'static,
    ) -> std::io::Result<(Arc<UdpSocket>, JoinHandle<()>, SocketAddr)> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(self.bind_ip, 0))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .and_then(UdpSocket::from_std)?;
        let local = socket.local_addr()?;
        enlarge_buffers(&socket);
        let socket = Arc::new(socket);
        let reader = spawn_reader(socket.clone(), self.tx.clone(), wrap);
        let announced = SocketAddr::new(self.public_ip.unwrap_or(local.ip()), local.port());
        Ok((socket, reader, announced))
    }

    pub fn close(&mut self, id: SessionId) {
        if let Some(relay) = self.relay() {
            relay.close(id);
        }
        if let (Some(ufrag), Some(link)) = (self.ice_sessions.remove(&id), &self.link) {
            link.ice_session(&ufrag, None);
        }
        if let Some((_, reader)) = self.callers.remove(&id) {
            reader.abort();
        }
        if let Some((_, reader)) = self.agents.remove(&id) {
            reader.abort();
        }
    }

    pub fn send(&mut self, via: Via, to: SocketAddr, bytes: &[u8]) {
        let sent = match (via, self.relay()) {
            (Via::Caller(id), Some(relay)) => relay.send(id, to, bytes),
            (Via::WebRtc, _) => self.webrtc.try_send_to(bytes, to).is_ok(),
            (Via::IceTcp, _) => self.link.as_ref().is_some_and(|l| l.send_tcp(to, bytes)),
            (Via::Turn, _) => self
                .link
                .as_ref()
                .is_some_and(|l| l.send_turn(to, self.webrtc_announced, bytes)),
            (Via::Caller(id), None) => self
                .callers
                .get(&id)
                .is_some_and(|c| c.0.try_send_to(bytes, to).is_ok()),
            (Via::Agent(id), _) => self
                .agents
                .get(&id)
                .is_some_and(|c| c.0.try_send_to(bytes, to).is_ok()),
        };
        if !sent {
            self.send_failures += 1;
        }
    }
}

impl Drop for MediaSockets {
    fn drop(&mut self) {
        self.webrtc_reader.abort();
        for (_, reader) in self.callers.values().chain(self.agents.values()) {
            reader.abort();
        }
    }
}
