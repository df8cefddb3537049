//! TURN over TLS (RFC 8656) on the distributor's public port: the fallback for agents whose
//! network lets out nothing but TLS to 443 (an inspecting proxy breaks ICE-TCP). The browser
//! allocates here with credentials its edge minted for that agent alone
//! ([`crate::turn::credentials`]); its only permitted peers are the UDP candidates of that
//! agent's WebRTC sessions, as the edges registered them over their media connections, and
//! what it sends them crosses that connection, never a socket of ours: this is not an open
//! relay. The protocol itself is the sans-IO [`crate::turn::allocation`]; this file reads
//! and writes the TLS stream and applies the distributor's rules.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto_tunnel::media::{MAX_DATAGRAM, encode_turn_data};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info};

use super::ice_tcp::IceRoutes;
use super::lock;
use super::media_relay::MediaRelay;
use super::per_source::Admitted;
use super::tls_listener::TurnConnections;
use crate::turn::allocation::{Authority, Event, Principal, Refusal, TurnConfig, TurnSession};
use crate::turn::{credentials, stun};

/// The realm of the long-term credentials.
pub const REALM: &str = "agent-edge";
/// Datagrams from edges waiting for one client's connection.
const TO_CLIENT_QUEUE: usize = 256;
/// A client connection silent this long is gone (browsers refresh permissions every 5
/// minutes and send ICE consent checks every few seconds).
const SILENT: Duration = Duration::from_secs(60);
/// Bytes buffered from a client that has not finished a message.
const MAX_PENDING: usize = 70 * 1024;

/// The TURN server: its allocations' addresses and per-address counts, shared by every
/// client connection.
#[derive(Debug, Clone)]
pub struct TurnServer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Arc<TurnConfig>,
    relay: MediaRelay,
    routes: Arc<IceRoutes>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
    /// Allocations made, requests challenged for credentials (every client's first), and
    /// requests refused by the refusal's code, for the live view.
    allocated: AtomicU64,
    challenged: AtomicU64,
    refused: Mutex<HashMap<u16, u64>>,
    /// Datagrams for an edge larger than the media connection carries, dropped.
    oversized: AtomicU64,
}

/// The TURN server in the live view.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct TurnView {
    /// Allocations open now, and made since start.
    pub allocations: usize,
    pub allocated: u64,
    /// Requests without credentials answered with the realm and a nonce (every client's
    /// first Allocate), and requests refused since start, by error code.
    pub challenged: u64,
    pub refused: std::collections::BTreeMap<u16, u64>,
    /// Datagrams a browser sent to an edge larger than any media datagram (over 1,500
    /// bytes), dropped here: the edge's media connection takes nothing bigger.
    pub dropped_oversized: u64,
}

