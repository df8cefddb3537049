//! The distributor's Prometheus metrics, as OpenMetrics text at `/metrics` on the admin
//! listener (behind the admin key, which Prometheus sends as a bearer token). Built with the
//! Prometheus project's `prometheus-client`. Every label comes from configuration or from
//! this code (queues, outcomes, the ACD's fixed reasons, agent states), never from a peer:
//! agent ids and Call-IDs are not labels, so the number of series stays bounded whatever
//! callers send.
//!
//! The ACD's events drive them ([`Metrics::observe`], called by the distributor core as it
//! publishes each event): what a supervisor's wallboard shows, in a form a monitoring system
//! can keep and alert on.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::acd::{AcdEvent, AgentState};
use crate::sip::{Method, SipMessage};

/// The media type of the OpenMetrics exposition.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The media type of the Prometheus text format, for clients that do not ask for
/// OpenMetrics.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Wait-time buckets, in seconds: a contact centre's targets sit between 10 and 60 s.
const WAIT_BUCKETS: [f64; 11] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0,
];

/// Post-dial delay buckets, in seconds: ringback should come within tens of milliseconds,
/// an answer within the agent's ring time.
const SETUP_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Every agent state, so each has a series from the start.
const STATES: [AgentState; 7] = [
    AgentState::Offline,
    AgentState::Available,
    AgentState::Reserved,
    AgentState::Ringing,
    AgentState::OnCall,
    AgentState::WrapUp,
    AgentState::Away,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    queue: String,
    outcome: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaitLabels {
    queue: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    direction: &'static str,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    direction: &'static str,
    /// The status code (100-699: bounded whatever a peer sends).
    code: u64,
}

/// Edge ids come from the credentials the operator issues, so they are bounded by the
/// deployment, not by peers.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EdgeLabels {
    edge: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrameLabels {
    edge: String,
    direction: &'static str,
}

/// Which way a SIP message or a tunnel frame went, as the distributor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// A request method as a label: the ones SIP defines, anything else `other`.
fn method_label(method: &Method) -> &'static str {
    method.standard().unwrap_or("other")
}

/// A bridged call's direction: what the `caller` sent, what the `agent` sent.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LegLabels {
    leg: &'static str,
}

type LegHistograms = Family<LegLabels, Histogram, fn() -> Histogram>;

/// Jitter buckets, in seconds (Prometheus's base unit; promtool refuses milliseconds): a
/// jitter buffer hides tens of milliseconds.
const JITTER_BUCKETS: [f64; 9] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2];
/// MOS buckets: 4.3 is G.711 at its best, below 3.6 people complain.
const MOS_BUCKETS: [f64; 8] = [1.5, 2.5, 3.0, 3.6, 4.0, 4.2, 4.3, 4.4];

fn jitter_histogram() -> Histogram {
    Histogram::new(JITTER_BUCKETS)
}

