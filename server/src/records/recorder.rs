//! Builds each call's record from what the distributor sees: the caller's INVITE, the ACD's
//! events (queued, each offer and its end, answered or not), the hang-up (a BYE either way),
//! the edge's media statistics and the agent's wrap-up. Sans-IO like the core that feeds it:
//! `now` in, finished records out, no clock read.
//!
//! A call the ACD finished without an answer is written at once. An answered call is
//! written a second after its hang-up: the edge sends its last media statistics when it ends
//! the bridge, just after it passed the BYE on. The agent's wrap-up ends later still, so it
//! is written as an update of the record.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::record::{CallRecord, MAX_TEXT, MediaSummary, OfferRecord, truncate};
use crate::acd::{AcdEvent, AgentState, Outcome};
use crate::admin::tokens::WallClock;
use crate::sip::{NameAddr, SipMessage};

/// How long an answered call's record waits after the hang-up for the edge's last media
/// statistics.
pub const MEDIA_SETTLE: Duration = Duration::from_secs(1);

/// What the writer is to do.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutput {
    Write(Box<CallRecord>),
    /// The agent's wrap-up after the call of record `id` ended.
    WrapUp {
        id: String,
        wrap_up_ms: u64,
    },
}

/// Which side hung up an answered call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Caller,
    Agent,
    /// The call failed (no ACK for the answer) or was cut by a shutdown.
    System,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Caller => "caller",
            Side::Agent => "agent",
            Side::System => "system",
        }
    }
}

#[derive(Debug)]
struct Open {
    record: CallRecord,
    /// Hung up: written at this instant (the media settle).
    closing_at: Option<Instant>,
    /// The one-way audio the edge's last report flagged.
    one_way: Option<String>,
}

/// An agent's wrap-up after an answered call, being timed.
#[derive(Debug)]
struct Wrap {
    id: String,
    call_id: String,
    ended: u64,
    seen: bool,
}

#[derive(Debug)]
pub struct Recorder {
    clock: WallClock,
    /// By Call-ID, from arrival until written.
    open: HashMap<String, Open>,
    closing: BTreeSet<(Instant, String)>,
    /// By agent.
    wrapping: HashMap<String, Wrap>,
    out: VecDeque<RecordOutput>,
    /// Makes record ids unique within the process; the start time makes them unique across
    /// restarts.
    next: u64,
    started: u64,
    /// Off: no record is begun, so every other input finds none.
    enabled: bool,
}

impl Recorder {
    pub fn new(clock: WallClock) -> Recorder {
        Recorder {
            clock,
            open: HashMap::new(),
            closing: BTreeSet::new(),
            wrapping: HashMap::new(),
            out: VecDeque::new(),
            next: 0,
            started: clock.read_ms(),
            enabled: true,
        }
    }

