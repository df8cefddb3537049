//! The ACD: one owner of every agent's and queue's state. Events and the time come in as
//! method calls; decisions (offer this call to that agent, withdraw an offer, refuse a call)
//! and published state changes come out through `poll_*`, as the SIP layer's transactions do.
//!
//! The rules it keeps, whatever order events arrive in:
//! - an agent holds at most one offer at a time, and only while it is signed in, available,
//!   out of wrap-up, below its call limit and has the queue's skills;
//! - a call waits only while some signed-in agent could take it, and ends exactly once:
//!   answered, abandoned, timed out or refused, with the reason;
//! - an offer not answered within the queue's ring time is withdrawn, the agent made away,
//!   and the call goes back to the head of its queue;
//! - a declined offer goes to the next agent (the one who declined is not asked again for
//!   that call); a failed one (the agent unreachable) makes the agent away as well.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::call_index::{CallIndex, Entry, Waiting};
use super::config::{QueueConfig, Strategy};
use super::rules::CallType;

/// How long a withdrawn offer may take to end (the edge's 487) before the call is offered
/// elsewhere anyway.
pub const WITHDRAW_GRACE: Duration = Duration::from_secs(5);

/// What the admin store says about an agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// Skill → level (1-100).
    pub skills: BTreeMap<String, u8>,
    /// Calls at once (at least 1).
    pub max_calls: u32,
}

/// What the agent (or a supervisor) says about being ready for calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    Available,
    Away { reason: String },
}

/// How an offer ended, as the SIP side saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferEnd {
    /// 2xx from the agent.
    Answered,
    /// A final failure from the agent's side (busy, decline, 487 after a withdrawal).
    Declined { status: u16 },
    /// No answer from the agent's side, for this cause: the agent is made away.
    Failed { cause: FailCause },
    /// The call itself cannot be taken (488/606: no media in common): no other agent could
    /// take it either, so the caller gets this status and the agent is not blamed.
    Unacceptable { status: u16 },
}

/// Why an offer got no answer: said in the log and in the away reason the agent is given,
/// so an operator can tell a dead edge from a phone that never rang.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailCause {
    /// The agent's edge was not connected when the offer was made.
    EdgeGone,
    /// No final answer in time (SIP timer B or C).
    Timeout,
    /// The connection to the edge failed under the offer.
    Transport,
    /// The edge answered with a failure that is neither a decline nor 488/606 (404: the agent
    /// is not registered there; 5xx: the edge is in trouble).
    Status(u16),
}

impl FailCause {
    /// The away reason the agent gets.
    pub fn reason(self) -> String {
        match self {
            FailCause::EdgeGone => "unreachable: edge not connected".into(),
            FailCause::Timeout => "unreachable: no answer".into(),
            FailCause::Transport => "unreachable: connection failed".into(),
            FailCause::Status(code) => format!("unreachable: {code} from the edge"),
        }
    }
}

/// What the distributor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send the call's INVITE to this agent.
    Offer { call: String, agent: String },
    /// Cancel the offer to this agent (ring-no-answer, or the agent signed out).
    Withdraw { call: String, agent: String },
    /// The call waits: tell the caller (ringback).
    Queued { call: String },
    /// Answer the caller with this final status.
    Refuse {
        call: String,
        status: u16,
        reason: String,
    },
}

/// How a call left the ACD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Answered,
    Abandoned,
    TimedOut,
    Refused,
}

impl Outcome {
    /// As the event stream, the metrics and the call records spell it.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Abandoned => "abandoned",
            Outcome::TimedOut => "timed-out",
            Outcome::Refused => "refused",
        }
    }
}

/// How an offer ended, for the call's record and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OfferResult {
    Answered,
    /// Busy or declined at the agent's side.
    Declined,
    /// Rang for the queue's ring timeout.
    NoAnswer,
    /// The agent's side failed to answer at all (timeout, lost connection, an error status).
    Failed,
    /// No media in common (488, 606): the call was refused.
    Unacceptable,
    CallerHungUp,
    /// The agent signed out (or its edge went) while it rang.
    SignedOut,
}

impl OfferResult {
    pub fn label(self) -> &'static str {
        match self {
            OfferResult::Answered => "answered",
            OfferResult::Declined => "declined",
            OfferResult::NoAnswer => "no-answer",
            OfferResult::Failed => "failed",
            OfferResult::Unacceptable => "unacceptable",
            OfferResult::CallerHungUp => "caller-hung-up",
            OfferResult::SignedOut => "signed-out",
        }
    }
}

/// An agent's state as supervisors see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    Offline,
    Available,
    /// Chosen for a call; the INVITE is on its way.
    Reserved,
    /// The agent's phone or page rings.
    Ringing,
    OnCall,
    WrapUp,
    Away,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentView {
    pub agent: String,
    pub state: AgentState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub calls: usize,
    /// In wrap-up: the time left, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrap_up_left_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueView {
    pub queue: String,
    /// Calls waiting for an agent.
    pub depth: usize,
    /// Calls being offered to an agent.
    pub offering: usize,
    /// The longest current wait, in milliseconds.
    pub longest_wait_ms: u64,
}

