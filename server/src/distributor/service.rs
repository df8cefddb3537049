//! The distributor's SIP side: a transaction-stateful, record-routing proxy between callers
//! and the edges' tunnels. Each new call is typed and queued by the ACD ([`crate::acd`]),
//! which this service feeds with what SIP tells it (answers, declines, cancels, hang-ups,
//! agents coming and going) and whose decisions it carries out: offer the INVITE to an agent's
//! edge, withdraw it (CANCEL), ringback to a waiting caller, refuse. In-dialog requests then
//! follow the Record-Route it added.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto_tunnel::Frame;
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};
use tracing::{debug, info, warn};

use super::agents::AgentEdges;
use crate::acd::{
    self, Acd, CallFacts, Classifier, Decision, FailCause, OfferEnd, Presence, Profile,
};
use crate::admin::store::Store;
use crate::admin::tokens::{self, TokenIssuer, TokenVerifier};
use crate::app::status::Status;
use crate::config::{DistributorConfig, SipConfig};
use crate::handoff::{self, Mode};
use crate::ids;
use crate::media::announcement::Announcement;
use crate::media::sdp;
use crate::sip::register::{self, RegisterRequest};
use crate::sip::transaction::{self, TransactionLayer, Transmit, TxEvent, TxId};
use crate::sip::{ConnId, Method, NameAddr, SipMessage, SipUri, Target, TransportKind, Via};
use crate::transport::TransportEvent;

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
    /// An agent's presence, set by a supervisor. Answers whether the agent is signed in.
    Presence {
        agent: String,
        presence: Presence,
        reply: oneshot::Sender<bool>,
    },
    /// The admin store changed an agent (or removed it: `None`); a signed-in agent's skills
    /// and call limit follow at once.
    Profile {
        agent: String,
        profile: Option<Profile>,
    },
    /// The live event stream: the state now, then every change.
    Subscribe {
        reply: oneshot::Sender<(LiveView, broadcast::Receiver<Arc<str>>)>,
    },
    /// A shutdown began: new calls are refused with 503 from now on; calls in progress and
    /// waiting in queues go on.
    Drain,
    /// The shutdown's grace is over: calls still waiting in a queue are refused with 503.
    RefuseWaiting,
}

/// Events kept for a slow subscriber before it starts losing them.
const EVENT_BACKLOG: usize = 1024;

/// The distributor's state as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LiveView {
    pub agents: Vec<LiveAgent>,
    pub queues: Vec<acd::QueueView>,
    pub calls: Vec<LiveCall>,
}