    /// Records begun and not yet handed to the writer.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    fn ms(&self, now: Instant) -> u64 {
        self.clock.unix_ms(now)
    }

    fn new_record(&mut self, invite: &SipMessage, now: Instant) -> CallRecord {
        self.next += 1;
        let from = invite.header("From").and_then(|f| NameAddr::parse(f).ok());
        let at = self.ms(now);
        CallRecord {
            id: format!("{:x}-{:x}", self.started, self.next),
            call_id: truncate(invite.call_id().unwrap_or_default(), MAX_TEXT),
            caller: from
                .as_ref()
                .map(|f| truncate(&f.uri, MAX_TEXT))
                .unwrap_or_default(),
            caller_name: from
                .and_then(|f| f.display)
                .map(|d| unquote(&d))
                .filter(|d| !d.is_empty())
                .map(|d| truncate(&d, MAX_TEXT)),
            dialled: truncate(invite.request_uri().unwrap_or_default(), MAX_TEXT),
            call_type: String::new(),
            queue: String::new(),
            priority: 0,
            arrived: at,
            answered: None,
            ended: at,
            outcome: String::new(),
            reason: String::new(),
            hung_up_by: None,
            agent: None,
            edge: None,
            offers: Vec::new(),
            wait_ms: 0,
            ring_ms: None,
            talk_ms: None,
            wrap_up_ms: None,
            media: None,
            one_way_audio: Vec::new(),
            disposition: None,
            notes: None,
        }
    }

    /// A caller's new INVITE, about to go to the ACD.
    pub fn arrived(&mut self, invite: &SipMessage, now: Instant) {
        let Some(call_id) = invite.call_id().filter(|_| self.enabled) else {
            return;
        };
        let record = self.new_record(invite, now);
        self.open.insert(
            call_id.to_owned(),
            Open {
                record,
                closing_at: None,
                one_way: None,
            },
        );
    }

    /// A call refused before the ACD saw it (the distributor is shutting down).
    pub fn refused(&mut self, invite: &SipMessage, reason: &str, now: Instant) {
        if !self.enabled {
            return;
        }
        let mut record = self.new_record(invite, now);
        record.outcome = "refused".into();
        record.reason = reason.to_owned();
        self.out.push_back(RecordOutput::Write(Box::new(record)));
    }

    /// One of the ACD's events; `edge` is the edge of the agent an offer names.
    pub fn observe(&mut self, event: &AcdEvent, edge: Option<&str>, now: Instant) {
        let at = self.ms(now);
        match event {
            AcdEvent::CallQueued {
                call,
                call_type,
                queue,
                priority,
            } => {
                if let Some(o) = self.open.get_mut(call) {
                    o.record.call_type.clone_from(call_type);
                    o.record.queue.clone_from(queue);
                    o.record.priority = *priority;
                }
            }
            AcdEvent::CallOffered { call, agent } => {
                if let Some(o) = self.open.get_mut(call) {
                    o.record.offers.push(OfferRecord {
                        agent: agent.clone(),
                        edge: edge.map(str::to_owned),
                        offered: at,
                        ended: None,
                        result: None,
                    });
                }
            }
            AcdEvent::OfferEnded {
                call,
                agent,
                result,
            } => {
                let offer = self
                    .open
                    .get_mut(call)
                    .and_then(|o| o.record.offers.iter_mut().rev().find(|o| o.agent == *agent));
                if let Some(offer) = offer {
                    // An answer that raced the withdrawal stands over the no-answer.
                    offer.result = Some(result.label().to_owned());
                    offer.ended = Some(at);
                }
            }
            AcdEvent::CallEnded {
                call,
                queue,
                outcome,
                reason,
                agent,
                waited_ms,
            } => {
                let Some(o) = self.open.get_mut(call) else {
                    return;
                };
                let r = &mut o.record;
                r.queue.clone_from(queue);
                r.wait_ms = *waited_ms;
                r.outcome = outcome.label().to_owned();
                if *outcome == Outcome::Answered {
                    r.answered = Some(at);
                    r.agent.clone_from(agent);
                    let offer = r
                        .offers
                        .iter()
                        .rev()
                        .find(|o| Some(&o.agent) == agent.as_ref());
                    r.edge = offer.and_then(|o| o.edge.clone());
                    r.ring_ms = offer.map(|o| at.saturating_sub(o.offered));
                    return;
                }
                r.reason.clone_from(reason);
                r.ended = at;
                if let Some(o) = self.open.remove(call) {
                    self.out.push_back(RecordOutput::Write(Box::new(o.record)));
                }
            }
            AcdEvent::Agent(view) => self.agent_state(&view.agent, view.state, at),
            AcdEvent::Queue(_) => {}
        }
    }

    fn agent_state(&mut self, agent: &str, state: AgentState, at: u64) {
        let Some(w) = self.wrapping.get_mut(agent) else {
            return;
        };
        if state == AgentState::WrapUp {
            w.seen = true;
            return;
        }
        let Some(w) = self.wrapping.remove(agent) else {
            return;
        };
        let wrap_up_ms = if w.seen {
            at.saturating_sub(w.ended)
        } else {
            0
        };
        match self.open.get_mut(&w.call_id) {
            Some(o) if o.record.id == w.id => o.record.wrap_up_ms = Some(wrap_up_ms),
            _ => self.out.push_back(RecordOutput::WrapUp {
                id: w.id,
                wrap_up_ms,
            }),
        }
    }

    /// An answered call was hung up (a BYE from `by`'s side, or it failed). A call not yet
    /// answered is left to the ACD's end of it.
    pub fn hung_up(&mut self, call_id: &str, by: Side, reason: Option<&str>, now: Instant) {
        let at = self.ms(now);
        let Some(o) = self.open.get_mut(call_id) else {
            return;
        };
        let Some(answered) = o.record.answered.filter(|_| o.closing_at.is_none()) else {
            return;
        };
        let r = &mut o.record;
        r.ended = at;
        r.talk_ms = Some(at.saturating_sub(answered));
        r.hung_up_by = Some(by.label().to_owned());
        r.reason = match (reason, by) {
            (Some(reason), _) => truncate(reason, MAX_TEXT),
            (None, Side::Caller) => "caller hung up".into(),
            (None, Side::Agent) => "agent hung up".into(),
            (None, Side::System) => "failed".into(),
        };
        let due = now + MEDIA_SETTLE;
        o.closing_at = Some(due);
        self.closing.insert((due, call_id.to_owned()));
        if let Some(agent) = r.agent.clone() {
            let wrap = Wrap {
                id: r.id.clone(),
                call_id: call_id.to_owned(),
                ended: at,
                seen: false,
            };
            self.wrapping.insert(agent, wrap);
        }
    }

    /// The latest media statistics of a call from `edge`; taken only from the edge of the
    /// agent who answered (a record has an edge only once answered). Returns the one-way audio flagged now when that changed with
    /// this report (`Some(None)`: it flows both ways again).
    pub fn media(&mut self, call_id: &str, edge: &str, json: &str) -> Option<Option<String>> {
        let o = self.open.get_mut(call_id)?;
        if o.record.edge.as_deref() != Some(edge) {
            return None;
        }
        let (summary, one_way) = MediaSummary::from_report(json)?;
        o.record.media = Some(summary);
        if one_way == o.one_way {
            return None;
        }
        if let Some(w) = &one_way
            && !o.record.one_way_audio.contains(w)
        {
            o.record.one_way_audio.push(w.clone());
        }
        o.one_way.clone_from(&one_way);
        Some(one_way)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.closing.first().map(|(at, _)| *at)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, call_id)) = self.closing.first().cloned() {
            if at > now {
                break;
            }
            self.closing.pop_first();
            if let Some(o) = self.open.remove(&call_id) {
                self.out.push_back(RecordOutput::Write(Box::new(o.record)));
            }
        }
    }

    /// The distributor stops: every record still open is finished as it stands, a call still
    /// in progress as cut by the shutdown.
    pub fn finish_all(&mut self, now: Instant) {
        let at = self.ms(now);
        let mut open: Vec<Open> = self.open.drain().map(|(_, o)| o).collect();
        open.sort_by_key(|o| o.record.arrived);
        self.closing.clear();
        for mut o in open {
            if o.closing_at.is_none() {
                let r = &mut o.record;
                r.ended = at;
                r.reason = "shutting down".into();
                match r.answered {
                    Some(answered) => {
                        r.talk_ms = Some(at.saturating_sub(answered));
                        r.hung_up_by = Some(Side::System.label().to_owned());
                    }
                    None => {
                        r.outcome = "refused".into();
                        r.wait_ms = at.saturating_sub(r.arrived);
                    }
                }
            }
            self.out.push_back(RecordOutput::Write(Box::new(o.record)));
        }
    }

    pub fn poll_output(&mut self) -> Option<RecordOutput> {
        self.out.pop_front()
    }
}

/// A display name as people read it: without its quotes and quoted-pair backslashes
/// (RFC 3261 §25.1).
fn unquote(display: &str) -> String {
    let display = display.trim();
    let Some(inner) = display.strip_prefix('"').and_then(|d| d.strip_suffix('"')) else {
        return display.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[path = "recorder_tests.rs"]
mod tests;
