//! The buffer server's connection processor: one task owning the transaction layer, the
//! registrar and the routing table, fed by the agent-side transports and the tunnel. Every
//! message from one leg is rebuilt for the other by [`super::readdress`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto_tunnel::Frame;
use tracing::{debug, info, warn};

use super::media::{CallMedia, MediaIn};
use super::readdress::{self, LocalAddr};
use super::registrar::Registrar;
use super::routing_table::{CallEntry, CallKey, CallState, RoutingTable, Side};
use crate::admin::tokens::{self, TokenError, TokenVerifier, VerifierSettings};
use crate::app::status::Status;
use crate::config::{BufferConfig, SipConfig};
use crate::handoff::{self, Mode, RouteTable};
use crate::ids;
use crate::media::bridge::{BridgeEvent, Datagram, SessionId};
use crate::sip::register::{self, RegisterRequest};
use crate::sip::transaction::{self, TransactionLayer, Transmit, TxEvent, TxId};
use crate::sip::{ConnId, Method, NameAddr, SipMessage, Target, TransportKind};
use crate::transport::TransportEvent;

/// The addresses the buffer server's listeners are bound to.
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub https: SocketAddr,
}

/// How an edge without a tunnel reaches its distributor: plain SIP to a known address, where
/// it registers its agents with its own credential.
#[derive(Debug, Clone)]
pub struct Link {
    pub target: Target,
    /// The edge credential (an edge token), sent as a bearer token on each REGISTER.
    pub token: String,
    /// Checks agent tokens with the distributor's public keys from a file, since no tunnel
    /// brings them.
    pub verifier: TokenVerifier,
}

/// The content type of a page's presence MESSAGE, and of the agent state sent to it.
const PRESENCE_TYPE: &str = "application/vnd.agent-edge.presence+json";
const STATE_TYPE: &str = "application/vnd.agent-edge.state+json";

/// How often the media statistics of each call in progress go to the distributor's live
/// view. They go in slices, a slice of the calls every `STATS_EVERY / STATS_SLICES`: all
/// calls at once stalled both roles for tens of milliseconds every two seconds under load.
const STATS_EVERY: Duration = Duration::from_secs(2);
const STATS_SLICES: u32 = 20;

/// How long a link registration of an agent lasts; refreshed at half of it.
const LINK_EXPIRES: Duration = Duration::from_secs(600);

/// What the program running the buffer server asks of it.
#[derive(Debug)]
pub enum Command {
    /// A shutdown began: new calls from the distributor are refused with 503.
    Drain,
    /// How many calls are in progress, and how many of the BYEs sent by [`Command::HangUpAll`]
    /// still wait for their answer.
    Calls {
        reply: tokio::sync::oneshot::Sender<(usize, usize)>,
    },
    /// The shutdown's grace is over: answered calls are ended with BYE on both legs, calls
    /// still ringing are cancelled towards the agent and refused with 503 towards the caller.
    HangUpAll,
}

/// What the buffer server is told.
#[derive(Debug)]
pub enum Input {
    /// SIP from an agent, or from the distributor over a plain-SIP link.
    Sip { msg: SipMessage, from: Target },
    /// An agent's (or the link's) stream connection closed.
    Closed { conn: ConnId },
    /// The tunnel to the distributor opened.
    TunnelUp { conn: ConnId },
    /// The tunnel dropped; the dialler is backing off to dial again.
    TunnelDown { conn: ConnId },
    /// A frame from the distributor.
    Frame { conn: ConnId, frame: Frame },
    /// A datagram for the media bridge.
    Media(MediaIn),
    /// The caller-side socket asked for with [`Output::OpenCallerPort`]: its address as
    /// announced in SDP, or why it could not be opened.
    CallerPort {
        call: SessionId,
        result: Result<SocketAddr, String>,
    },
    /// From the program running the server (the shutdown).
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

/// What the buffer server wants done.
#[derive(Debug)]
pub enum Output {
    /// SIP to an agent, or to the distributor over a plain-SIP link.
    Sip { to: Target, bytes: Bytes },
    /// A frame into the tunnel `conn`.
    Frame { conn: ConnId, frame: Frame },
    /// Close an agent's connection (its token was revoked).
    Close { conn: ConnId },
    /// Open a bridged call's caller-side UDP socket; the answer comes back as
    /// [`Input::CallerPort`].
    OpenCallerPort { call: SessionId },
    /// Close it: the call ended.
    CloseCallerPort { call: SessionId },
    /// A media datagram, from the shared WebRTC socket or a call's caller socket.
    Datagram(Datagram),
    /// For the operator.
    Status(Status),
}

/// A request forwarded from one leg to the other, waiting for its answer.
#[derive(Debug)]
struct Forwarded {
    key: CallKey,
    /// The server transaction on the leg the request came from.
    server_tx: TxId,
    from_side: Side,
    method: Method,
}

/// The buffer server core: registrar, routing table and re-addressing B2BUA, with no sockets
/// and no clock reads (see [`crate::driver::Core`] for the rule its caller follows).
pub struct Buffer {
    id: String,
    config: BufferConfig,
    /// Its note is the agent a hand-off names, carried from the tunnel frame (or the URI,
    /// the wrapper, the route entry) to the INVITE's Request event.
    layer: TransactionLayer<String>,
    registrar: Registrar,
    table: RoutingTable,
    addrs: BoundAddrs,
    /// The tunnel to the distributor, while it is up.
    tunnel: Option<ConnId>,
    /// Checks agent tokens with the distributor's public keys, once the tunnel brought them.
    verifier: Option<TokenVerifier>,
    /// Token ids the distributor revoked.
    revoked: HashSet<String>,
    /// The tunnel `tunnel-up` was printed for. Verification keeps the last keys through an
    /// outage, so agents can refresh their registrations meanwhile.
    announced: Option<ConnId>,
    /// How the distributor hands calls to this edge.
    mode: Mode,
    /// `table` hand-offs waiting for their INVITE.
    routes: RouteTable,
    /// The distributor over plain SIP (UDP or TCP), for an edge with no tunnel.
    link: Option<Link>,
    /// When the agents' link registrations are next refreshed.
    link_refresh: Option<Instant>,
    link_cseq: u32,
    /// Client-leg INVITE server transaction → call.
    client_invites: HashMap<TxId, CallKey>,
    /// Agent-leg INVITE client transaction → (call, client-leg INVITE server transaction).
    agent_invites: HashMap<TxId, (CallKey, TxId)>,
    /// Other forwarded requests (BYE, re-INVITE, INFO…), by the client transaction carrying them.
    forwarded: HashMap<TxId, Forwarded>,
    /// The ACK sent on a leg for its last 2xx, re-sent when that 2xx is retransmitted.
    acks: HashMap<(CallKey, Side), SipMessage>,
    /// The media bridge, for calls to browser (WSS) agents.
    media: Option<CallMedia>,
    /// The caller's SDP answer of each bridged call, sent with the agent's 2xx.
    caller_answers: HashMap<CallKey, String>,
    /// When the bridged calls' media statistics next go to the distributor.
    stats_at: Instant,
    /// Which slice of the calls reports next.
    stats_slice: u64,
    /// The bridge's answer to a re-INVITE forwarded on a bridged call, sent back with the
    /// other side's 2xx.
    reinvite_answers: HashMap<CallKey, String>,
    /// What to do, in order; drained by [`crate::driver::Core::poll_output`].
    out: VecDeque<Output>,
    /// Shutting down: new calls get 503.
    draining: bool,
    /// BYEs sent by [`Command::HangUpAll`] whose transactions have not ended, so a shutdown
    /// waits for both legs to hear of the end before the process goes.
    hangups: HashSet<TxId>,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("id", &self.id)
            .field("calls", &self.table.len())
            .field("agents", &self.registrar.len())
            .finish_non_exhaustive()
    }
}

