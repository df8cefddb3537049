//! The distributor's SIP side: a transaction-stateful, record-routing proxy between callers
//! and the edges' tunnels. It chooses the agent for each new call and names it in the tunnel
//! frame that carries the INVITE; in-dialog requests then follow the Record-Route it added.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto_tunnel::Frame;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::agents::AgentPool;
use crate::admin::tokens::{self, TokenIssuer, TokenVerifier};
use crate::buffer::registrar::{self, RegisterRequest};
use crate::config::{DistributorConfig, SipConfig};
use crate::handoff::{self, Mode};
use crate::ids;
use crate::sip::transaction::{self, TransactionLayer, Transmit, TxEvent, TxId};
use crate::sip::{ConnId, Method, NameAddr, SipMessage, SipUri, Target, TransportKind, Via};
use crate::transport::tunnel::TunnelServerEvent;
use crate::transport::{TransportEvent, Transports};

/// URI parameter naming the edge behind a Contact the distributor rewrote, so a caller's
/// in-dialog request finds its way back into the right tunnel.
const EDGE_PARAM: &str = "ae-edge";
/// Record-Route parameter naming the caller's stream connection, so requests towards the
/// caller reuse it (RFC 5626's flow idea, kept inside our own URI).
const FLOW_PARAM: &str = "ae-flow";

/// What the admin API asks of the distributor task.
#[derive(Debug)]
pub enum Command {
    /// Refuse this token on every edge from now on.
    Revoke { jti: String },
    /// Who is logged in where, and the calls in progress.
    Live { reply: oneshot::Sender<LiveView> },
    /// The token keys changed (a rotation): tell every edge.
    Keys { json: String },
}

/// The distributor's state as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LiveView {
    pub agents: Vec<LiveAgent>,
    pub calls: Vec<LiveCall>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveAgent {
    pub id: String,
    pub edge: String,
    /// `available` or `on-call`.
    pub state: &'static str,
    pub calls: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveCall {
    pub call_id: String,
    pub agent: String,
}

/// The addresses the caller-facing listeners are bound to.
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub tls: SocketAddr,
}

impl BoundAddrs {
    fn for_kind(&self, kind: TransportKind) -> (SocketAddr, &'static str) {
        match kind {
            TransportKind::Tcp => (self.tcp, "tcp"),
            TransportKind::Tls => (self.tls, "tls"),
            _ => (self.udp, "udp"),
        }
    }

    fn is_ours(&self, uri: &SipUri) -> bool {
        let Ok(ip) = uri
            .host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
        else {
            return false;
        };
        let addr = SocketAddr::new(ip, uri.port.unwrap_or(5060));
        [self.udp, self.tcp, self.tls].contains(&addr)
    }
}

#[derive(Debug)]
struct Edge {
    id: String,
    /// The edge's tunnel; `None` for an edge reached over plain SIP.
    sender: Option<mpsc::Sender<Frame>>,
    /// Where a plain-SIP edge is reached (the transport and address it registered from).
    link: Option<Target>,
    /// How this edge wants calls handed to it (the first of its Hello's it names that we know).
    mode: Mode,
}

/// Time a `table` route entry waits for its INVITE.
const ROUTE_TTL_MS: u32 = 5000;

/// The agent (and Call-ID) of the INVITE being handed to an edge, for the encoder.
#[derive(Debug)]
struct Handoff {
    agent: String,
    call_id: String,
}

/// A new call handed to an edge, by the client transaction carrying its INVITE.
#[derive(Debug)]
struct Offer {
    server_tx: TxId,
    agent: String,
    caller: Target,
    edge_id: String,
}

/// An in-dialog request proxied one way or the other.
#[derive(Debug)]
struct Proxied {
    server_tx: TxId,
    /// Set when the request came from the caller's side: responses then go back to the caller
    /// and need their Contact rewritten for that transport.
    caller_kind: Option<TransportKind>,
    edge_id: String,
}

pub struct Distributor {
    identity: String,
    /// Checks the credentials of edges that register over plain SIP.
    edge_issuer: TokenIssuer,
    /// Revoked token ids, sent to each edge as it connects.
    revoked: std::collections::BTreeSet<String>,
    config: DistributorConfig,
    layer: TransactionLayer,
    transports: Transports,
    addrs: BoundAddrs,
    edges: HashMap<ConnId, Edge>,
    edge_ids: HashMap<String, ConnId>,
    pool: AgentPool,
    offers: HashMap<TxId, Offer>,
    offer_of_server: HashMap<TxId, TxId>,
    proxied: HashMap<TxId, Proxied>,
    /// Agent of each call in progress, by Call-ID, to free it when the call ends.
    active: HashMap<String, String>,
    /// Call-ID of each caller INVITE server transaction, to free the agent if the caller
    /// never confirms the answer.
    invites: HashMap<TxId, String>,
}