/// A call the ACD holds, with the media statistics its edge last reported.
#[derive(Debug, Clone, Serialize)]
pub struct LiveCall {
    #[serde(flatten)]
    pub call: acd::CallView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveAgent {
    pub id: String,
    pub edge: String,
    pub state: acd::AgentState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub calls: usize,
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
    /// Reached through its tunnel (frames); else over plain SIP at `link`.
    tunneled: bool,
    /// Where a plain-SIP edge is reached (the transport and address it registered from).
    link: Option<Target>,
    /// How this edge wants calls handed to it (the first of its Hello's it names that we know).
    mode: Mode,
}

/// Time a `table` route entry waits for its INVITE.
const ROUTE_TTL_MS: u32 = 5000;

/// The agent (and Call-ID) an offer's INVITE names: the note the transaction layer puts on
/// each send of that INVITE, for the hand-off encoder.
#[derive(Debug, Clone)]
struct Handoff {
    agent: String,
    call_id: String,
}

/// A call from a caller, from its INVITE until that transaction ends.
#[derive(Debug)]
struct CallerInvite {
    server_tx: TxId,
    invite: SipMessage,
    caller: Target,
    /// Our To tag for the ringback and a refusal.
    tag: String,
}

/// A call offered to an agent's edge, by the client transaction carrying its INVITE.
#[derive(Debug)]
struct Offer {
    server_tx: TxId,
    call_id: String,
    agent: String,
    caller: Target,
    edge_id: String,
    /// The caller cancelled: the edge's final answer goes back to the caller.
    abandoned: bool,
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

/// What the distributor is told.
#[derive(Debug)]
pub enum Input {
    /// SIP from a caller or an edge on a plain-SIP link, parsed at the boundary.
    Sip { msg: SipMessage, from: Target },
    /// A caller's (or a plain-SIP edge's) stream connection closed.
    Closed { conn: ConnId },
    /// An edge's tunnel opened (its credential checked) and said Hello.
    EdgeUp {
        conn: ConnId,
        edge_id: String,
        handoffs: Vec<String>,
    },
    /// An edge's tunnel closed.
    EdgeDown { conn: ConnId },
    /// A frame from an edge's tunnel.
    Frame { conn: ConnId, frame: Frame },
    /// From the admin API or the shutdown.
    Command(Command),
    /// Sending to `to` failed at once: its transactions fail.
    SendFailed { to: Target },
}

impl From<TransportEvent> for Input {
    fn from(ev: TransportEvent) -> Input {
        match ev {
            TransportEvent::Message { msg, from } => Input::Sip { msg, from },
            TransportEvent::Closed { conn } => Input::Closed { conn },
        }
    }
}

/// What the distributor wants done.
#[derive(Debug)]
pub enum Output {
    /// SIP to a caller or a plain-SIP edge.
    Sip { to: Target, bytes: Bytes },
    /// A frame into an edge's tunnel.
    Frame { conn: ConnId, frame: Frame },
    /// Start the queue's announcement towards a waiting caller's media address.
    EarlyMediaStart {
        call: String,
        to: SocketAddr,
        audio: Arc<[u8]>,
        law: crate::media::announcement::Law,
    },
    /// Stop a waiting caller's announcement.
    EarlyMediaStop { call: String },
    /// For the operator.
    Status(Status),
}

/// Where agents' skills and call limits come from (the admin store; a map in tests).
pub trait Profiles: Send + Sync + std::fmt::Debug {
    /// The agent's profile, `None` for an agent the source does not know.
    fn profile(&self, agent: &str) -> Result<Option<Profile>, String>;
}

impl Profiles for Store {
    fn profile(&self, agent: &str) -> Result<Option<Profile>, String> {
        self.agent(agent)
            .map(|a| {
                a.map(|a| Profile {
                    skills: a.skills,
                    max_calls: a.max_calls,
                })
            })
            .map_err(|e| e.to_string())
    }
}

/// The distributor core: a record-routing proxy and the ACD, with no sockets and no clock
/// reads (see [`crate::driver::Core`] for the rule its caller follows).
pub struct Distributor {
    identity: String,
    /// Checks the credentials of edges that register over plain SIP.
    edge_issuer: TokenIssuer,
    /// Revoked token ids, sent to each edge as it connects.
    revoked: std::collections::BTreeSet<String>,
    config: DistributorConfig,
    layer: TransactionLayer<Handoff>,
    addrs: BoundAddrs,
    edges: HashMap<ConnId, Edge>,
    edge_ids: HashMap<String, ConnId>,
    agents: AgentEdges,
    acd: Acd,
    classifier: Classifier,
    /// Agents' skills and call limits.
    profiles: Option<Arc<dyn Profiles>>,
    /// The live event stream, as JSON lines.
    events: broadcast::Sender<Arc<str>>,
    /// Callers' INVITEs by Call-ID, while their transaction lasts.
    callers: HashMap<String, CallerInvite>,
    offers: HashMap<TxId, Offer>,
    offer_of_server: HashMap<TxId, TxId>,
    proxied: HashMap<TxId, Proxied>,
    /// Call-ID of each caller INVITE server transaction.
    invites: HashMap<TxId, String>,
    media: Option<QueueMedia>,
    /// Calls hearing their queue's announcement.
    playing: std::collections::HashSet<String>,
    /// The last media statistics (JSON) an edge reported for each call in progress.
    media_stats: HashMap<String, String>,
    /// Shutting down: new calls get 503.
    draining: bool,
    /// What to do, in order; drained by [`crate::driver::Core::poll_output`].
    out: std::collections::VecDeque<Output>,
}

impl std::fmt::Debug for Distributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributor")
            .field("edges", &self.edges.len())
            .field("agents", &self.agents.len())
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

/// Queue announcements played to waiting callers (queues with `ringback = "183"`).
#[derive(Debug)]
pub struct QueueMedia {
    /// Where the announcements are played from: the address put in the 183's SDP.
    pub from: SocketAddr,
    /// Queue → its announcement.
    pub announcements: HashMap<String, Announcement>,
}

/// What the distributor knows of identities: for edges, and for agents' profiles.
#[derive(Debug)]
pub struct Identities {
    /// The JSON of [`crate::admin::tokens::VerifierSettings`], sent to every edge so it can
    /// check agent tokens.
    pub verifier: String,
    /// Revoked token ids.
    pub revoked: Vec<String>,
    /// Checks the credentials of edges that register over plain SIP.
    pub edge_issuer: TokenIssuer,
    /// Agents' skills and call limits (none: every agent gets the defaults).
    pub profiles: Option<Arc<dyn Profiles>>,
}

impl crate::driver::Core for Distributor {
    type Input = Input;
    type Output = Output;

    fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Sip { msg, from } => match self.edge_conn_of(&from) {
                Some(conn) => self.on_edge_msg(msg, from, conn, now),
                None => self.layer.handle_message(msg, from, now),
            },
            Input::Closed { conn } => self.layer.connection_closed(conn),
            Input::EdgeUp {
                conn,
                edge_id,
                handoffs,
            } => self.edge_up(conn, edge_id, &handoffs, now),
            Input::EdgeDown { conn } => self.edge_down(conn, now),
            Input::Frame { conn, frame } => self.on_frame(conn, frame, now),
            Input::Command(command) => self.on_command(command, now),
            Input::SendFailed { to } => self.layer.transport_failed(&to),
        }
        self.drive(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.layer.handle_timeout(now);
        self.acd.handle_timeout(now);
        self.drive(now);
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [self.layer.poll_timeout(), self.acd.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }
}

impl Distributor {
    pub fn new(
        config: DistributorConfig,
        sip: &SipConfig,
        addrs: BoundAddrs,
        ids: Identities,
        media: Option<QueueMedia>,
    ) -> Distributor {
        let Identities {
            verifier: identity,
            revoked,
            edge_issuer,
            profiles,
        } = ids;
        let queues = acd::config::queues_with_default(&config.queues, &config.default_queue);
        let classifier = Classifier::new(&config.call_types, &config.default_queue);
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
            addrs,
            edges: HashMap::new(),
            edge_ids: HashMap::new(),
            agents: AgentEdges::new(),
            acd: Acd::new(queues),
            classifier,
            profiles,
            events: broadcast::channel(EVENT_BACKLOG).0,
            callers: HashMap::new(),
            offers: HashMap::new(),
            offer_of_server: HashMap::new(),
            proxied: HashMap::new(),
            invites: HashMap::new(),
            media,
            playing: Default::default(),
            media_stats: HashMap::new(),
            draining: false,
            out: Default::default(),
        }
    }

    /// A frame into an edge's tunnel; plain-SIP edges take no frames.
    fn send_frame(&mut self, conn: ConnId, frame: Frame) {
        if self.edges.get(&conn).is_some_and(|e| e.tunneled) {
            self.out.push_back(Output::Frame { conn, frame });
        }
    }

    fn status(&mut self, status: Status) {
        self.out.push_back(Output::Status(status));
    }