impl TurnServer {
    pub fn new(relay: MediaRelay, max_per_ip: usize) -> TurnServer {
        let config = TurnConfig {
            realm: REALM.to_owned(),
            software: concat!("agent-edge/", env!("CARGO_PKG_VERSION")).to_owned(),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(3600),
        };
        TurnServer {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                routes: relay.ice_routes(),
                relay,
                per_ip: Mutex::new(HashMap::new()),
                max_per_ip,
                allocated: AtomicU64::new(0),
                challenged: AtomicU64::new(0),
                refused: Mutex::new(HashMap::new()),
                oversized: AtomicU64::new(0),
            }),
        }
    }

    /// Where the public listener hands TLS connections that start with STUN.
    pub fn acceptor(&self) -> TurnConnections {
        let (tx, mut rx) =
            mpsc::channel::<(TlsStream<TcpStream>, Vec<u8>, SocketAddr, Admitted)>(256);
        let server = self.clone();
        tokio::spawn(async move {
            while let Some((tls, first, peer, place)) = rx.recv().await {
                tokio::spawn(server.clone().serve(tls, first, peer, place));
            }
        });
        tx
    }

    pub fn view(&self) -> TurnView {
        TurnView {
            allocations: self.inner.routes.turn_allocations(),
            allocated: self.inner.allocated.load(Ordering::Relaxed),
            challenged: self.inner.challenged.load(Ordering::Relaxed),
            dropped_oversized: self.inner.oversized.load(Ordering::Relaxed),
            refused: lock(&self.inner.refused)
                .iter()
                .map(|(code, n)| (*code, *n))
                .collect(),
        }
    }

    /// Counts the error responses among `events`, the answer to `request`.
    fn count_errors(&self, request: &[u8], events: &[Event]) {
        for event in events {
            let Event::Reply(bytes) = event else { continue };
            let Some(code) = error_code(bytes) else {
                continue;
            };
            let unauthenticated =
                stun::decode(request).is_ok_and(|m| !m.has(stun::MESSAGE_INTEGRITY));
            if code == 401 && unauthenticated {
                self.inner.challenged.fetch_add(1, Ordering::Relaxed);
            } else {
                *lock(&self.inner.refused).entry(code).or_default() += 1;
            }
        }
    }

    /// Serves one client connection until it closes, goes silent or sends what cannot be
    /// framed; its allocation goes with it.
    async fn serve(
        self,
        tls: TlsStream<TcpStream>,
        first: Vec<u8>,
        client: SocketAddr,
        place: Admitted,
    ) {
        let _place = place;
        let (mut reader, mut writer) = tokio::io::split(tls);
        let nonce = format!("{:032x}", rand::random::<u128>());
        let mut session =
            TurnSession::new(self.inner.config.clone(), client, nonce, Instant::now());
        let mut rules = Rules {
            server: &self,
            client_ip: client.ip(),
            sockets: HashMap::new(),
        };
        let (to_client, mut from_edges) = mpsc::channel::<(SocketAddr, Vec<u8>)>(TO_CLIENT_QUEUE);
        let mut pending = first;
        let mut buf = vec![0u8; 16 * 1024];
        'connection: loop {
            // Every whole message buffered so far.
            loop {
                let len = match stun::frame_len(&pending) {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(e) => {
                        debug!(%client, error = %e, "TURN client sent what is not STUN: closed");
                        break 'connection;
                    }
                };
                let message: Vec<u8> = pending.drain(..len).collect();
                let events = match session.handle(
                    &message,
                    Instant::now(),
                    crate::admin::tokens::now_unix(),
                    &mut rules,
                ) {
                    Ok(events) => events,
                    Err(e) => {
                        debug!(%client, error = %e, "TURN client message refused: closed");
                        break 'connection;
                    }
                };
                self.count_errors(&message, &events);
                for event in events {
                    if !self.perform(event, &session, &to_client, &mut writer).await {
                        break 'connection;
                    }
                }
            }
            if pending.len() > MAX_PENDING {
                break;
            }
            let timer = session
                .next_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + SILENT);
            tokio::select! {
                read = tokio::time::timeout(SILENT, reader.read(&mut buf)) => match read {
                    Ok(Ok(n @ 1..)) => pending.extend_from_slice(&buf[..n]),
                    _ => break,
                },
                Some((peer, payload)) = from_edges.recv() => {
                    if let Some(bytes) = session.from_peer(peer, &payload, Instant::now())
                        && writer.write_all(&bytes).await.is_err()
                    {
                        break;
                    }
                }
                () = tokio::time::sleep_until(timer) => {
                    for event in session.handle_timeout(Instant::now(), &mut rules) {
                        if !self.perform(event, &session, &to_client, &mut writer).await {
                            break 'connection;
                        }
                    }
                }
            }
        }
        session.close(&mut rules);
        let _ = writer.shutdown().await;
        debug!(%client, "TURN client connection ended");
    }

    /// Carries out one event of the session; false when the client is gone.
    async fn perform(
        &self,
        event: Event,
        session: &TurnSession,
        to_client: &mpsc::Sender<(SocketAddr, Vec<u8>)>,
        writer: &mut (impl AsyncWriteExt + Unpin),
    ) -> bool {
        match event {
            Event::Reply(bytes) => return writer.write_all(&bytes).await.is_ok(),
            Event::Allocated { relayed } => {
                if let Some(principal) = session.principal() {
                    self.inner.allocated.fetch_add(1, Ordering::Relaxed);
                    info!(agent = %principal.agent, edge = %principal.edge, %relayed, "TURN allocation");
                    self.inner.routes.turn_open(
                        relayed,
                        principal.edge.as_str().into(),
                        to_client.clone(),
                    );
                }
            }
            Event::ToPeer { payload, .. } if payload.len() > MAX_DATAGRAM => {
                self.inner.oversized.fetch_add(1, Ordering::Relaxed);
            }
            Event::ToPeer { peer, payload } => {
                let link = session
                    .principal()
                    .and_then(|p| self.inner.routes.edge(&p.edge));
                if let (Some(link), Some(relayed)) = (link, session.relayed()) {
                    link.queue.push(encode_turn_data(relayed, peer, &payload));
                }
            }
            Event::Released { relayed } => self.inner.routes.turn_close(relayed),
        }
        true
    }
}