impl Edge {
    /// A frame into the edge's tunnel; plain-SIP edges have none and take no frames.
    fn send_frame(&self, frame: Frame) {
        if let Some(sender) = &self.sender
            && sender.try_send(frame).is_err()
        {
            warn!(edge = %self.id, "tunnel queue full; frame dropped");
        }
    }
}

impl std::fmt::Debug for Distributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributor")
            .field("edges", &self.edges.len())
            .field("agents", &self.pool.len())
            .finish_non_exhaustive()
    }
}

fn tunnel_target(conn: ConnId) -> Target {
    Target {
        kind: TransportKind::Tunnel,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        conn: Some(conn),
    }
}

impl Distributor {
    /// `identity` is the JSON of [`crate::admin::tokens::VerifierSettings`], sent to every
    /// edge so it can check agent tokens.
    pub fn new(
        config: DistributorConfig,
        sip: &SipConfig,
        transports: Transports,
        addrs: BoundAddrs,
        identity: String,
        revoked: Vec<String>,
        edge_issuer: TokenIssuer,
    ) -> Distributor {
        Distributor {
            identity,
            edge_issuer,
            revoked: revoked.into_iter().collect(),
            config,
            layer: TransactionLayer::new(transaction::Config {
                timers: sip.timers(),
                send_100_trying: true,
                timer_c: Some(Duration::from_secs(180)),
            }),
            transports,
            addrs,
            edges: HashMap::new(),
            edge_ids: HashMap::new(),
            pool: AgentPool::new(),
            offers: HashMap::new(),
            offer_of_server: HashMap::new(),
            proxied: HashMap::new(),
            active: HashMap::new(),
            invites: HashMap::new(),
        }
    }