fn mos_histogram() -> Histogram {
    Histogram::new(MOS_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SilentLabels {
    silent: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

type WaitHistograms = Family<WaitLabels, Histogram, fn() -> Histogram>;
type QueueHistograms = Family<QueueLabels, Histogram, fn() -> Histogram>;

/// Talk-time buckets, in seconds: a contact centre's calls last minutes.
const TALK_BUCKETS: [f64; 12] = [
    5.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
];

fn talk_histogram() -> Histogram {
    Histogram::new(TALK_BUCKETS)
}

/// The registry and the metrics in it.
pub struct Metrics {
    /// Off (`[metrics] enabled = false`): nothing is counted and `/metrics` is not served.
    on: bool,
    registry: Registry,
    service_level: Duration,
    calls_queued: Family<QueueLabels, Counter>,
    calls_ended: Family<EndLabels, Counter>,
    answered_in_target: Family<QueueLabels, Counter>,
    wait: WaitHistograms,
    queue_waiting: Family<QueueLabels, Gauge>,
    queue_offering: Family<QueueLabels, Gauge>,
    queue_longest_wait: Family<QueueLabels, Gauge<f64, AtomicU64>>,
    agents: Family<StateLabels, Gauge>,
    /// Each signed-in agent's state, to move it between the `agents` gauges.
    agent_states: Mutex<HashMap<String, AgentState>>,
    sip_requests: Family<RequestLabels, Counter>,
    sip_responses: Family<ResponseLabels, Counter>,
    sip_timeouts: Counter,
    invite_to_ringback: Histogram,
    invite_to_answer: Histogram,
    edges_connected: Gauge,
    edge_connections: Family<EdgeLabels, Counter>,
    tunnel_frames: Family<FrameLabels, Counter>,
    agents_signed_in: Family<EdgeLabels, Gauge>,
    claims_refused: Family<ReasonLabels, Counter>,
    digest_checks: Family<ResultLabels, Counter>,
    overload_refused: Counter,
    offers_ended: Family<ResultLabels, Counter>,
    ring: QueueHistograms,
    talk: QueueHistograms,
    records_written: Counter,
    record_write_failures: Counter,
    records_pending: Gauge,
    records_dropped: Counter,
    one_way_audio: Family<SilentLabels, Counter>,
    media_packets: Family<LegLabels, Counter>,
    media_lost: Family<LegLabels, Counter>,
    media_jitter: LegHistograms,
    media_mos: LegHistograms,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("service_level", &self.service_level)
            .finish_non_exhaustive()
    }
}

fn wait_histogram() -> Histogram {
    Histogram::new(WAIT_BUCKETS)
}

/// How a state reads as a label (as in the live view).
fn state_label(state: AgentState) -> &'static str {
    match state {
        AgentState::Offline => "offline",
        AgentState::Available => "available",
        AgentState::Reserved => "reserved",
        AgentState::Ringing => "ringing",
        AgentState::OnCall => "on-call",
        AgentState::WrapUp => "wrap-up",
        AgentState::Away => "away",
    }
}

fn seconds(ms: u64) -> f64 {
    Duration::from_millis(ms).as_secs_f64()
}

impl Metrics {
    /// `service_level`: the wait within which an answered call counts as answered in target
    /// (the "20" of an 80/20 service level).
    pub fn new(service_level: Duration) -> Metrics {
        let mut registry = Registry::with_prefix("agent_edge");
        let calls_queued = Family::<QueueLabels, Counter>::default();
        registry.register(
            "calls_queued",
            "Calls that entered a queue",
            calls_queued.clone(),
        );
        let calls_ended = Family::<EndLabels, Counter>::default();
        registry.register(
            "calls_ended",
            "Calls the ACD finished with, by queue, outcome (answered, abandoned, timed-out, \
             refused) and reason",
            calls_ended.clone(),
        );
        let answered_in_target = Family::<QueueLabels, Counter>::default();
        registry.register(
            "calls_answered_in_target",
            "Calls answered within the service-level target wait; divided by calls ended \
             (answered, abandoned, timed-out) it is the service level",
            answered_in_target.clone(),
        );
        let wait: WaitHistograms = Family::new_with_constructor(wait_histogram);
        registry.register(
            "call_wait_seconds",
            "How long calls waited, from arrival to their end in the ACD (answered or not)",
            wait.clone(),
        );
        let queue_waiting = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_waiting",
            "Calls waiting in the queue for an agent",
            queue_waiting.clone(),
        );
        let queue_offering = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_offering",
            "Calls of the queue being offered to an agent",
            queue_offering.clone(),
        );
        let queue_longest_wait = Family::<QueueLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "queue_longest_wait_seconds",
            "The longest current wait in the queue",
            queue_longest_wait.clone(),
        );
        let agents = Family::<StateLabels, Gauge>::default();
        registry.register("agents", "Signed-in agents by state", agents.clone());
        for state in STATES {
            let _ = agents.get_or_create(&StateLabels {
                state: state_label(state),
            });
        }
        let target = Gauge::<f64, AtomicU64>::default();
        target.set(service_level.as_secs_f64());
        registry.register(
            "service_level_target_seconds",
            "The configured service-level target wait ([metrics] service_level_s)",
            target,
        );
        let sip_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "sip_requests",
            "SIP requests the distributor received (in) and sent (out, retransmissions \
             included), by method",
            sip_requests.clone(),
        );
        let sip_responses = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "sip_responses",
            "SIP responses the distributor received and sent, by status code",
            sip_responses.clone(),
        );
        let sip_timeouts = Counter::default();
        registry.register(
            "sip_transaction_timeouts",
            "Client transactions of the distributor that got no final answer in time",
            sip_timeouts.clone(),
        );
        let invite_to_ringback = Histogram::new(SETUP_BUCKETS);
        registry.register(
            "invite_to_ringback_seconds",
            "From a caller's INVITE to the ringback (180, or 183 with the queue's \
             announcement) the distributor sends it",
            invite_to_ringback.clone(),
        );
        let invite_to_answer = Histogram::new(SETUP_BUCKETS);
        registry.register(
            "invite_to_answer_seconds",
            "From a caller's INVITE to the agent's 200 passed on to it",
            invite_to_answer.clone(),
        );
        let edges_connected = Gauge::default();
        registry.register(
            "edges_connected",
            "Buffer servers (edges) connected now, over a tunnel or plain SIP",
            edges_connected.clone(),
        );
        let edge_connections = Family::<EdgeLabels, Counter>::default();
        registry.register(
            "edge_connections",
            "Times each edge connected: more than once is a reconnect",
            edge_connections.clone(),
        );
        let tunnel_frames = Family::<FrameLabels, Counter>::default();
        registry.register(
            "tunnel_frames",
            "Tunnel frames from (in) and to (out) each edge",
            tunnel_frames.clone(),
        );
        let agents_signed_in = Family::<EdgeLabels, Gauge>::default();
        registry.register(
            "agents_signed_in",
            "Agents signed in through each edge (their registrations proved with their tokens)",
            agents_signed_in.clone(),
        );
        let claims_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "agent_claims_refused",
            "An edge's claims of an agent refused, by why (the agent's token: none, forged, \
             expired, revoked, another agent's...)",
            claims_refused.clone(),
        );
        let digest_checks = Family::<ResultLabels, Counter>::default();
        registry.register(
            "sip_digest_checks",
            "Desk phones' SIP Digest answers checked for the edges, by result (verified, \
             wrong-password, no-password, revoked, malformed...)",
            digest_checks.clone(),
        );
        let overload_refused = Counter::default();
        registry.register(
            "calls_refused_overloaded",
            "New calls refused with 503 because their INVITE waited longer than \
             [distributor] overload_after_ms for the distributor",
            overload_refused.clone(),
        );
        let offers_ended = Family::<ResultLabels, Counter>::default();
        registry.register(
            "offers_ended",
            "Offers of calls to agents, by how they ended (answered, declined, no-answer, \
             failed, unacceptable, caller-hung-up, signed-out)",
            offers_ended.clone(),
        );
        let ring: QueueHistograms = Family::new_with_constructor(wait_histogram);
        registry.register(
            "call_ring_seconds",
            "How long the answering agent's offer rang before the answer, per answered call",
            ring.clone(),
        );
        let talk: QueueHistograms = Family::new_with_constructor(talk_histogram);
        registry.register(
            "call_talk_seconds",
            "From the answer to the hang-up, per answered call",
            talk.clone(),
        );
        let records_written = Counter::default();
        registry.register(
            "call_records_written",
            "Call records written to the store",
            records_written.clone(),
        );
        let record_write_failures = Counter::default();
        registry.register(
            "call_record_write_failures",
            "Attempts to write call records that failed (the records are kept and retried)",
            record_write_failures.clone(),
        );
        let records_pending = Gauge::default();
        registry.register(
            "call_records_pending",
            "Call records waiting to be written",
            records_pending.clone(),
        );
        let records_dropped = Counter::default();
        registry.register(
            "call_records_dropped",
            "Call records given up: more waiting than [records] max_pending while the store \
             failed",
            records_dropped.clone(),
        );
        let one_way_audio = Family::<SilentLabels, Counter>::default();
        registry.register(
            "one_way_audio",
            "Bridged calls flagged with one-way audio, by the side that went silent (caller: \
             the agent heard nothing; agent: the caller heard nothing)",
            one_way_audio.clone(),
        );
        let media_packets = Family::<LegLabels, Counter>::default();
        registry.register(
            "call_media_packets",
            "RTP packets the bridge received in ended calls whose media it carried, by leg (caller: from \
             the caller; agent: from the agent)",
            media_packets.clone(),
        );
        let media_lost = Family::<LegLabels, Counter>::default();
        registry.register(
            "call_media_lost_packets",
            "RTP packets missing (by sequence number) in ended calls whose media the bridge carried, by leg",
            media_lost.clone(),
        );
        let media_jitter: LegHistograms = Family::new_with_constructor(jitter_histogram);
        registry.register(
            "call_media_jitter_seconds",
            "Interarrival jitter at the end of each call whose media the bridge carried, by leg",
            media_jitter.clone(),
        );
        let media_mos: LegHistograms = Family::new_with_constructor(mos_histogram);
        registry.register(
            "call_media_mos",
            "The E-model MOS estimate of each call whose media the bridge carried (as in its record), by leg",
            media_mos.clone(),
        );
        Metrics {
            on: true,
            registry,
            one_way_audio,
            media_packets,
            media_lost,
            media_jitter,
            media_mos,
            offers_ended,
            ring,
            talk,
            records_written,
            record_write_failures,
            records_pending,
            records_dropped,
            service_level,
            agents_signed_in,
            claims_refused,
            digest_checks,
            overload_refused,
            sip_requests,
            sip_responses,
            sip_timeouts,
            invite_to_ringback,
            invite_to_answer,
            edges_connected,
            edge_connections,
            tunnel_frames,
            calls_queued,
            calls_ended,
            answered_in_target,
            wait,
            queue_waiting,
            queue_offering,
            queue_longest_wait,
            agents,
            agent_states: Mutex::new(HashMap::new()),
        }
    }

    /// Metrics that count nothing, for a system configured without them.
    pub fn disabled(service_level: Duration) -> Metrics {
        Metrics {
            on: false,
            ..Metrics::new(service_level)
        }
    }

    /// Whether anything is counted (and `/metrics` served).
    pub fn enabled(&self) -> bool {
        self.on
    }

    /// The service level's target wait.
    pub fn service_level(&self) -> Duration {
        self.service_level
    }

    /// Counts one event of the ACD.
    pub fn observe(&self, event: &AcdEvent) {
        if !self.on {
            return;
        }
        match event {
            AcdEvent::CallQueued { queue, .. } => {
                let queue = queue.clone();
                self.calls_queued
                    .get_or_create(&QueueLabels { queue })
                    .inc();
            }
            AcdEvent::CallEnded {
                queue,
                outcome,
                reason,
                waited_ms,
                ..
            } => {
                let outcome = outcome.label();
                let end = EndLabels {
                    queue: queue.clone(),
                    outcome,
                    reason: reason.clone(),
                };
                self.calls_ended.get_or_create(&end).inc();
                let wait = WaitLabels {
                    queue: queue.clone(),
                    outcome,
                };
                self.wait.get_or_create(&wait).observe(seconds(*waited_ms));
                if outcome == "answered" && Duration::from_millis(*waited_ms) <= self.service_level
                {
                    let queue = queue.clone();
                    self.answered_in_target
                        .get_or_create(&QueueLabels { queue })
                        .inc();
                }
            }
            AcdEvent::Queue(view) => {
                let labels = QueueLabels {
                    queue: view.queue.clone(),
                };
                let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
                self.queue_waiting
                    .get_or_create(&labels)
                    .set(count(view.depth));
                self.queue_offering
                    .get_or_create(&labels)
                    .set(count(view.offering));
                self.queue_longest_wait
                    .get_or_create(&labels)
                    .set(seconds(view.longest_wait_ms));
            }
            AcdEvent::Agent(view) => self.agent_state(&view.agent, view.state),
            AcdEvent::CallOffered { .. } => {}
            AcdEvent::OfferEnded { result, .. } => {
                let result = result.label();
                self.offers_ended
                    .get_or_create(&ResultLabels { result })
                    .inc();
            }
        }
    }

    /// An answered call's record is complete: how long it rang and how long it was talked.
    pub fn answered_call(&self, queue: &str, ring: Duration, talk: Duration) {
        if !self.on {
            return;
        }
        let labels = QueueLabels {
            queue: queue.to_owned(),
        };
        self.ring.get_or_create(&labels).observe(ring.as_secs_f64());
        self.talk.get_or_create(&labels).observe(talk.as_secs_f64());
    }

    /// A bridged call's media, as its record sums it up at the end.
    pub fn call_media(&self, media: &crate::records::record::MediaSummary) {
        if !self.on {
            return;
        }
        for (leg, l) in [("caller", &media.caller), ("agent", &media.agent)] {
            let labels = LegLabels { leg };
            self.media_packets.get_or_create(&labels).inc_by(l.packets);
            self.media_lost.get_or_create(&labels).inc_by(l.lost);
            self.media_jitter
                .get_or_create(&labels)
                .observe(f64::from(l.jitter_ms) / 1000.0);
            if let Some(mos) = l.mos {
                self.media_mos.get_or_create(&labels).observe(mos);
            }
        }
    }

    /// A call's audio went one-way (`caller-silent` or `agent-silent`).
    pub fn one_way_audio(&self, which: &str) {
        if !self.on {
            return;
        }
        let silent = if which == "caller-silent" {
            "caller"
        } else {
            "agent"
        };
        self.one_way_audio
            .get_or_create(&SilentLabels { silent })
            .inc();
    }

    /// The record writer's counts: `written` and `failed` just now, `pending` and
    /// `dropped` as they stand.
    pub fn records(&self, written: u64, failed: bool, pending: usize, dropped: u64) {
        if !self.on {
            return;
        }
        self.records_written.inc_by(written);
        if failed {
            self.record_write_failures.inc();
        }
        self.records_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.records_dropped.inc_by(dropped);
    }

    /// A SIP message that came in or went out.
    pub fn sip(&self, direction: Direction, msg: &SipMessage) {
        if !self.on {
            return;
        }
        let direction = direction.label();
        match (msg.method(), msg.status()) {
            (Some(method), _) => {
                let method = method_label(method);
                self.sip_requests
                    .get_or_create(&RequestLabels { direction, method })
                    .inc();
            }
            (None, Some(code)) => {
                let code = u64::from(code);
                self.sip_responses
                    .get_or_create(&ResponseLabels { direction, code })
                    .inc();
            }
            (None, None) => {}
        }
    }

    /// An outgoing message as the transaction layer wrote it: counted by its start line
    /// (`SIP/2.0 <code>` or `<METHOD> `), so nothing is parsed again.
    pub fn sip_sent(&self, bytes: &[u8]) {
        if !self.on {
            return;
        }
        let direction = Direction::Out.label();
        let line = bytes.split(|b| *b == b' ').next().unwrap_or_default();
        if line.is_empty() {
            return;
        }
        if line == b"SIP/2.0" {
            let code = bytes
                .get(8..11)
                .and_then(|c| std::str::from_utf8(c).ok())
                .and_then(|c| c.parse::<u64>().ok());
            if let Some(code) = code {
                self.sip_responses
                    .get_or_create(&ResponseLabels { direction, code })
                    .inc();
            }
        } else if let Ok(method) = std::str::from_utf8(line).map(Method::parse) {
            let method = method.map_or("other", |m| method_label(&m));
            self.sip_requests
                .get_or_create(&RequestLabels { direction, method })
                .inc();
        }
    }

    pub fn sip_timeout(&self) {
        if !self.on {
            return;
        }
        self.sip_timeouts.inc();
    }

    /// The caller got its ringback `after` its INVITE arrived.
    pub fn ringback(&self, after: Duration) {
        if !self.on {
            return;
        }
        self.invite_to_ringback.observe(after.as_secs_f64());
    }

    /// The agent's answer reached the caller `after` its INVITE arrived.
    pub fn answered(&self, after: Duration) {
        if !self.on {
            return;
        }
        self.invite_to_answer.observe(after.as_secs_f64());
    }

    pub fn edge_up(&self, edge: &str) {
        if !self.on {
            return;
        }
        self.edges_connected.inc();
        let edge = edge.to_owned();
        self.edge_connections
            .get_or_create(&EdgeLabels { edge })
            .inc();
    }

    pub fn edge_down(&self) {
        if !self.on {
            return;
        }
        self.edges_connected.dec();
    }

    /// An agent signed in through `edge` (`true`) or left it.
    pub fn agent_signed_in(&self, edge: &str, up: bool) {
        if !self.on {
            return;
        }
        let gauge = self.agents_signed_in.get_or_create(&EdgeLabels {
            edge: edge.to_owned(),
        });
        if up {
            gauge.inc();
        } else {
            gauge.dec();
        }
    }

    /// An edge's claim of an agent was refused, for `reason` (a [`ClaimError`] label).
    ///
    /// [`ClaimError`]: crate::distributor::agents::ClaimError
    pub fn claim_refused(&self, reason: &'static str) {
        if !self.on {
            return;
        }
        self.claims_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A desk phone's Digest answer checked: `result` is `verified` or why it was refused.
    pub fn digest_check(&self, result: &'static str) {
        if !self.on {
            return;
        }
        self.digest_checks
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// A new call refused because the distributor is overloaded.
    pub fn overload_refused(&self) {
        if self.on {
            self.overload_refused.inc();
        }
    }

    pub fn tunnel_frame(&self, edge: &str, direction: Direction) {
        if !self.on {
            return;
        }
        let labels = FrameLabels {
            edge: edge.to_owned(),
            direction: direction.label(),
        };
        self.tunnel_frames.get_or_create(&labels).inc();
    }

    /// Moves `agent` from the state it was counted in to `state` (offline: no longer
    /// counted).
    fn agent_state(&self, agent: &str, state: AgentState) {
        let mut states = self
            .agent_states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = if state == AgentState::Offline {
            states.remove(agent)
        } else {
            states.insert(agent.to_owned(), state)
        };
        if let Some(before) = before {
            self.agents
                .get_or_create(&StateLabels {
                    state: state_label(before),
                })
                .dec();
        }
        if state != AgentState::Offline {
            self.agents
                .get_or_create(&StateLabels {
                    state: state_label(state),
                })
                .inc();
        }
    }

    /// The exposition, in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The same in the Prometheus text format 0.0.4, for what does not ask for OpenMetrics
    /// (`promtool check metrics`, older scrapers): there a counter's family carries its
    /// `_total` in HELP and TYPE, and there is no `# EOF` or `# UNIT`. The samples are the
    /// same.
    pub fn encode_prometheus_text(&self) -> Result<String, std::fmt::Error> {
        Ok(to_prometheus_text(&self.encode()?))
    }
}

fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 16 * counters.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let (name, rest) = line.strip_prefix(prefix)?.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {rest}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acd::{AgentView, Outcome, QueueView};

    fn agent(agent: &str, state: AgentState) -> AcdEvent {
        AcdEvent::Agent(AgentView {
            agent: agent.into(),
            state,
            reason: None,
            calls: 0,
            wrap_up_left_ms: None,
        })
    }

    fn ended(outcome: Outcome, reason: &str, waited_ms: u64) -> AcdEvent {
        AcdEvent::CallEnded {
            call: "c".into(),
            queue: "sales".into(),
            outcome,
            reason: reason.into(),
            agent: None,
            waited_ms,
        }
    }

    fn line<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(series))
    }

    #[test]
    fn sent_sip_is_counted_by_its_start_line() {
        let m = Metrics::new(Duration::from_secs(20));
        m.sip_sent(b"SIP/2.0 487 Request Terminated\r\nVia: x\r\n\r\n");
        m.sip_sent(b"INVITE sip:a@b SIP/2.0\r\n\r\n");
        m.sip_sent(b"FROB sip:a@b SIP/2.0\r\n\r\n");
        m.sip_sent(b"SIP/2.0 4");
        m.sip_sent(b"");
        let text = m.encode().unwrap();
        for series in [
            r#"agent_edge_sip_responses_total{direction="out",code="487"} 1"#,
            r#"agent_edge_sip_requests_total{direction="out",method="INVITE"} 1"#,
            r#"agent_edge_sip_requests_total{direction="out",method="other"} 1"#,
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
        assert_eq!(
            text.matches("agent_edge_sip_responses_total{").count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn calls_waits_queues_and_agents_are_counted() {
        let m = Metrics::new(Duration::from_secs(20));
        m.observe(&ended(Outcome::Answered, "answered", 5_000));
        m.observe(&ended(Outcome::Answered, "answered", 30_000));
        m.observe(&ended(Outcome::Abandoned, "caller hung up", 2_000));
        m.observe(&AcdEvent::Queue(QueueView {
            queue: "sales".into(),
            depth: 3,
            offering: 1,
            longest_wait_ms: 12_500,
        }));
        m.observe(&agent("alice", AgentState::Available));
        m.observe(&agent("bob", AgentState::Available));
        m.observe(&agent("alice", AgentState::OnCall));
        m.observe(&agent("bob", AgentState::Offline));
        let text = m.encode().unwrap();
        let value = |series: &str| {
            line(&text, series)
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
                .to_owned()
        };
        assert_eq!(
            value(
                r#"agent_edge_calls_ended_total{queue="sales",outcome="answered",reason="answered"}"#
            ),
            "2"
        );
        assert_eq!(
            value(r#"agent_edge_calls_answered_in_target_total{queue="sales"}"#),
            "1"
        );
        assert_eq!(value(r#"agent_edge_queue_waiting{queue="sales"}"#), "3");
        assert_eq!(
            value(r#"agent_edge_queue_longest_wait_seconds{queue="sales"}"#),
            "12.5"
        );
        assert_eq!(value(r#"agent_edge_agents{state="on-call"}"#), "1");
        assert_eq!(value(r#"agent_edge_agents{state="available"}"#), "0");
        assert_eq!(
            value(r#"agent_edge_call_wait_seconds_count{queue="sales",outcome="answered"}"#),
            "2"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        let old = m.encode_prometheus_text().unwrap();
        assert!(
            old.contains("# TYPE agent_edge_calls_ended_total counter\n")
                && old.contains("# HELP agent_edge_calls_ended_total ")
                && old.contains("# TYPE agent_edge_queue_waiting gauge\n")
                && !old.contains("# EOF"),
            "{old}"
        );
    }
}