/// A state change, for the live event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum AcdEvent {
    Agent(AgentView),
    Queue(QueueView),
    CallQueued {
        call: String,
        call_type: String,
        queue: String,
        priority: i32,
    },
    CallOffered {
        call: String,
        agent: String,
    },
    /// What became of an offer, once the ACD is done with it. An answer that races the
    /// withdrawal of an offer that rang out stands, so `no-answer` may be followed by
    /// `answered` for the same offer.
    OfferEnded {
        call: String,
        agent: String,
        result: OfferResult,
    },
    CallEnded {
        call: String,
        queue: String,
        outcome: Outcome,
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        waited_ms: u64,
    },
}

/// A call the ACD still holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallView {
    pub call: String,
    pub call_type: String,
    pub queue: String,
    /// `queued`, `offered` or `connected`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Since the call arrived, in milliseconds.
    pub waited_ms: u64,
}

/// Everything at once, for a new subscriber or the live view.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub agents: Vec<AgentView>,
    pub queues: Vec<QueueView>,
    pub calls: Vec<CallView>,
}

#[derive(Debug)]
struct Agent {
    profile: Profile,
    presence: Presence,
    /// The call offered to the agent, if any (at most one).
    offer: Option<String>,
    /// Calls the agent answered and has not finished.
    calls: BTreeSet<String>,
    wrap_until: Option<Instant>,
    idle_since: Instant,
    answered: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CallState {
    Queued,
    Offered {
        agent: String,
        until: Instant,
        ringing: bool,
    },
    /// The offer is being cancelled; the call waits for it to end before going elsewhere.
    /// `held`: the agent is still signed in (and so holds the offer); after a sign-out the
    /// same agent may sign in again and take other calls meanwhile.
    Withdrawing {
        agent: String,
        until: Instant,
        held: bool,
    },
    /// Answered. `counted`: against the agent's current session (not when the answer came
    /// from a registration that had signed out meanwhile).
    Connected {
        agent: String,
        counted: bool,
    },
}

#[derive(Debug)]
struct Call {
    call_type: CallType,
    queue: String,
    state: CallState,
    arrived: Instant,
    /// When the call entered its current queue (its wait there counts from here).
    queued_at: Instant,
    /// Place in line among calls of the same priority: lower goes first.
    order: i64,
    /// Agents who declined this call.
    declined: BTreeSet<String>,
    /// Whether the caller was told the call waits.
    told_queued: bool,
}

/// The ACD core. See the module documentation for the rules it keeps.
#[derive(Debug)]
pub struct Acd {
    queues: BTreeMap<String, QueueConfig>,
    agents: BTreeMap<String, Agent>,
    calls: BTreeMap<String, Call>,
    /// Last agent each round-robin queue chose.
    round_robin: BTreeMap<String, String>,
    next_order: i64,
    next_head: i64,
    decisions: VecDeque<Decision>,
    events: VecDeque<AcdEvent>,
    dirty_agents: BTreeSet<String>,
    dirty_queues: BTreeSet<String>,
    /// Agents in wrap-up, by when it ends: the timer looks at the first, not at every agent
    /// signed in.
    wrapping: BTreeSet<(Instant, String)>,
    /// Calls not yet connected (queued, offered, being withdrawn): the only ones with timers
    /// or waiting for an agent, filed by deadline, rank and queue. Connected calls are most
    /// calls at any time, and every event would otherwise look at each of them.
    index: CallIndex,
    /// An agent signed out or its skills changed: every waiting call must be checked for
    /// someone who could still take it.
    recheck_all: bool,
    /// Agents who could take a call now but for skills and declines (available, out of
    /// wrap-up, no offer, room under their call limit), longest idle first, with the key each is filed
    /// under. Picking an agent walks these, not every agent signed in: with thousands
    /// signed in and calls waiting, a walk of all of them per call per event was the
    /// distributor's limit.
    ready: BTreeSet<(Instant, String)>,
    ready_key: BTreeMap<String, Instant>,
}

impl Acd {
    /// `queues` must be validated (see [`super::config::validate`]) and include every queue a
    /// call type names.
    pub fn new(queues: Vec<QueueConfig>) -> Acd {
        Acd {
            queues: queues.into_iter().map(|q| (q.name.clone(), q)).collect(),
            agents: BTreeMap::new(),
            calls: BTreeMap::new(),
            round_robin: BTreeMap::new(),
            next_order: 0,
            next_head: 0,
            decisions: VecDeque::new(),
            events: VecDeque::new(),
            dirty_agents: BTreeSet::new(),
            dirty_queues: BTreeSet::new(),
            wrapping: BTreeSet::new(),
            index: CallIndex::default(),
            recheck_all: false,
            ready: BTreeSet::new(),
            ready_key: BTreeMap::new(),
        }
    }

    // ---- inputs -------------------------------------------------------------------------

