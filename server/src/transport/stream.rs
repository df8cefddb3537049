//! SIP over byte streams (TCP, TLS): Content-Length framing (RFC 3261 §18.3) and the CRLF
//! keep-alive (RFC 5626 §4.4.1). A stream that breaks framing cannot resynchronise, so it is
//! closed; the calls on other connections never notice.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::per_source::{Admitted, PerSource};
use super::{Transports, ingest};
use crate::sip::framing::{Frame, next_frame};
use crate::sip::{ConnId, SipError, Target, TransportKind, validate};

/// Binds a TCP listener for SIP and spawns its accept loop; an address holding the most
/// connections `per_source` allows gets no more.
pub async fn listen_tcp(
    transports: &Transports,
    addr: SocketAddr,
    per_source: PerSource,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let transports = transports.clone();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let Some(place) = per_source.admit(peer.ip()) else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    spawn_conn(&transports, stream, TransportKind::Tcp, peer, place);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(local)
}

/// Binds a TLS listener for SIP (callers on 5061) and spawns its accept loop, with the same
/// per-address limit as TCP (handshakes included).
pub async fn listen_tls(
    transports: &Transports,
    addr: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    per_source: PerSource,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let transports = transports.clone();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "TLS accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(place) = per_source.admit(peer.ip()) else {
                continue;
            };
            let acceptor = acceptor.clone();
            let transports = transports.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let handshake = tokio::time::timeout(
                    super::tls_listener::HANDSHAKE_TIMEOUT,
                    acceptor.accept(stream),
                );
                match handshake.await {
                    Ok(Ok(tls)) => {
                        spawn_conn(&transports, tls, TransportKind::Tls, peer, place);
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    Ok(local)
}

/// Dials a TCP connection to a peer with no open connection (a registered contact) and sends
/// `first` once it is up. A failed dial is reported as a closed connection.
pub fn connect_tcp(transports: Transports, addr: SocketAddr, first: Bytes) {
    let (id, rx) = transports.add_conn(TransportKind::Tcp, addr);
    tokio::spawn(async move {
        let dial =
            tokio::time::timeout(std::time::Duration::from_secs(5), TcpStream::connect(addr));
        match dial.await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                // `first` goes ahead of whatever was queued meanwhile.
                run_conn(
                    transports,
                    stream,
                    TransportKind::Tcp,
                    addr,
                    id,
                    rx,
                    Some(first),
                )
                .await;
            }
            Ok(Err(e)) => {
                debug!(%addr, error = %e, "TCP connect failed");
                transports.remove_conn(id).await;
            }
            Err(_) => {
                debug!(%addr, "TCP connect timed out");
                transports.remove_conn(id).await;
            }
        }
    });
}

/// Serves an accepted connection, holding its `place` among its address's connections.
fn spawn_conn<S>(
    transports: &Transports,
    stream: S,
    kind: TransportKind,
    peer: SocketAddr,
    place: Admitted,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (id, rx) = transports.add_conn(kind, peer);
    let transports = transports.clone();
    tokio::spawn(async move {
        run_conn(transports, stream, kind, peer, id, rx, None).await;
        drop(place);
    });
}

async fn run_conn<S>(
    transports: Transports,
    stream: S,
    kind: TransportKind,
    peer: SocketAddr,
    id: ConnId,
    mut outbound: mpsc::Receiver<Bytes>,
    first: Option<Bytes>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (pong_tx, mut pong_rx) = mpsc::channel::<Bytes>(4);
    let write = async move {
        if let Some(first) = first
            && writer.write_all(&first).await.is_err()
        {
            return;
        }
        loop {
            let bytes = tokio::select! {
                Some(b) = outbound.recv() => b,
                Some(b) = pong_rx.recv() => b,
                else => break,
            };
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    };
    let target = Target {
        kind,
        addr: peer,
        conn: Some(id),
    };
    let mut write = tokio::spawn(write);
    tokio::select! {
        _ = &mut write => {}
        () = read_loop(&transports, &mut reader, target, pong_tx) => {
            // Forgetting the connection drops the last queue sender, so the writer flushes
            // what is queued (a refusal, say) and ends; a peer that does not read gets cut.
            transports.remove_conn(id).await;
            if tokio::time::timeout(std::time::Duration::from_secs(2), &mut write).await.is_err() {
                write.abort();
            }
        }
    }
    debug!(%peer, ?id, "connection closed");
    transports.remove_conn(id).await;
}

async fn read_loop<R>(
    transports: &Transports,
    reader: &mut R,
    from: Target,
    pong: mpsc::Sender<Bytes>,
) where
    R: AsyncRead + Unpin,
{
    let max = transports.max_message();
    let mut buf = BytesMut::with_capacity(4096);
    // A message begun must be finished within `[limits] message_s` (a peer trickling bytes
    // or stopping half-way holds a socket and a buffer); between messages it may idle.
    let within = transports.deadlines().message;
    let mut started: Option<tokio::time::Instant> = None;
    loop {
        loop {
            match next_frame(&buf, max) {
                Ok(Frame::Incomplete) => break,
                Ok(Frame::Skip { len }) => buf.advance(len),
                Ok(Frame::Ping { len }) => {
                    buf.advance(len);
                    let _ = pong.try_send(Bytes::from_static(b"\r\n"));
                }
                Ok(Frame::Message { len }) => {
                    let msg = buf.split_to(len);
                    if !ingest(transports, &msg, from.clone()).await {
                        return;
                    }
                }
                Err(e) => {
                    refuse(transports, &buf, &from, &e);
                    return;
                }
            }
        }
        if buf.is_empty() {
            started = None;
        } else if started.is_none() {
            started = Some(tokio::time::Instant::now());
        }
        let read = reader.read_buf(&mut buf);
        let read = match started {
            Some(at) => match tokio::time::timeout_at(at + within, read).await {
                Ok(read) => read,
                Err(_) => {
                    static SAID: std::sync::atomic::AtomicBool =
                        std::sync::atomic::AtomicBool::new(false);
                    if super::first_time(&SAID) {
                        warn!(peer = %from.addr, ?within, "closing stream connections whose message is unfinished (said once)");
                    } else {
                        debug!(peer = %from.addr, "closing a stream connection: message unfinished");
                    }
                    return;
                }
            },
            None => read.await,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Tells the peer why its connection is being closed, when its headers make a response
/// possible (513 for an oversized message, 400 for a bad Content-Length).
fn refuse(transports: &Transports, buf: &[u8], from: &Target, error: &SipError) {
    warn!(peer = %from.addr, %error, "closing stream connection");
    let head_end = crate::sip::message::find(buf, b"\r\n\r\n").map(|i| i + 4);
    let Some(head) = head_end.and_then(|end| buf.get(..end)) else {
        return;
    };
    if let Some(resp) = validate::answer_head(head, error) {
        let _ = transports.send(from, Bytes::from(resp.to_bytes()));
    }
}
