//! The media bridge's sockets, owned by the buffer server's shell: one shared UDP socket for
//! every agent's WebRTC, one per call for the caller's RTP, and a reader task for each
//! feeding the buffer's task. The decisions are the core's ([`super::media::CallMedia`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::media::MediaIn;
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

    /// Opens a call's caller-side socket: its address as announced in SDP.
    pub fn open(&mut self, id: SessionId) -> std::io::Result<SocketAddr> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(self.bind_ip, 0))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .and_then(UdpSocket::from_std)?;
        let local = socket.local_addr()?;
        enlarge_buffers(&socket);
        let socket = Arc::new(socket);
        let reader = spawn_reader(socket.clone(), self.tx.clone(), move |bytes, from| {
            MediaIn::Caller { id, bytes, from }
        });
        self.callers.insert(id, (socket, reader));
        Ok(SocketAddr::new(
            self.public_ip.unwrap_or(local.ip()),
            local.port(),
        ))
    }

    pub fn close(&mut self, id: SessionId) {
        if let Some((_, reader)) = self.callers.remove(&id) {
            reader.abort();
        }
    }

    pub fn send(&mut self, via: Via, to: SocketAddr, bytes: &[u8]) {
        let socket = match via {
            Via::WebRtc => Some(&self.webrtc),
            Via::Caller(id) => self.callers.get(&id).map(|c| &c.0),
        };
        let sent = socket.map(|s| s.try_send_to(bytes, to));
        if !matches!(sent, Some(Ok(_))) {
            self.send_failures += 1;
        }
    }
}

impl Drop for MediaSockets {
    fn drop(&mut self) {
        self.webrtc_reader.abort();
        for (_, reader) in self.callers.values() {
            reader.abort();
        }
    }
}
