//! The buffer server core: registrar, routing table and re-addressing B2BUA in one sans-IO
//! state machine ([`crate::driver::Core`]), fed by the agent-side transports and the tunnel.
//! This file holds its state and the dispatch of each input; what each kind of message
//! does is in the modules below, each one side of the server's work.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::admin::tokens::TokenVerifier;
use crate::app::status::Status;
use crate::buffer::digest_checks::DigestChecks;
use crate::buffer::media::CallMedia;
use crate::buffer::readdress::LocalAddr;
use crate::buffer::registrar::Registrar;
use crate::buffer::routing_table::{CallKey, CallState};
use crate::buffer::unregistered::Unregistered;
use crate::config::{BufferConfig, SipConfig};
use crate::handoff::{Mode, RouteTable};
use crate::ids;
use crate::media::bridge::BridgeEvent;
use crate::sip::digest::Nonces;
use crate::sip::transaction::{self, TransactionLayer, TxEvent, TxId};
use crate::sip::{ConnId, Method, SipMessage, Target, TransportKind, validate};

mod agents;
mod api;
mod calls;
mod desk_phones;
mod dialog;
mod offering;
mod quality;
mod upstream;

pub use api::{BoundAddrs, Command, Input, Link, Output};
use calls::{Calls, TxRole};
use upstream::{STATS_EVERY, STATS_SLICES};

/// How long the TURN credentials a call carries stay valid: every Refresh of the allocation
/// is checked against them, so they must outlast the longest call.
const TURN_CREDENTIAL_TTL_S: u64 = 12 * 3600;

