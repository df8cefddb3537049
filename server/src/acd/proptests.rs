//! Random sequences of events against the ACD: calls arrive and abandon, agents sign in and
//! out, go away and come back, answer, decline or fail, calls end, time passes. After every
//! event the bookkeeping must agree with itself (no agent with two offers, no agent ringing
//! for an offer that is over); at the end, with nobody answering any more and time running
//! on, every call must have ended exactly once, answered, abandoned, timed out or refused,
//! with a reason, and no agent may be left reserved or ringing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::config::{QueueConfig, Strategy as Pick};
use super::{
    Acd, AcdEvent, AgentState, CallType, Decision, FailCause, OfferEnd, OfferResult, Outcome,
    Presence, Profile,
};

const AGENTS: [&str; 4] = ["ann", "bea", "cat", "dan"];
const SKILLS: [&str; 2] = ["billing", "support"];

#[derive(Debug, Clone)]
enum Op {
    Arrive {
        queue: usize,
        priority: i32,
    },
    Abandon(usize),
    SignIn {
        agent: usize,
        skills: u8,
        lines: u32,
    },
    SignOut(usize),
    Away(usize),
    Available(usize),
    Ringing(usize),
    /// End of an offer the SIP side knows (index into them): 0 answered, 1 declined, 2 failed,
    /// 3 not acceptable.
    OfferEnd {
        offer: usize,
        how: u8,
    },
    /// A report for an offer that does not exist (wrong agent).
    StrayEnd {
        call: usize,
        agent: usize,
        how: u8,
    },
    Hangup(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, 0..3i32).prop_map(|(queue, priority)| Op::Arrive { queue, priority }),
        1 => any::<usize>().prop_map(Op::Abandon),
        2 => (0..AGENTS.len(), 0..4u8, 1..3u32)
            .prop_map(|(agent, skills, lines)| Op::SignIn { agent, skills, lines }),
        1 => (0..AGENTS.len()).prop_map(Op::SignOut),
        1 => (0..AGENTS.len()).prop_map(Op::Away),
        1 => (0..AGENTS.len()).prop_map(Op::Available),
        1 => any::<usize>().prop_map(Op::Ringing),
        3 => (any::<usize>(), 0..4u8).prop_map(|(offer, how)| Op::OfferEnd { offer, how }),
        1 => (any::<usize>(), 0..AGENTS.len(), 0..3u8)
            .prop_map(|(call, agent, how)| Op::StrayEnd { call, agent, how }),
        2 => any::<usize>().prop_map(Op::Hangup),
        2 => (0..40u64).prop_map(Op::Advance),
    ]
}

fn queues() -> Vec<QueueConfig> {
    vec![
        QueueConfig {
            name: "billing".into(),
            skills: [("billing".into(), 1)].into(),
            strategy: Pick::LongestIdle,
            max_length: 3,
            max_wait_s: 30,
            overflow: Some("general".into()),
            ring_timeout_s: 8,
            wrap_up_s: 5,
            ..QueueConfig::default()
        },
        QueueConfig {
            name: "support".into(),
            skills: [("support".into(), 1)].into(),
            strategy: Pick::RoundRobin,
            max_length: 4,
            max_wait_s: 20,
            ring_timeout_s: 5,
            ..QueueConfig::default()
        },
        QueueConfig {
            name: "general".into(),
            strategy: Pick::FewestCalls,
            max_length: 5,
            max_wait_s: 25,
            ring_timeout_s: 6,
            ..QueueConfig::default()
        },
    ]
}

fn profile(skills: u8, lines: u32) -> Profile {
    Profile {
        skills: SKILLS
            .iter()
            .enumerate()
            .filter(|(i, _)| skills & (1 << i) != 0)
            .map(|(_, s)| ((*s).to_owned(), 50))
            .collect(),
        max_calls: lines,
    }
}

