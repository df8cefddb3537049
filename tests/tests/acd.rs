//! The ACD end to end: call types from the dialled number, queues with skills, longest-idle
//! selection, ring-no-answer, queue timeout and a caller leaving the queue, with SIPp as the
//! callers and the agents, and the admin API's live event stream watched throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use agent_edge_tests::{
    EventStream, RunningSipp, Sipp, System, admin_key, agent, caller, free_port, http, register,
    scenario,
};
use serde_json::Value;

/// Three call types by dialled number, each with its queue and skill.
const TYPES: &str = r#"
[[distributor.call_types]]
name = "billing"
queue = "billing"
request_user = { equals = "billing" }

[[distributor.call_types]]
name = "support"
queue = "support"
request_user = { equals = "support" }

[[distributor.call_types]]
name = "sales"
queue = "sales"
request_user = { equals = "sales" }
"#;

fn queues(extra: &str) -> String {
    ["billing", "support", "sales"]
        .iter()
        .map(|q| {
            format!("\n[[distributor.queues]]\nname = \"{q}\"\nskills = {{ {q} = 10 }}\n{extra}\n")
        })
        .collect()
}

struct Acd {
    sys: System,
    key: String,
    admin: std::net::SocketAddr,
    events: EventStream,
}

impl Acd {
    fn start(queue_extra: &str) -> Acd {
        let mut sys = System::start(&format!("{TYPES}{}", queues(queue_extra)));
        let key = admin_key(sys.path());
        let admin = sys.edge.addr("distributor.admin");
        let events = EventStream::subscribe(admin, &key);
        Acd {
            sys,
            key,
            admin,
            events,
        }
    }

    /// Stores the agent with its skills (level 50 each).
    fn create_agent(&self, id: &str, skills: &[&str]) {
        let skills: Vec<String> = skills.iter().map(|s| format!("\"{s}\":50")).collect();
        let body = format!(
            r#"{{"id":"{id}","name":"{id}","skills":{{{}}},"max_calls":1}}"#,
            skills.join(",")
        );
        let (status, text) = http(self.admin, "POST", "/agents", Some(&self.key), Some(&body));
        assert_eq!(status, 201, "{text}");
    }

    /// An agent SIPp that answers every call, registered as `id`.
    fn answering_agent(&mut self, id: &str, scenario_file: &Path) -> RunningSipp {
        let (port, sipp) = agent(
            scenario_file.to_str().unwrap(),
            self.sys.path(),
            id,
            1000,
            &[],
        );
        self.register(id, port);
        sipp
    }

    fn register(&mut self, id: &str, port: u16) {
        let (udp, dir) = (self.sys.buffer_udp, self.sys.dir.path().to_owned());
        register(&mut self.sys.edge, &dir, udp, id, port, false);
    }