    /// An agent signed in (or its profile changed while signed in). A new sign-in starts
    /// available.
    pub fn sign_in(&mut self, agent: &str, profile: Profile, now: Instant) {
        let profile = Profile {
            max_calls: profile.max_calls.max(1),
            ..profile
        };
        match self.agents.get_mut(agent) {
            Some(a) => {
                self.recheck_all |= a.profile != profile;
                a.profile = profile;
            }
            None => {
                self.agents.insert(
                    agent.to_owned(),
                    Agent {
                        profile,
                        presence: Presence::Available,
                        offer: None,
                        calls: BTreeSet::new(),
                        wrap_until: None,
                        idle_since: now,
                        answered: 0,
                    },
                );
            }
        }
        self.dirty_agents.insert(agent.to_owned());
        self.settle(now);
    }

    /// The agent signed out or its edge went away. A call offered to it goes elsewhere.
    pub fn sign_out(&mut self, agent: &str, now: Instant) {
        let Some(mut a) = self.agents.remove(agent) else {
            return;
        };
        set_wrap_up(&mut self.wrapping, agent, &mut a, None);
        self.recheck_all = true;
        if let Some(call) = a.offer {
            // Not when its offer is already being withdrawn (it rang out): that one has ended.
            if matches!(self.calls.get(&call), Some(c) if matches!(c.state, CallState::Offered { .. }))
            {
                self.offer_over(&call, agent, OfferResult::SignedOut);
            }
            self.withdraw(&call, false, now);
        }
        // Answered calls continue on the SIP side; they no longer count against the agent,
        // who may sign in again before they end.
        for call in &a.calls {
            if let Some(Call {
                state: CallState::Connected { counted, .. },
                ..
            }) = self.calls.get_mut(call)
            {
                *counted = false;
            }
        }
        self.dirty_agents.insert(agent.to_owned());
        self.settle(now);
    }

    pub fn set_presence(&mut self, agent: &str, presence: Presence, now: Instant) {
        let Some(a) = self.agents.get_mut(agent) else {
            return;
        };
        if presence == Presence::Available {
            // Ready again: wrap-up, if any, is over.
            set_wrap_up(&mut self.wrapping, agent, a, None);
            if a.presence != Presence::Available && a.calls.is_empty() {
                a.idle_since = now;
            }
        }
        a.presence = presence;
        self.dirty_agents.insert(agent.to_owned());
        self.settle(now);
    }

    /// A new call of this type. Its decision (offer, queued or refused) follows at once.
    pub fn call_arrived(&mut self, call: &str, call_type: CallType, now: Instant) {
        if self.calls.contains_key(call) {
            return;
        }
        let queue = call_type.queue.clone();
        self.events.push_back(AcdEvent::CallQueued {
            call: call.to_owned(),
            call_type: call_type.name.clone(),
            queue: queue.clone(),
            priority: call_type.priority,
        });
        self.next_order += 1;
        self.calls.insert(
            call.to_owned(),
            Call {
                call_type,
                queue: queue.clone(),
                state: CallState::Queued,
                arrived: now,
                queued_at: now,
                order: self.next_order,
                declined: BTreeSet::new(),
                told_queued: false,
            },
        );
        self.reindex(call);
        self.dirty_queues.insert(queue.clone());
        let waiting = self.index.waiting_in(&queue);
        let max_length = self.queues.get(&queue).map_or(0, |q| q.max_length);
        if waiting > max_length {
            let status = self.queues.get(&queue).map_or(486, |q| q.full_status);
            self.refuse(call, status, Outcome::Refused, "queue full", now);
        }
        self.settle(now);
    }

    /// The caller hung up (CANCEL, or BYE before the answer) — or any end of a call not yet
    /// answered. An answered call is ended instead.
    pub fn call_abandoned(&mut self, call: &str, now: Instant) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        match c.state.clone() {
            CallState::Connected { .. } => return self.call_ended(call, now),
            CallState::Offered { agent, .. } => {
                self.offer_over(call, &agent, OfferResult::CallerHungUp);
                self.clear_offer(&agent, call);
            }
            CallState::Withdrawing { agent, .. } => self.clear_offer(&agent, call),
            CallState::Queued => {}
        }
        self.finish(call, Outcome::Abandoned, "caller hung up", None, now);
        self.settle(now);
    }