/// The error code of a STUN error response, to count refusals.
fn error_code(bytes: &[u8]) -> Option<u16> {
    let message = stun::decode(bytes).ok()?;
    if message.class != stun::Class::Error {
        return None;
    }
    message.error_code().map(|(code, _)| code)
}

/// The distributor's rules for one client connection's allocation.
struct Rules<'a> {
    server: &'a TurnServer,
    client_ip: IpAddr,
    /// The relayed address's port, held while the allocation lives so no other allocation or
    /// caller flow is given it.
    sockets: HashMap<SocketAddr, std::net::UdpSocket>,
}

impl Authority for Rules<'_> {
    fn credential(
        &mut self,
        username: &str,
        realm: &str,
        unix_now: u64,
    ) -> Result<Principal, Refusal> {
        let refuse = |reason: &str| Refusal {
            code: 401,
            reason: reason.to_owned(),
        };
        let parsed = credentials::parse(username).ok_or_else(|| refuse("malformed username"))?;
        if parsed.expired(unix_now) {
            return Err(refuse("expired credentials"));
        }
        let link = self
            .server
            .inner
            .routes
            .edge(parsed.edge)
            .ok_or_else(|| refuse("unknown edge"))?;
        let password = credentials::password(link.secret.as_bytes(), username);
        Ok(Principal {
            username: username.to_owned(),
            edge: parsed.edge.to_owned(),
            agent: parsed.agent.to_owned(),
            key: stun::long_term_key(username, realm, &password),
        })
    }

    fn allocate(
        &mut self,
        principal: &Principal,
        client: SocketAddr,
    ) -> Result<SocketAddr, Refusal> {
        let inner = &self.server.inner;
        {
            let mut per_ip = lock(&inner.per_ip);
            let held = per_ip.entry(client.ip()).or_default();
            if *held >= inner.max_per_ip {
                return Err(Refusal {
                    code: 486,
                    reason: "Allocation Quota Reached".to_owned(),
                });
            }
            *held += 1;
        }
        match inner.relay.bind_port() {
            Ok((socket, relayed)) => {
                self.sockets.insert(relayed, socket);
                debug!(agent = %principal.agent, %relayed, "TURN relayed address");
                Ok(relayed)
            }
            Err(e) => {
                self.release_place();
                Err(Refusal {
                    code: 508,
                    reason: format!("Insufficient Capacity: {e}"),
                })
            }
        }
    }

    fn release(&mut self, relayed: SocketAddr) {
        if self.sockets.remove(&relayed).is_some() {
            self.release_place();
        }
        self.server.inner.routes.turn_close(relayed);
    }

    fn permits(&self, principal: &Principal, peer: SocketAddr) -> bool {
        self.server
            .inner
            .routes
            .is_session_of(&principal.edge, &principal.agent, peer)
    }
}

impl Rules<'_> {
    fn release_place(&self) {
        let mut per_ip = lock(&self.server.inner.per_ip);
        if let Some(held) = per_ip.get_mut(&self.client_ip) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                per_ip.remove(&self.client_ip);
            }
        }
    }
}