/// What the SIP side would know: the offers it sent, and the calls it connected.
#[derive(Default)]
struct World {
    arrived: Vec<String>,
    /// Offers sent and not yet reported ended: (call, agent).
    offers: Vec<(String, String)>,
    connected: BTreeSet<String>,
    ended: BTreeMap<String, (Outcome, String)>,
    refused: BTreeSet<String>,
    /// Each agent's line count, fixed at its first sign-in (a profile keeps its lines).
    lines: BTreeMap<usize, u32>,
    /// Offers published (`call-offered`) whose `offer-ended` has not come yet, by call: what
    /// a call's record is built from.
    unended_offers: BTreeMap<String, String>,
}

impl World {
    fn drain(&mut self, acd: &mut Acd) -> Result<(), TestCaseError> {
        while let Some(d) = acd.poll_decision() {
            match d {
                Decision::Offer { call, agent } => {
                    prop_assert!(acd.is_signed_in(&agent), "offer to {agent}, signed out");
                    self.offers.push((call, agent));
                }
                Decision::Refuse { call, status, .. } => {
                    prop_assert!((400..700).contains(&status));
                    prop_assert!(self.refused.insert(call.clone()), "{call} refused twice");
                }
                Decision::Withdraw { .. } | Decision::Queued { .. } => {}
            }
        }
        while let Some(e) = acd.poll_event() {
            match e {
                AcdEvent::CallOffered { call, agent } => {
                    let open = self.unended_offers.insert(call.clone(), agent);
                    prop_assert!(
                        open.is_none(),
                        "{call} offered again before its offer ended"
                    );
                }
                AcdEvent::OfferEnded {
                    call,
                    agent,
                    result,
                } => {
                    // An answer racing a withdrawal comes after the offer's no-answer.
                    if result == OfferResult::Answered && !self.unended_offers.contains_key(&call) {
                        continue;
                    }
                    let open = self.unended_offers.remove(&call);
                    prop_assert_eq!(
                        open.as_deref(),
                        Some(agent.as_str()),
                        "{} {:?}",
                        call,
                        result
                    );
                }
                AcdEvent::CallEnded {
                    call,
                    outcome,
                    reason,
                    ..
                } => {
                    prop_assert!(!reason.is_empty());
                    prop_assert!(
                        !self.unended_offers.contains_key(&call),
                        "{call} ended with its offer open"
                    );
                    prop_assert!(
                        self.ended.insert(call.clone(), (outcome, reason)).is_none(),
                        "{call} ended twice"
                    );
                }
                _ => {}
            }
        }
        acd.audit().map_err(TestCaseError::fail)
    }
}