    /// The distributor is shutting down: every call still waiting in a queue (not offered,
    /// not connected) is refused with `status`, so no caller is left ringing into a process
    /// that is about to close. Offered and connected calls are left to end on their own.
    pub fn refuse_waiting(&mut self, status: u16, reason: &str, now: Instant) {
        let waiting: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| c.state == CallState::Queued)
            .map(|(id, _)| id.clone())
            .collect();
        for call in waiting {
            self.refuse(&call, status, Outcome::Refused, reason, now);
        }
        self.settle(now);
    }

    /// The agent's side rings (a 180 from its edge).
    pub fn offer_ringing(&mut self, call: &str, agent: &str, now: Instant) {
        if let Some(Call {
            state: CallState::Offered {
                agent: a, ringing, ..
            },
            ..
        }) = self.calls.get_mut(call)
            && a == agent
            && !*ringing
        {
            *ringing = true;
            self.dirty_agents.insert(agent.to_owned());
        }
        self.settle(now);
    }

    /// The offer of `call` to `agent` ended. Reports about offers the ACD has already
    /// moved on from are ignored, except an answer racing a withdrawal, which stands.
    pub fn offer_ended(&mut self, call: &str, agent: &str, end: OfferEnd, now: Instant) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        match (c.state.clone(), end) {
            (CallState::Offered { agent: a, .. }, OfferEnd::Answered)
            | (
                CallState::Withdrawing {
                    agent: a,
                    held: true,
                    ..
                },
                OfferEnd::Answered,
            ) if a == agent => {
                self.connect(call, agent, true, now);
            }
            // Answered from a registration that has since signed out: the call stands, but
            // it is not counted against the agent's new session.
            (CallState::Withdrawing { agent: a, .. }, OfferEnd::Answered) if a == agent => {
                self.connect(call, agent, false, now);
            }
            (CallState::Offered { agent: a, .. }, OfferEnd::Declined { status }) if a == agent => {
                self.offer_over(call, agent, OfferResult::Declined);
                self.clear_offer(agent, call);
                if let Some(c) = self.calls.get_mut(call) {
                    c.declined.insert(agent.to_owned());
                }
                tracing::debug!(call, agent, status, "offer declined");
                self.requeue_at_head(call);
            }
            (CallState::Offered { agent: a, .. }, OfferEnd::Unacceptable { status })
                if a == agent =>
            {
                self.offer_over(call, agent, OfferResult::Unacceptable);
                self.clear_offer(agent, call);
                self.refuse(call, status, Outcome::Refused, "not acceptable here", now);
            }
            (CallState::Offered { agent: a, .. }, OfferEnd::Failed { cause }) if a == agent => {
                tracing::info!(call, agent, ?cause, "offer failed: the agent is made away");
                self.offer_over(call, agent, OfferResult::Failed);
                self.clear_offer(agent, call);
                self.make_away(agent, &cause.reason());
                self.requeue_at_head(call);
            }
            (CallState::Withdrawing { agent: a, .. }, _) if a == agent => {
                self.clear_offer(agent, call);
                self.requeue_at_head(call);
            }
            _ => {}
        }
        self.settle(now);
    }

    /// An answered call ended (BYE either way, or its dialog failed).
    pub fn call_ended(&mut self, call: &str, now: Instant) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        let CallState::Connected { agent, counted } = c.state.clone() else {
            return self.call_abandoned(call, now);
        };
        let wrap_up = self
            .queues
            .get(&c.queue)
            .map_or(0, |q| q.wrap_up_s)
            .min(24 * 3600);
        self.calls.remove(call);
        self.index.set(call, None);
        if let Some(a) = self.agents.get_mut(&agent).filter(|_| counted) {
            a.calls.remove(call);
            if a.calls.is_empty() {
                if wrap_up > 0 {
                    let until = now + Duration::from_secs(wrap_up);
                    set_wrap_up(&mut self.wrapping, &agent, a, Some(until));
                } else {
                    a.idle_since = now;
                }
            }
            self.dirty_agents.insert(agent);
        }
        self.settle(now);
    }

    /// Fires what is due: ring-no-answer, withdrawals that took too long, queue waits,
    /// wrap-ups.
    pub fn handle_timeout(&mut self, now: Instant) {
        for call in self.index.due(now) {
            let Some(state) = self.calls.get(&call).map(|c| c.state.clone()) else {
                continue;
            };
            match state {
                CallState::Offered { agent, .. } => {
                    tracing::info!(%call, %agent, "ring-no-answer: withdrawing the offer");
                    self.offer_over(&call, &agent, OfferResult::NoAnswer);
                    self.make_away(&agent, "no answer");
                    self.withdraw(&call, true, now);
                }
                CallState::Withdrawing { agent, .. } => {
                    self.clear_offer(&agent, &call);
                    self.requeue_at_head(&call);
                }
                CallState::Queued => self.queue_timeout(&call, now),
                CallState::Connected { .. } => {}
            }
        }
        while let Some(first) = self
            .wrapping
            .first()
            .filter(|(until, _)| *until <= now)
            .cloned()
        {
            self.wrapping.remove(&first);
            let name = first.1;
            if let Some(a) = self.agents.get_mut(&name)
                && let Some(until) = a.wrap_until.take()
            {
                a.idle_since = until;
                self.dirty_agents.insert(name);
            }
        }
        self.settle(now);
    }

    // ---- outputs ------------------------------------------------------------------------

    pub fn poll_decision(&mut self) -> Option<Decision> {
        self.decisions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<AcdEvent> {
        self.events.pop_front()
    }

    /// The next time [`Acd::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let wraps = self.wrapping.first().map(|(until, _)| *until);
        self.index.next_deadline().into_iter().chain(wraps).min()
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        Snapshot {
            agents: self
                .agents
                .keys()
                .map(|a| self.agent_view(a, now))
                .collect(),
            queues: self
                .queues
                .keys()
                .map(|q| self.queue_view(q, now))
                .collect(),
            calls: self
                .calls
                .iter()
                .map(|(id, c)| {
                    let (state, agent) = match &c.state {
                        CallState::Queued => ("queued", None),
                        CallState::Offered { agent, .. } | CallState::Withdrawing { agent, .. } => {
                            ("offered", Some(agent.clone()))
                        }
                        CallState::Connected { agent, .. } => ("connected", Some(agent.clone())),
                    };
                    CallView {
                        call: id.clone(),
                        call_type: c.call_type.name.clone(),
                        queue: c.queue.clone(),
                        state,
                        agent,
                        waited_ms: millis(now.saturating_duration_since(c.arrived)),
                    }
                })
                .collect(),
        }
    }

    pub fn agent_state(&self, agent: &str) -> AgentState {
        self.agent_view(agent, Instant::now()).state
    }

    /// The agent a call is offered to or connected with.
    pub fn agent_of(&self, call: &str) -> Option<&str> {
        match &self.calls.get(call)?.state {
            CallState::Offered { agent, .. }
            | CallState::Withdrawing { agent, .. }
            | CallState::Connected { agent, .. } => Some(agent),
            CallState::Queued => None,
        }
    }

    /// The queue a call is in now (after any overflow).
    pub fn queue_of(&self, call: &str) -> Option<&str> {
        self.calls.get(call).map(|c| c.queue.as_str())
    }

    /// The call offered to an agent (ringing or being withdrawn).
    pub fn agent_of_offer(&self, agent: &str) -> Option<&str> {
        self.agents.get(agent)?.offer.as_deref()
    }

    /// The call's type and how long it has waited, for the offer's headers.
    pub fn call_info(&self, call: &str, now: Instant) -> Option<(&CallType, Duration)> {
        let c = self.calls.get(call)?;
        Some((&c.call_type, now.saturating_duration_since(c.arrived)))
    }

    pub fn is_signed_in(&self, agent: &str) -> bool {
        self.agents.contains_key(agent)
    }

    // ---- internals ----------------------------------------------------------------------

    /// How the call is filed in [`Acd::index`]: not at all once connected.
    fn entry_of(&self, c: &Call) -> Option<Entry> {
        let (deadline, waiting) = match &c.state {
            CallState::Offered { until, .. } | CallState::Withdrawing { until, .. } => {
                (*until, None)
            }
            CallState::Queued => {
                let wait = self.queues.get(&c.queue).map_or(120, |q| q.max_wait_s);
                let waiting = Waiting {
                    rank: (Reverse(c.call_type.priority), c.order),
                    queued_at: c.queued_at,
                    untold: !c.told_queued,
                };
                (c.queued_at + Duration::from_secs(wait), Some(waiting))
            }
            CallState::Connected { .. } => return None,
        };
        Some(Entry {
            queue: c.queue.clone(),
            deadline,
            waiting,
        })
    }

    /// Files the call again after a change to it (or its removal).
    fn reindex(&mut self, call: &str) {
        let entry = self.calls.get(call).and_then(|c| self.entry_of(c));
        self.index.set(call, entry);
    }

    fn offer_over(&mut self, call: &str, agent: &str, result: OfferResult) {
        self.events.push_back(AcdEvent::OfferEnded {
            call: call.to_owned(),
            agent: agent.to_owned(),
            result,
        });
    }

    fn clear_offer(&mut self, agent: &str, call: &str) {
        if let Some(a) = self.agents.get_mut(agent)
            && a.offer.as_deref() == Some(call)
        {
            a.offer = None;
            self.dirty_agents.insert(agent.to_owned());
        }
    }

    fn make_away(&mut self, agent: &str, reason: &str) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.presence = Presence::Away {
                reason: reason.to_owned(),
            };
            self.dirty_agents.insert(agent.to_owned());
        }
    }

    /// Cancels the call's offer; the call waits for the offer to end (or the grace time).
    fn withdraw(&mut self, call: &str, held: bool, now: Instant) {
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        let agent = match &mut c.state {
            CallState::Offered { agent, .. } => agent.clone(),
            CallState::Withdrawing { held: h, .. } => {
                // Already being withdrawn; the agent may have let go of it meanwhile.
                *h = *h && held;
                return;
            }
            _ => return,
        };
        c.state = CallState::Withdrawing {
            agent: agent.clone(),
            until: now + WITHDRAW_GRACE,
            held,
        };
        self.dirty_queues.insert(c.queue.clone());
        self.reindex(call);
        self.decisions.push_back(Decision::Withdraw {
            call: call.to_owned(),
            agent,
        });
    }

    fn requeue_at_head(&mut self, call: &str) {
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        self.next_head -= 1;
        c.order = i64::MIN / 2 + self.next_head;
        c.state = CallState::Queued;
        self.dirty_queues.insert(c.queue.clone());
        self.reindex(call);
    }

    fn connect(&mut self, call: &str, agent: &str, counted: bool, now: Instant) {
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        c.state = CallState::Connected {
            agent: agent.to_owned(),
            counted,
        };
        self.index.set(call, None);
        let waited = now.saturating_duration_since(c.arrived);
        let queue = c.queue.clone();
        self.dirty_queues.insert(queue.clone());
        if let Some(a) = self.agents.get_mut(agent).filter(|_| counted) {
            if a.offer.as_deref() == Some(call) {
                a.offer = None;
            }
            a.calls.insert(call.to_owned());
            a.answered += 1;
            set_wrap_up(&mut self.wrapping, agent, a, None);
            if matches!(&a.presence, Presence::Away { reason } if reason == "no answer") {
                // It answered as the offer was being withdrawn: it is there after all.
                a.presence = Presence::Available;
            }
            self.dirty_agents.insert(agent.to_owned());
        }
        self.offer_over(call, agent, OfferResult::Answered);
        self.events.push_back(AcdEvent::CallEnded {
            call: call.to_owned(),
            queue,
            outcome: Outcome::Answered,
            reason: "answered".into(),
            agent: Some(agent.to_owned()),
            waited_ms: millis(waited),
        });
    }

    fn queue_timeout(&mut self, call: &str, now: Instant) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        let Some(q) = self.queues.get(&c.queue) else {
            return;
        };
        match q.overflow.clone() {
            Some(overflow) => self.move_to(call, &overflow, now),
            None => {
                let status = q.timeout_status;
                self.refuse(call, status, Outcome::TimedOut, "queue timeout", now);
            }
        }
    }

    /// Moves a waiting call to another queue, where it waits afresh.
    fn move_to(&mut self, call: &str, queue: &str, now: Instant) {
        let waiting = self.index.waiting_in(queue);
        let Some(q) = self.queues.get(queue) else {
            return;
        };
        let full = (waiting >= q.max_length).then_some(q.full_status);
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        self.dirty_queues.insert(c.queue.clone());
        c.queue = queue.to_owned();
        c.queued_at = now;
        self.dirty_queues.insert(queue.to_owned());
        self.reindex(call);
        tracing::info!(%call, %queue, "call overflows");
        if let Some(status) = full {
            self.refuse(call, status, Outcome::Refused, "overflow queue full", now);
        }
    }

    fn refuse(&mut self, call: &str, status: u16, outcome: Outcome, reason: &str, now: Instant) {
        self.decisions.push_back(Decision::Refuse {
            call: call.to_owned(),
            status,
            reason: reason.to_owned(),
        });
        self.finish(call, outcome, reason, None, now);
    }

    fn finish(
        &mut self,
        call: &str,
        outcome: Outcome,
        reason: &str,
        agent: Option<String>,
        now: Instant,
    ) {
        let Some(c) = self.calls.remove(call) else {
            return;
        };
        self.index.set(call, None);
        self.dirty_queues.insert(c.queue.clone());
        self.events.push_back(AcdEvent::CallEnded {
            call: call.to_owned(),
            queue: c.queue,
            outcome,
            reason: reason.to_owned(),
            agent,
            waited_ms: millis(now.saturating_duration_since(c.arrived)),
        });
    }

    /// Whether the agent meets the queue's skill levels.
    fn qualified(profile: &Profile, queue: &QueueConfig) -> bool {
        queue
            .skills
            .iter()
            .all(|(skill, min)| profile.skills.get(skill).is_some_and(|l| l >= min))
    }

    fn free_for(agent: &Agent, queue: &QueueConfig, now: Instant) -> bool {
        agent.presence == Presence::Available
            && agent.offer.is_none()
            && agent.wrap_until.is_none_or(|w| w <= now)
            && agent.calls.len() < agent.profile.max_calls as usize
            && Self::qualified(&agent.profile, queue)
    }

    /// After every input: refuse or overflow calls nobody signed in could take, offer waiting
    /// calls to free agents, tell newly waiting callers, publish what changed.
    fn settle(&mut self, now: Instant) {
        self.drop_untakeable(now);
        // Agents' changes first, so that an agent freed and offered a call at once is seen
        // available, then reserved.
        self.publish_agents(now);
        self.dispatch(now);
        for call in self.index.untold() {
            if let Some(c) = self.calls.get_mut(&call) {
                c.told_queued = true;
            }
            self.reindex(&call);
            self.decisions.push_back(Decision::Queued { call });
        }
        self.publish(now);
    }

    /// A waiting call whose queue has no signed-in agent able to take it (skills, not
    /// declined) overflows, or is refused with the queue's `no_agent_status`.
    ///
    /// Only calls that started waiting since the last check are looked at, and all of them
    /// after an agent signed out or changed skills: nothing else changes the answer.
    fn drop_untakeable(&mut self, now: Instant) {
        let mut all = std::mem::take(&mut self.recheck_all);
        // A call that overflows waits in another queue and is checked again there.
        let mut to_check = BTreeSet::new();
        loop {
            if to_check.is_empty() {
                to_check = self.index.take_to_check(std::mem::take(&mut all));
            }
            let Some(call) = to_check.pop_first() else {
                return;
            };
            let Some(c) = self.calls.get(&call) else {
                continue;
            };
            let Some(q) = self.queues.get(&c.queue) else {
                continue;
            };
            let takeable = c.state != CallState::Queued
                || self
                    .agents
                    .iter()
                    .any(|(name, a)| !c.declined.contains(name) && Self::qualified(&a.profile, q));
            if takeable {
                continue;
            }
            match q.overflow.clone() {
                Some(overflow) => self.move_to(&call, &overflow, now),
                None => {
                    let status = q.no_agent_status;
                    self.refuse(
                        &call,
                        status,
                        Outcome::Refused,
                        "no agent for the queue",
                        now,
                    );
                }
            }
        }
    }

    /// Offers waiting calls, best first (higher priority, then place in line), each to the
    /// agent its queue's strategy picks among those free for it.
    fn dispatch(&mut self, now: Instant) {
        let mut cursor: Option<(Reverse<i32>, i64, String)> = None;
        // Walks the waiting calls in rank order while some agent is ready: with none, a long
        // queue costs nothing per event.
        while !self.ready.is_empty() {
            let Some(next) = self.index.next_waiting(cursor.as_ref()).cloned() else {
                return;
            };
            let call = next.2.clone();
            cursor = Some(next);
            let Some(agent) = self.pick(&call, now) else {
                continue;
            };
            let Some(c) = self.calls.get_mut(&call) else {
                continue;
            };
            let ring = self.queues.get(&c.queue).map_or(20, |q| q.ring_timeout_s);
            c.state = CallState::Offered {
                agent: agent.clone(),
                until: now + Duration::from_secs(ring),
                ringing: false,
            };
            self.dirty_queues.insert(c.queue.clone());
            if self
                .queues
                .get(&c.queue)
                .is_some_and(|q| q.strategy == Strategy::RoundRobin)
            {
                self.round_robin.insert(c.queue.clone(), agent.clone());
            }
            if let Some(a) = self.agents.get_mut(&agent) {
                a.offer = Some(call.clone());
            }
            self.reindex(&call);
            self.refresh_ready(&agent);
            self.dirty_agents.insert(agent.clone());
            self.events.push_back(AcdEvent::CallOffered {
                call: call.clone(),
                agent: agent.clone(),
            });
            self.decisions.push_back(Decision::Offer { call, agent });
        }
    }

    fn pick(&self, call: &str, now: Instant) -> Option<String> {
        let c = self.calls.get(call)?;
        let q = self.queues.get(&c.queue)?;
        // In (idle since, name) order: the first is the longest idle.
        let free = self
            .ready
            .iter()
            .filter_map(|(_, name)| self.agents.get_key_value(name))
            .filter(|(name, a)| !c.declined.contains(*name) && Self::free_for(a, q, now));
        let skill_total = |a: &Agent| -> u32 {
            q.skills
                .keys()
                .map(|s| u32::from(a.profile.skills.get(s).copied().unwrap_or(0)))
                .sum()
        };
        let chosen = match q.strategy {
            // `ready` is in this order already.
            Strategy::LongestIdle => free.into_iter().next(),
            Strategy::FewestCalls => free.min_by_key(|(n, a)| (a.answered, a.idle_since, *n)),
            Strategy::BestSkill => {
                free.min_by_key(|(n, a)| (Reverse(skill_total(a)), a.idle_since, *n))
            }
            Strategy::RoundRobin => {
                let last = self.round_robin.get(&c.queue);
                let mut all: Vec<_> = free.collect();
                all.sort_by_key(|(n, _)| *n);
                all.iter()
                    .find(|(n, _)| last.is_none_or(|l| n.as_str() > l.as_str()))
                    .or_else(|| all.first())
                    .copied()
            }
        };
        chosen.map(|(n, _)| n.clone())
    }

    fn agent_view(&self, agent: &str, now: Instant) -> AgentView {
        let Some(a) = self.agents.get(agent) else {
            return AgentView {
                agent: agent.to_owned(),
                state: AgentState::Offline,
                reason: None,
                calls: 0,
                wrap_up_left_ms: None,
            };
        };
        let offered = a.offer.as_ref().and_then(|c| self.calls.get(c));
        let (state, reason) = match (offered.map(|c| &c.state), &a.presence) {
            (Some(CallState::Offered { ringing: false, .. }), _) => (AgentState::Reserved, None),
            (Some(_), _) => (AgentState::Ringing, None),
            (None, _) if !a.calls.is_empty() => (AgentState::OnCall, None),
            (None, Presence::Away { reason }) => (AgentState::Away, Some(reason.clone())),
            (None, Presence::Available) if a.wrap_until.is_some() => (AgentState::WrapUp, None),
            (None, Presence::Available) => (AgentState::Available, None),
        };
        let wrap_up_left_ms = (state == AgentState::WrapUp)
            .then(|| {
                a.wrap_until
                    .map(|w| millis(w.saturating_duration_since(now)))
            })
            .flatten();
        AgentView {
            agent: agent.to_owned(),
            state,
            reason,
            calls: a.calls.len(),
            wrap_up_left_ms,
        }
    }

    fn queue_view(&self, queue: &str, now: Instant) -> QueueView {
        // Connected calls count in neither the depth nor the offers.
        let (depth, offering, oldest) = self.index.queue(queue);
        QueueView {
            queue: queue.to_owned(),
            depth,
            offering,
            longest_wait_ms: oldest.map_or(0, |o| millis(now.saturating_duration_since(o))),
        }
    }

    /// Files `agent` in [`Acd::ready`] or takes it out, after any change to it.
    fn refresh_ready(&mut self, agent: &str) {
        if let Some(key) = self.ready_key.remove(agent) {
            self.ready.remove(&(key, agent.to_owned()));
        }
        if let Some(a) = self.agents.get(agent)
            && Self::ready(a)
        {
            self.ready.insert((a.idle_since, agent.to_owned()));
            self.ready_key.insert(agent.to_owned(), a.idle_since);
        }
    }

    fn ready(a: &Agent) -> bool {
        a.presence == Presence::Available
            && a.wrap_until.is_none()
            && a.offer.is_none()
            && a.calls.len() < a.profile.max_calls as usize
    }

    fn publish_agents(&mut self, now: Instant) {
        for agent in std::mem::take(&mut self.dirty_agents) {
            self.refresh_ready(&agent);
            let view = self.agent_view(&agent, now);
            self.events.push_back(AcdEvent::Agent(view));
        }
    }

    fn publish(&mut self, now: Instant) {
        self.publish_agents(now);
        for queue in std::mem::take(&mut self.dirty_queues) {
            let view = self.queue_view(&queue, now);
            self.events.push_back(AcdEvent::Queue(view));
        }
    }
}