/// The buffer server core: registrar, routing table and re-addressing B2BUA, with no sockets
/// and no clock reads (see [`crate::driver::Core`] for the rule its caller follows).
pub struct Buffer {
    id: String,
    config: BufferConfig,
    /// Its note is the agent a hand-off names, carried from the tunnel frame (or the URI,
    /// the wrapper, the route entry) to the INVITE's Request event.
    layer: TransactionLayer<String>,
    registrar: Registrar,
    /// Every call, by Call-ID and by transaction.
    calls: Calls,
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
    /// The media bridge: calls to browser (WSS) agents, and to desk-phone agents when
    /// `[buffer] anchor_desk_phone_media` is on.
    media: Option<CallMedia>,
    /// When the bridged calls' media statistics next go to the distributor.
    stats_at: Instant,
    /// WebSocket connections that talk without having registered, with their deadline.
    unregistered: Unregistered,
    said_unregistered: bool,
    /// Which slice of the calls reports next.
    stats_slice: u64,
    /// What to do, in order; drained by [`crate::driver::Core::poll_output`].
    out: VecDeque<Output>,
    /// Shutting down: new calls get 503.
    draining: bool,
    /// The edge's credential, which the distributor also holds: the key its browsers' TURN
    /// credentials are minted with.
    turn_secret: Option<String>,
    /// BYEs sent by [`Command::HangUpAll`] whose transactions have not ended, so a shutdown
    /// waits for both legs to hear of the end before the process goes.
    hangups: HashSet<TxId>,
    /// Desk phones' REGISTERs whose Digest answer the distributor is checking.
    digest_checks: DigestChecks,
    /// The nonces of this edge's Digest challenges.
    nonces: Nonces,
    /// When the core was made: nonces carry their age from it (the core reads no clock).
    started: Instant,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("id", &self.id)
            .field("calls", &self.calls.len())
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
            Input::Sip { msg, from } => {
                if let (TransportKind::Wss, Some(conn)) = (from.kind, from.conn)
                    && !self.registrar.has_conn(conn)
                {
                    self.unregistered.seen(conn, now);
                }
                self.layer.handle_message(msg, from, now);
            }
            Input::Closed { conn } => {
                self.unregistered.forget(conn);
                self.layer.connection_closed(conn);
                for agent in self.registrar.connection_closed(conn) {
                    self.agent_gone(&agent, now);
                }
            }
            Input::TunnelUp { conn } => self.tunnel_up(conn),
            Input::TunnelDown { conn } => self.tunnel_down(conn, now),
            Input::Frame { conn, frame } => self.on_frame(conn, frame, now),
            Input::Media(input) => {
                if let Some(m) = self.media.as_mut() {
                    m.on_input(input, now);
                }
            }
            Input::CallerPort { call, result } => self.on_caller_port(call, result, now),
            Input::AgentPort { call, result } => self.on_agent_port(call, result, now),
            Input::IceTcp { addr } => {
                if let Some(media) = self.media.as_mut() {
                    media.set_ice_tcp(addr);
                }
            }
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
            self.calls.any_bridged().then_some(self.stats_at),
            self.registrar.next_expiry(),
            self.routes.next_expiry(),
            self.unregistered.next_deadline(),
            self.digest_checks.next_deadline(),
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
        let ws_register_s = config.ws_register_s;
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
            calls: Calls::new(),
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
            media,
            stats_at: now + STATS_EVERY / STATS_SLICES,
            unregistered: Unregistered::new(Duration::from_secs(ws_register_s)),
            said_unregistered: false,
            stats_slice: 0,
            out: VecDeque::new(),
            draining: false,
            hangups: HashSet::new(),
            digest_checks: DigestChecks::new(),
            nonces: Nonces::random(),
            started: now,
            turn_secret: None,
        }
    }

    /// Browser agents' calls carry TURN-over-TLS credentials minted with `secret` (the edge's
    /// credential), for the distributor's public port.
    pub fn with_turn_secret(mut self, secret: Option<String>) -> Buffer {
        self.turn_secret = secret;
        self
    }

    /// The `X-Turn` header value for a call offered to `agent`'s browser: the distributor's
    /// TURN-over-TLS server (its public port, where ICE-TCP also goes) and credentials for
    /// `agent` alone, or none without a media connection to the distributor.
    fn turn_header(&self, agent: &str) -> Option<String> {
        let secret = self.turn_secret.as_deref()?;
        let addr = self.media.as_ref()?.ice_tcp()?;
        let expiry = crate::admin::tokens::now_unix().saturating_add(TURN_CREDENTIAL_TTL_S);
        let credential = crate::turn::credentials::mint(secret.as_bytes(), &self.id, agent, expiry);
        Some(format!(
            "<turns:{addr}?transport=tcp>;username=\"{}\";credential=\"{}\"",
            credential.username, credential.password
        ))
    }

    fn status(&mut self, status: Status) {
        self.out.push_back(Output::Status(status));
    }

    fn respond(&mut self, tx: TxId, request: &SipMessage, code: u16, now: Instant) {
        let resp = request.response(code, Some(&ids::tag()));
        let _ = self.layer.send_response(tx, resp, now);
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
        self.digest_checks_expired(now);
        let expired = self.routes.expire(now);
        if expired > 0 {
            info!(expired, "route entries expired without their INVITE");
        }
        for conn in self.unregistered.expire(now) {
            if self.registrar.has_conn(conn) {
                continue;
            }
            if !self.said_unregistered {
                self.said_unregistered = true;
                warn!(
                    ?conn,
                    "closing WebSockets that talk without registering (said once)"
                );
            } else {
                debug!(?conn, "closing a WebSocket that never registered");
            }
            self.layer.connection_closed(conn);
            self.out.push_back(Output::Close { conn });
        }
    }

    fn on_command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Drain => {
                info!("draining: new calls are refused");
                self.draining = true;
            }
            Command::Calls { reply } => {
                let _ = reply.send((self.calls.len(), self.hangups.len()));
            }
            Command::HangUpAll => {
                for key in self.calls.keys() {
                    match self.calls.get(key).map(|e| e.state) {
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

    /// Runs the layer's events, then sends what it queued.
    fn drive(&mut self, now: Instant) {
        while let Some(ev) = self.media.as_mut().and_then(CallMedia::poll_event) {
            let id = match ev {
                BridgeEvent::OneWay(id, silent) => {
                    self.one_way_audio(CallKey(id), silent, now);
                    continue;
                }
                BridgeEvent::Inactive(id) | BridgeEvent::Failed(id) => id,
                BridgeEvent::Disconnected(id) => {
                    info!(call = id, "the agent's ICE connection lost consent");
                    continue;
                }
            };
            let key = CallKey(id);
            if self.calls.get(key).is_some() {
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
            } => self.on_ack(&msg, &from, now),
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

    /// An answer to a request of ours: the agent's to its INVITE, or the other leg's to a
    /// request relayed there.
    fn on_response(&mut self, tx: TxId, resp: SipMessage, now: Instant) {
        match self.calls.tx(tx) {
            Some((key, &TxRole::AgentInvite { client_tx })) => {
                self.on_agent_invite_response(key, client_tx, resp, now);
            }
            Some((key, TxRole::Forwarded(fwd))) => {
                let fwd = fwd.clone();
                self.on_forwarded_response(key, fwd, resp, now);
            }
            Some((_, TxRole::ClientInvite)) | None => {}
        }
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
        // We are the UAS of every request that reaches us (a B2BUA answers for itself): an
        // option tag in Require that we do not support is refused (RFC 3261 §8.2.2.3), after
        // the method (§8.2.1: one we never serve out of a dialog gets its 405 below).
        let served = in_dialog
            || matches!(
                method,
                Method::Invite | Method::Register | Method::Options | Method::Message
            );
        if served && let Some(refusal) = validate::unsupported(&msg, validate::AS_UAS) {
            let _ = self.layer.send_response(tx, refusal, now);
            return;
        }
        let routed = msg.call_id().and_then(|c| self.calls.lookup(c));
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
                self.on_agent_presence(tx, &msg, &from, now);
            }
            (_, _) if in_dialog => self.respond(tx, &msg, 481, now),
            (Method::Invite, Some(_)) => self.respond(tx, &msg, 482, now),
            _ => self.respond(tx, &msg, 405, now),
        }
    }
}
