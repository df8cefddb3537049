//! A TLS listener axum can serve on. Handshakes run in their own tasks so one slow or silent
//! client never holds up the next one's accept, and each source address may hold only so many
//! connections ([`PerSource`]), handshakes included. A listener may also take connections
//! that are not TLS at all (the distributor's public port: agents' ICE-TCP), told apart by
//! their first byte, and TLS connections that carry TURN rather than HTTP, told apart by
//! their first byte inside TLS (a STUN message starts with two zero bits; every HTTP/1
//! method and the HTTP/2 preface with a capital letter).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

use super::per_source::{Admitted, PerSource};

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes finished but not yet taken by axum.
const READY_QUEUE: usize = 256;
/// A TLS connection's first byte: a handshake record (RFC 8446 §5.1, content type 22).
const TLS_HANDSHAKE: u8 = 0x16;
/// Inside TLS, a first byte below this is STUN's (RFC 8489 §5: the two top bits are 0).
const FIRST_HTTP_BYTE: u8 = 0x40;

/// Where a listener hands connections that do not start with TLS, with their place among
/// their address's connections.
pub type RawConnections = mpsc::Sender<(TcpStream, SocketAddr, Admitted)>;

/// Where a listener hands TLS connections whose first bytes are STUN (TURN over TLS), with
/// the bytes already read.
pub type TurnConnections = mpsc::Sender<(TlsStream<TcpStream>, Vec<u8>, SocketAddr, Admitted)>;

/// Where a listener sends what is not HTTPS.
#[derive(Debug, Clone, Default)]
pub struct Demux {
    pub raw: Option<RawConnections>,
    pub turn: Option<TurnConnections>,
    /// How long a TLS client has to send its first bytes when `turn` must be told from
    /// HTTPS: the HTTPS listener's header deadline (a handshake alone is
    /// [`HANDSHAKE_TIMEOUT`]'s when none is given).
    pub first_bytes: Option<Duration>,
}

#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(Conn, SocketAddr)>,
}

/// An accepted connection, holding its place among its address's connections until dropped.
#[derive(Debug)]
pub struct Conn {
    tls: TlsStream<TcpStream>,
    /// Bytes read to tell HTTP from TURN, given back first.
    prefix: Vec<u8>,
    _place: Admitted,
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

impl TlsListener {
    pub async fn bind(
        addr: SocketAddr,
        config: Arc<rustls::ServerConfig>,
        per_source: PerSource,
    ) -> std::io::Result<Self> {
        TlsListener::bind_with(addr, config, per_source, Demux::default()).await
    }

    /// The same, handing connections whose first byte is not TLS's to `demux.raw`, and TLS
    /// connections that start with STUN to `demux.turn`.
    pub async fn bind_with(
        addr: SocketAddr,
        config: Arc<rustls::ServerConfig>,
        per_source: PerSource,
        demux: Demux,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    break;
                }
                let Some(place) = per_source.admit(peer.ip()) else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let demux = demux.clone();
                tokio::spawn(async move {
                    if let Some(raw) = demux.raw {
                        let mut first = [0u8; 1];
                        let peeked =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await;
                        match peeked {
                            Ok(Ok(1)) if first[0] != TLS_HANDSHAKE => {
                                let _ = raw.send((stream, peer, place)).await;
                                return;
                            }
                            Ok(Ok(1)) => {}
                            _ => return,
                        }
                    }
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(mut tls)) => {
                            let mut prefix = Vec::new();
                            if let Some(turn) = demux.turn {
                                let mut first = [0u8; 512];
                                let wait = demux.first_bytes.unwrap_or(HANDSHAKE_TIMEOUT);
                                let read = tokio::time::timeout(wait, tls.read(&mut first)).await;
                                let Ok(Ok(n @ 1..)) = read else {
                                    return;
                                };
                                if first[0] < FIRST_HTTP_BYTE {
                                    let _ =
                                        turn.send((tls, first[..n].to_vec(), peer, place)).await;
                                    return;
                                }
                                prefix.extend_from_slice(&first[..n]);
                            }
                            let conn = Conn {
                                tls,
                                prefix,
                                _place: place,
                            };
                            let _ = tx.send((conn, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends when this listener is dropped; never resolve then.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The client's address, for handlers behind a [`TlsListener`] (put on each request by
/// `serve.rs`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);
