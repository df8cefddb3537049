//! Records built from a real ACD's events on a simulated clock: the recorder is only as good
//! as its reading of what the engine publishes.

use std::time::{Duration, Instant};

use super::*;
use crate::acd::config::QueueConfig;
use crate::acd::{Acd, CallType, OfferEnd, Profile};

struct World {
    t0: Instant,
    acd: Acd,
    rec: Recorder,
    written: Vec<CallRecord>,
    wrap_ups: Vec<(String, u64)>,
}

/// Unix time at the simulated clock's start: 2026-12-07T14:00:00Z.
const T0_UNIX: u64 = 1_796_652_000;

fn invite(call_id: &str) -> SipMessage {
    let text = format!(
        "INVITE sip:support@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK-{call_id}\r\n\
         From: \"Ann Caller\" <sip:1000@127.0.0.1:5071>;tag=c\r\n\
         To: <sip:support@127.0.0.1:5060>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    );
    SipMessage::parse(text.as_bytes()).unwrap()
}

impl World {
    fn new(queue: QueueConfig) -> World {
        let t0 = Instant::now();
        World {
            t0,
            acd: Acd::new(vec![queue]),
            rec: Recorder::new(WallClock::at(t0, T0_UNIX)),
            written: Vec::new(),
            wrap_ups: Vec::new(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// What the distributor does after every input: the ACD's events to the recorder, the
    /// recorder's timer, its output collected.
    fn settle(&mut self, ms: u64) {
        let now = self.at(ms);
        while self.acd.poll_decision().is_some() {}
        while let Some(e) = self.acd.poll_event() {
            self.rec.observe(&e, Some("edge-1"), now);
        }
        self.rec.handle_timeout(now);
        while let Some(out) = self.rec.poll_output() {
            match out {
                RecordOutput::Write(r) => self.written.push(*r),
                RecordOutput::WrapUp { id, wrap_up_ms } => self.wrap_ups.push((id, wrap_up_ms)),
            }
        }
    }

    fn arrive(&mut self, call: &str, ms: u64) {
        self.rec.arrived(&invite(call), self.at(ms));
        let ty = CallType {
            name: "support".into(),
            queue: "q".into(),
            priority: 3,
        };
        self.acd.call_arrived(call, ty, self.at(ms));
        self.settle(ms);
    }

    fn sign_in(&mut self, agent: &str, ms: u64) {
        let profile = Profile {
            skills: Default::default(),
            max_calls: 1,
        };
        self.acd.sign_in(agent, profile, self.at(ms));
        self.settle(ms);
    }

    fn results(r: &CallRecord) -> Vec<(String, String)> {
        r.offers
            .iter()
            .map(|o| (o.agent.clone(), o.result.clone().unwrap_or_default()))
            .collect()
    }
}

fn queue(ring_timeout_s: u64, wrap_up_s: u64) -> QueueConfig {
    QueueConfig {
        name: "q".into(),
        ring_timeout_s,
        wrap_up_s,
        ..QueueConfig::default()
    }
}

fn pair(agent: &str, result: &str) -> (String, String) {
    (agent.to_owned(), result.to_owned())
}

#[test]
fn a_ring_no_answer_then_an_answer_then_the_callers_bye() {
    let mut w = World::new(queue(2, 0));
    w.sign_in("slow", 0);
    w.sign_in("quick", 10);
    w.arrive("c1", 100);
    w.acd.offer_ringing("c1", "slow", w.at(150));
    w.settle(150);
    // Rings out at 2.1 s: withdrawn, and the 487 of the CANCEL ends it.
    w.acd.handle_timeout(w.at(2100));
    w.settle(2100);
    w.acd
        .offer_ended("c1", "slow", OfferEnd::Declined { status: 487 }, w.at(2120));
    w.settle(2120);
    w.acd
        .offer_ended("c1", "quick", OfferEnd::Answered, w.at(3000));
    w.settle(3000);
    assert!(w.written.is_empty(), "not written before the hang-up");
    let flagged = r#"{"from_caller":{"packets":500},"one_way":"caller-silent"}"#;
    assert_eq!(
        w.rec.media("c1", "edge-1", flagged),
        Some(Some("caller-silent".into()))
    );
    assert_eq!(w.rec.media("c1", "edge-1", flagged), None, "no change");
    assert_eq!(
        w.rec.media("c1", "edge-9", flagged),
        None,
        "not the call's edge"
    );
    let both =
        r#"{"from_caller":{"packets":500,"lost":5,"jitter_ms":2},"from_agent":{"packets":500}}"#;
    assert_eq!(w.rec.media("c1", "edge-1", both), Some(None), "cleared");
    w.acd.call_ended("c1", w.at(13_000));
    w.rec.hung_up("c1", Side::Caller, None, w.at(13_000));
    w.settle(13_000);
    assert!(w.written.is_empty(), "waits for the edge's last statistics");
    w.settle(14_000);
    let [r] = w.written.as_slice() else {
        panic!("one record: {:?}", w.written);
    };
    assert_eq!(r.call_id, "c1");
    assert_eq!(r.caller, "sip:1000@127.0.0.1:5071");
    assert_eq!(r.caller_name.as_deref(), Some("Ann Caller"));
    assert_eq!(r.dialled, "sip:support@127.0.0.1:5060");
    assert_eq!(
        (r.call_type.as_str(), r.queue.as_str(), r.priority),
        ("support", "q", 3)
    );
    assert_eq!(
        World::results(r),
        [pair("slow", "no-answer"), pair("quick", "answered")]
    );
    assert_eq!(r.offers[0].ended, Some(T0_UNIX * 1000 + 2100));
    assert_eq!(r.outcome, "answered");
    assert_eq!(r.reason, "caller hung up");
    assert_eq!(r.hung_up_by.as_deref(), Some("caller"));
    assert_eq!(r.agent.as_deref(), Some("quick"));
    assert_eq!(r.edge.as_deref(), Some("edge-1"));
    assert_eq!(r.arrived, T0_UNIX * 1000 + 100);
    assert_eq!(r.answered, Some(T0_UNIX * 1000 + 3000));
    assert_eq!(r.ended, T0_UNIX * 1000 + 13_000);
    assert_eq!(r.wait_ms, 2900);
    assert_eq!(r.ring_ms, Some(880));
    assert_eq!(r.talk_ms, Some(10_000));
    // No wrap-up configured: the agent is available at once.
    assert_eq!(r.wrap_up_ms, Some(0));
    let media = r.media.as_ref().unwrap();
    assert_eq!((media.caller.packets, media.caller.lost), (500, 5));
    assert!(media.caller.mos.is_some());
    assert_eq!(r.one_way_audio, ["caller-silent"]);
}

#[test]
fn unanswered_calls_are_written_when_the_acd_lets_go() {
    let mut w = World::new(queue(20, 0));
    w.arrive("nobody", 0);
    // No agent signed in for the queue: refused at once.
    assert_eq!(w.written.len(), 1);
    assert_eq!(w.written[0].outcome, "refused");
    assert_eq!(w.written[0].reason, "no agent for the queue");
    w.sign_in("alice", 10);
    w.acd.set_presence(
        "alice",
        crate::acd::Presence::Away {
            reason: "lunch".into(),
        },
        w.at(20),
    );
    w.settle(20);
    w.arrive("leaver", 100);
    w.acd.call_abandoned("leaver", w.at(5100));
    w.settle(5100);
    let r = &w.written[1];
    assert_eq!(
        (r.outcome.as_str(), r.reason.as_str()),
        ("abandoned", "caller hung up")
    );
    assert_eq!(r.wait_ms, 5000);
    assert_eq!(
        (r.answered, r.talk_ms, r.ring_ms, r.hung_up_by.as_deref()),
        (None, None, None, None)
    );
    assert!(r.offers.is_empty());
}

#[test]
fn a_caller_who_hangs_up_while_it_rings_ends_the_offer_too() {
    let mut w = World::new(queue(20, 0));
    w.sign_in("alice", 0);
    w.arrive("c", 100);
    w.acd.call_abandoned("c", w.at(900));
    w.settle(900);
    let r = &w.written[0];
    assert_eq!(World::results(r), [pair("alice", "caller-hung-up")]);
    assert_eq!(r.outcome, "abandoned");
}

#[test]
fn wrap_up_is_written_as_an_update_when_it_ends() {
    let mut w = World::new(queue(20, 30));
    w.sign_in("alice", 0);
    w.arrive("c", 100);
    w.acd
        .offer_ended("c", "alice", OfferEnd::Answered, w.at(1000));
    w.settle(1000);
    w.acd.call_ended("c", w.at(5000));
    w.rec.hung_up("c", Side::Agent, None, w.at(5000));
    w.settle(5000);
    w.settle(6000);
    assert_eq!(w.written.len(), 1);
    assert_eq!(w.written[0].wrap_up_ms, None, "still wrapping up");
    assert_eq!(w.written[0].reason, "agent hung up");
    w.acd.handle_timeout(w.at(35_000));
    w.settle(35_000);
    assert_eq!(w.wrap_ups, [(w.written[0].id.clone(), 30_000)]);
}

#[test]
fn a_shutdown_writes_every_open_record() {
    let mut w = World::new(queue(20, 0));
    w.sign_in("alice", 0);
    w.arrive("talking", 100);
    w.acd
        .offer_ended("talking", "alice", OfferEnd::Answered, w.at(200));
    w.settle(200);
    w.arrive("waiting", 300);
    w.rec.finish_all(w.at(1000));
    w.settle(1000);
    let by_call: HashMap<&str, &CallRecord> =
        w.written.iter().map(|r| (r.call_id.as_str(), r)).collect();
    assert_eq!(by_call.len(), 2);
    assert_eq!(by_call["talking"].outcome, "answered");
    assert_eq!(by_call["talking"].hung_up_by.as_deref(), Some("system"));
    assert_eq!(by_call["talking"].talk_ms, Some(800));
    assert_eq!(by_call["waiting"].outcome, "refused");
    assert_eq!(by_call["waiting"].reason, "shutting down");
    assert_ne!(by_call["talking"].id, by_call["waiting"].id);
}