    /// Serves until both event sources close.
    pub async fn run(
        mut self,
        mut sip: mpsc::Receiver<TransportEvent>,
        mut tunnel: mpsc::Receiver<TunnelServerEvent>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        loop {
            let wake = self
                .layer
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                ev = sip.recv() => match ev {
                    Some(TransportEvent::Message { msg, from }) => match self.edge_conn_of(&from) {
                        Some(conn) => self.on_edge_msg(msg, from, conn, Instant::now()),
                        None => self.layer.handle_message(msg, from, Instant::now()),
                    },
                    Some(TransportEvent::Closed { conn }) => {
                        self.layer.connection_closed(conn);
                    }
                    None => break,
                },
                ev = tunnel.recv() => match ev {
                    Some(ev) => self.on_tunnel(ev, Instant::now()),
                    None => break,
                },
                Some(command) = commands.recv() => self.on_command(command),
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    self.layer.handle_timeout(Instant::now());
                }
            }
            self.drive(Instant::now());
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Revoke { jti } => {
                info!(%jti, "revoking token on every edge");
                for edge in self.edges.values() {
                    edge.send_frame(Frame::Revoke { jti: jti.clone() });
                }
                self.revoked.insert(jti);
            }
            Command::Keys { json } => {
                for edge in self.edges.values() {
                    edge.send_frame(Frame::Keys { json: json.clone() });
                }
                self.identity = json;
            }
            Command::Live { reply } => {
                let agents = self
                    .pool
                    .snapshot()
                    .into_iter()
                    .map(|(id, conn, calls)| LiveAgent {
                        id,
                        edge: self
                            .edges
                            .get(&conn)
                            .map(|e| e.id.clone())
                            .unwrap_or_default(),
                        state: if calls == 0 { "available" } else { "on-call" },
                        calls,
                    })
                    .collect();
                let mut calls: Vec<LiveCall> = self
                    .active
                    .iter()
                    .map(|(call_id, agent)| LiveCall {
                        call_id: call_id.clone(),
                        agent: agent.clone(),
                    })
                    .collect();
                calls.sort_by(|a, b| a.call_id.cmp(&b.call_id));
                let _ = reply.send(LiveView { agents, calls });
            }
        }
    }

    fn on_tunnel(&mut self, ev: TunnelServerEvent, now: Instant) {
        match ev {
            TunnelServerEvent::Up {
                conn,
                edge_id,
                sender,
                handoffs,
            } => {
                let mode = handoffs
                    .iter()
                    .find_map(|h| Mode::parse(h))
                    .unwrap_or(Mode::Tunnel);
                if let Some(old) = self.edge_ids.get(&edge_id).copied() {
                    // The edge re-dialled before its old tunnel was seen dead.
                    self.edge_down(old);
                }
                info!(edge = %edge_id, handoff = mode.as_str(), "edge up");
                crate::announce(&format!("edge-up {edge_id} {}", mode.as_str()));
                let keys = Frame::Keys {
                    json: self.identity.clone(),
                };
                if sender.try_send(keys).is_err() {
                    warn!(edge = %edge_id, "could not send token keys to the edge");
                }
                for jti in &self.revoked {
                    let _ = sender.try_send(Frame::Revoke { jti: jti.clone() });
                }
                self.edge_ids.insert(edge_id.clone(), conn);
                self.edges.insert(
                    conn,
                    Edge {
                        id: edge_id,
                        sender: Some(sender),
                        link: None,
                        mode,
                    },
                );
            }
            TunnelServerEvent::Down { conn } => self.edge_down(conn),
            TunnelServerEvent::Frame { conn, frame } => {
                let Some(edge_id) = self.edges.get(&conn).map(|e| e.id.clone()) else {
                    return;
                };
                match frame {
                    Frame::AgentUp { agent } => {
                        if self.pool.up(&agent, conn, now) {
                            crate::announce(&format!("agent-up {agent} {edge_id}"));
                        }
                    }
                    Frame::AgentDown { agent } => {
                        if self.pool.down(&agent, conn) {
                            crate::announce(&format!("agent-down {agent} {edge_id}"));
                        }
                    }
                    Frame::Sip { message, .. } => self.on_tunnel_sip(&message, conn, now),
                    other => debug!(frame = ?other, "ignoring tunnel frame"),
                }
            }
        }
    }

    fn edge_down(&mut self, conn: ConnId) {
        let Some(edge) = self.edges.remove(&conn) else {
            return;
        };
        if self.edge_ids.get(&edge.id) == Some(&conn) {
            self.edge_ids.remove(&edge.id);
        }
        info!(edge = %edge.id, "edge down");
        for agent in self.pool.edge_down(conn) {
            crate::announce(&format!("agent-down {agent} {}", edge.id));
        }
        self.layer.connection_closed(conn);
    }

    fn on_tunnel_sip(&mut self, bytes: &[u8], conn: ConnId, now: Instant) {
        match SipMessage::parse_checked(bytes) {
            Ok(msg) => self.on_edge_msg(msg, tunnel_target(conn), conn, now),
            // An edge sending bad SIP is a bug on its side; answering would only echo it.
            Err(rejected) => warn!(error = %rejected.error, "bad SIP from an edge"),
        }
    }

    /// SIP from an edge, by tunnel or plain SIP: hand-off wrappers are answered and opened.
    fn on_edge_msg(&mut self, msg: SipMessage, from: Target, conn: ConnId, now: Instant) {
        if handoff::is_wrapper_response(&msg) {
            return;
        }
        let msg = if handoff::is_wrapper(&msg) {
            let (answer, inner) = match handoff::unwrap(&msg) {
                Ok((inner, _)) => (msg.response(200, Some(&ids::tag())), Some(inner)),
                Err(e) => {
                    warn!(error = %e, "bad wrapped SIP from an edge");
                    let mut resp = msg.response(e.status(), Some(&ids::tag()));
                    resp.set_reason(&e.to_string());
                    (resp, None)
                }
            };
            self.send_raw(conn, &from, Bytes::from(answer.to_bytes()));
            match inner {
                Some(inner) => inner,
                None => return,
            }
        } else {
            msg
        };
        self.layer.handle_message(msg, from, now);
    }

    /// The edge a message came from (or goes to), by tunnel or by plain-SIP address.
    fn edge_conn_of(&self, peer: &Target) -> Option<ConnId> {
        if peer.kind == TransportKind::Tunnel {
            return peer.conn.filter(|c| self.edges.contains_key(c));
        }
        self.edges
            .iter()
            .find(|(_, e)| {
                // A TCP edge talks on the connection it registered on, from a port of its own.
                e.link.as_ref().is_some_and(|l| {
                    l.kind == peer.kind
                        && (l.addr == peer.addr || (l.conn.is_some() && l.conn == peer.conn))
                })
            })
            .map(|(c, _)| *c)
    }

    /// Where requests for an edge go.
    fn edge_target(&self, conn: ConnId) -> Target {
        self.edges
            .get(&conn)
            .and_then(|e| e.link.clone())
            .unwrap_or_else(|| tunnel_target(conn))
    }

    /// Bytes as they are, to an edge: a tunnel frame or a plain-SIP send.
    fn send_raw(&mut self, conn: ConnId, to: &Target, bytes: Bytes) {
        let Some(edge) = self.edges.get(&conn) else {
            return;
        };
        if edge.sender.is_some() {
            edge.send_frame(Frame::Sip {
                agent: None,
                message: bytes,
            });
        } else if let Err(e) = self.transports.send(to, bytes) {
            debug!(to = %to.addr, error = %e, "send to an edge failed");
            self.layer.transport_failed(to);
        }
    }

    fn drive(&mut self, now: Instant) {
        while let Some(ev) = self.layer.poll_event() {
            self.on_tx_event(ev, now);
        }
        self.flush(None);
    }

    /// Sends what the layer queued. `handoff` names the agent for the first message into a
    /// tunnel: the INVITE just handed to the layer.
    fn flush(&mut self, mut handoff: Option<Handoff>) {
        while let Some(t) = self.layer.poll_transmit() {
            if let Some(conn) = self.edge_conn_of(&t.to) {
                let h = handoff.take();
                self.send_edge(conn, t, h);
            } else if t.to.kind == TransportKind::Tunnel {
                // That edge is gone.
                self.layer.transport_failed(&t.to);
            } else if let Err(e) = self.transports.send(&t.to, t.bytes) {
                debug!(to = %t.to.addr, error = %e, "send failed");
                self.layer.transport_failed(&t.to);
            }
        }
    }

    /// Sends one message to an edge, encoding a hand-off the way the edge asked.
    fn send_edge(&mut self, conn: ConnId, t: Transmit, handoff: Option<Handoff>) {
        let Some(edge) = self.edges.get(&conn) else {
            return;
        };
        // Over plain SIP an INVITE may be retransmitted: each copy's wrapper names the agent.
        let handoff = handoff.or_else(|| {
            if edge.mode != Mode::Message || !t.bytes.starts_with(b"INVITE ") {
                return None;
            }
            let msg = SipMessage::parse(&t.bytes).ok()?;
            let call_id = msg.call_id()?;
            let agent = self.active.get(call_id)?;
            Some(Handoff {
                agent: agent.clone(),
                call_id: call_id.to_owned(),
            })
        });
        let mut frames = Vec::with_capacity(2);
        let message = match (edge.mode, handoff) {
            (Mode::Tunnel, Some(h)) => {
                frames.push(Frame::Sip {
                    agent: Some(h.agent),
                    message: t.bytes,
                });
                None
            }
            (Mode::Table, Some(h)) => {
                frames.push(Frame::Route {
                    call_id: h.call_id,
                    agent: h.agent,
                    ttl_ms: ROUTE_TTL_MS,
                });
                Some(t.bytes)
            }
            (Mode::Message, h) => {
                let target = match h {
                    Some(h) => format!("sip:{}@{}.invalid", h.agent, edge.id),
                    None => format!("sip:{}.invalid", edge.id),
                };
                let host = format!("{}.invalid", self.config.id);
                let wrapper = handoff::wrap(&t.bytes, &target, &host, &transaction::new_branch());
                Some(Bytes::from(wrapper.to_bytes()))
            }
            // `uri` was encoded in the request-URI before the layer saw the INVITE.
            (_, _) => Some(t.bytes),
        };
        if edge.sender.is_none() {
            // A plain-SIP edge: only `uri` and `message` exist there, both plain bytes.
            if let Some(message) = message
                && let Err(e) = self.transports.send(&t.to, message)
            {
                debug!(to = %t.to.addr, error = %e, "send to an edge failed");
                self.layer.transport_failed(&t.to);
            }
            return;
        }
        if let Some(message) = message {
            frames.push(Frame::Sip {
                agent: None,
                message,
            });
        }
        for frame in frames {
            edge.send_frame(frame);
        }
    }

    fn on_tx_event(&mut self, ev: TxEvent, now: Instant) {
        match ev {
            TxEvent::Request { tx, msg, from } => {
                if self.edge_conn_of(&from).is_some() {
                    self.request_from_edge(tx, msg, from, now);
                } else {
                    self.request_from_caller(tx, msg, from, now);
                }
            }
            TxEvent::Cancel { invite, .. } => self.on_cancel(invite, now),
            TxEvent::Response { tx, msg } => self.on_response(tx, msg, now),
            TxEvent::StrayResponse { msg, from } => self.on_stray_response(msg, &from),
            TxEvent::Timeout { tx } | TxEvent::TransportError { tx } => self.on_failure(tx, now),
            TxEvent::Terminated { tx } => {
                self.invites.remove(&tx);
                if let Some(offer) = self.offers.remove(&tx) {
                    self.offer_of_server.remove(&offer.server_tx);
                }
                self.proxied.remove(&tx);
            }
        }
    }

    fn respond(&mut self, tx: TxId, request: &SipMessage, code: u16, now: Instant) {
        let resp = request.response(code, Some(&ids::tag()));
        let _ = self.layer.send_response(tx, resp, now);
    }

    fn request_from_caller(
        &mut self,
        tx: Option<TxId>,
        msg: SipMessage,
        from: Target,
        now: Instant,
    ) {
        let in_dialog = msg.to_tag().is_some();
        match (tx, msg.method().cloned()) {
            (Some(tx), Some(Method::Invite)) if !in_dialog => self.new_call(tx, msg, from, now),
            (tx, Some(_)) if in_dialog => self.proxy_to_edge(tx, msg, &from, now),
            (Some(tx), Some(Method::Options)) => self.respond(tx, &msg, 200, now),
            (Some(tx), Some(Method::Register)) => self.edge_register(tx, &msg, from, now),
            (Some(tx), Some(_)) => self.respond(tx, &msg, 405, now),
            _ => {}
        }
    }

    /// An edge without a tunnel registers its agents here, each REGISTER carrying the edge's
    /// credential; its Contact says where and how (`ae-handoff`) calls reach the agent.
    fn edge_register(&mut self, tx: TxId, msg: &SipMessage, from: Target, now: Instant) {
        let refuse = |this: &mut Self, code: u16, why: &str| {
            let mut resp = msg.response(code, Some(&ids::tag()));
            resp.set_reason(why);
            if code == 401 {
                resp.push_header("WWW-Authenticate", "Bearer realm=\"agent-edge-edges\"");
            }
            let _ = this.layer.send_response(tx, resp, now);
        };
        let verifier = TokenVerifier::new(&self.edge_issuer.verifier_settings());
        let edge_id = match tokens::bearer(msg.header("Authorization"))
            .and_then(|t| verifier.verify(t))
        {
            Ok(claims) => claims.sub,
            Err(e) => {
                info!(peer = %from.addr, error = %e, "refusing a REGISTER without an edge credential");
                return refuse(self, 401, "An edge credential is required");
            }
        };
        let request = match registrar::parse_register(msg, 3600) {
            Ok(r) => r,
            Err(e) => return refuse(self, e.status(), &e.to_string()),
        };
        let conn = match self.edge_ids.get(&edge_id).copied() {
            Some(conn) if self.edges.get(&conn).is_some_and(|e| e.sender.is_some()) => {
                return refuse(self, 409, "This edge is connected by tunnel");
            }
            Some(conn) => conn,
            None => crate::transport::next_conn_id(),
        };
        match request {
            RegisterRequest::Bind {
                agent,
                contact,
                expires,
            } => {
                let mode = SipUri::parse(&contact).ok().and_then(|u| {
                    u.param(handoff::LINK_MODE_PARAM)
                        .flatten()
                        .and_then(Mode::parse)
                });
                let Some(mode @ (Mode::Uri | Mode::Message)) = mode else {
                    return refuse(self, 488, "Over plain SIP the hand-off is uri or message");
                };
                let link = registrar::target_for(&contact, &from);
                if !self.edges.contains_key(&conn) {
                    info!(edge = %edge_id, handoff = mode.as_str(), "edge up over plain SIP");
                    crate::announce(&format!("edge-up {edge_id} {}", mode.as_str()));
                }
                self.edge_ids.insert(edge_id.clone(), conn);
                self.edges.insert(
                    conn,
                    Edge {
                        id: edge_id.clone(),
                        sender: None,
                        link: Some(link),
                        mode,
                    },
                );
                if self.pool.up(&agent, conn, now) {
                    crate::announce(&format!("agent-up {agent} {edge_id}"));
                }
                let mut resp = msg.response(200, Some(&ids::tag()));
                resp.push_header("Contact", format!("<{contact}>;expires={expires}"));
                let _ = self.layer.send_response(tx, resp, now);
            }
            RegisterRequest::Unbind { agent } => {
                if self.pool.down(&agent, conn) {
                    crate::announce(&format!("agent-down {agent} {edge_id}"));
                }
                let _ = self
                    .layer
                    .send_response(tx, msg.response(200, Some(&ids::tag())), now);
            }
            RegisterRequest::Fetch { .. } => {
                let _ = self
                    .layer
                    .send_response(tx, msg.response(200, Some(&ids::tag())), now);
            }
        }
    }

    fn new_call(&mut self, tx: TxId, invite: SipMessage, from: Target, now: Instant) {
        let call_id = invite.call_id().unwrap_or_default().to_owned();
        if invite.max_forwards() == Some(0) {
            self.respond(tx, &invite, 483, now);
            return;
        }
        let user = invite
            .request_uri()
            .and_then(|u| SipUri::parse(u).ok())
            .and_then(|u| u.user)
            .unwrap_or_default();
        let queue = self
            .config
            .queues
            .get(&user)
            .unwrap_or(&self.config.default_queue)
            .clone();
        let Some((agent, conn)) = self.pool.take(self.config.agent_max_calls) else {
            info!(%call_id, %queue, "no agent available");
            let code = self.config.no_agent_status;
            self.respond(tx, &invite, code, now);
            return;
        };
        let Some(edge_id) = self.edges.get(&conn).map(|e| e.id.clone()) else {
            self.pool.release(&agent, now);
            self.respond(tx, &invite, 503, now);
            return;
        };
        info!(%call_id, %queue, %agent, edge = %edge_id, "handing call to edge");
        let mut fwd = invite;
        let (addr, transport) = self.addrs.for_kind(from.kind);
        let flow = from
            .conn
            .map(|c| format!(";{FLOW_PARAM}={}", c.0))
            .unwrap_or_default();
        fwd.push_header_front(
            "Record-Route",
            format!("<sip:{addr};transport={transport};lr{flow}>"),
        );
        let target = self.edge_target(conn);
        self.prepare_forward(&mut fwd, target.kind);
        if self.edges.get(&conn).is_some_and(|e| e.mode == Mode::Uri) {
            // In the request-URI, so the CANCEL the layer may build repeats it.
            let host = match target.kind {
                TransportKind::Tunnel => format!("{edge_id}.invalid"),
                _ => target.addr.to_string(),
            };
            handoff::encode_uri(&mut fwd, &host, &agent);
        }
        self.flush(None);
        let client_tx = self.layer.send_request(fwd, target, now);
        self.flush(Some(Handoff {
            agent: agent.clone(),
            call_id: call_id.clone(),
        }));
        self.active.insert(call_id.clone(), agent.clone());
        self.invites.insert(tx, call_id);
        self.offer_of_server.insert(tx, client_tx);
        self.offers.insert(
            client_tx,
            Offer {
                server_tx: tx,
                agent,
                caller: from,
                edge_id,
            },
        );
    }

    /// Max-Forwards down by one and our Via on top, for a request leaving on `kind`.
    fn prepare_forward(&self, msg: &mut SipMessage, kind: TransportKind) {
        let mf = msg.max_forwards().map_or(70, |m| m.saturating_sub(1));
        msg.set_header("Max-Forwards", mf.to_string());
        let branch = transaction::new_branch();
        let via = if kind == TransportKind::Tunnel {
            format!("SIP/2.0/WSS {}.invalid;branch={branch}", self.config.id)
        } else {
            let (addr, _) = self.addrs.for_kind(kind);
            format!("SIP/2.0/{} {addr};branch={branch};rport", kind.token())
        };
        msg.push_header_front("Via", via);
    }

    /// Our own address, standing in for the edge's Contact on the caller's side.
    fn caller_contact(&self, kind: TransportKind, edge_id: &str) -> String {
        let (addr, transport) = self.addrs.for_kind(kind);
        format!("<sip:{addr};transport={transport};{EDGE_PARAM}={edge_id}>")
    }

    fn rewrite_contact(&self, msg: &mut SipMessage, kind: TransportKind, edge_id: &str) {
        if msg.header("Contact").is_some() {
            msg.set_header("Contact", self.caller_contact(kind, edge_id));
        }
    }

    /// Removes the top Route when it is ours (loose routing, RFC 3261 §16.4) and returns it.
    fn pop_own_route(&self, msg: &mut SipMessage) -> Option<SipUri> {
        let top = msg.header("Route")?;
        let uri = NameAddr::parse(top).ok()?.sip_uri().ok()?;
        if self.addrs.is_ours(&uri) {
            msg.pop_header("Route");
            return Some(uri);
        }
        None
    }

    fn proxy_to_edge(
        &mut self,
        tx: Option<TxId>,
        mut msg: SipMessage,
        from: &Target,
        now: Instant,
    ) {
        self.pop_own_route(&mut msg);
        let edge_id = msg
            .request_uri()
            .and_then(|u| SipUri::parse(u).ok())
            .and_then(|u| u.param(EDGE_PARAM).flatten().map(str::to_owned));
        let conn = edge_id.as_ref().and_then(|e| self.edge_ids.get(e)).copied();
        let (Some(edge_id), Some(conn)) = (edge_id, conn) else {
            if let Some(tx) = tx {
                self.respond(tx, &msg, 404, now);
            }
            return;
        };
        if msg.max_forwards() == Some(0) {
            if let Some(tx) = tx {
                self.respond(tx, &msg, 483, now);
            }
            return;
        }
        self.note_bye(&msg, now);
        let target = self.edge_target(conn);
        self.prepare_forward(&mut msg, target.kind);
        self.forward(tx, msg, target, Some(from.kind), edge_id, now);
    }

    /// Sends a proxied request on: statefully when it has a server transaction (its answers
    /// come back through [`Proxied`]), else (an ACK) statelessly.
    fn forward(
        &mut self,
        tx: Option<TxId>,
        msg: SipMessage,
        target: Target,
        caller_kind: Option<TransportKind>,
        edge_id: String,
        now: Instant,
    ) {
        match tx {
            Some(tx) => {
                let client_tx = self.layer.send_request(msg, target, now);
                let proxied = Proxied {
                    server_tx: tx,
                    caller_kind,
                    edge_id,
                };
                self.proxied.insert(client_tx, proxied);
            }
            None => self.layer.send_stateless(msg, target),
        }
    }

    fn request_from_edge(
        &mut self,
        tx: Option<TxId>,
        mut msg: SipMessage,
        from: Target,
        now: Instant,
    ) {
        let Some(edge_id) = self
            .edge_conn_of(&from)
            .and_then(|c| self.edges.get(&c))
            .map(|e| e.id.clone())
        else {
            return;
        };
        let route = self.pop_own_route(&mut msg);
        let dest = msg.request_uri().and_then(|u| SipUri::parse(u).ok());
        let (Some(route), Some(dest)) = (route, dest) else {
            // Edges only send in-dialog requests, which always carry our Record-Route.
            if let Some(tx) = tx {
                self.respond(tx, &msg, 403, now);
            }
            return;
        };
        let kind = match route.transport().as_str() {
            "TCP" => TransportKind::Tcp,
            "TLS" => TransportKind::Tls,
            _ => TransportKind::Udp,
        };
        let ip = dest
            .host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>();
        let Ok(ip) = ip else {
            if let Some(tx) = tx {
                self.respond(tx, &msg, 404, now);
            }
            return;
        };
        let flow = route
            .param(FLOW_PARAM)
            .flatten()
            .and_then(|f| f.parse::<u64>().ok())
            .map(ConnId);
        let target = Target {
            kind,
            addr: SocketAddr::new(ip, dest.port.unwrap_or(5060)),
            conn: flow,
        };
        self.note_bye(&msg, now);
        self.rewrite_contact(&mut msg, kind, &edge_id);
        self.prepare_forward(&mut msg, kind);
        self.forward(tx, msg, target, None, edge_id, now);
    }

    /// A BYE either way ends the call for the agent's count.
    fn note_bye(&mut self, msg: &SipMessage, now: Instant) {
        if msg.method() == Some(&Method::Bye)
            && let Some(agent) = msg.call_id().and_then(|c| self.active.remove(c))
        {
            self.pool.release(&agent, now);
        }
    }

    fn on_cancel(&mut self, server_tx: TxId, now: Instant) {
        match self.offer_of_server.get(&server_tx) {
            Some(&client_tx) => {
                self.layer.cancel(client_tx, now);
            }
            None => {
                if let Some(req) = self.layer.server_request(server_tx).cloned() {
                    self.respond(server_tx, &req, 487, now);
                }
            }
        }
    }

    fn on_response(&mut self, tx: TxId, mut resp: SipMessage, now: Instant) {
        let code = resp.status().unwrap_or(500);
        if code == 100 {
            return;
        }
        resp.pop_header("Via");
        if let Some(offer) = self.offers.get(&tx) {
            let (server_tx, caller, edge_id) =
                (offer.server_tx, offer.caller.clone(), offer.edge_id.clone());
            if code >= 300 {
                let agent = offer.agent.clone();
                if let Some(call_id) = resp.call_id()
                    && self.active.remove(call_id).is_some()
                {
                    self.pool.release(&agent, now);
                }
            }
            self.rewrite_contact(&mut resp, caller.kind, &edge_id);
            if self
                .layer
                .send_response(server_tx, resp.clone(), now)
                .is_err()
                && code < 300
            {
                // A retransmitted 2xx after the server transaction accepted the first one.
                self.layer.send_stateless(resp, caller);
            }
        } else if let Some(p) = self.proxied.get(&tx) {
            let server_tx = p.server_tx;
            if let Some(kind) = p.caller_kind {
                let edge_id = p.edge_id.clone();
                self.rewrite_contact(&mut resp, kind, &edge_id);
            }
            let _ = self.layer.send_response(server_tx, resp, now);
        }
    }

    /// A response no transaction waits for: a 2xx retransmitted after its transaction ended.
    /// It is forwarded by its next Via, as a stateless proxy would.
    fn on_stray_response(&mut self, mut resp: SipMessage, from: &Target) {
        let Some(conn) = self.edge_conn_of(from) else {
            return;
        };
        if !resp.status().is_some_and(|c| (200..300).contains(&c)) {
            return;
        }
        resp.pop_header("Via");
        let Ok(via) = resp.top_via() else {
            return;
        };
        if let Some(target) = self.via_target(&via) {
            if let Some(edge_id) = self.edges.get(&conn).map(|e| e.id.clone()) {
                self.rewrite_contact(&mut resp, target.kind, &edge_id);
            }
            self.layer.send_stateless(resp, target);
        }
    }

    /// Where a response goes by its Via (RFC 3261 §18.2.2, with RFC 3581 rport).
    fn via_target(&self, via: &Via) -> Option<Target> {
        let kind = match via.transport.to_ascii_uppercase().as_str() {
            "TCP" => TransportKind::Tcp,
            "TLS" => TransportKind::Tls,
            "UDP" => TransportKind::Udp,
            _ => return None,
        };
        let host = via.received.as_deref().unwrap_or(&via.host);
        let ip = host.trim_matches(['[', ']']).parse().ok()?;
        let port = via.rport.flatten().or(via.port).unwrap_or(5060);
        let addr = SocketAddr::new(ip, port);
        let conn = if kind == TransportKind::Udp {
            None
        } else {
            self.transports.find_conn(kind, addr)
        };
        Some(Target { kind, addr, conn })
    }

    fn on_failure(&mut self, tx: TxId, now: Instant) {
        if let Some(call_id) = self.invites.remove(&tx) {
            // Our answer to the caller was never ACKed: the call is over for the agent.
            if let Some(agent) = self.active.remove(&call_id) {
                warn!(%call_id, %agent, "caller never confirmed the answer");
                self.pool.release(&agent, now);
            }
        } else if let Some(offer) = self.offers.remove(&tx) {
            self.offer_of_server.remove(&offer.server_tx);
            if let Some(req) = self.layer.server_request(offer.server_tx).cloned() {
                if let Some(call_id) = req.call_id()
                    && self.active.remove(call_id).is_some()
                {
                    self.pool.release(&offer.agent, now);
                }
                warn!(agent = %offer.agent, "edge did not answer the offer");
                self.respond(offer.server_tx, &req, 408, now);
            }
        } else if let Some(p) = self.proxied.remove(&tx)
            && let Some(req) = self.layer.server_request(p.server_tx).cloned()
        {
            self.respond(p.server_tx, &req, 408, now);
        }
    }
}