impl crate::driver::Core for Buffer {
    type Input = Input;
    type Output = Output;

    fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Sip { msg, from } if self.is_distributor(&from) => {
                self.on_distributor_msg(msg, None, from, now);
            }
            Input::Sip { msg, from } => self.layer.handle_message(msg, from, now),
            Input::Closed { conn } => {
                self.layer.connection_closed(conn);
                for agent in self.registrar.connection_closed(conn) {
                    self.agent_gone(&agent, now);
                }
            }
            Input::TunnelUp { conn } => self.tunnel_up(conn),
            Input::TunnelDown { conn } => self.tunnel_down(conn),
            Input::Frame { conn, frame } => self.on_frame(conn, frame, now),
            Input::Media(input) => {
                if let Some(m) = self.media.as_mut() {
                    m.on_input(input, now);
                }
            }
            Input::CallerPort { call, result } => self.on_caller_port(call, result, now),
            Input::Command(command) => self.on_command(command, now),
            Input::SendFailed { to } => self.layer.transport_failed(&to),
        }
        self.drive(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.on_timers(now);
        self.drive(now);
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [
            self.layer.poll_timeout(),
            self.media.as_ref().and_then(CallMedia::poll_timeout),
            (!self.caller_answers.is_empty()).then_some(self.stats_at),
            self.registrar.next_expiry(),
            self.routes.next_expiry(),
            self.link_refresh,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

impl Buffer {
    /// `link` is set for an edge without a tunnel: it reaches the distributor over plain SIP
    /// and knows the token keys from a file.
    pub fn new(
        config: BufferConfig,
        sip: &SipConfig,
        addrs: BoundAddrs,
        link: Option<Link>,
        media: Option<CallMedia>,
        now: Instant,
    ) -> Buffer {
        let mode = config.handoff;
        Buffer {
            id: config.id.clone(),
            config,
            layer: TransactionLayer::new(transaction::Config {
                timers: sip.timers(),
                send_100_trying: true,
                // An agent's phone that rings for ever is cancelled after three minutes.
                timer_c: Some(Duration::from_secs(180)),
            }),
            registrar: Registrar::new(),
            table: RoutingTable::new(),
            addrs,
            tunnel: None,
            verifier: link.as_ref().map(|l| l.verifier.clone()),
            link,
            link_refresh: None,
            link_cseq: 0,
            revoked: HashSet::new(),
            announced: None,
            mode,
            routes: RouteTable::new(),
            client_invites: HashMap::new(),
            agent_invites: HashMap::new(),
            forwarded: HashMap::new(),
            acks: HashMap::new(),
            media,
            caller_answers: HashMap::new(),
            reinvite_answers: HashMap::new(),
            stats_at: now + STATS_EVERY / STATS_SLICES,
            stats_slice: 0,
            out: VecDeque::new(),
            draining: false,
            hangups: HashSet::new(),
        }
    }

    fn status(&mut self, status: Status) {
        self.out.push_back(Output::Status(status));
    }

    /// A frame to the distributor, while the tunnel is up.
    fn send_frame(&mut self, frame: Frame) -> bool {
        match self.tunnel {
            Some(conn) => {
                self.out.push_back(Output::Frame { conn, frame });
                true
            }
            None => false,
        }
    }

    fn on_timers(&mut self, now: Instant) {
        self.layer.handle_timeout(now);
        for agent in self.registrar.expire(now) {
            self.agent_gone(&agent, now);
        }
        if self.link_refresh.is_some_and(|at| at <= now) {
            self.refresh_link(now);
        }
        if let Some(m) = self.media.as_mut() {
            m.handle_timeout(now);
        }
        if self.stats_at <= now {
            self.stats_at = now + STATS_EVERY / STATS_SLICES;
            self.stats_slice = self.stats_slice.wrapping_add(1);
            self.report_stats();
        }
        let expired = self.routes.expire(now);
        if expired > 0 {
            info!(expired, "route entries expired without their INVITE");
        }
    }

    /// The caller-side socket of a bridged call opened (or not).
    fn on_caller_port(
        &mut self,
        call: SessionId,
        result: Result<SocketAddr, String>,
        now: Instant,
    ) {
        let key = CallKey(call);
        let answer = match (result, self.media.as_mut()) {
            (Ok(local), Some(media)) => media.caller_port(call, local).map_err(|e| e.to_string()),
            (Ok(_), None) => return,
            (Err(e), _) => Err(e),
        };
        match answer {
            Ok(answer) => {
                self.caller_answers.insert(key, answer);
            }
            Err(e) => {
                warn!(call = ?key, error = %e, "no caller-side media socket: refusing the call");
                self.refuse_offering(key, 503, "No media port for the caller", now);
            }
        }
    }

    fn on_command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Drain => {
                info!("draining: new calls are refused");
                self.draining = true;
            }
            Command::Calls { reply } => {
                let _ = reply.send((self.table.len(), self.hangups.len()));
            }
            Command::HangUpAll => {
                for key in self.table.keys() {
                    match self.table.get(key).map(|e| e.state) {
                        Some(CallState::Offering) => {
                            self.refuse_offering(key, 503, "Shutting down", now);
                        }
                        Some(CallState::Answered | CallState::Confirmed) => {
                            info!(call = ?key, "shutting down: hanging up both legs");
                            self.hang_up(key, now);
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn tunnel_up(&mut self, conn: ConnId) {
        self.tunnel = Some(conn);
        let agents: Vec<String> = self.registrar.agents().map(str::to_owned).collect();
        for agent in agents {
            self.send_frame(Frame::AgentUp { agent });
        }
    }

    fn tunnel_down(&mut self, conn: ConnId) {
        if self.tunnel == Some(conn) {
            self.tunnel = None;
            self.status(Status::TunnelDown {
                edge: self.id.clone(),
            });
        }
        self.layer.connection_closed(conn);
    }

    fn on_frame(&mut self, conn: ConnId, frame: Frame, now: Instant) {
        match frame {
            Frame::Sip { agent, message } => {
                let from = Target {
                    kind: TransportKind::Tunnel,
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    conn: Some(conn),
                };
                self.on_tunnel_sip(agent, &message, from, now);
            }
            Frame::Keys { json } => match serde_json::from_str::<VerifierSettings>(&json) {
                Ok(settings) => {
                    let verifier = TokenVerifier::new(&settings);
                    info!(?verifier, "agent token keys received");
                    self.verifier = Some(verifier);
                    // Up once agents can log in: the keys follow Welcome on each tunnel.
                    if self.announced != Some(conn) {
                        self.announced = Some(conn);
                        self.status(Status::TunnelUp {
                            edge: self.id.clone(),
                        });
                    }
                }
                Err(e) => warn!(error = %e, "unreadable token keys from the distributor"),
            },
            Frame::Revoke { jti } => {
                for (agent, conn) in self.registrar.revoke_with_connections(&jti) {
                    info!(%agent, "token revoked; registration removed");
                    self.agent_gone(&agent, now);
                    // A browser learns it at once: its WebSocket closes, and the
                    // registration it retries is refused with the reason.
                    if let Some(conn) = conn {
                        self.out.push_back(Output::Close { conn });
                    }
                }
                self.revoked.insert(jti);
            }
            Frame::AgentState { agent, json } => self.send_agent_state(&agent, json, now),
            Frame::Route {
                call_id,
                agent,
                ttl_ms,
            } => {
                let ttl = Duration::from_millis(ttl_ms.into()).min(Duration::from_secs(60));
                self.routes.insert(call_id, agent, ttl, now);
            }
            other => debug!(frame = ?other, "ignoring tunnel frame"),
        }
    }

    fn on_tunnel_sip(&mut self, agent: Option<String>, bytes: &[u8], from: Target, now: Instant) {
        let msg = match SipMessage::parse_checked(bytes) {
            Ok(m) => m,
            Err(rejected) => {
                warn!(error = %rejected.error, "bad SIP from the distributor");
                if let Some(answer) = rejected.answer {
                    self.send(Transmit {
                        to: from,
                        bytes: Bytes::from(answer.to_bytes()),
                        note: None,
                    });
                }
                return;
            }
        };
        self.on_distributor_msg(msg, agent, from, now);
    }

    /// Whether a message comes from (or goes to) the distributor: its tunnel, or its address
    /// on the plain-SIP link.
    fn is_distributor(&self, peer: &Target) -> bool {
        peer.kind == TransportKind::Tunnel
            || self
                .link
                .as_ref()
                .is_some_and(|l| l.target.kind == peer.kind && l.target.addr == peer.addr)
    }

    /// SIP from the distributor, however it came: unwraps hand-off MESSAGEs, finds the agent
    /// of a new call the way this edge's mode says, and hands the message to the layer.
    fn on_distributor_msg(
        &mut self,
        msg: SipMessage,
        agent: Option<String>,
        from: Target,
        now: Instant,
    ) {
        if handoff::is_wrapper_response(&msg) {
            return;
        }
        let (msg, agent) = if handoff::is_wrapper(&msg) {
            match handoff::unwrap(&msg) {
                Ok((inner, wrapped_agent)) => {
                    let ok = msg.response(200, Some(&ids::tag()));
                    self.send_raw(&from, Bytes::from(ok.to_bytes()));
                    (inner, wrapped_agent)
                }
                Err(e) => {
                    warn!(error = %e, "refusing a hand-off MESSAGE");
                    let mut resp = msg.response(e.status(), Some(&ids::tag()));
                    resp.set_reason(&e.to_string());
                    self.send_raw(&from, Bytes::from(resp.to_bytes()));
                    return;
                }
            }
        } else if self.mode == Mode::Message {
            // This edge takes its hand-offs wrapped; a bare INVITE names no agent.
            (msg, None)
        } else {
            (msg, agent)
        };
        let initial_invite = msg.method() == Some(&Method::Invite) && msg.to_tag().is_none();
        // Only the hand-off this edge asked for counts: an agent named any other way is not
        // taken, so a misconfigured distributor shows at once (404) instead of half working.
        let agent = match self.mode {
            Mode::Tunnel | Mode::Message => agent,
            Mode::Uri if initial_invite => handoff::decode_uri(&msg).ok(),
            Mode::Table if initial_invite => msg.call_id().and_then(|c| self.routes.take(c, now)),
            Mode::Uri | Mode::Table => None,
        };
        // The agent rides with the INVITE through the layer, to its Request event.
        self.layer.handle_message_with(msg, from, agent, now);
    }

    /// Runs the layer's events, then sends what it queued.
    fn drive(&mut self, now: Instant) {
        while let Some(ev) = self.media.as_mut().and_then(CallMedia::poll_event) {
            let id = match ev {
                BridgeEvent::Inactive(id) | BridgeEvent::Failed(id) => id,
                BridgeEvent::Disconnected(id) => {
                    info!(call = id, "the agent's ICE connection lost consent");
                    continue;
                }
            };
            let key = CallKey(id);
            if self.table.get(key).is_some() {
                warn!(call = ?key, event = ?ev, "media stopped: hanging up both legs");
                self.hang_up(key, now);
            }
        }
        while let Some(ev) = self.layer.poll_event() {
            self.on_tx_event(ev, now);
        }
        while let Some(t) = self.layer.poll_transmit() {
            self.send(t);
        }
        while let Some(d) = self.media.as_mut().and_then(CallMedia::poll_datagram) {
            self.out.push_back(Output::Datagram(d));
        }
    }

    /// Sends what the layer queued; to the distributor in `message` mode, wrapped.
    fn send(&mut self, t: Transmit<String>) {
        // The edge's own REGISTERs of its agents are not part of any call: never wrapped.
        let call_message = !t.bytes.starts_with(b"REGISTER ");
        let bytes = if self.mode == Mode::Message && call_message && self.is_distributor(&t.to) {
            let host = format!("{}.invalid", self.id);
            let branch = transaction::new_branch();
            let wrapper = handoff::wrap(&t.bytes, "sip:distributor.invalid", &host, &branch);
            Bytes::from(wrapper.to_bytes())
        } else {
            t.bytes
        };
        self.send_raw(&t.to, bytes);
    }

    /// Sends bytes as they are: into the tunnel, or on a SIP transport.
    fn send_raw(&mut self, to: &Target, bytes: Bytes) {
        if to.kind == TransportKind::Tunnel {
            match self.tunnel {
                Some(conn) if Some(conn) == to.conn => {
                    let frame = Frame::Sip {
                        agent: None,
                        message: bytes,
                    };
                    self.out.push_back(Output::Frame { conn, frame });
                }
                _ => debug!("tunnel down; message to the distributor dropped"),
            }
            return;
        }
        self.out.push_back(Output::Sip {
            to: to.clone(),
            bytes,
        });
    }

    fn on_tx_event(&mut self, ev: TxEvent<String>, now: Instant) {
        match ev {
            TxEvent::Request {
                tx: Some(tx),
                msg,
                from,
                note,
            } => self.on_request(tx, msg, from, note, now),
            TxEvent::Request {
                tx: None,
                msg,
                from,
                ..
            } => self.on_ack(&msg, &from),
            TxEvent::Cancel { invite, .. } => self.on_cancel(invite, now),
            TxEvent::Response { tx, msg } => {
                if msg.status().is_some_and(|c| c >= 200) {
                    self.hangups.remove(&tx);
                }
                self.on_response(tx, msg, now);
            }
            TxEvent::StrayResponse { msg, .. } => self.on_stray_response(&msg),
            TxEvent::Timeout { tx } => {
                self.hangups.remove(&tx);
                self.on_failure(tx, "no answer in time", now);
            }
            TxEvent::TransportError { tx } => {
                self.hangups.remove(&tx);
                self.on_failure(tx, "connection failed", now);
            }
            TxEvent::Terminated { tx } => self.on_terminated(tx),
        }
    }

    fn respond(&mut self, tx: TxId, request: &SipMessage, code: u16, now: Instant) {
        let resp = request.response(code, Some(&ids::tag()));
        let _ = self.layer.send_response(tx, resp, now);
    }

    /// `handoff`: the agent the distributor's hand-off named, for a new call.
    fn on_request(
        &mut self,
        tx: TxId,
        msg: SipMessage,
        from: Target,
        handoff: Option<String>,
        now: Instant,
    ) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        let in_dialog = msg.to_tag().is_some();
        let routed = msg.call_id().and_then(|c| self.table.lookup(c));
        match (method, routed) {
            (Method::Register, _) if !self.is_distributor(&from) => {
                self.on_register(tx, &msg, &from, now);
            }
            (Method::Invite, None) if !in_dialog && self.is_distributor(&from) && self.draining => {
                let mut resp = msg.response(503, Some(&ids::tag()));
                resp.set_reason("Shutting down");
                let _ = self.layer.send_response(tx, resp, now);
            }
            (Method::Invite, None) if !in_dialog && self.is_distributor(&from) => {
                self.on_new_call(tx, msg, from, handoff, now);
            }
            (_, Some((key, side))) if in_dialog => {
                self.forward_in_dialog(tx, msg, key, side, now);
            }
            (Method::Options, None) if !in_dialog => self.respond(tx, &msg, 200, now),
            (Method::Message, None) if !in_dialog && !self.is_distributor(&from) => {
                self.on_agent_presence(tx, &msg, now);
            }
            (_, _) if in_dialog => self.respond(tx, &msg, 481, now),
            (Method::Invite, Some(_)) => self.respond(tx, &msg, 482, now),
            _ => self.respond(tx, &msg, 405, now),
        }
    }

    fn on_register(&mut self, tx: TxId, msg: &SipMessage, from: &Target, now: Instant) {
        let request = match register::parse_register(msg, self.config.max_expires) {
            Ok(r) => r,
            Err(e) => {
                let mut resp = msg.response(e.status(), Some(&ids::tag()));
                resp.set_reason(&e.to_string());
                let _ = self.layer.send_response(tx, resp, now);
                return;
            }
        };
        let jti = match self.authenticate(msg, request.agent()) {
            Ok(jti) => jti,
            Err(refusal) => {
                let _ = self.layer.send_response(tx, *refusal, now);
                return;
            }
        };
        let mut resp = msg.response(200, Some(&ids::tag()));
        match request {
            RegisterRequest::Bind {
                agent,
                contact,
                expires,
            } => {
                let target = register::target_for(&contact, from);
                resp.push_header("Contact", format!("<{contact}>;expires={expires}"));
                let new = self.registrar.bind(
                    &agent,
                    &jti,
                    contact,
                    target,
                    Duration::from_secs(expires.into()),
                    now,
                );
                if new {
                    info!(%agent, "agent registered");
                    self.agent_presence(&agent, true, now);
                }
            }
            RegisterRequest::Unbind { agent } => {
                if self.registrar.unbind(&agent) {
                    self.agent_gone(&agent, now);
                }
            }
            RegisterRequest::Fetch { agent } => {
                if let Some(b) = self.registrar.get(&agent) {
                    let left = b.expires_at.saturating_duration_since(now).as_secs();
                    resp.push_header("Contact", format!("<{}>;expires={left}", b.contact));
                }
            }
        }
        let _ = self.layer.send_response(tx, resp, now);
    }

    /// RFC 8898: a REGISTER carries `Authorization: Bearer <token>` whose subject is the agent
    /// it registers. Returns the token's id, or the refusal to send.
    fn authenticate(&self, msg: &SipMessage, agent: &str) -> Result<String, Box<SipMessage>> {
        let refuse = |code: u16, why: &str, challenge: Option<String>| {
            let mut resp = msg.response(code, Some(&ids::tag()));
            resp.set_reason(why);
            if let Some(c) = challenge {
                resp.push_header("WWW-Authenticate", c);
            }
            info!(%agent, code, reason = %why, "registration refused");
            Box::new(resp)
        };
        let Some(verifier) = &self.verifier else {
            let mut resp = refuse(503, "Agent tokens not known yet", None);
            resp.push_header("Retry-After", "5");
            return Err(resp);
        };
        let realm = "Bearer realm=\"agent-edge\"";
        let token = match tokens::bearer(msg.header("Authorization")) {
            Ok(t) => t,
            Err(_) => return Err(refuse(401, "Unauthorized", Some(realm.to_owned()))),
        };
        match verifier.verify(token) {
            Ok(claims) if self.revoked.contains(&claims.jti) => {
                let challenge = format!(
                    "{realm}, error=\"invalid_token\", error_description=\"token revoked\""
                );
                Err(refuse(401, "Token revoked", Some(challenge)))
            }
            Ok(claims) if claims.sub == agent => Ok(claims.jti),
            Ok(_) => Err(refuse(403, "Token is for another agent", None)),
            Err(e) => {
                let challenge =
                    format!("{realm}, error=\"invalid_token\", error_description=\"{e}\"");
                let why = match e {
                    TokenError::Expired => "Token expired",
                    TokenError::NotYetValid => "Token not yet valid",
                    _ => "Invalid token",
                };
                Err(refuse(401, why, Some(challenge)))
            }
        }
    }

    /// An agent's page sets its presence: a MESSAGE with the agent's bearer token, whose body
    /// is `{"state": "available"}` or `{"state": "away", "reason": "…"}`. Passed to the
    /// distributor, whose ACD owns agents' states.
    fn on_agent_presence(&mut self, tx: TxId, msg: &SipMessage, now: Instant) {
        let is_presence = msg
            .header("Content-Type")
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(PRESENCE_TYPE));
        if !is_presence {
            self.respond(tx, msg, 415, now);
            return;
        }
        let agent = msg
            .header("From")
            .and_then(|f| NameAddr::parse(f).ok())
            .and_then(|a| a.sip_uri().ok())
            .and_then(|u| u.user)
            .unwrap_or_default();
        if self.registrar.get(&agent).is_none() {
            self.respond(tx, msg, 403, now);
            return;
        }
        if let Err(refusal) = self.authenticate(msg, &agent) {
            let _ = self.layer.send_response(tx, *refusal, now);
            return;
        }
        let valid = msg.body.len() <= 1024
            && serde_json::from_slice::<serde_json::Value>(&msg.body)
                .ok()
                .and_then(|v| v.get("state").and_then(|s| s.as_str()).map(str::to_owned))
                .is_some_and(|s| s == "available" || s == "away");
        if !valid {
            let mut resp = msg.response(400, Some(&ids::tag()));
            resp.set_reason("Presence must be {\"state\": \"available\" or \"away\"}");
            let _ = self.layer.send_response(tx, resp, now);
            return;
        }
        let json = String::from_utf8_lossy(&msg.body).into_owned();
        let sent = self.send_frame(Frame::Presence { agent, json });
        self.respond(tx, msg, if sent { 200 } else { 503 }, now);
    }

    /// The distributor's view of an agent changed: a MESSAGE to the agent's page. Only
    /// browsers (WSS) get it: a desk phone has no use for it and may refuse it.
    fn send_agent_state(&mut self, agent: &str, json: String, now: Instant) {
        let Some(binding) = self
            .registrar
            .get(agent)
            .filter(|b| b.target.kind == TransportKind::Wss)
            .cloned()
        else {
            return;
        };
        let local = self.local_addr(binding.target.kind);
        let text = format!(
            "MESSAGE {contact} SIP/2.0\r\nVia: SIP/2.0/{transport} {sent_by};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:acd@{host}>;tag={tag}\r\nTo: <sip:{agent}@{host}>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nContent-Type: {STATE_TYPE}\r\n\
             Content-Length: {len}\r\n\r\n{json}",
            contact = binding.contact,
            transport = local.transport,
            sent_by = local.sent_by,
            branch = transaction::new_branch(),
            host = local.host,
            tag = ids::tag(),
            call_id = ids::call_id(),
            len = json.len(),
        );
        match SipMessage::parse(text.as_bytes()) {
            Ok(msg) => {
                self.layer.send_request(msg, binding.target, now);
            }
            Err(e) => warn!(%agent, error = %e, "agent state not sent"),
        }
    }

    fn agent_gone(&mut self, agent: &str, now: Instant) {
        info!(%agent, "agent unregistered");
        self.agent_presence(agent, false, now);
    }

    /// Tells the distributor an agent logged in or out: a tunnel frame, or over a plain-SIP
    /// link a REGISTER of the agent at this edge, with the edge's credential.
    fn agent_presence(&mut self, agent: &str, up: bool, now: Instant) {
        if self.link.is_some() {
            let expires = if up { LINK_EXPIRES } else { Duration::ZERO };
            self.link_register(agent, expires, now);
            return;
        }
        let frame = if up {
            Frame::AgentUp {
                agent: agent.to_owned(),
            }
        } else {
            Frame::AgentDown {
                agent: agent.to_owned(),
            }
        };
        self.send_frame(frame);
    }

    fn link_register(&mut self, agent: &str, expires: Duration, now: Instant) {
        let Some(link) = self.link.clone() else {
            return;
        };
        let local = self.local_addr(link.target.kind);
        let dist = link.target.addr;
        let transport = local.transport.to_ascii_lowercase();
        self.link_cseq = self.link_cseq.wrapping_add(1);
        let text = format!(
            "REGISTER sip:{dist} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{agent}@{dist}>;tag={}\r\nTo: <sip:{agent}@{dist}>\r\n\
             Call-ID: {}-{agent}@{}\r\nCSeq: {} REGISTER\r\n\
             Contact: <sip:{agent}@{};transport={transport};{}={}>\r\nExpires: {}\r\n\
             Authorization: Bearer {}\r\nContent-Length: 0\r\n\r\n",
            local.transport,
            local.sent_by,
            transaction::new_branch(),
            ids::tag(),
            self.id,
            local.host,
            self.link_cseq,
            local.host,
            handoff::LINK_MODE_PARAM,
            self.mode.as_str(),
            expires.as_secs(),
            link.token,
        );
        match SipMessage::parse(text.as_bytes()) {
            Ok(register) => {
                self.layer.send_request(register, link.target, now);
            }
            Err(e) => warn!(error = %e, "could not build the link REGISTER"),
        }
        if self.link_refresh.is_none() {
            self.link_refresh = Some(now + LINK_EXPIRES / 2);
        }
    }

    /// Registers every agent again before the distributor forgets them.
    fn refresh_link(&mut self, now: Instant) {
        self.link_refresh = Some(now + LINK_EXPIRES / 2);
        let agents: Vec<String> = self.registrar.agents().map(str::to_owned).collect();
        for agent in agents {
            self.link_register(&agent, LINK_EXPIRES, now);
        }
    }

    /// How this server names itself towards a peer on `kind`.
    fn local_addr(&self, kind: TransportKind) -> LocalAddr {
        let (transport, addr, param) = match kind {
            TransportKind::Udp => ("UDP", self.addrs.udp.to_string(), ""),
            TransportKind::Tcp => ("TCP", self.addrs.tcp.to_string(), ";transport=tcp"),
            TransportKind::Tls => ("TLS", self.addrs.tcp.to_string(), ";transport=tls"),
            TransportKind::Ws | TransportKind::Wss => {
                ("WSS", self.addrs.https.to_string(), ";transport=ws")
            }
            TransportKind::Tunnel => {
                let host = format!("{}.invalid", self.id);
                return LocalAddr {
                    transport: "WSS",
                    sent_by: host.clone(),
                    contact: format!("<sip:{host};transport=ws>"),
                    host,
                };
            }
        };
        LocalAddr {
            transport,
            contact: format!("<sip:{addr}{param}>"),
            sent_by: addr.clone(),
            host: addr,
        }
    }

    fn on_new_call(
        &mut self,
        tx: TxId,
        invite: SipMessage,
        from: Target,
        handoff: Option<String>,
        now: Instant,
    ) {
        let Some(agent) = handoff else {
            debug!("INVITE from the distributor names no agent");
            self.respond(tx, &invite, 404, now);
            return;
        };
        let Some(binding) = self.registrar.get(&agent).cloned() else {
            info!(%agent, "call for an agent not registered here");
            self.respond(tx, &invite, 404, now);
            return;
        };
        if invite.max_forwards() == Some(0) {
            self.respond(tx, &invite, 483, now);
            return;
        }
        let client = match readdress::client_leg(&invite, from, ids::tag()) {
            Ok(leg) => leg,
            Err(e) => {
                let mut resp = invite.response(e.status(), Some(&ids::tag()));
                resp.set_reason(&e.to_string());
                let _ = self.layer.send_response(tx, resp, now);
                return;
            }
        };
        let local = self.local_addr(binding.target.kind);
        let agent_leg = readdress::agent_leg(
            &invite,
            &agent,
            &binding.contact,
            binding.target.clone(),
            &local,
            ids::call_id(),
            ids::tag(),
        );
        let mut out =
            readdress::request_for_leg(&invite, &agent_leg, 1, &local, &transaction::new_branch());
        let entry = CallEntry {
            agent: agent.clone(),
            client,
            agent_leg,
            state: CallState::Offering,
        };
        let key = match self.table.insert(entry) {
            Ok(k) => k,
            Err(e) => {
                warn!(error = %e, "refusing call");
                self.respond(tx, &invite, 482, now);
                return;
            }
        };
        if binding.target.kind == TransportKind::Wss
            && let Some(media) = self.media.as_mut()
        {
            // A browser: its WebRTC meets the caller's RTP in the media bridge.
            match media.open(key.0, &invite.body, now) {
                Ok(agent_offer) => {
                    out.set_header("Content-Type", "application/sdp");
                    out.body = Bytes::from(agent_offer);
                    // The caller's answer follows once its socket is open.
                    self.out.push_back(Output::OpenCallerPort { call: key.0 });
                }
                Err(e) => {
                    info!(call = ?key, error = %e, "refusing the call's media");
                    self.table.remove(key);
                    let mut resp = invite.response(e.status(), Some(&ids::tag()));
                    resp.set_reason(&e.to_string());
                    let _ = self.layer.send_response(tx, resp, now);
                    return;
                }
            }
        }
        info!(%agent, call = ?key, "offering call to agent");
        let agent_tx = self.layer.send_request(out, binding.target, now);
        self.client_invites.insert(tx, key);
        self.agent_invites.insert(agent_tx, (key, tx));
    }

    fn forward_in_dialog(
        &mut self,
        tx: TxId,
        msg: SipMessage,
        key: CallKey,
        side: Side,
        now: Instant,
    ) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        // A re-INVITE on a bridged call: each side's SDP is the bridge's business.
        let mut body = None;
        if method == Method::Invite
            && !msg.body.is_empty()
            && self.caller_answers.contains_key(&key)
            && let Some(media) = self.media.as_mut()
        {
            let result = match side {
                Side::Client => media.caller_reoffer(key.0, &msg.body, now),
                Side::Agent => media
                    .agent_reoffer(key.0, &msg.body, now)
                    .map(|(answer, offer)| (answer, Some(offer))),
            };
            match result {
                Err(e) => {
                    let mut resp = msg.response(e.status(), None);
                    resp.set_reason(&e.to_string());
                    let _ = self.layer.send_response(tx, resp, now);
                    return;
                }
                Ok((answer, None)) => {
                    // Nothing changes for the other side (a session refresh): answered here.
                    self.answer_locally(tx, &msg, key, side, answer, now);
                    return;
                }
                Ok((answer, Some(offer))) => {
                    self.reinvite_answers.insert(key, answer);
                    body = Some(offer);
                }
            }
        }
        let other = side.other();
        let Some(entry) = self.table.get_mut(key) else {
            return;
        };
        let kind = entry.leg(other).target.kind;
        let local = self.local_addr(kind);
        let Some(entry) = self.table.get_mut(key) else {
            return;
        };
        let leg = entry.leg_mut(other);
        let cseq = leg.next_cseq();
        if method == Method::Invite {
            leg.invite_cseq = cseq;
        }
        let mut out =
            readdress::request_for_leg(&msg, leg, cseq, &local, &transaction::new_branch());
        if let Some(body) = body {
            out.set_header("Content-Type", "application/sdp");
            out.body = Bytes::from(body);
        }
        let target = leg.target.clone();
        if method == Method::Bye {
            entry.state = CallState::Ending;
        }
        let out_tx = self.layer.send_request(out, target, now);
        self.forwarded.insert(
            out_tx,
            Forwarded {
                key,
                server_tx: tx,
                from_side: side,
                method,
            },
        );
    }

    /// An ACK for a 2xx, end to end: rebuilt for the other leg with that leg's INVITE CSeq.
    fn on_ack(&mut self, ack: &SipMessage, _from: &Target) {
        let Some((key, side)) = ack.call_id().and_then(|c| self.table.lookup(c)) else {
            return;
        };
        let other = side.other();
        let Some(entry) = self.table.get(key) else {
            return;
        };
        let local = self.local_addr(entry.leg(other).target.kind);
        let leg = entry.leg(other);
        let out = readdress::request_for_leg(
            ack,
            leg,
            leg.invite_cseq,
            &local,
            &transaction::new_branch(),
        );
        let target = leg.target.clone();
        if let Some(entry) = self.table.get_mut(key)
            && entry.state == CallState::Answered
        {
            entry.state = CallState::Confirmed;
        }
        self.layer.send_stateless(out.clone(), target);
        self.acks.insert((key, other), out);
    }

    /// Ends a call still ringing at the agent: `status` to the caller, CANCEL to the agent.
    fn refuse_offering(&mut self, key: CallKey, status: u16, reason: &str, now: Instant) {
        let client_tx = self
            .client_invites
            .iter()
            .find(|(_, k)| **k == key)
            .map(|(tx, _)| *tx);
        if let Some(entry) = self.table.get_mut(key) {
            entry.state = CallState::Cancelling;
        }
        if let (Some(tx), Some(entry)) = (client_tx, self.table.get(key))
            && let Some(req) = self.layer.server_request(tx).cloned()
        {
            let mut resp = req.response(status, Some(&entry.client.local_tag));
            resp.set_reason(reason);
            let _ = self.layer.send_response(tx, resp, now);
        }
        self.table.detach_client(key);
        let agent_tx = self
            .agent_invites
            .iter()
            .find(|(_, (k, _))| *k == key)
            .map(|(tx, _)| *tx);
        if let Some(agent_tx) = agent_tx {
            self.layer.cancel(agent_tx, now);
        }
    }

    fn on_cancel(&mut self, invite_tx: TxId, now: Instant) {
        let Some(&key) = self.client_invites.get(&invite_tx) else {
            return;
        };
        if self.table.get(key).map(|e| e.state) == Some(CallState::Offering) {
            // The client side is over; the distributor may offer the same call (same
            // Call-ID) again, here, while the agent leg winds down.
            self.refuse_offering(key, 487, "Request Terminated", now);
        }
    }

    fn on_response(&mut self, tx: TxId, resp: SipMessage, now: Instant) {
        if let Some(&(key, client_tx)) = self.agent_invites.get(&tx) {
            self.on_agent_invite_response(key, client_tx, resp, now);
        } else if let Some(fwd) = self.forwarded.get(&tx) {
            let (key, server_tx, from_side, method) =
                (fwd.key, fwd.server_tx, fwd.from_side, fwd.method.clone());
            let code = resp.status().unwrap_or(500);
            if code == 100 {
                return;
            }
            let other = from_side.other();
            if (200..300).contains(&code) && method == Method::Invite {
                // A re-INVITE's 2xx is a target refresh on the leg that answered it.
                if let (Some(uri), Some(entry)) =
                    (readdress::contact_uri(&resp), self.table.get_mut(key))
                {
                    entry.leg_mut(other).remote_target = uri;
                }
                if self.layer_resend_ack(key, other, &resp) {
                    return;
                }
                if other == Side::Agent
                    && self.reinvite_answers.contains_key(&key)
                    && let Some(media) = self.media.as_mut()
                    && let Err(e) = media.agent_answer(key.0, &resp.body, now)
                {
                    warn!(call = ?key, error = %e, "the agent's answer to the re-offer failed");
                }
            }
            let answer = if method == Method::Invite && code >= 200 {
                self.reinvite_answers.remove(&key)
            } else {
                None
            };
            let Some(entry) = self.table.get(key) else {
                return;
            };
            let local_tag = entry.leg(from_side).local_tag.clone();
            let local = self.local_addr(entry.leg(from_side).target.kind);
            if let Some(req) = self.layer.server_request(server_tx) {
                let mut out = readdress::response_for_leg(req, &resp, &local_tag, &local);
                if let Some(answer) = answer.filter(|_| (200..300).contains(&code)) {
                    out.set_header("Content-Type", "application/sdp");
                    out.body = Bytes::from(answer);
                }
                let _ = self.layer.send_response(server_tx, out, now);
            }
            if method == Method::Bye && code >= 200 {
                self.end_call(key);
            }
        }
    }

    /// A retransmitted 2xx on a leg whose ACK was already sent: send that ACK again.
    fn layer_resend_ack(&mut self, key: CallKey, side: Side, resp: &SipMessage) -> bool {
        let Some(ack) = self.acks.get(&(key, side)) else {
            return false;
        };
        let same = resp.cseq().ok().map(|c| c.seq) == ack.cseq().ok().map(|c| c.seq);
        if !same {
            return false;
        }
        if let Some(entry) = self.table.get(key) {
            self.layer
                .send_stateless(ack.clone(), entry.leg(side).target.clone());
        }
        true
    }

    fn on_agent_invite_response(
        &mut self,
        key: CallKey,
        client_tx: TxId,
        resp: SipMessage,
        now: Instant,
    ) {
        let code = resp.status().unwrap_or(500);
        if code == 100 {
            return;
        }
        let Some(entry) = self.table.get_mut(key) else {
            return;
        };
        if let Some(tag) = resp.to_tag() {
            entry.agent_leg.remote_tag = Some(tag);
        }
        if (200..300).contains(&code) {
            if let Some(uri) = readdress::contact_uri(&resp) {
                entry.agent_leg.remote_target = uri;
            }
            // As UAC, the route set is the Record-Route list reversed (RFC 3261 §12.1.2).
            let mut routes: Vec<String> = resp
                .headers_named("Record-Route")
                .map(str::to_owned)
                .collect();
            routes.reverse();
            entry.agent_leg.route_set = routes;
            match entry.state {
                CallState::Offering => {
                    entry.state = CallState::Answered;
                    if self.caller_answers.contains_key(&key)
                        && let Some(media) = self.media.as_mut()
                        && let Err(e) = media.agent_answer(key.0, &resp.body, now)
                    {
                        warn!(call = ?key, error = %e, "the agent's answer cannot be bridged");
                        self.ack_and_bye_agent(key, now);
                        if let Some(req) = self.layer.server_request(client_tx).cloned() {
                            let mut out = req.response(e.status(), Some(&ids::tag()));
                            out.set_reason(&e.to_string());
                            let _ = self.layer.send_response(client_tx, out, now);
                        }
                        return;
                    }
                }
                CallState::Cancelling => {
                    // The agent answered as the caller hung up: confirm and end its leg.
                    self.ack_and_bye_agent(key, now);
                    return;
                }
                _ => {
                    self.layer_resend_ack(key, Side::Agent, &resp);
                    return;
                }
            }
        }
        let Some(entry) = self.table.get(key) else {
            return;
        };
        if entry.state == CallState::Cancelling {
            if code >= 300 {
                self.end_call(key);
            }
            return;
        }
        let local_tag = entry.client.local_tag.clone();
        let local = self.local_addr(entry.client.target.kind);
        if let Some(req) = self.layer.server_request(client_tx) {
            let mut out = readdress::response_for_leg(req, &resp, &local_tag, &local);
            if let Some(answer) = self.caller_answers.get(&key) {
                // A bridged call: the caller gets our RTP, never the agent's WebRTC SDP.
                if (200..300).contains(&code) {
                    out.set_header("Content-Type", "application/sdp");
                    out.body = Bytes::from(answer.clone());
                } else {
                    out.remove_header("Content-Type");
                    out.body = Bytes::new();
                }
            }
            let _ = self.layer.send_response(client_tx, out, now);
        }
        if code >= 300 {
            info!(call = ?key, code, "agent declined");
            self.end_call(key);
        }
    }

    /// Confirms the agent's 2xx and hangs its leg up: for an answer that raced the caller's
    /// CANCEL, or a caller whose ACK never came.
    fn ack_and_bye_agent(&mut self, key: CallKey, now: Instant) {
        let Some(entry) = self.table.get(key) else {
            return;
        };
        let local = self.local_addr(entry.agent_leg.target.kind);
        let leg = &entry.agent_leg;
        let branch = transaction::new_branch();
        let ack = readdress::originate(Method::Ack, leg, leg.invite_cseq, &local, &branch);
        self.layer.send_stateless(ack, leg.target.clone());
        self.bye(key, Side::Agent, now);
        self.end_call(key);
    }

    /// Hangs up one leg with a BYE of our own; the call's entry stays for its answer.
    fn bye(&mut self, key: CallKey, side: Side, now: Instant) {
        let Some(kind) = self.table.get(key).map(|e| e.leg(side).target.kind) else {
            return;
        };
        let local = self.local_addr(kind);
        let Some(entry) = self.table.get_mut(key) else {
            return;
        };
        let leg = entry.leg_mut(side);
        let cseq = leg.next_cseq();
        let bye = readdress::originate(Method::Bye, leg, cseq, &local, &transaction::new_branch());
        let target = leg.target.clone();
        let tx = self.layer.send_request(bye, target, now);
        if self.draining {
            self.hangups.insert(tx);
        }
    }

    /// Sends the media statistics of this slice's bridged calls to the distributor, for its
    /// live view.
    fn report_stats(&mut self) {
        let (Some(conn), Some(media)) = (self.tunnel, &self.media) else {
            return;
        };
        let slice = self.stats_slice % u64::from(STATS_SLICES);
        let in_slice = |key: &&CallKey| key.0 % u64::from(STATS_SLICES) == slice;
        for key in self.caller_answers.keys().filter(in_slice) {
            let (Some(entry), Some(stats)) = (self.table.get(*key), media.stats(key.0)) else {
                continue;
            };
            let Ok(json) = serde_json::to_string(&stats) else {
                continue;
            };
            let frame = Frame::CallStats {
                call_id: entry.client.call_id.clone(),
                json,
            };
            self.out.push_back(Output::Frame { conn, frame });
        }
    }

    /// Answers an in-dialog INVITE on `side` here, with the bridge's SDP.
    fn answer_locally(
        &mut self,
        tx: TxId,
        msg: &SipMessage,
        key: CallKey,
        side: Side,
        sdp: String,
        now: Instant,
    ) {
        let Some(kind) = self.table.get(key).map(|e| e.leg(side).target.kind) else {
            return;
        };
        let local = self.local_addr(kind);
        let mut resp = msg.response(200, None);
        resp.push_header("Contact", local.contact.clone());
        resp.push_header("Content-Type", "application/sdp");
        resp.body = Bytes::from(sdp);
        let _ = self.layer.send_response(tx, resp, now);
    }

    /// Ends an answered call from here: BYE on both legs (the media stopped).
    fn hang_up(&mut self, key: CallKey, now: Instant) {
        self.bye(key, Side::Client, now);
        self.bye(key, Side::Agent, now);
        self.end_call(key);
    }

    fn on_stray_response(&mut self, resp: &SipMessage) {
        let Some((key, side)) = resp.call_id().and_then(|c| self.table.lookup(c)) else {
            return;
        };
        if resp.status().is_some_and(|c| (200..300).contains(&c)) {
            self.layer_resend_ack(key, side, resp);
        }
    }

    /// A transaction failed for `cause`: the leg it was on is named in the log.
    fn on_failure(&mut self, tx: TxId, cause: &'static str, now: Instant) {
        if let Some((key, client_tx)) = self.agent_invites.remove(&tx) {
            info!(call = ?key, leg = "agent", cause, "the offer to the agent failed");
            let state = self.table.get(key).map(|e| e.state);
            if state == Some(CallState::Offering)
                && let Some(req) = self.layer.server_request(client_tx).cloned()
            {
                let tag = self.table.get(key).map(|e| e.client.local_tag.clone());
                let resp = req.response(408, tag.as_deref());
                let _ = self.layer.send_response(client_tx, resp, now);
            }
            self.end_call(key);
        } else if let Some(fwd) = self.forwarded.remove(&tx) {
            let leg = match fwd.from_side.other() {
                Side::Agent => "agent",
                Side::Client => "client",
            };
            info!(call = ?fwd.key, leg, cause, method = %fwd.method, "a forwarded request failed");
            if let Some(req) = self.layer.server_request(fwd.server_tx).cloned() {
                let tag = self
                    .table
                    .get(fwd.key)
                    .map(|e| e.leg(fwd.from_side).local_tag.clone());
                let resp = req.response(408, tag.as_deref());
                let _ = self.layer.send_response(fwd.server_tx, resp, now);
            }
            if fwd.method == Method::Bye {
                self.end_call(fwd.key);
            }
        } else if let Some(key) = self.client_invites.remove(&tx) {
            // The caller never ACKed our 2xx (or the tunnel died): end the agent's side too.
            if let Some(entry) = self.table.get(key)
                && entry.state == CallState::Answered
            {
                // RFC 3261 §13.3.1.4: the session ends with a BYE, on both legs here.
                warn!(call = ?key, leg = "client", cause, "no ACK from the caller; ending the call");
                self.bye(key, Side::Client, now);
                self.ack_and_bye_agent(key, now);
            }
        }
    }

    fn on_terminated(&mut self, tx: TxId) {
        self.hangups.remove(&tx);
        self.client_invites.remove(&tx);
        if let Some((key, _)) = self.agent_invites.remove(&tx)
            && self
                .table
                .get(key)
                .is_some_and(|e| e.state == CallState::Cancelling)
        {
            self.end_call(key);
        }
        self.forwarded.remove(&tx);
    }

    fn end_call(&mut self, key: CallKey) {
        if let Some(entry) = self.table.remove(key) {
            debug!(call = ?key, agent = %entry.agent, "call ended");
        }
        self.caller_answers.remove(&key);
        self.reinvite_answers.remove(&key);
        if let Some(stats) = self.media.as_mut().and_then(|m| m.close(key.0)) {
            let stats = serde_json::to_string(&stats).unwrap_or_default();
            info!(call = ?key, %stats, "media statistics at hang-up");
            self.out.push_back(Output::CloseCallerPort { call: key.0 });
        }
        self.acks.remove(&(key, Side::Client));
        self.acks.remove(&(key, Side::Agent));
    }
}
