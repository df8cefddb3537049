//! The distributor's SIP side: a transaction-stateful, record-routing proxy between callers
//! and the edges' tunnels. Each new call is typed and queued by the ACD ([`crate::acd`]),
//! which this service feeds with what SIP tells it (answers, declines, cancels, hang-ups,
//! agents coming and going) and whose decisions it carries out: offer the INVITE to an agent's
//! edge, withdraw it (CANCEL), ringback to a waiting caller, refuse. In-dialog requests then
//! follow the Record-Route it added.
//!
//! This file holds the core itself and the dispatch of what happens to it; each kind of work
//! has a module of its own: `calls` (what the SIP side holds per call), `offering` (a
//! caller's INVITE until it is answered), `proxy` (in-dialog requests), `edges` and
//! `edge_link` (reaching the edges), `live` (what is shown and told of agents and calls),
//! `api` (what crosses the core's boundary).

mod api;
mod calls;
mod digest_check;
mod edge_link;
mod edges;
mod live;
mod offering;
mod overload;
mod proxy;
mod recording;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Direction;

use proto_tunnel::Frame;
use tokio::sync::broadcast;
use tracing::{info, warn};

pub use self::api::{
    BoundAddrs, Command, Held, Identities, Input, LiveAgent, LiveCall, LiveView, Output, Profiles,
    QueueMedia, SipPasswords,
};
use self::calls::{Calls, Part, TxKind};
use self::edges::{Edge, Handoff};
use self::overload::Overload;
use super::agents::AgentEdges;
use crate::acd::{self, Acd, Classifier, FailCause};
use crate::admin::tokens::{TokenIssuer, TokenVerifier, VerifierSettings, WallClock};
use crate::app::status::Status;
use crate::config::{DistributorConfig, SipConfig};
use crate::ids;
use crate::sip::transaction::{self, TransactionLayer, TxEvent, TxId};
use crate::sip::{ConnId, Method, SipMessage, Target, validate};

/// The distributor core: a record-routing proxy and the ACD, with no sockets and no clock
/// reads (see [`crate::driver::Core`] for the rule its caller follows).
pub struct Distributor {
    identity: String,
    /// Checks the agent tokens that prove edges' claims of agents (the keys of `identity`).
    agent_tokens: TokenVerifier,
    /// Unix time at `now`, for those tokens' expiry.
    clock: WallClock,
    /// Checks the credentials of edges that register over plain SIP.
    edge_issuer: TokenIssuer,
    /// Revoked token ids, sent to each edge as it connects; no claim is proved with one.
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
    /// Agents' SIP passwords, for desk phones' Digest answers.
    sip_passwords: Option<Arc<dyn SipPasswords>>,
    /// Signs the tokens verified Digest answers become.
    agent_issuer: Option<TokenIssuer>,
    /// The live event stream, as JSON lines.
    events: broadcast::Sender<Arc<str>>,
    /// Each call's transactions, while it has any.
    calls: Calls,
    media: Option<QueueMedia>,
    /// The last media statistics (JSON) an edge reported for each call in progress: kept for
    /// as long as the ACD holds the call, which is not as long as its transactions last.
    media_stats: HashMap<String, String>,
    /// Shutting down: new calls get 503.
    draining: bool,
    /// How long the message in hand waited for the core: new calls that waited too long are
    /// refused, the distributor being overloaded.
    overload: Overload,
    /// What to do, in order; drained by [`crate::driver::Core::poll_output`].
    out: std::collections::VecDeque<Output>,
    /// Counted from the ACD's events, read by the admin API's `/metrics`.
    metrics: Arc<crate::metrics::Metrics>,
    /// Each call's record, until it is handed to the writer.
    records: crate::records::Recorder,
}

impl std::fmt::Debug for Distributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributor")
            .field("edges", &self.edges.len())
            .field("agents", &self.agents.len())
            .finish_non_exhaustive()
    }
}

impl crate::driver::Core for Distributor {
    type Input = Input;
    type Output = Output;

    fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Sip {
                msg,
                from,
                received,
            } => {
                self.overload
                    .waited(now.saturating_duration_since(received));
                self.metrics.sip(Direction::In, &msg);
                match self.edge_conn_of(&from) {
                    Some(conn) => self.on_edge_msg(msg, from, conn, now),
                    None => self.layer.handle_message(msg, from, now),
                }
            }
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
        self.records.handle_timeout(now);
        self.drive(now);
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn load(&mut self, busy: f64) {
        self.overload.busy(busy);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [
            self.layer.poll_timeout(),
            self.acd.poll_timeout(),
            self.records.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// The verifier of agent tokens from the identity JSON; one that refuses every token if the
/// JSON cannot be read (then no edge can prove an agent, which the log says).
fn agent_verifier(json: &str) -> TokenVerifier {
    let settings = serde_json::from_str::<VerifierSettings>(json).unwrap_or_else(|e| {
        warn!(error = %e, "unreadable agent token keys: no agent can be signed in");
        VerifierSettings {
            issuer: String::new(),
            audience: String::new(),
            jwks: jsonwebtoken::jwk::JwkSet { keys: Vec::new() },
        }
    });
    TokenVerifier::new(&settings)
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
            sip_passwords,
            agent_issuer,
            clock,
        } = ids;
        let queues = acd::config::queues_with_default(&config.queues, &config.default_queue);
        let classifier = Classifier::new(&config.call_types, &config.default_queue);
        let overload = Overload::new(Duration::from_millis(config.overload_after_ms));
        Distributor {
            agent_tokens: agent_verifier(&identity),
            identity,
            clock,
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
            sip_passwords,
            agent_issuer,
            events: broadcast::channel(live::EVENT_BACKLOG).0,
            calls: Calls::default(),
            media,
            media_stats: HashMap::new(),
            draining: false,
            overload,
            out: Default::default(),
            metrics: Arc::new(crate::metrics::Metrics::new(Duration::from_secs(20))),
            records: crate::records::Recorder::new(clock),
        }
    }

    /// Counts into `metrics` (the admin API's `/metrics` reads them) instead of a registry
    /// of its own.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Distributor {
        self.metrics = metrics;
        self
    }

