//! The only code that owns SIP sockets. Each listener or connection parses what it reads at
//! the boundary, answers bad requests itself, and hands whole messages to the role that owns
//! the transactions. The role sends back through [`Transports`], by connection when the
//! target names one (RFC 3261 §18.2.2, RFC 7118 §5), else by address.

pub mod agent_page;
mod boundary;
pub mod drop_oldest;
pub mod exposed_edge;
pub mod exposure;
pub mod https;
pub mod ice_tcp;
pub mod media_relay;
pub mod per_source;
pub mod public;
mod serve;
pub mod stream;
pub mod tls_listener;
pub mod tunnel;
pub mod turn_tls;
pub mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::sip::{ConnId, SipMessage, Target, TransportKind};

pub use boundary::ingest;

/// What transports tell the role that owns them.
#[derive(Debug)]
pub enum TransportEvent {
    /// A parsed and validated message, and when it was read: the time it then waits for the
    /// core says how far behind the core is.
    Message {
        msg: SipMessage,
        from: Target,
        received: std::time::Instant,
    },
    /// A connection ended: transactions and registrations bound to it are gone.
    Closed { conn: ConnId },
}

/// Room for messages waiting to be written to one connection; a peer that reads slower than
/// this loses its connection rather than making the server buffer without end.
const CONN_QUEUE: usize = 1024;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A fresh connection id, unique in the process.
pub fn next_conn_id() -> ConnId {
    ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed))
}

/// Why a message could not be handed to a transport.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The connection the target names is gone, and its transport cannot dial a new one.
    #[error("connection {0:?} is closed")]
    Closed(ConnId),
    /// The connection's write queue is full: the peer does not read.
    #[error("connection {0:?} is not draining its queue")]
    Congested(ConnId),
    /// No socket of this kind is open.
    #[error("no {0:?} transport is listening")]
    NoTransport(TransportKind),
    /// The UDP send failed at once.
    #[error("UDP send to {addr} failed: {source}")]
    Udp {
        /// Destination.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
}

/// How long peers may take, so a silent or trickling one does not hold a socket for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// For a request's headers on an HTTPS listener.
    pub header_read: std::time::Duration,
    /// For a SIP stream message begun to be finished.
    pub message: std::time::Duration,
    /// For a SIP WebSocket's first message.
    pub ws_first_message: std::time::Duration,
}

/// The sending half shared by a role and its listeners.
#[derive(Clone, Debug)]
pub struct Transports {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    udp: Mutex<Option<Arc<tokio::net::UdpSocket>>>,
    conns: Mutex<HashMap<ConnId, Conn>>,
    events: mpsc::Sender<TransportEvent>,
    max_message: usize,
    deadlines: Deadlines,
}

#[derive(Debug)]
struct Conn {
    kind: TransportKind,
    addr: SocketAddr,
    tx: mpsc::Sender<Bytes>,
}

impl Transports {
    pub fn new(
        events: mpsc::Sender<TransportEvent>,
        max_message: usize,
        deadlines: Deadlines,
    ) -> Transports {
        Transports {
            inner: Arc::new(Inner {
                udp: Mutex::new(None),
                conns: Mutex::new(HashMap::new()),
                events,
                max_message,
                deadlines,
            }),
        }
    }

    pub fn max_message(&self) -> usize {
        self.inner.max_message
    }

    pub fn deadlines(&self) -> Deadlines {
        self.inner.deadlines
    }

    pub(crate) fn events(&self) -> &mpsc::Sender<TransportEvent> {
        &self.inner.events
    }

    pub(crate) fn set_udp(&self, socket: Arc<tokio::net::UdpSocket>) {
        *lock(&self.inner.udp) = Some(socket);
    }

    /// Registers a new connection; what is queued on the returned receiver is written to it.
    pub(crate) fn add_conn(
        &self,
        kind: TransportKind,
        addr: SocketAddr,
    ) -> (ConnId, mpsc::Receiver<Bytes>) {
        let id = next_conn_id();
        let (tx, rx) = mpsc::channel(CONN_QUEUE);
        lock(&self.inner.conns).insert(id, Conn { kind, addr, tx });
        (id, rx)
    }

    /// Forgets a connection and tells the role, once.
    pub(crate) async fn remove_conn(&self, id: ConnId) {
        let removed = lock(&self.inner.conns).remove(&id).is_some();
        if removed {
            let _ = self
                .inner
                .events
                .send(TransportEvent::Closed { conn: id })
                .await;
        }
    }

    /// Closes a connection from our side (a WebSocket agent whose token was revoked): its
    /// writer stops, the socket closes, and the reader ends with it.
    pub fn close(&self, id: ConnId) {
        lock(&self.inner.conns).remove(&id);
    }

    /// An open connection to this peer over this transport, so requests to a registered
    /// contact reuse the agent's own connection instead of dialling a new one.
    pub fn find_conn(&self, kind: TransportKind, addr: SocketAddr) -> Option<ConnId> {
        lock(&self.inner.conns)
            .iter()
            .find(|(_, c)| c.kind == kind && c.addr == addr)
            .map(|(id, _)| *id)
    }

    /// Sends one serialised message.
    pub fn send(&self, to: &Target, bytes: Bytes) -> Result<(), SendError> {
        if let Some(id) = to.conn {
            let conns = lock(&self.inner.conns);
            if let Some(conn) = conns.get(&id) {
                return conn.tx.try_send(bytes).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => SendError::Congested(id),
                    mpsc::error::TrySendError::Closed(_) => SendError::Closed(id),
                });
            }
            drop(conns);
            if to.kind != TransportKind::Tcp {
                return Err(SendError::Closed(id));
            }
        }
        match to.kind {
            TransportKind::Udp => {
                let socket = lock(&self.inner.udp)
                    .clone()
                    .ok_or(SendError::NoTransport(TransportKind::Udp))?;
                match socket.try_send_to(&bytes, to.addr) {
                    Ok(_) => Ok(()),
                    // A full socket buffer is a lost datagram; SIP retransmits.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
                    Err(source) => Err(SendError::Udp {
                        addr: to.addr,
                        source,
                    }),
                }
            }
            TransportKind::Tcp => {
                if let Some(id) = self.find_conn(TransportKind::Tcp, to.addr) {
                    let target = Target {
                        conn: Some(id),
                        ..to.clone()
                    };
                    return self.send(&target, bytes);
                }
                stream::connect_tcp(self.clone(), to.addr, bytes);
                Ok(())
            }
            // TLS is never dialled here: a response or request goes back on the caller's
            // connection, found by its address when the sender did not name it.
            TransportKind::Tls => match self.find_conn(TransportKind::Tls, to.addr) {
                Some(id) => self.send(
                    &Target {
                        conn: Some(id),
                        ..to.clone()
                    },
                    bytes,
                ),
                None => Err(SendError::NoTransport(TransportKind::Tls)),
            },
            kind => Err(SendError::NoTransport(kind)),
        }
    }
}

/// Whether this is the first time `said` is asked: the first refusal of a kind is logged as a
/// warning and the rest at debug, so a flood of them cannot flood the log.
pub(crate) fn first_time(said: &std::sync::atomic::AtomicBool) -> bool {
    !said.swap(true, Ordering::Relaxed)
}

/// A poisoned lock only means another task panicked while holding it; the map itself is
/// still consistent, so keep serving calls.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