impl Acd {
    /// Whether the bookkeeping agrees with itself: no agent holds two offers, every offer an
    /// agent holds is live, connected calls are known to their agent. (The call limit is
    /// checked when offering; a supervisor may lower it during calls.) For the property tests
    /// and the fuzz target; the cost is a full walk.
    pub fn audit(&self) -> Result<(), String> {
        let mut index = CallIndex::default();
        for (id, c) in &self.calls {
            index.set(id, self.entry_of(c));
        }
        if !index.same_filing(&self.index) {
            return Err(format!("call index {:?}, calls say {index:?}", self.index));
        }
        let wrapping: BTreeSet<(Instant, String)> = self
            .agents
            .iter()
            .filter_map(|(name, a)| Some((a.wrap_until?, name.clone())))
            .collect();
        if wrapping != self.wrapping {
            return Err(format!(
                "wrap-up index {:?}, agents say {wrapping:?}",
                self.wrapping
            ));
        }
        let ready: BTreeSet<(Instant, String)> = self
            .agents
            .iter()
            .filter(|(_, a)| Self::ready(a))
            .map(|(name, a)| (a.idle_since, name.clone()))
            .collect();
        if ready != self.ready {
            return Err(format!(
                "ready index {:?}, agents say {ready:?}",
                self.ready
            ));
        }
        let mut holders = BTreeSet::new();
        for (id, c) in &self.calls {
            match &c.state {
                CallState::Offered { agent, .. }
                | CallState::Withdrawing {
                    agent, held: true, ..
                } => {
                    if let Some(a) = self.agents.get(agent) {
                        if a.offer.as_deref() != Some(id.as_str()) {
                            return Err(format!(
                                "{id} offered to {agent}, who holds {:?}",
                                a.offer
                            ));
                        }
                        if !holders.insert(agent.clone()) {
                            return Err(format!("{agent} holds two offers"));
                        }
                    }
                }
                CallState::Connected {
                    agent,
                    counted: true,
                } => {
                    if self
                        .agents
                        .get(agent)
                        .is_some_and(|a| !a.calls.contains(id))
                    {
                        return Err(format!("{id} connected to {agent}, who does not know"));
                    }
                }
                CallState::Withdrawing { .. } | CallState::Connected { .. } | CallState::Queued => {
                }
            }
        }
        for (name, a) in &self.agents {
            if let Some(call) = &a.offer {
                let live = self.calls.get(call).is_some_and(|c| {
                    matches!(&c.state, CallState::Offered { agent, .. }
                        | CallState::Withdrawing { agent, held: true, .. } if agent == name)
                });
                if !live {
                    return Err(format!("{name} holds an offer of {call} that is over"));
                }
            }
        }
        Ok(())
    }
}

/// Sets or ends an agent's wrap-up, keeping `wrapping` (agents by when it ends) in step.
fn set_wrap_up(
    wrapping: &mut BTreeSet<(Instant, String)>,
    name: &str,
    a: &mut Agent,
    until: Option<Instant>,
) {
    if let Some(old) = std::mem::replace(&mut a.wrap_until, until) {
        wrapping.remove(&(old, name.to_owned()));
    }
    if let Some(until) = until {
        wrapping.insert((until, name.to_owned()));
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