    /// Builds call records (the default) or not (`[records] enabled = false`).
    pub fn with_records(mut self, on: bool) -> Distributor {
        self.records.set_enabled(on);
        self
    }

    fn status(&mut self, status: Status) {
        match &status {
            Status::AgentUp { edge, .. } => self.metrics.agent_signed_in(edge, true),
            Status::AgentDown { edge, .. } => self.metrics.agent_signed_in(edge, false),
            _ => {}
        }
        self.out.push_back(Output::Status(status));
    }

    fn on_command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Revoke { jti } => {
                info!(%jti, "revoking token on every edge");
                // Taken off here, whatever the edges do with the Revoke.
                for (agent, conn) in self.agents.revoke(&jti) {
                    let edge = self.edge_name(conn);
                    info!(%agent, %edge, "token revoked: agent signed out");
                    self.status(Status::AgentDown {
                        agent: agent.clone(),
                        edge,
                    });
                    self.acd.sign_out(&agent, now);
                }
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
                self.agent_tokens = agent_verifier(&json);
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
            Command::FlushRecords { reply } => {
                // Whatever the ACD still says first, then every record still open.
                self.run_acd(now);
                self.records.finish_all(now);
                self.flush_records();
                self.out.push_back(Output::RecordsFlushed { reply });
            }
        }
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
        self.flush_records();
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
            TxEvent::Timeout { tx } => {
                self.metrics.sip_timeout();
                self.on_failure(tx, FailCause::Timeout, now);
            }
            TxEvent::TransportError { tx } => self.on_failure(tx, FailCause::Transport, now),
            TxEvent::Terminated { tx } => {
                if let Some((call_id, TxKind::Caller)) = self.calls.of_tx(tx) {
                    let call_id = call_id.to_owned();
                    self.stop_early_media(&call_id);
                }
                self.calls.transaction_ended(tx);
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
        let method = msg.method().cloned();
        // Option tags (RFC 3261 §8.2.2.3, §16.3): as a proxy we check Proxy-Require; for what
        // we answer ourselves, Require. A new call is both: we proxy it, but only ever to our
        // own buffer servers, whose UAS supports what we do, so a Require we cannot meet
        // would fail at every agent; refusing it here keeps the ACD from trying each one.
        let checks: &[&[&str]] = match (&method, in_dialog) {
            (Some(Method::Invite), false) => &[validate::AS_PROXY, validate::AS_UAS],
            (_, true) => &[validate::AS_PROXY],
            (Some(Method::Options | Method::Register), false) => &[validate::AS_UAS],
            _ => &[],
        };
        if let Some(tx) = tx
            && let Some(refusal) = checks.iter().find_map(|h| validate::unsupported(&msg, h))
        {
            let _ = self.layer.send_response(tx, refusal, now);
            return;
        }
        match (tx, method) {
            (Some(tx), Some(Method::Invite)) if !in_dialog => self.new_call(tx, msg, from, now),
            (tx, Some(_)) if in_dialog => self.proxy_to_edge(tx, msg, &from, now),
            (Some(tx), Some(Method::Options)) => self.respond(tx, &msg, 200, now),
            (Some(tx), Some(Method::Register)) => self.edge_register(tx, &msg, from, now),
            (Some(tx), Some(_)) => self.respond(tx, &msg, 405, now),
            _ => {}
        }
    }

    fn on_response(&mut self, tx: TxId, mut resp: SipMessage, now: Instant) {
        if resp.status().unwrap_or(500) == 100 {
            return;
        }
        resp.pop_header("Via");
        match self.calls.of_tx(tx) {
            Some((_, TxKind::Offer)) => self.on_offer_response(tx, resp, now),
            Some((_, TxKind::Proxied)) => self.on_proxied_response(tx, resp, now),
            _ => {}
        }
    }

    /// A transaction got no answer (`Timeout`) or lost its connection (`Transport`).
    fn on_failure(&mut self, tx: TxId, cause: FailCause, now: Instant) {
        let Some((call_id, kind)) = self.calls.of_tx(tx) else {
            return;
        };
        if kind == TxKind::Caller {
            // Our answer to the caller was never ACKed: the call is over. The caller's INVITE
            // stays until its transaction's end is reported.
            let call_id = call_id.to_owned();
            warn!(%call_id, ?cause, "caller's leg failed: no ACK for the answer");
            let reason = Some("no ACK for the answer");
            self.records
                .hung_up(&call_id, crate::records::Side::System, reason, now);
            self.acd.call_ended(&call_id, now);
            return;
        }
        match self.calls.transaction_ended(tx) {
            Some((call_id, Part::Offer(offer))) => {
                self.on_offer_failed(&call_id, offer, cause, now);
            }
            Some((_, Part::Proxied(p))) => self.on_proxied_failed(p, now),
            _ => {}
        }
    }
}
