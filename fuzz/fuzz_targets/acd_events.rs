//! The ACD driven by arbitrary event sequences: whatever the order, its bookkeeping must
//! agree with itself after every event, and once time runs on with nobody answering, every
//! call must have ended exactly once.
#![no_main]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use agent_edge::acd::config::{QueueConfig, Strategy};
use agent_edge::acd::{Acd, AcdEvent, CallType, Decision, FailCause, OfferEnd, Presence, Profile};
use libfuzzer_sys::fuzz_target;

const AGENTS: [&str; 4] = ["ann", "bea", "cat", "dan"];
const QUEUES: [&str; 3] = ["billing", "support", "general"];

fn queues() -> Vec<QueueConfig> {
    let queue = |name: &str, skill: Option<&str>, strategy, overflow: Option<&str>| QueueConfig {
        name: name.into(),
        skills: skill.map(|s| (s.to_owned(), 1)).into_iter().collect(),
        strategy,
        max_length: 3,
        max_wait_s: 20,
        overflow: overflow.map(str::to_owned),
        ring_timeout_s: 5,
        wrap_up_s: 3,
        ..QueueConfig::default()
    };
    vec![
        queue(
            "billing",
            Some("billing"),
            Strategy::LongestIdle,
            Some("general"),
        ),
        queue("support", Some("support"), Strategy::RoundRobin, None),
        queue("general", None, Strategy::BestSkill, None),
    ]
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let mut acd = Acd::new(queues());
    let mut arrived = 0usize;
    let mut offers: Vec<(String, String)> = Vec::new();
    let mut ended = BTreeSet::new();
    for pair in data.chunks(2) {
        let (op, arg) = (pair[0], usize::from(*pair.get(1).unwrap_or(&0)));
        let agent = AGENTS[arg % AGENTS.len()];
        let offer = (!offers.is_empty()).then(|| offers[arg % offers.len()].clone());
        match op % 10 {
            0 => {
                let queue = QUEUES[arg % QUEUES.len()];
                let call_type = CallType {
                    name: queue.into(),
                    queue: queue.into(),
                    priority: (arg % 3) as i32,
                };
                acd.call_arrived(&format!("call-{arrived}"), call_type, now);
                arrived += 1;
            }
            1 => acd.call_abandoned(&format!("call-{}", arg % arrived.max(1)), now),
            2 => {
                let skills = ["billing", "support"]
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| arg & (1 << i) != 0)
                    .map(|(_, s)| ((*s).to_owned(), 50))
                    .collect();
                let profile = Profile {
                    skills,
                    max_calls: 1 + (arg as u32 >> 2) % 2,
                };
                acd.sign_in(agent, profile, now);
            }
            3 => acd.sign_out(agent, now),
            4 => {
                let away = Presence::Away {
                    reason: "break".into(),
                };
                acd.set_presence(agent, away, now);
            }
            5 => acd.set_presence(agent, Presence::Available, now),
            6 => {
                if let Some((call, agent)) = offer {
                    offers.retain(|o| *o != (call.clone(), agent.clone()));
                    let end = match arg % 4 {
                        0 => OfferEnd::Answered,
                        1 => OfferEnd::Declined { status: 486 },
                        2 => OfferEnd::Failed {
                            cause: FailCause::Timeout,
                        },
                        _ => OfferEnd::Unacceptable { status: 488 },
                    };
                    acd.offer_ended(&call, &agent, end, now);
                }
            }
            7 => {
                if let Some((call, agent)) = offer {
                    acd.offer_ringing(&call, &agent, now);
                }
            }
            8 => acd.call_ended(&format!("call-{}", arg % arrived.max(1)), now),
            _ => {
                now += Duration::from_secs(arg as u64 % 30);
                acd.handle_timeout(now);
            }
        }
        drain(&mut acd, &mut offers, &mut ended);
        if let Err(e) = acd.audit() {
            panic!("{e}");
        }
    }
    // Connected calls hang up; nobody answers any more; every call still waiting must end.
    for call in acd.snapshot(now).calls {
        if call.state == "connected" {
            acd.call_ended(&call.call, now);
        }
    }
    for _ in 0..10_000 {
        drain(&mut acd, &mut offers, &mut ended);
        for (call, agent) in std::mem::take(&mut offers) {
            acd.offer_ended(&call, &agent, OfferEnd::Declined { status: 487 }, now);
        }
        drain(&mut acd, &mut offers, &mut ended);
        match acd.poll_timeout() {
            Some(t) => {
                now = now.max(t);
                acd.handle_timeout(now);
            }
            None => break,
        }
    }
    drain(&mut acd, &mut offers, &mut ended);
    assert!(acd.poll_timeout().is_none(), "something still due");
    assert_eq!(ended.len(), arrived, "every call ends once");
});

fn drain(acd: &mut Acd, offers: &mut Vec<(String, String)>, ended: &mut BTreeSet<String>) {
    while let Some(d) = acd.poll_decision() {
        if let Decision::Offer { call, agent } = d {
            offers.push((call, agent));
        }
    }
    while let Some(e) = acd.poll_event() {
        if let AcdEvent::CallEnded { call, .. } = e {
            assert!(ended.insert(call), "a call ended twice");
        }
    }
}
