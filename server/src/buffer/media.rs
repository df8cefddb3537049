//! The media bridge's sockets: one shared UDP socket for every agent's WebRTC, one per call
//! for the caller's RTP, and a reader task for each feeding the buffer's task. The bridge
//! itself ([`crate::media::bridge`]) is sans-IO; this is the IO around it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::media::bridge::{Bridge, BridgeError, BridgeEvent, MediaStats, SessionId, Via};

/// A datagram for the bridge.
#[derive(Debug)]
pub enum MediaIn {
    WebRtc {
        bytes: Vec<u8>,
        from: SocketAddr,
    },
    Caller {
        id: SessionId,
        bytes: Vec<u8>,
        from: SocketAddr,
    },
}

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

#[derive(Debug)]
pub struct MediaIo {
    bridge: Bridge,
    webrtc: Arc<UdpSocket>,
    webrtc_local: SocketAddr,
    /// Address caller-leg sockets bind to, and the one announced for them.
    bind_ip: IpAddr,
    public_ip: Option<IpAddr>,
    callers: HashMap<SessionId, (Arc<UdpSocket>, SocketAddr, JoinHandle<()>)>,
    tx: mpsc::Sender<MediaIn>,
    _webrtc_reader: JoinHandle<()>,
    /// Datagrams not sent (socket full or gone).
    pub send_failures: u64,
}

impl MediaIo {
    /// Binds the shared WebRTC socket. `public` is the address announced in SDP when the
    /// edge sits behind 1:1 NAT.
    pub async fn bind(
        addr: SocketAddr,
        public: Option<IpAddr>,
        inactivity: Duration,
    ) -> std::io::Result<(MediaIo, mpsc::Receiver<MediaIn>)> {
        let webrtc = UdpSocket::bind(addr).await?;
        enlarge_buffers(&webrtc);
        let webrtc = Arc::new(webrtc);
        let local = webrtc.local_addr()?;
        let announced = SocketAddr::new(public.unwrap_or(local.ip()), local.port());
        let (tx, rx) = mpsc::channel(MEDIA_QUEUE);
        let reader = {
            let (socket, tx) = (webrtc.clone(), tx.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                    let bytes = buf[..n].to_vec();
                    if tx.send(MediaIn::WebRtc { bytes, from }).await.is_err() {
                        break;
                    }
                }
            })
        };
        Ok((
            MediaIo {
                bridge: Bridge::new(announced, inactivity),
                webrtc,
                webrtc_local: announced,
                bind_ip: local.ip(),
                public_ip: public,
                callers: HashMap::new(),
                tx,
                _webrtc_reader: reader,
                send_failures: 0,
            },
            rx,
        ))
    }

    /// The shared WebRTC address as announced.
    pub fn webrtc_addr(&self) -> SocketAddr {
        self.webrtc_local
    }

    /// Sets up a call's media: a socket for the caller's RTP, the WebRTC session. Returns
    /// (the caller's SDP answer, the agent's SDP offer).
    pub fn open(
        &mut self,
        id: SessionId,
        caller_offer: &[u8],
        now: Instant,
    ) -> Result<(String, String), BridgeError> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(self.bind_ip, 0))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .and_then(UdpSocket::from_std)
            .map_err(|e| BridgeError::Socket(e.to_string()))?;
        let local = socket
            .local_addr()
            .map_err(|e| BridgeError::Socket(e.to_string()))?;
        let announced = SocketAddr::new(self.public_ip.unwrap_or(local.ip()), local.port());
        let answers = self.bridge.create(id, caller_offer, announced, now)?;
        enlarge_buffers(&socket);
        let socket = Arc::new(socket);
        let reader = {
            let (socket, tx) = (socket.clone(), self.tx.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                    let bytes = buf[..n].to_vec();
                    if tx.send(MediaIn::Caller { id, bytes, from }).await.is_err() {
                        break;
                    }
                }
            })
        };
        self.callers.insert(id, (socket, announced, reader));
        Ok(answers)
    }

    pub fn agent_answer(
        &mut self,
        id: SessionId,
        sdp: &[u8],
        now: Instant,
    ) -> Result<(), BridgeError> {
        let r = self.bridge.agent_answer(id, sdp, now);
        self.flush();
        r
    }

    /// A caller's re-INVITE: its answer, and the agent's re-offer if the direction changed.
    pub fn caller_reoffer(
        &mut self,
        id: SessionId,
        sdp: &[u8],
        now: Instant,
    ) -> Result<(String, Option<String>), BridgeError> {
        let local = self.caller_local(id)?;
        let r = self.bridge.caller_reoffer(id, sdp, local, now);
        self.flush();
        r
    }

    /// An agent's re-INVITE: its answer, and the caller's offer.
    pub fn agent_reoffer(
        &mut self,
        id: SessionId,
        sdp: &[u8],
        now: Instant,
    ) -> Result<(String, String), BridgeError> {
        let local = self.caller_local(id)?;
        let r = self.bridge.agent_reoffer(id, sdp, local, now);
        self.flush();
        r
    }

    fn caller_local(&self, id: SessionId) -> Result<SocketAddr, BridgeError> {
        self.callers
            .get(&id)
            .map(|c| c.1)
            .ok_or(BridgeError::Unknown(id))
    }

    /// Ends a call's media: its statistics.
    pub fn close(&mut self, id: SessionId) -> Option<MediaStats> {
        if let Some((_, _, reader)) = self.callers.remove(&id) {
            reader.abort();
        }
        self.bridge.close(id)
    }

    pub fn stats(&self, id: SessionId) -> Option<MediaStats> {
        self.bridge.stats(id)
    }

    pub fn on_input(&mut self, input: MediaIn, now: Instant) {
        match input {
            MediaIn::WebRtc { bytes, from } => {
                self.bridge
                    .from_webrtc(&bytes, from, self.webrtc_local, now);
            }
            MediaIn::Caller { id, bytes, from } => self.bridge.from_caller(id, &bytes, from, now),
        }
        self.flush();
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.bridge.handle_timeout(now);
        self.flush();
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.bridge.poll_timeout()
    }

    pub fn poll_event(&mut self) -> Option<BridgeEvent> {
        self.bridge.poll_event()
    }

    /// Datagrams dropped on the WebRTC socket because no call's session took them.
    pub fn stray(&self) -> u64 {
        self.bridge.stray
    }

    fn flush(&mut self) {
        while let Some(d) = self.bridge.poll_datagram() {
            let socket = match d.via {
                Via::WebRtc => Some(&self.webrtc),
                Via::Caller(id) => self.callers.get(&id).map(|c| &c.0),
            };
            let sent = socket.map(|s| s.try_send_to(&d.bytes, d.to));
            if !matches!(sent, Some(Ok(_))) {
                self.send_failures += 1;
            }
        }
    }
}

impl Drop for MediaIo {
    fn drop(&mut self) {
        self._webrtc_reader.abort();
        for (_, _, reader) in self.callers.values() {
            reader.abort();
        }
    }
}
