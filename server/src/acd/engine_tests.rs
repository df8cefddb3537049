//! The ACD's rules, one scenario each, on a simulated clock.

use super::*;

fn queue(name: &str) -> QueueConfig {
    QueueConfig {
        name: name.into(),
        ..QueueConfig::default()
    }
}

fn skilled(skills: &[(&str, u8)]) -> Profile {
    Profile {
        skills: skills.iter().map(|(s, l)| ((*s).into(), *l)).collect(),
        max_calls: 1,
    }
}

fn ty(queue: &str, priority: i32) -> CallType {
    CallType {
        name: queue.into(),
        queue: queue.into(),
        priority,
    }
}

struct Clock {
    t0: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock { t0: Instant::now() }
    }
    fn at(&self, s: u64) -> Instant {
        self.t0 + Duration::from_secs(s)
    }
}

fn decisions(acd: &mut Acd) -> Vec<Decision> {
    std::iter::from_fn(|| acd.poll_decision()).collect()
}

fn offer(call: &str, agent: &str) -> Decision {
    Decision::Offer {
        call: call.into(),
        agent: agent.into(),
    }
}

fn ended(acd: &mut Acd) -> Vec<(String, Outcome, String)> {
    std::iter::from_fn(|| acd.poll_event())
        .filter_map(|e| match e {
            AcdEvent::CallEnded {
                call,
                outcome,
                reason,
                ..
            } => Some((call, outcome, reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn longest_idle_agent_gets_the_call() {
    let clock = Clock::new();
    let mut acd = Acd::new(vec![queue("q")]);
    acd.sign_in("bob", skilled(&[]), clock.at(1));
    acd.sign_in("alice", skilled(&[]), clock.at(0));
    acd.call_arrived("c1", ty("q", 0), clock.at(2));
    assert_eq!(decisions(&mut acd), vec![offer("c1", "alice")]);
    acd.offer_ended("c1", "alice", OfferEnd::Answered, clock.at(3));
    acd.call_arrived("c2", ty("q", 0), clock.at(3));
    assert_eq!(decisions(&mut acd), vec![offer("c2", "bob")]);
    acd.offer_ended("c2", "bob", OfferEnd::Answered, clock.at(4));
    // Bob finished first, so he has been idle longest.
    acd.call_ended("c2", clock.at(5));
    acd.call_ended("c1", clock.at(6));
    acd.call_arrived("c3", ty("q", 0), clock.at(7));
    assert_eq!(decisions(&mut acd), vec![offer("c3", "bob")]);
}

#[test]
fn calls_wait_for_a_skilled_agent_and_higher_priority_goes_first() {
    let clock = Clock::new();
    let mut acd = Acd::new(vec![QueueConfig {
        skills: [("billing".into(), 50)].into(),
        ..queue("billing")
    }]);
    acd.sign_in("novice", skilled(&[("billing", 20)]), clock.at(0));
    acd.call_arrived("c1", ty("billing", 0), clock.at(1));
    let refused = decisions(&mut acd);
    assert!(
        matches!(&refused[..], [Decision::Refuse { status: 480, .. }]),
        "{refused:?}"
    );
    acd.sign_in("expert", skilled(&[("billing", 90)]), clock.at(2));
    acd.call_arrived("c2", ty("billing", 0), clock.at(3));
    acd.offer_ended("c2", "expert", OfferEnd::Answered, clock.at(3));
    acd.call_arrived("low", ty("billing", 0), clock.at(4));
    acd.call_arrived("high", ty("billing", 5), clock.at(5));
    let d = decisions(&mut acd);
    assert_eq!(
        d[1..],
        [
            Decision::Queued { call: "low".into() },
            Decision::Queued {
                call: "high".into()
            }
        ]
    );
    acd.call_ended("c2", clock.at(6));
    assert_eq!(decisions(&mut acd), vec![offer("high", "expert")]);
}

#[test]
fn ring_no_answer_makes_the_agent_away_and_requeues_at_the_head() {
    let clock = Clock::new();
    let mut acd = Acd::new(vec![QueueConfig {
        ring_timeout_s: 10,
        ..queue("q")
    }]);
    acd.sign_in("alice", skilled(&[]), clock.at(0));
    acd.sign_in("bob", skilled(&[]), clock.at(1));
    acd.call_arrived("c1", ty("q", 0), clock.at(2));
    acd.offer_ended("c1", "alice", OfferEnd::Answered, clock.at(2));
    acd.call_arrived("c2", ty("q", 0), clock.at(3));
    acd.call_arrived("c3", ty("q", 0), clock.at(3));
    acd.offer_ringing("c2", "bob", clock.at(3));
    assert_eq!(acd.agent_state("bob"), AgentState::Ringing);
    assert_eq!(acd.poll_timeout(), Some(clock.at(13)));
    decisions(&mut acd);
    acd.handle_timeout(clock.at(13));
    assert_eq!(
        decisions(&mut acd),
        vec![Decision::Withdraw {
            call: "c2".into(),
            agent: "bob".into()
        }]
    );
    assert_eq!(acd.agent_state("bob"), AgentState::Ringing);
    acd.offer_ended(
        "c2",
        "bob",
        OfferEnd::Declined { status: 487 },
        clock.at(13),
    );
    assert_eq!(acd.agent_state("bob"), AgentState::Away);
    // c2 is back at the head: alice's next free moment goes to c2, not c3.
    acd.call_ended("c1", clock.at(14));
    assert_eq!(
        decisions(&mut acd),
        vec![Decision::Queued { call: "c2".into() }, offer("c2", "alice")]
    );
}

#[test]
fn a_late_answer_racing_the_withdrawal_stands() {
    let clock = Clock::new();
    let mut acd = Acd::new(vec![QueueConfig {
        ring_timeout_s: 10,
        ..queue("q")
    }]);
    acd.sign_in("alice", skilled(&[]), clock.at(0));
    acd.call_arrived("c1", ty("q", 0), clock.at(0));
    acd.handle_timeout(clock.at(10));
    acd.offer_ended("c1", "alice", OfferEnd::Answered, clock.at(10));
    assert_eq!(acd.agent_state("alice"), AgentState::OnCall);
    acd.call_ended("c1", clock.at(20));
    assert_eq!(acd.agent_state("alice"), AgentState::Available);
}

#[test]
fn a_decline_goes_to_the_next_agent_and_then_refuses() {
    let clock = Clock::new();
    let mut acd = Acd::new(vec![queue("q")]);
    acd.sign_in("alice", skilled(&[]), clock.at(0));
    acd.sign_in("bob", skilled(&[]), clock.at(1));
    acd.call_arrived("c1", ty("q", 0), clock.at(2));
    acd.offer_ended(
        "c1",
        "alice",
        OfferEnd::Declined { status: 486 },
        clock.at(2),
    );
    acd.offer_ended("c1", "bob", OfferEnd::Declined { status: 603 }, clock.at(2));
    let d = decisions(&mut acd);
    assert_eq!(d[..2], [offer("c1", "alice"), offer("c1", "bob")]);
    assert!(
        matches!(&d[2..], [Decision::Refuse { status: 480, .. }]),
        "{d:?}"
    );
    assert_eq!(acd.agent_state("alice"), AgentState::Available);
}

#[test]
fn sign_out_mid_offer_moves_the_call_to_the_next_agent() {
    let clock = Clock::new();
    let mut acd = Acd::new(vec![queue("q")]);
    acd.sign_in("alice", skilled(&[]), clock.at(0));
    acd.sign_in("bob", skilled(&[]), clock.at(1));
    acd.call_arrived("c1", ty("q", 0), clock.at(2));
    acd.sign_out("alice", clock.at(3));
    acd.offer_ended(
        "c1",
        "alice",
        OfferEnd::Failed {
            cause: FailCause::EdgeGone,
        },
        clock.at(3),
    );
    assert_eq!(
        decisions(&mut acd),
        vec![
            offer("c1", "alice"),
            Decision::Withdraw {
                call: "c1".into(),
                agent: "alice".into()
            },
            offer("c1", "bob")
        ]
    );
    assert_eq!(acd.agent_state("alice"), AgentState::Offline);
}

#[test]
fn queue_timeout_overflows_then_answers_the_configured_status() {
    let clock = Clock::new();
    let mut acd = Acd::new(vec![
        QueueConfig {
            max_wait_s: 30,
            overflow: Some("general".into()),
            ..queue("sales")
        },
        QueueConfig {
            max_wait_s: 60,
            timeout_status: 408,
            ..queue("general")
        },
    ]);
    acd.sign_in("alice", skilled(&[]), clock.at(0));
    acd.set_presence(
        "alice",
        Presence::Away {
            reason: "lunch".into(),
        },
        clock.at(0),
    );
    acd.call_arrived("c1", ty("sales", 0), clock.at(0));
    assert_eq!(acd.poll_timeout(), Some(clock.at(30)));
    acd.handle_timeout(clock.at(30));
    assert_eq!(acd.poll_timeout(), Some(clock.at(90)));
    acd.handle_timeout(clock.at(90));
    let d = decisions(&mut acd);
    assert_eq!(
        d,
        vec![
            Decision::Queued { call: "c1".into() },
            Decision::Refuse {
                call: "c1".into(),
                status: 408,
                reason: "queue timeout".into()
            }
        ]
    );
    assert_eq!(
        ended(&mut acd),
        vec![("c1".into(), Outcome::TimedOut, "queue timeout".into())]
    );
}

#[test]
fn a_full_queue_refuses_with_its_status_and_a_caller_can_leave_the_queue() {
    let clock = Clock::new();
    let mut acd = Acd::new(vec![QueueConfig {
        max_length: 1,
        full_status: 503,
        ..queue("q")
    }]);
    acd.sign_in("alice", skilled(&[]), clock.at(0));
    acd.set_presence(
        "alice",
        Presence::Away {
            reason: "meeting".into(),
        },
        clock.at(0),
    );
    acd.call_arrived("c1", ty("q", 0), clock.at(1));
    acd.call_arrived("c2", ty("q", 0), clock.at(2));
    acd.call_abandoned("c1", clock.at(3));
    acd.call_arrived("c3", ty("q", 0), clock.at(4));
    let d = decisions(&mut acd);
    assert_eq!(d.len(), 3, "{d:?}");
    assert!(matches!(&d[1], Decision::Refuse { call, status: 503, .. } if call == "c2"));
    assert_eq!(d[2], Decision::Queued { call: "c3".into() });
    let snapshot = acd.snapshot(clock.at(10));
    assert_eq!(snapshot.queues[0].depth, 1);
    assert_eq!(snapshot.queues[0].longest_wait_ms, 6000);
    let outcomes: Vec<_> = ended(&mut acd).into_iter().map(|e| e.1).collect();
    assert_eq!(outcomes, vec![Outcome::Refused, Outcome::Abandoned]);
}

#[test]
fn wrap_up_holds_the_agent_then_frees_it() {
    let clock = Clock::new();
    let mut acd = Acd::new(vec![QueueConfig {
        wrap_up_s: 30,
        ..queue("q")
    }]);
    acd.sign_in("alice", skilled(&[]), clock.at(0));
    acd.call_arrived("c1", ty("q", 0), clock.at(0));
    acd.offer_ended("c1", "alice", OfferEnd::Answered, clock.at(1));
    acd.call_ended("c1", clock.at(10));
    assert_eq!(acd.agent_state("alice"), AgentState::WrapUp);
    acd.call_arrived("c2", ty("q", 0), clock.at(11));
    assert_eq!(acd.poll_timeout(), Some(clock.at(40)));
    decisions(&mut acd);
    acd.handle_timeout(clock.at(40));
    assert_eq!(decisions(&mut acd), vec![offer("c2", "alice")]);
}

#[test]
fn an_agent_with_two_lines_gets_one_offer_at_a_time() {
    let clock = Clock::new();
    let mut acd = Acd::new(vec![queue("q")]);
    acd.sign_in(
        "alice",
        Profile {
            skills: BTreeMap::new(),
            max_calls: 2,
        },
        clock.at(0),
    );
    acd.call_arrived("c1", ty("q", 0), clock.at(1));
    acd.call_arrived("c2", ty("q", 0), clock.at(1));
    assert_eq!(decisions(&mut acd)[0], offer("c1", "alice"));
    acd.offer_ended("c1", "alice", OfferEnd::Answered, clock.at(2));
    assert_eq!(decisions(&mut acd), vec![offer("c2", "alice")]);
    acd.offer_ended("c2", "alice", OfferEnd::Answered, clock.at(3));
    acd.call_arrived("c3", ty("q", 0), clock.at(4));
    assert_eq!(
        decisions(&mut acd),
        vec![Decision::Queued { call: "c3".into() }]
    );
}

#[test]
fn strategies_choose_as_named() {
    let clock = Clock::new();
    let run = |strategy: Strategy| -> Vec<String> {
        let mut acd = Acd::new(vec![QueueConfig {
            strategy,
            skills: [("s".into(), 1)].into(),
            ..queue("q")
        }]);
        acd.sign_in("ann", skilled(&[("s", 10)]), clock.at(2));
        acd.sign_in("cat", skilled(&[("s", 90)]), clock.at(1));
        acd.sign_in("bea", skilled(&[("s", 50)]), clock.at(0));
        let mut chosen = Vec::new();
        for i in 0..4 {
            let call = format!("c{i}");
            acd.call_arrived(&call, ty("q", 0), clock.at(10 + i));
            let Some(Decision::Offer { agent, .. }) = acd.poll_decision() else {
                panic!("no offer for {call}");
            };
            acd.offer_ended(&call, &agent, OfferEnd::Answered, clock.at(10 + i));
            acd.call_ended(&call, clock.at(10 + i));
            chosen.push(agent);
        }
        chosen
    };
    assert_eq!(run(Strategy::LongestIdle), ["bea", "cat", "ann", "bea"]);
    assert_eq!(run(Strategy::RoundRobin), ["ann", "bea", "cat", "ann"]);
    assert_eq!(run(Strategy::BestSkill), ["cat", "cat", "cat", "cat"]);
    assert_eq!(run(Strategy::FewestCalls), ["bea", "cat", "ann", "bea"]);
}

#[test]
fn shutting_down_refuses_the_waiting_calls_and_leaves_connected_ones() {
    let clock = Clock::new();
    let mut acd = Acd::new(vec![queue("q")]);
    acd.sign_in("alice", skilled(&[]), clock.at(0));
    acd.call_arrived("c1", ty("q", 0), clock.at(1));
    acd.offer_ended("c1", "alice", OfferEnd::Answered, clock.at(2));
    acd.call_arrived("c2", ty("q", 0), clock.at(3));
    acd.call_arrived("c3", ty("q", 0), clock.at(4));
    decisions(&mut acd);
    ended(&mut acd);
    acd.refuse_waiting(503, "shutting down", clock.at(5));
    let refused: Vec<_> = decisions(&mut acd)
        .into_iter()
        .filter_map(|d| match d {
            Decision::Refuse { call, status, .. } => Some((call, status)),
            _ => None,
        })
        .collect();
    assert_eq!(refused, vec![("c2".into(), 503), ("c3".into(), 503)]);
    assert_eq!(acd.agent_of("c1"), Some("alice"));
    acd.audit().unwrap();
}