fn pick<T: Clone>(items: &[T], i: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[i % items.len()].clone())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn acd_keeps_its_promises(ops in proptest::collection::vec(op(), 1..120)) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut acd = Acd::new(queues());
        let mut w = World::default();
        let names = ["billing", "support", "general"];
        for op in ops {
            match op {
                Op::Arrive { queue, priority } => {
                    let call = format!("call-{}", w.arrived.len());
                    w.arrived.push(call.clone());
                    let call_type = CallType {
                        name: names[queue].into(),
                        queue: names[queue].into(),
                        priority,
                    };
                    acd.call_arrived(&call, call_type, now);
                }
                Op::Abandon(i) => {
                    if let Some(call) = pick(&w.arrived, i)
                        && !w.connected.contains(&call)
                    {
                        w.offers.retain(|(c, _)| *c != call);
                        acd.call_abandoned(&call, now);
                    }
                }
                Op::SignIn { agent, skills, lines } => {
                    let lines = *w.lines.entry(agent).or_insert(lines);
                    acd.sign_in(AGENTS[agent], profile(skills, lines), now);
                }
                Op::SignOut(agent) => acd.sign_out(AGENTS[agent], now),
                Op::Away(agent) => {
                    let away = Presence::Away { reason: "break".into() };
                    acd.set_presence(AGENTS[agent], away, now);
                }
                Op::Available(agent) => acd.set_presence(AGENTS[agent], Presence::Available, now),
                Op::Ringing(i) => {
                    if let Some((call, agent)) = pick(&w.offers, i) {
                        acd.offer_ringing(&call, &agent, now);
                    }
                }
                Op::OfferEnd { offer, how } => {
                    if let Some((call, agent)) = pick(&w.offers, offer) {
                        w.offers.retain(|o| *o != (call.clone(), agent.clone()));
                        let end = match how {
                            0 => OfferEnd::Answered,
                            1 => OfferEnd::Declined { status: 486 },
                            2 => OfferEnd::Failed {
                                cause: FailCause::Timeout,
                            },
                            _ => OfferEnd::Unacceptable { status: 488 },
                        };
                        if end == OfferEnd::Answered
                            && acd.agent_of(&call) == Some(agent.as_str())
                        {
                            w.connected.insert(call.clone());
                        }
                        acd.offer_ended(&call, &agent, end, now);
                    }
                }
                Op::StrayEnd { call, agent, how } => {
                    if let Some(call) = pick(&w.arrived, call) {
                        let agent = AGENTS[agent];
                        let known = w.offers.iter().any(|(c, a)| *c == call && a == agent);
                        let end = [
                            OfferEnd::Answered,
                            OfferEnd::Declined { status: 603 },
                            OfferEnd::Failed {
                                cause: FailCause::Timeout,
                            },
                        ][usize::from(how)];
                        if !known {
                            let before = acd.agent_of(&call).map(str::to_owned);
                            acd.offer_ended(&call, agent, end, now);
                            prop_assert_eq!(acd.agent_of(&call).map(str::to_owned), before);
                        }
                    }
                }
                Op::Hangup(i) => {
                    let connected: Vec<_> = w.connected.iter().cloned().collect();
                    if let Some(call) = pick(&connected, i) {
                        w.connected.remove(&call);
                        acd.call_ended(&call, now);
                    }
                }
                Op::Advance(s) => {
                    now += Duration::from_secs(s);
                    if acd.poll_timeout().is_some_and(|t| t <= now) {
                        acd.handle_timeout(now);
                    }
                }
            }
            w.drain(&mut acd)?;
            // An agent shown reserved or ringing has a live offer the SIP side knows of.
            for agent in AGENTS {
                if matches!(acd.agent_state(agent), AgentState::Reserved | AgentState::Ringing) {
                    prop_assert!(acd.agent_of_offer(agent).is_some(), "{agent} rings for nothing");
                }
            }
        }

        // From here nobody answers: withdrawn offers end as cancelled (487), connected calls
        // hang up, and time runs until nothing is due.
        for call in std::mem::take(&mut w.connected) {
            acd.call_ended(&call, now);
        }
        for _ in 0..1000 {
            w.drain(&mut acd)?;
            for (call, agent) in std::mem::take(&mut w.offers) {
                acd.offer_ended(&call, &agent, OfferEnd::Declined { status: 487 }, now);
            }
            w.drain(&mut acd)?;
            match acd.poll_timeout() {
                Some(t) => {
                    now = now.max(t);
                    acd.handle_timeout(now);
                }
                None => break,
            }
        }
        w.drain(&mut acd)?;
        prop_assert!(acd.poll_timeout().is_none(), "still something due");
        for call in &w.arrived {
            prop_assert!(w.ended.contains_key(call), "{call} never ended");
        }
        prop_assert_eq!(w.ended.len(), w.arrived.len());
        for call in &w.refused {
            prop_assert!(
                matches!(w.ended.get(call), Some((Outcome::Refused | Outcome::TimedOut, _))),
                "{call} refused but ended {:?}", w.ended.get(call)
            );
        }
        for agent in AGENTS {
            prop_assert!(
                !matches!(acd.agent_state(agent), AgentState::Reserved | AgentState::Ringing),
                "{agent} left ringing"
            );
        }
    }
}