    fn on_command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Revoke { jti } => {
                info!(%jti, "revoking token on every edge");
                let conns: Vec<ConnId> = self.edges.keys().copied().collect();
                for conn in conns {
                    self.send_frame(conn, Frame::Revoke { jti: jti.clone() });
                }
                self.revoked.insert(jti);
            }
            Command::Keys { json } => {
                let conns: Vec<ConnId> = self.edges.keys().copied().collect();
                for conn in conns {
                    self.send_frame(conn, Frame::Keys { json: json.clone() });
                }
                self.identity = json;
            }
            Command::Live { reply } => {
                let _ = reply.send(self.live_view(now));
            }
            Command::Presence {
                agent,
                presence,
                reply,
            } => {
                let known = self.acd.is_signed_in(&agent);
                self.acd.set_presence(&agent, presence, now);
                let _ = reply.send(known);
            }
            Command::Profile { agent, profile } => {
                if self.acd.is_signed_in(&agent) {
                    let profile = profile.unwrap_or_else(|| self.default_profile());
                    self.acd.sign_in(&agent, profile, now);
                }
            }
            Command::Subscribe { reply } => {
                let events = self.events.subscribe();
                let _ = reply.send((self.live_view(now), events));
            }
            Command::Drain => {
                info!("draining: new calls are refused");
                self.draining = true;
            }
            Command::RefuseWaiting => self.acd.refuse_waiting(503, "shutting down", now),
        }
    }

    fn live_view(&self, now: Instant) -> LiveView {
        let snapshot = self.acd.snapshot(now);
        let agents = snapshot
            .agents
            .into_iter()
            .map(|a| LiveAgent {
                edge: self
                    .agents
                    .edge_of(&a.agent)
                    .and_then(|c| self.edges.get(&c))
                    .map(|e| e.id.clone())
                    .unwrap_or_default(),
                id: a.agent,
                state: a.state,
                reason: a.reason,
                calls: a.calls,
            })
            .collect();
        let calls = snapshot
            .calls
            .into_iter()
            .map(|call| LiveCall {
                media: self
                    .media_stats
                    .get(&call.call)
                    .and_then(|json| serde_json::from_str(json).ok()),
                call,
            })
            .collect();
        LiveView {
            agents,
            queues: snapshot.queues,
            calls,
        }
    }

    /// An agent's page set its presence (the edge checked the agent's token).
    fn presence_from_page(&mut self, agent: &str, json: &str, now: Instant) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
            return;
        };
        let presence = match v.get("state").and_then(|s| s.as_str()) {
            Some("available") => Presence::Available,
            Some("away") => {
                let reason = v
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .filter(|r| !r.is_empty() && r.len() <= 100 && !r.chars().any(char::is_control))
                    .unwrap_or("away");
                Presence::Away {
                    reason: reason.to_owned(),
                }
            }
            _ => return,
        };
        info!(%agent, ?presence, "presence from the agent's page");
        self.acd.set_presence(agent, presence, now);
    }

    /// The agent's page shows what the ACD thinks of it: sent through the agent's edge.
    fn tell_page(&mut self, view: &acd::AgentView) {
        let Some(conn) = self.agents.edge_of(&view.agent) else {
            return;
        };
        if let Ok(json) = serde_json::to_string(view) {
            let agent = view.agent.clone();
            self.send_frame(conn, Frame::AgentState { agent, json });
        }
    }

    fn default_profile(&self) -> Profile {
        Profile {
            skills: Default::default(),
            max_calls: self.config.agent_max_calls,
        }
    }

    /// The agent's skills and call limit from the admin store; defaults for an agent the
    /// store does not know (a token issued from the command line).
    fn profile_of(&self, agent: &str) -> Profile {
        match self.profiles.as_ref().map(|p| p.profile(agent)) {
            Some(Ok(Some(profile))) => profile,
            Some(Err(e)) => {
                warn!(%agent, error = %e, "agent store failed; default profile");
                self.default_profile()
            }
            _ => self.default_profile(),
        }
    }

    fn agent_up(&mut self, agent: &str, conn: ConnId, edge_id: &str, now: Instant) {
        if self.agents.up(agent, conn) {
            self.status(Status::AgentUp {
                agent: agent.to_owned(),
                edge: edge_id.to_owned(),
            });
            let profile = self.profile_of(agent);
            self.acd.sign_in(agent, profile, now);
        }
    }

    fn agent_down(&mut self, agent: &str, conn: ConnId, edge_id: &str, now: Instant) {
        if self.agents.down(agent, conn) {
            self.status(Status::AgentDown {
                agent: agent.to_owned(),
                edge: edge_id.to_owned(),
            });
            self.acd.sign_out(agent, now);
        }
    }

    fn edge_up(&mut self, conn: ConnId, edge_id: String, handoffs: &[String], now: Instant) {
        let mode = handoffs
            .iter()
            .find_map(|h| Mode::parse(h))
            .unwrap_or(Mode::Tunnel);
        if let Some(old) = self.edge_ids.get(&edge_id).copied() {
            // The edge re-dialled before its old tunnel was seen dead.
            self.edge_down(old, now);
        }
        info!(edge = %edge_id, handoff = mode.as_str(), "edge up");
        self.status(Status::EdgeUp {
            edge: edge_id.clone(),
            handoff: mode.as_str(),
        });
        self.edge_ids.insert(edge_id.clone(), conn);
        let edge = Edge {
            id: edge_id,
            tunneled: true,
            link: None,
            mode,
        };
        self.edges.insert(conn, edge);
        let json = self.identity.clone();
        self.send_frame(conn, Frame::Keys { json });
        let revoked: Vec<String> = self.revoked.iter().cloned().collect();
        for jti in revoked {
            self.send_frame(conn, Frame::Revoke { jti });
        }
    }

    fn on_frame(&mut self, conn: ConnId, frame: Frame, now: Instant) {
        let Some(edge_id) = self.edges.get(&conn).map(|e| e.id.clone()) else {
            return;
        };
        match frame {
            Frame::AgentUp { agent } => self.agent_up(&agent, conn, &edge_id, now),
            Frame::AgentDown { agent } => self.agent_down(&agent, conn, &edge_id, now),
            Frame::Sip { message, .. } => self.on_tunnel_sip(&message, conn, now),
            Frame::Presence { agent, json } => {
                if self.agents.edge_of(&agent) == Some(conn) {
                    self.presence_from_page(&agent, &json, now);
                }
            }
            Frame::CallStats { call_id, json } => {
                // Kept only for calls the ACD holds, and dropped when the ACD says a call
                // ended, so the map cannot grow.
                if self.acd.call_info(&call_id, now).is_some() {
                    self.media_stats.insert(call_id, json);
                }
            }
            other => debug!(frame = ?other, "ignoring tunnel frame"),
        }
    }

    fn edge_down(&mut self, conn: ConnId, now: Instant) {
        let Some(edge) = self.edges.remove(&conn) else {
            return;
        };
        if self.edge_ids.get(&edge.id) == Some(&conn) {
            self.edge_ids.remove(&edge.id);
        }
        info!(edge = %edge.id, "edge down");
        for agent in self.agents.edge_down(conn) {
            self.status(Status::AgentDown {
                agent: agent.clone(),
                edge: edge.id.clone(),
            });
            self.acd.sign_out(&agent, now);
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
        let message = if edge.tunneled {
            Output::Frame {
                conn,
                frame: Frame::Sip {
                    agent: None,
                    message: bytes,
                },
            }
        } else {
            Output::Sip {
                to: to.clone(),
                bytes,
            }
        };
        self.out.push_back(message);
    }

    fn drive(&mut self, now: Instant) {
        loop {
            self.run_acd(now);
            let Some(ev) = self.layer.poll_event() else {
                break;
            };
            self.on_tx_event(ev, now);
        }
        self.flush();
    }

    /// Sends what the layer queued.
    fn flush(&mut self) {
        while let Some(t) = self.layer.poll_transmit() {
            if let Some(conn) = self.edge_conn_of(&t.to) {
                self.send_edge(conn, t);
            } else if t.to.kind == TransportKind::Tunnel {
                // That edge is gone.
                self.layer.transport_failed(&t.to);
            } else {
                self.out.push_back(Output::Sip {
                    to: t.to,
                    bytes: t.bytes,
                });
            }
        }
    }

    /// Sends one message to an edge, encoding a hand-off the way the edge asked: an offer's
    /// INVITE carries its [`Handoff`] as the layer's note, on every retransmission too.
    fn send_edge(&mut self, conn: ConnId, t: Transmit<Handoff>) {
        let Some(edge) = self.edges.get(&conn) else {
            return;
        };
        let handoff = t.note;
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
        if !edge.tunneled {
            // A plain-SIP edge: only `uri` and `message` exist there, both plain bytes.
            if let Some(bytes) = message {
                self.out.push_back(Output::Sip { to: t.to, bytes });
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
            self.out.push_back(Output::Frame { conn, frame });
        }
    }

    fn on_tx_event(&mut self, ev: TxEvent<Handoff>, now: Instant) {
        match ev {
            TxEvent::Request { tx, msg, from, .. } => {
                if self.edge_conn_of(&from).is_some() {
                    self.request_from_edge(tx, msg, from, now);
                } else {
                    self.request_from_caller(tx, msg, from, now);
                }
            }
            TxEvent::Cancel { invite, .. } => self.on_cancel(invite, now),
            TxEvent::Response { tx, msg } => self.on_response(tx, msg, now),
            TxEvent::StrayResponse { msg, from } => self.on_stray_response(msg, &from),
            TxEvent::Timeout { tx } => self.on_failure(tx, FailCause::Timeout, now),
            TxEvent::TransportError { tx } => self.on_failure(tx, FailCause::Transport, now),
            TxEvent::Terminated { tx } => {
                if let Some(call_id) = self.invites.remove(&tx) {
                    self.stop_early_media(&call_id);
                    self.callers.remove(&call_id);
                }
                if let Some(offer) = self.offers.remove(&tx)
                    && self.offer_of_server.get(&offer.server_tx) == Some(&tx)
                {
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
        let request = match register::parse_register(msg, 3600) {
            Ok(r) => r,
            Err(e) => return refuse(self, e.status(), &e.to_string()),
        };
        let conn = match self.edge_ids.get(&edge_id).copied() {
            Some(conn) if self.edges.get(&conn).is_some_and(|e| e.tunneled) => {
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
                let link = register::target_for(&contact, &from);
                if !self.edges.contains_key(&conn) {
                    info!(edge = %edge_id, handoff = mode.as_str(), "edge up over plain SIP");
                    self.status(Status::EdgeUp {
                        edge: edge_id.clone(),
                        handoff: mode.as_str(),
                    });
                }
                self.edge_ids.insert(edge_id.clone(), conn);
                self.edges.insert(
                    conn,
                    Edge {
                        id: edge_id.clone(),
                        tunneled: false,
                        link: Some(link),
                        mode,
                    },
                );
                self.agent_up(&agent, conn, &edge_id, now);
                let mut resp = msg.response(200, Some(&ids::tag()));
                resp.push_header("Contact", format!("<{contact}>;expires={expires}"));
                let _ = self.layer.send_response(tx, resp, now);
            }
            RegisterRequest::Unbind { agent } => {
                self.agent_down(&agent, conn, &edge_id, now);
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
        if self.draining {
            let mut resp = invite.response(503, Some(&ids::tag()));
            resp.set_reason("Shutting down");
            resp.push_header("Retry-After", "30");
            let _ = self.layer.send_response(tx, resp, now);
            return;
        }
        if self.callers.contains_key(&call_id) || self.acd.call_info(&call_id, now).is_some() {
            // Another caller's call has this Call-ID: the ACD knows calls by it.
            self.respond(tx, &invite, 482, now);
            return;
        }
        let call_type = self
            .classifier
            .classify(&CallFacts::from_invite(&invite))
            .clone();
        info!(%call_id, call_type = %call_type.name, queue = %call_type.queue, "new call");
        self.invites.insert(tx, call_id.clone());
        self.callers.insert(
            call_id.clone(),
            CallerInvite {
                server_tx: tx,
                invite,
                caller: from,
                tag: ids::tag(),
            },
        );
        self.acd.call_arrived(&call_id, call_type, now);
    }

    /// Carries out what the ACD decided, and publishes what changed, until it is quiet.
    fn run_acd(&mut self, now: Instant) {
        while let Some(decision) = self.acd.poll_decision() {
            match decision {
                Decision::Offer { call, agent } => self.offer(&call, &agent, now),
                Decision::Withdraw { call, agent } => {
                    let client = self
                        .callers
                        .get(&call)
                        .and_then(|c| self.offer_of_server.get(&c.server_tx))
                        .copied()
                        .filter(|t| self.offers.get(t).is_some_and(|o| o.agent == agent));
                    if let Some(client) = client {
                        info!(%call, %agent, "withdrawing the offer");
                        self.layer.cancel(client, now);
                    }
                }
                Decision::Queued { call } => self.ringback(&call, now),
                Decision::Refuse {
                    call,
                    status,
                    reason,
                } => {
                    self.stop_early_media(&call);
                    if let Some(c) = self.callers.get(&call) {
                        info!(%call, status, %reason, "refusing the call");
                        let mut resp = c.invite.response(status, Some(&c.tag));
                        resp.push_header(
                            "Reason",
                            format!("SIP ;cause={status} ;text=\"{reason}\""),
                        );
                        let _ = self.layer.send_response(c.server_tx, resp, now);
                    }
                }
            }
        }
        while let Some(event) = self.acd.poll_event() {
            match &event {
                acd::AcdEvent::Agent(view) => self.tell_page(view),
                acd::AcdEvent::CallEnded { call, .. } => {
                    self.media_stats.remove(call);
                }
                _ => {}
            }
            if self.events.receiver_count() == 0 {
                continue;
            }
            match serde_json::to_string(&event) {
                Ok(json) => {
                    let _ = self.events.send(Arc::from(json));
                }
                Err(e) => warn!(error = %e, "event not published"),
            }
        }
    }

    /// Tells a caller the call waits: 183 with the queue's announcement as early media when
    /// the queue has one and the caller offered G.711 audio, else 180.
    fn ringback(&mut self, call: &str, now: Instant) {
        let Some(c) = self.callers.get(call) else {
            return;
        };
        let queue = self.acd.queue_of(call).unwrap_or_default();
        let early = self.media.as_ref().and_then(|m| {
            let audio = m.announcements.get(queue)?;
            let offer = sdp::audio_offer(&c.invite.body)?;
            let law = offer.law()?;
            let start = Output::EarlyMediaStart {
                call: call.to_owned(),
                to: offer.to,
                audio: audio.encoded(law),
                law,
            };
            Some((
                start,
                sdp::answer(m.from, law, rand::random::<u32>().into()),
            ))
        });
        let early = early.map(|(start, answer)| {
            self.playing.insert(call.to_owned());
            self.out.push_back(start);
            answer
        });
        let Some(c) = self.callers.get(call) else {
            return;
        };
        let mut resp = match early {
            Some(answer) => {
                let mut resp = c.invite.response(183, Some(&c.tag));
                resp.push_header("Content-Type", "application/sdp");
                resp.body = Bytes::from(answer);
                resp
            }
            None => c.invite.response(180, Some(&c.tag)),
        };
        // The early dialog's remote target (RFC 3261 §12.1.1).
        let (addr, transport) = self.addrs.for_kind(c.caller.kind);
        resp.push_header("Contact", format!("<sip:{addr};transport={transport}>"));
        let _ = self.layer.send_response(c.server_tx, resp, now);
    }

    fn stop_early_media(&mut self, call: &str) {
        if self.playing.remove(call) {
            self.out.push_back(Output::EarlyMediaStop {
                call: call.to_owned(),
            });
        }
    }

    /// Sends the caller's INVITE to the edge where the agent is signed in.
    fn offer(&mut self, call_id: &str, agent: &str, now: Instant) {
        let conn = self.agents.edge_of(agent);
        let edge_id = conn.and_then(|c| self.edges.get(&c)).map(|e| e.id.clone());
        let (Some(conn), Some(edge_id), Some(caller)) = (conn, edge_id, self.callers.get(call_id))
        else {
            let cause = FailCause::EdgeGone;
            self.acd
                .offer_ended(call_id, agent, OfferEnd::Failed { cause }, now);
            return;
        };
        let (server_tx, from) = (caller.server_tx, caller.caller.clone());
        let mut fwd = caller.invite.clone();
        info!(%call_id, %agent, edge = %edge_id, "offering the call");
        if let Some((call_type, waited)) = self.acd.call_info(call_id, now) {
            // For the agent's screen: what the call is and how long the caller waited.
            fwd.set_header("X-AE-Call-Type", call_type.name.clone());
            fwd.set_header("X-AE-Queue", call_type.queue.clone());
            fwd.set_header("X-AE-Waited", waited.as_secs().to_string());
        }
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
            handoff::encode_uri(&mut fwd, &host, agent);
        }
        let handoff = Handoff {
            agent: agent.to_owned(),
            call_id: call_id.to_owned(),
        };
        let client_tx = self.layer.send_request_with(fwd, target, handoff, now);
        self.offer_of_server.insert(server_tx, client_tx);
        self.offers.insert(
            client_tx,
            Offer {
                server_tx,
                call_id: call_id.to_owned(),
                agent: agent.to_owned(),
                caller: from,
                edge_id,
                abandoned: false,
            },
        );
    }

    /// Whether the ACD still counts on this offer (ringing, or being withdrawn).
    fn is_current(&self, offer: &Offer) -> bool {
        self.acd.agent_of(&offer.call_id) == Some(offer.agent.as_str())
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

    /// A BYE either way ends the call for the ACD.
    fn note_bye(&mut self, msg: &SipMessage, now: Instant) {
        if msg.method() == Some(&Method::Bye)
            && let Some(call_id) = msg.call_id()
        {
            self.media_stats.remove(call_id);
            self.acd.call_ended(call_id, now);
        }
    }

    fn on_cancel(&mut self, server_tx: TxId, now: Instant) {
        let call_id = self.invites.get(&server_tx).cloned().unwrap_or_default();
        let offer = self.offer_of_server.get(&server_tx).copied();
        match offer.and_then(|t| self.offers.get_mut(&t).map(|o| (t, o))) {
            Some((client_tx, offer)) if offer.call_id == call_id => {
                // The edge's final answer (487) goes back to the caller.
                offer.abandoned = true;
                self.layer.cancel(client_tx, now);
            }
            _ => {
                if let Some(req) = self.layer.server_request(server_tx).cloned() {
                    let tag = self.callers.get(&call_id).map(|c| c.tag.clone());
                    let resp = req.response(487, Some(&tag.unwrap_or_else(ids::tag)));
                    let _ = self.layer.send_response(server_tx, resp, now);
                }
            }
        }
        info!(%call_id, "caller hung up before the answer");
        self.stop_early_media(&call_id);
        self.acd.call_abandoned(&call_id, now);
    }

    fn on_response(&mut self, tx: TxId, mut resp: SipMessage, now: Instant) {
        let code = resp.status().unwrap_or(500);
        if code == 100 {
            return;
        }
        resp.pop_header("Via");
        if let Some(offer) = self.offers.get(&tx) {
            let current = self.is_current(offer);
            let (server_tx, caller, edge_id, abandoned) = (
                offer.server_tx,
                offer.caller.clone(),
                offer.edge_id.clone(),
                offer.abandoned,
            );
            let (call_id, agent) = (offer.call_id.clone(), offer.agent.clone());
            let forward = match code {
                101..=199 if current => {
                    self.acd.offer_ringing(&call_id, &agent, now);
                    true
                }
                200..=299 => {
                    self.stop_early_media(&call_id);
                    if current {
                        self.acd
                            .offer_ended(&call_id, &agent, OfferEnd::Answered, now);
                    }
                    // Forwarded in every case, as a proxy must: the caller's side decides.
                    true
                }
                300.. if current => {
                    let end = match code {
                        486 | 487 | 600 | 603 => OfferEnd::Declined { status: code },
                        488 | 606 => OfferEnd::Unacceptable { status: code },
                        _ => OfferEnd::Failed {
                            cause: FailCause::Status(code),
                        },
                    };
                    info!(%call_id, %agent, code, "the offer ended without an answer");
                    self.acd.offer_ended(&call_id, &agent, end, now);
                    false
                }
                // The caller cancelled: its 487 (or the answer that crossed the CANCEL).
                _ => abandoned,
            };
            if !forward {
                return;
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
        // A stream's connection is found by its address when the message is sent.
        Some(Target {
            kind,
            addr,
            conn: None,
        })
    }

    /// A transaction got no answer (`Timeout`) or lost its connection (`Transport`).
    fn on_failure(&mut self, tx: TxId, cause: FailCause, now: Instant) {
        if let Some(call_id) = self.invites.get(&tx).cloned() {
            // Our answer to the caller was never ACKed: the call is over.
            warn!(%call_id, ?cause, "caller's leg failed: no ACK for the answer");
            self.acd.call_ended(&call_id, now);
        } else if let Some(offer) = self.offers.remove(&tx) {
            if self.offer_of_server.get(&offer.server_tx) == Some(&tx) {
                self.offer_of_server.remove(&offer.server_tx);
            }
            warn!(agent = %offer.agent, call_id = %offer.call_id, ?cause, "agent's leg failed: no answer to the offer");
            if self.is_current(&offer) {
                self.acd.offer_ended(
                    &offer.call_id,
                    &offer.agent,
                    OfferEnd::Failed { cause },
                    now,
                );
            } else if offer.abandoned
                && let Some(req) = self.layer.server_request(offer.server_tx).cloned()
            {
                self.respond(offer.server_tx, &req, 487, now);
            }
        } else if let Some(p) = self.proxied.remove(&tx)
            && let Some(req) = self.layer.server_request(p.server_tx).cloned()
        {
            self.respond(p.server_tx, &req, 408, now);
        }
    }
}