    fn set_away(&self, id: &str) {
        let (status, text) = http(
            self.admin,
            "PUT",
            &format!("/agents/{id}/presence"),
            Some(&self.key),
            Some(r#"{"state":"away","reason":"lunch"}"#),
        );
        assert_eq!(status, 204, "{text}");
    }

    fn set_available(&self, id: &str) {
        let (status, text) = http(
            self.admin,
            "PUT",
            &format!("/agents/{id}/presence"),
            Some(&self.key),
            Some(r#"{"state":"available"}"#),
        );
        assert_eq!(status, 204, "{text}");
    }

    fn live(&self) -> Value {
        let (status, text) = http(self.admin, "GET", "/live", Some(&self.key), None);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }
}

/// The agent scenario that answers, and fails any INVITE whose queue it has no skill for.
fn skilled_agent_scenario(dir: &Path, id: &str, skills: &[&str]) -> std::path::PathBuf {
    let text = std::fs::read_to_string(scenario("agent_answer.xml")).unwrap();
    let check = format!(
        "<recv request=\"INVITE\" crlf=\"true\">\n    <action>\n      \
         <ereg regexp=\"X-AE-Queue: ({})\" search_in=\"msg\" check_it=\"true\" assign_to=\"queue\"/>\n    \
         </action>\n  </recv>\n  <Reference variables=\"queue\"/>",
        skills.join("|")
    );
    let text = text.replacen("<recv request=\"INVITE\" crlf=\"true\"/>", &check, 1);
    assert!(text.contains("X-AE-Queue"));
    let path = dir.join(format!("agent_{id}.xml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// SIPp callers dialling `types` in turn (the request-URI user of each call).
fn typed_callers(sys: &System, name: &str, types: &[&str]) -> Sipp {
    let calls = sys.path().join(format!("{name}.csv"));
    let lines: Vec<String> = types.iter().map(|t| format!("{t};\n")).collect();
    std::fs::write(&calls, format!("SEQUENTIAL\n{}", lines.concat())).unwrap();
    Sipp::new("caller_typed.xml", free_port(), sys.path(), name)
        .arg(&["-inf", calls.to_str().unwrap()])
        .to(sys.dist_udp)
        .arg(&["-d", "200", "-m", &types.len().to_string()])
}

fn events_of(events: &[Value], kind: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["type"] == kind)
        .cloned()
        .collect()
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

#[test]
fn thirty_calls_of_three_types_reach_skilled_agents_longest_idle_first() {
    let mut acd = Acd::start("");
    let skills: BTreeMap<&str, [&str; 2]> = BTreeMap::from([
        ("alice", ["billing", "support"]),
        ("bob", ["support", "sales"]),
        ("carol", ["sales", "billing"]),
    ]);
    let mut agents = Vec::new();
    for (id, sk) in &skills {
        acd.create_agent(id, sk);
        let file = skilled_agent_scenario(acd.sys.path(), id, sk);
        agents.push((*id, acd.answering_agent(id, &file)));
    }
    // Thirty calls of the three types, six a second, each talking 1.5 s: more than three
    // agents can take at once, so calls wait in their queues.
    let types = ["billing", "support", "sales"].repeat(10);
    let run = typed_callers(&acd.sys, "callers", &types)
        .arg(&["-d", "1500", "-r", "6", "-l", "30"])
        .run();
    run.assert_ok("thirty callers");
    assert_eq!((run.successful, run.failed), (30, 0));

    // What the agents saw: each INVITE names a queue the agent has the skill for (their
    // scenarios fail the call otherwise), and the thirty calls are shared among them.
    let mut answered = 0;
    for (id, sipp) in &agents {
        let invites: Vec<String> = sipp
            .received_so_far()
            .into_iter()
            .filter(|m| m.starts_with("INVITE "))
            .collect();
        for invite in &invites {
            let queue = invite
                .lines()
                .find_map(|l| l.strip_prefix("X-AE-Queue: "))
                .unwrap_or_default()
                .trim();
            assert!(skills[id].contains(&queue), "{id} was offered {queue}");
        }
        answered += invites.len();
    }
    assert_eq!(answered, 30, "every call reached one agent");

    // The event stream: longest idle first. Agents join the idle line as they become
    // available (in sign-in order, then as their calls end) and leave it when offered a call;
    // each offer must go to the first agent in line who has the call's skill.
    let events = acd.events.all();
    let mut line: Vec<String> = Vec::new();
    let mut queue_of: BTreeMap<String, String> = BTreeMap::new();
    let mut offers = 0;
    for e in &events {
        match e["type"].as_str().unwrap_or_default() {
            "agent" if e["state"] == "available" => {
                let id = s(&e["agent"]);
                if !line.contains(&id) {
                    line.push(id);
                }
            }
            "call-queued" => {
                queue_of.insert(s(&e["call"]), s(&e["queue"]));
            }
            "call-offered" => {
                let (call, agent) = (s(&e["call"]), s(&e["agent"]));
                let queue = &queue_of[&call];
                let expected = line
                    .iter()
                    .find(|a| skills[a.as_str()].contains(&queue.as_str()));
                assert_eq!(
                    Some(&agent),
                    expected,
                    "{call} ({queue}) offered with idle line {line:?}"
                );
                line.retain(|a| *a != agent);
                offers += 1;
            }
            "call-ended" => {
                assert_eq!(e["outcome"], "answered", "{e}");
                let (agent, queue) = (s(&e["agent"]), s(&e["queue"]));
                assert!(skills[agent.as_str()].contains(&queue.as_str()), "{e}");
            }
            _ => {}
        }
    }
    assert_eq!(offers, 30, "one offer per call, none declined or withdrawn");

    // Queue depth rose while callers waited and fell back to zero; every agent went through
    // reserved or ringing, on a call, and available again.
    let queue_events = events_of(&events, "queue");
    let deepest = queue_events
        .iter()
        .map(|q| q["depth"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        deepest >= 2,
        "queues never held two calls: {queue_events:?}"
    );
    for q in ["billing", "support", "sales"] {
        let last = queue_events.iter().rev().find(|e| e["queue"] == q).unwrap();
        assert_eq!((&last["depth"], &last["offering"]), (&0.into(), &0.into()));
    }
    for id in skills.keys() {
        let states: BTreeSet<String> = events_of(&events, "agent")
            .iter()
            .filter(|e| e["agent"] == *id)
            .map(|e| s(&e["state"]))
            .collect();
        for state in ["reserved", "ringing", "on-call", "available"] {
            assert!(states.contains(state), "{id} never {state}: {states:?}");
        }
    }
}

#[test]
fn ring_no_answer_moves_the_call_to_the_next_agent_and_makes_the_first_away() {
    let mut acd = Acd::start("ring_timeout_s = 2");
    acd.create_agent("slow", &["support"]);
    acd.create_agent("quick", &["support"]);
    // `slow` signs in first, so it is idle longest and gets the call first.
    let (port, slow) = agent("agent_ring_cancel.xml", acd.sys.path(), "slow", 1, &[]);
    acd.register("slow", port);
    let (port, quick) = agent("agent_answer.xml", acd.sys.path(), "quick", 1, &[]);
    acd.register("quick", port);
    typed_callers(&acd.sys, "caller", &["support"])
        .run()
        .assert_ok("the caller, answered by the second agent");
    slow.wait()
        .assert_ok("slow: rang, then the offer was withdrawn");
    quick.wait().assert_ok("quick: answered");
    let away = acd.events.wait_for("slow made away", |e| {
        e["type"] == "agent" && e["agent"] == "slow" && e["state"] == "away"
    });
    assert_eq!(away["reason"], "no answer");
    let offered: Vec<String> = events_of(&acd.events.all(), "call-offered")
        .iter()
        .map(|e| s(&e["agent"]))
        .collect();
    assert_eq!(offered, ["slow", "quick"]);
    let live = acd.live();
    let slow_now = live["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "slow")
        .unwrap();
    assert_eq!(slow_now["state"], "away", "{live}");
}

#[test]
fn queue_timeout_gives_the_configured_response() {
    let mut acd = Acd::start("max_wait_s = 2\ntimeout_status = 503");
    acd.create_agent("alice", &["support"]);
    // Signed in but away: the call waits (someone could take it) until the queue gives up.
    acd.register("alice", free_port());
    acd.set_away("alice");
    caller(
        "caller_queue_timeout.xml",
        acd.sys.path(),
        "caller",
        acd.sys.dist_udp,
    )
    .arg(&["-m", "1"])
    .run()
    .assert_ok("caller: ringback, then 503 with the reason");
    let ended = acd
        .events
        .wait_for("the call's end", |e| e["type"] == "call-ended");
    assert_eq!(
        (&ended["outcome"], &ended["reason"]),
        (&"timed-out".into(), &"queue timeout".into())
    );
    assert!(ended["waited_ms"].as_u64().unwrap() >= 2000, "{ended}");
    let depths: Vec<u64> = events_of(&acd.events.all(), "queue")
        .iter()
        .filter(|e| e["queue"] == "support")
        .map(|e| e["depth"].as_u64().unwrap())
        .collect();
    assert_eq!(depths, [1, 0]);
}

#[test]
fn a_caller_who_cancels_while_queued_leaves_the_queue() {
    let mut acd = Acd::start("");
    acd.create_agent("alice", &["support"]);
    let (port, alice) = agent("agent_answer.xml", acd.sys.path(), "alice", 1, &[]);
    acd.register("alice", port);
    acd.set_away("alice");
    caller(
        "caller_cancel.xml",
        acd.sys.path(),
        "leaver",
        acd.sys.dist_udp,
    )
    .arg(&["-m", "1"])
    .run()
    .assert_ok("the caller cancels during the queue's ringback: 200, 487");
    let ended = acd
        .events
        .wait_for("the call's end", |e| e["type"] == "call-ended");
    assert_eq!(ended["outcome"], "abandoned", "{ended}");
    assert_eq!(acd.live()["calls"], Value::Array(vec![]));
    // Back from lunch: the next caller is answered, and the one who left is never offered.
    acd.set_available("alice");
    typed_callers(&acd.sys, "next", &["support"])
        .run()
        .assert_ok("the next caller");
    alice.wait().assert_ok("alice answered one call");
    let offers = events_of(&acd.events.all(), "call-offered");
    assert_eq!(offers.len(), 1, "{offers:?}");
}

#[test]
fn an_agent_who_signs_out_while_ringing_loses_the_caller_nothing() {
    let mut acd = Acd::start("");
    acd.create_agent("leaving", &["support"]);
    acd.create_agent("staying", &["support"]);
    let (leaving_port, leaving) = agent("agent_ring_cancel.xml", acd.sys.path(), "leaving", 1, &[]);
    acd.register("leaving", leaving_port);
    let (port, staying) = agent("agent_answer.xml", acd.sys.path(), "staying", 1, &[]);
    acd.register("staying", port);
    let call = typed_callers(&acd.sys, "caller", &["support"]).spawn();
    acd.events.wait_for("the offer to the first agent", |e| {
        e["type"] == "call-offered" && e["agent"] == "leaving"
    });
    // The ringing agent signs out (REGISTER with Expires: 0).
    let unregister = acd.sys.path().join("agent_unregister.xml");
    let text = std::fs::read_to_string(scenario("agent_register.xml")).unwrap();
    std::fs::write(&unregister, text.replace("Expires: 3600", "Expires: 0")).unwrap();
    let token = agent_edge_tests::issue_token(acd.sys.path(), "leaving");
    Sipp::new(
        unregister.to_str().unwrap(),
        free_port(),
        acd.sys.path(),
        "unregister",
    )
    .to(acd.sys.buffer_udp)
    .token_file(acd.sys.path(), &token)
    .key("agent", "leaving")
    .key("contact_port", &leaving_port.to_string())
    .key("contact_transport", "")
    .arg(&["-m", "1"])
    .run()
    .assert_ok("sign-out");
    call.wait()
        .assert_ok("the caller, answered by the agent who stayed");
    leaving
        .wait()
        .assert_ok("leaving: the offer was withdrawn with CANCEL");
    staying.wait().assert_ok("staying: answered");
    let offered: Vec<String> = events_of(&acd.events.all(), "call-offered")
        .iter()
        .map(|e| s(&e["agent"]))
        .collect();
    assert_eq!(offered, ["leaving", "staying"]);
    acd.events.wait_for("the first agent offline", |e| {
        e["type"] == "agent" && e["agent"] == "leaving" && e["state"] == "offline"
    });
}

#[test]
fn a_queued_caller_hears_the_queue_announcement_as_early_media() {
    // A µ-law WAV file: what the caller receives must be its bytes, in order, looped.
    let dir = agent_edge_tests::test_dir();
    let audio: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let wav = dir.path().join("queue.wav");
    std::fs::write(&wav, wav_file(&audio)).unwrap();
    let mut acd = Acd::start(&format!(
        "max_wait_s = 3\nringback = \"183\"\nannouncement = \"{}\"",
        wav.display()
    ));
    acd.create_agent("alice", &["support"]);
    acd.register("alice", free_port());
    acd.set_away("alice");
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    rtp.set_read_timeout(Some(std::time::Duration::from_millis(700)))
        .unwrap();
    let rtp_port = rtp.local_addr().unwrap().port().to_string();
    let call = caller(
        "caller_early_media.xml",
        acd.sys.path(),
        "caller",
        acd.sys.dist_udp,
    )
    .key("rtp_port", &rtp_port)
    .arg(&["-m", "1"])
    .spawn();
    let mut packets = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = rtp.recv(&mut buf) {
        packets.push(buf[..n].to_vec());
    }
    call.wait()
        .assert_ok("the caller: 183 with PCMU, then the queue's timeout");
    // Three seconds of 20 ms packets were due; a loaded machine may send fewer, not none.
    assert!(packets.len() >= 25, "{} RTP packets", packets.len());
    let ssrc = &packets[0][8..12];
    let mut played = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        assert_eq!(p[0], 0x80, "RTP version 2");
        assert_eq!(p[1] & 0x7f, 0, "PCMU");
        assert_eq!(&p[8..12], ssrc);
        let seq = u16::from_be_bytes([p[2], p[3]]);
        let ts = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        let first_seq = u16::from_be_bytes([packets[0][2], packets[0][3]]);
        let first_ts =
            u32::from_be_bytes([packets[0][4], packets[0][5], packets[0][6], packets[0][7]]);
        assert_eq!(seq, first_seq.wrapping_add(i as u16));
        assert_eq!(ts, first_ts.wrapping_add(160 * i as u32));
        played.extend_from_slice(&p[12..]);
    }
    let expected: Vec<u8> = audio.iter().copied().cycle().take(played.len()).collect();
    assert_eq!(played, expected, "the announcement's bytes, looped");
    // The call is over: nothing more is played.
    assert!(rtp.recv(&mut buf).is_err(), "RTP after the call ended");
}

/// A WAV file of µ-law samples at 8 kHz, mono.
fn wav_file(ulaw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + ulaw.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&7u16.to_le_bytes()); // µ-law
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(ulaw.len() as u32).to_le_bytes());
    out.extend_from_slice(ulaw);
    out
}
