//! Both role cores together on a simulated network and clock, with no sockets and no
//! runtime (str0m's two-peers-and-a-clock pattern): a distributor core and a buffer server
//! core joined by a simulated tunnel, a scripted caller on one side and scripted desk-phone
//! agents (and a browser, str0m answering the bridge's WebRTC offer) on the other. Each
//! scenario runs in milliseconds; timers advance the clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use agent_edge::acd::config::QueueConfig;
use agent_edge::admin::keys::KeyRing;
use agent_edge::admin::tokens::{TokenIssuer, WallClock};
use agent_edge::app::status::Status;
use agent_edge::buffer::service::{self as buffer, Buffer};
use agent_edge::config::{BufferConfig, DistributorConfig, SipConfig};
use agent_edge::distributor::service::{self as distributor, Distributor};
use agent_edge::driver::Core;
use agent_edge::handoff::Mode;
use agent_edge::records::RecordOutput;
use agent_edge::sip::{ConnId, SipMessage, Target};
use proto_tunnel::Frame;

const CALLER: &str = "192.0.2.10:5060";
const DIST_UDP: &str = "198.51.100.1:5060";
const EDGE_UDP: &str = "198.51.100.2:5070";
/// The tunnel's connection id on each side.
const DIST_TUNNEL: ConnId = ConnId(1);
const EDGE_TUNNEL: ConnId = ConnId(2);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
                   m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// A message as a peer sends it: headers with a correct Content-Length.
fn message(head: &str, body: &str) -> SipMessage {
    let text = format!("{head}Content-Length: {}\r\n\r\n{body}", body.len());
    SipMessage::parse(text.as_bytes()).unwrap()
}

/// The network, the clock and what each peer received.
struct Sim {
    now: Instant,
    dist: Distributor,
    edge: Buffer,
    tunnel_up: bool,
    /// SIP the caller received, in order.
    caller: Vec<SipMessage>,
    /// SIP each agent phone received, by its address.
    agents: HashMap<SocketAddr, Vec<SipMessage>>,
    status: Vec<Status>,
    /// Call records the distributor finished.
    records: Vec<agent_edge::records::CallRecord>,
    /// Frames the distributor sent into tunnels other than edge-1's, which the test plays.
    others: Vec<(ConnId, Frame)>,
    issuer: TokenIssuer,
    _keys: tempfile::TempDir,
    /// Callers' ports asked for and not yet answered, when the test answers them itself (a
    /// relay's port takes a round trip); otherwise each is answered at once.
    deferred_ports: Option<Vec<u64>>,
    /// Agent-side ports (a desk phone's anchored media) are refused when asked for.
    refuse_agent_ports: bool,
    /// Calls whose ports the edge closed.
    closed_ports: Vec<u64>,
}

impl Sim {
    fn new(mode: Mode, queue: QueueConfig) -> Sim {
        Sim::build(mode, queue, None)
    }

    /// A sim whose edge bridges browser agents' media, with WebRTC on `webrtc`.
    fn with_bridge(mode: Mode, queue: QueueConfig) -> Sim {
        let media = agent_edge::buffer::media::CallMedia::new(
            addr("198.51.100.2:16100"),
            Duration::from_secs(60),
        );
        Sim::build(mode, queue, Some(media))
    }

    fn build(
        mode: Mode,
        queue: QueueConfig,
        media: Option<agent_edge::buffer::media::CallMedia>,
    ) -> Sim {
        let keys = tempfile::tempdir().unwrap();
        let ring = KeyRing::load(keys.path(), 3600, unix_now()).unwrap();
        let ring = Arc::new(RwLock::new(ring));
        let issuer = TokenIssuer::new(ring.clone(), "agent-edge", "agent-edge-agents");
        let edges = TokenIssuer::new(ring, "agent-edge", "agent-edge-edges");
        let now = Instant::now();
        let dist_config = DistributorConfig {
            default_queue: queue.name.clone(),
            queues: vec![queue],
            ..DistributorConfig::default()
        };
        let dist = Distributor::new(
            dist_config,
            &SipConfig::default(),
            distributor::BoundAddrs {
                udp: addr(DIST_UDP),
                tcp: addr(DIST_UDP),
                tls: addr("198.51.100.1:5061"),
            },
            distributor::Identities {
                verifier: serde_json::to_string(&issuer.verifier_settings()).unwrap(),
                revoked: Vec::new(),
                edge_issuer: edges,
                profiles: None,
                sip_passwords: None,
                agent_issuer: None,
                clock: WallClock::at(now, unix_now()),
            },
            None,
        );
        let edge = Buffer::new(
            BufferConfig {
                handoff: mode,
                ..BufferConfig::default()
            },
            &SipConfig::default(),
            buffer::BoundAddrs {
                udp: addr(EDGE_UDP),
                tcp: addr(EDGE_UDP),
                https: addr("198.51.100.2:8443"),
            },
            None,
            media,
            now,
        );
        let mut sim = Sim {
            now,
            dist,
            edge,
            tunnel_up: false,
            caller: Vec::new(),
            agents: HashMap::new(),
            status: Vec::new(),
            records: Vec::new(),
            others: Vec::new(),
            issuer,
            _keys: keys,
            deferred_ports: None,
            refuse_agent_ports: false,
            closed_ports: Vec::new(),
        };
        sim.connect_tunnel(mode);
        sim
    }

    /// The edge dials: both ends see the tunnel open, and the keys arrive.
    fn connect_tunnel(&mut self, mode: Mode) {
        self.tunnel_up = true;
        let now = self.now;
        self.edge
            .handle(buffer::Input::TunnelUp { conn: EDGE_TUNNEL }, now);
        self.dist.handle(
            distributor::Input::EdgeUp {
                conn: DIST_TUNNEL,
                edge_id: "edge-1".into(),
                handoffs: vec![mode.as_str().into()],
            },
            now,
        );
        self.pump();
        assert!(self.saw(&Status::TunnelUp {
            edge: "edge-1".into()
        }));
    }

    /// The tunnel dies under both ends.
    fn drop_tunnel(&mut self) {
        self.tunnel_up = false;
        let now = self.now;
        self.dist
            .handle(distributor::Input::EdgeDown { conn: DIST_TUNNEL }, now);
        self.edge
            .handle(buffer::Input::TunnelDown { conn: EDGE_TUNNEL }, now);
        self.pump();
    }

    /// Another edge's tunnel opens (its credential checked, as the transport does), played
    /// by the test.
    fn other_edge_up(&mut self, conn: ConnId, edge_id: &str) {
        let input = distributor::Input::EdgeUp {
            conn,
            edge_id: edge_id.into(),
            handoffs: vec!["tunnel".into()],
        };
        self.dist.handle(input, self.now);
        self.pump();
    }

    /// A frame from the other edge's tunnel.
    fn other_edge_sends(&mut self, conn: ConnId, frame: Frame) {
        let input = distributor::Input::Frame { conn, frame };
        self.dist.handle(input, self.now);
        self.pump();
    }

    /// The frames the distributor sent the other edge since the last call.
    fn take_other_edge_frames(&mut self, conn: ConnId) -> Vec<Frame> {
        let (mine, rest) = std::mem::take(&mut self.others)
            .into_iter()
            .partition(|(c, _)| *c == conn);
        self.others = rest;
        mine.into_iter().map(|(_, f)| f).collect()
    }

    fn saw(&self, status: &Status) -> bool {
        self.status.contains(status)
    }

    /// Delivers everything both cores want sent until the network is quiet.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(out) = self.dist.poll_output() {
                moved = true;
                match out {
                    distributor::Output::Sip { to, bytes } => {
                        assert_eq!(
                            to.addr,
                            addr(CALLER),
                            "the distributor only talks to the caller"
                        );
                        self.caller.push(SipMessage::parse(&bytes).unwrap());
                    }
                    distributor::Output::Frame { conn, frame } if conn != DIST_TUNNEL => {
                        self.others.push((conn, frame));
                    }
                    distributor::Output::Frame { frame, .. } => {
                        if self.tunnel_up {
                            let input = buffer::Input::Frame {
                                conn: EDGE_TUNNEL,
                                frame,
                            };
                            self.edge.handle(input, self.now);
                        }
                    }
                    distributor::Output::Status(s) => self.status.push(s),
                    distributor::Output::Record(RecordOutput::Write(r)) => self.records.push(*r),
                    distributor::Output::RecordsFlushed { reply } => {
                        let _ = reply.send(());
                    }
                    distributor::Output::EarlyMediaStart { .. }
                    | distributor::Output::EarlyMediaStop { .. }
                    | distributor::Output::Record(_) => {}
                }
            }
            while let Some(out) = self.edge.poll_output() {
                moved = true;
                match out {
                    buffer::Output::Sip { to, bytes } => {
                        let msg = SipMessage::parse(&bytes).unwrap();
                        self.agents.entry(to.addr).or_default().push(msg);
                    }
                    buffer::Output::Frame { frame, .. } => {
                        if self.tunnel_up {
                            let input = distributor::Input::Frame {
                                conn: DIST_TUNNEL,
                                frame,
                            };
                            self.dist.handle(input, self.now);
                        }
                    }
                    buffer::Output::Status(s) => self.status.push(s),
                    buffer::Output::OpenCallerPort { call, .. } => {
                        if let Some(deferred) = self.deferred_ports.as_mut() {
                            deferred.push(call);
                            continue;
                        }
                        let result = Ok(addr("198.51.100.2:30000"));
                        let input = buffer::Input::CallerPort { call, result };
                        self.edge.handle(input, self.now);
                    }
                    buffer::Output::OpenAgentPort { call } => {
                        let result = match self.refuse_agent_ports {
                            true => Err("no UDP port free".to_owned()),
                            false => Ok(addr("198.51.100.2:30002")),
                        };
                        let input = buffer::Input::AgentPort { call, result };
                        self.edge.handle(input, self.now);
                    }
                    buffer::Output::CloseCallerPort { call } => self.closed_ports.push(call),
                    buffer::Output::Close { .. } | buffer::Output::Datagram(_) => {}
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Moves the clock on by `by`, firing every timer due on the way.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        loop {
            let next = [self.dist.poll_timeout(), self.edge.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    let now = self.now;
                    if self.dist.poll_timeout().is_some_and(|t| t <= now) {
                        self.dist.handle_timeout(now);
                    }
                    if self.edge.poll_timeout().is_some_and(|t| t <= now) {
                        self.edge.handle_timeout(now);
                    }
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = until;
    }

    /// SIP from the caller to the distributor.
    fn caller_sends(&mut self, msg: SipMessage) {
        let from = Target::udp(addr(CALLER));
        self.dist.handle(
            distributor::Input::Sip {
                msg,
                from,
                received: self.now,
            },
            self.now,
        );
        self.pump();
    }

    /// SIP from an agent's phone to the edge.
    fn phone_sends(&mut self, phone: SocketAddr, msg: SipMessage) {
        let from = Target::udp(phone);
        self.edge.handle(buffer::Input::Sip { msg, from }, self.now);
        self.pump();
    }

    /// Answers the callers' ports asked for so far with `result`.
    fn answer_ports(&mut self, result: Result<SocketAddr, String>) {
        let calls = std::mem::take(self.deferred_ports.as_mut().expect("ports deferred"));
        for call in calls {
            let input = buffer::Input::CallerPort {
                call,
                result: result.clone(),
            };
            self.edge.handle(input, self.now);
        }
        self.pump();
    }

    /// SIP from a browser agent's WebSocket to the edge.
    fn browser_sends(&mut self, browser: SocketAddr, msg: SipMessage) {
        let from = Target {
            kind: agent_edge::sip::TransportKind::Wss,
            addr: browser,
            conn: Some(BROWSER_CONN),
        };
        self.edge.handle(buffer::Input::Sip { msg, from }, self.now);
        self.pump();
    }

    /// An agent signs in from a browser (SIP over its WebSocket), so her calls are bridged.
    fn sign_in_browser(&mut self, agent: &str, browser: SocketAddr) {
        let token = self.issuer.issue(agent, None, 3600).unwrap();
        let register = message(
            &format!(
                "REGISTER sip:{EDGE_UDP} SIP/2.0\r\nVia: SIP/2.0/WSS agent.invalid;branch=z9hG4bK-reg-{agent}\r\n\
                 From: <sip:{agent}@{EDGE_UDP}>;tag=r1\r\nTo: <sip:{agent}@{EDGE_UDP}>\r\n\
                 Call-ID: reg-{agent}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{agent}@agent.invalid;transport=ws>\r\n\
                 Expires: 3600\r\nAuthorization: Bearer {token}\r\n"
            ),
            "",
        );
        self.browser_sends(browser, register);
        // The 200, then the ACD's state for her page.
        assert!(
            self.agents[&browser]
                .iter()
                .any(|m| m.status() == Some(200))
        );
    }

    /// A browser answers the INVITE it got with WebRTC (str0m makes the answer to the
    /// bridge's offer, as a browser would).
    fn browser_answers(&mut self, browser: SocketAddr, invite: &SipMessage) {
        let mut rtc = str0m::Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_pcmu(true, false)
            .enable_pcma(true, false)
            .build(self.now);
        rtc.add_local_candidate(str0m::Candidate::host(browser, "udp").unwrap());
        let offer =
            str0m::change::SdpOffer::from_sdp_string(&String::from_utf8_lossy(&invite.body))
                .expect("a WebRTC offer for the browser");
        let answer = rtc.sdp_api().accept_offer(offer).unwrap().to_sdp_string();
        self.browser_sends(browser, invite.response(180, Some("browser-tag")));
        let mut ok = invite.response(200, Some("browser-tag"));
        ok.push_header(
            "Contact",
            "<sip:alice@agent.invalid;transport=ws>".to_owned(),
        );
        ok.push_header("Content-Type", "application/sdp");
        ok.body = answer.into_bytes().into();
        self.browser_sends(browser, ok);
    }

    /// An agent registers its phone with its token, and the distributor learns of it.
    fn sign_in(&mut self, agent: &str, phone: SocketAddr) {
        let token = self.issuer.issue(agent, None, 3600).unwrap();
        let register = message(
            &format!(
                "REGISTER sip:{EDGE_UDP} SIP/2.0\r\nVia: SIP/2.0/UDP {phone};branch=z9hG4bK-reg-{agent}\r\n\
                 From: <sip:{agent}@{EDGE_UDP}>;tag=r1\r\nTo: <sip:{agent}@{EDGE_UDP}>\r\n\
                 Call-ID: reg-{agent}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{agent}@{phone}>\r\n\
                 Expires: 3600\r\nAuthorization: Bearer {token}\r\n"
            ),
            "",
        );
        self.phone_sends(phone, register);
        assert_eq!(self.last_to_agent(phone).status(), Some(200));
        assert!(self.saw(&Status::AgentUp {
            agent: agent.into(),
            edge: "edge-1".into()
        }));
    }

    fn last_to_agent(&self, phone: SocketAddr) -> &SipMessage {
        self.agents[&phone].last().unwrap()
    }

    /// The agent's phone's messages whose first line starts with `start`.
    fn to_agent(&self, phone: SocketAddr, start: &str) -> Vec<SipMessage> {
        self.agents
            .get(&phone)
            .map(|m| {
                m.iter()
                    .filter(|m| String::from_utf8_lossy(&m.to_bytes()).starts_with(start))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The responses to its INVITEs the caller got, by status, in order (retransmissions
    /// included).
    fn caller_statuses(&self) -> Vec<u16> {
        self.caller
            .iter()
            .filter(|m| m.cseq().is_ok_and(|c| c.method.as_str() == "INVITE"))
            .filter_map(SipMessage::status)
            .collect()
    }

    /// The agent's phone answers a request: `code`, with our tag, a Contact and SDP for 2xx.
    fn agent_answers(&mut self, phone: SocketAddr, request: &SipMessage, code: u16) {
        let mut resp = request.response(code, Some("agent-tag"));
        if (200..300).contains(&code) && request.method().is_some_and(|m| m.as_str() == "INVITE") {
            resp.push_header("Contact", format!("<sip:alice@{phone}>"));
            resp.push_header("Content-Type", "application/sdp");
            resp.body = SDP.as_bytes().to_vec().into();
        }
        self.phone_sends(phone, resp);
    }

    /// An in-dialog request from the agent's phone on the leg of `invite` (the INVITE it got).
    fn agent_request(&mut self, phone: SocketAddr, invite: &SipMessage, method: &str, cseq: u32) {
        let from_caller = invite.header("From").unwrap().to_owned();
        let to_us = invite.header("To").unwrap().to_owned();
        let contact = invite.header("Contact").unwrap();
        let target = contact.trim_matches(['<', '>']);
        let msg = message(
            &format!(
                "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {phone};branch=z9hG4bK-a-{method}-{cseq}\r\n\
                 Max-Forwards: 70\r\nFrom: {to_us};tag=agent-tag\r\nTo: {from_caller}\r\n\
                 Call-ID: {}\r\nCSeq: {cseq} {method}\r\n",
                invite.call_id().unwrap()
            ),
            "",
        );
        self.phone_sends(phone, msg);
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The caller's side of one call, as a SIP phone would keep it.
struct CallerCall {
    call_id: String,
    /// The dialog's remote target and route set, from the 2xx.
    remote: Option<(String, Vec<String>, String)>,
}

impl CallerCall {
    fn invite(sim: &mut Sim, call_id: &str) -> CallerCall {
        let msg = message(
            &format!(
                "INVITE sip:support@{DIST_UDP} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-{call_id}-inv\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:caller@192.0.2.10>;tag=caller-tag\r\nTo: <sip:support@{DIST_UDP}>\r\n\
                 Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{CALLER}>\r\n\
                 Content-Type: application/sdp\r\n"
            ),
            SDP,
        );
        sim.caller_sends(msg);
        CallerCall {
            call_id: call_id.into(),
            remote: None,
        }
    }

    /// Takes the dialog from the caller's last 2xx and ACKs it.
    fn ack(&mut self, sim: &mut Sim) {
        let ok = sim
            .caller
            .iter()
            .rev()
            .find(|m| m.status() == Some(200))
            .expect("the caller got no 200")
            .clone();
        let target = ok
            .header("Contact")
            .unwrap()
            .trim_matches(['<', '>'])
            .to_owned();
        let mut routes: Vec<String> = ok
            .headers_named("Record-Route")
            .map(str::to_owned)
            .collect();
        routes.reverse();
        let to = ok.header("To").unwrap().to_owned();
        self.remote = Some((target, routes, to));
        self.in_dialog(sim, "ACK", 1);
    }

    fn in_dialog(&mut self, sim: &mut Sim, method: &str, cseq: u32) {
        let (target, routes, to) = self.remote.clone().expect("no dialog yet");
        let routes: String = routes.iter().map(|r| format!("Route: {r}\r\n")).collect();
        let msg = message(
            &format!(
                "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-{}-{method}-{cseq}\r\n\
                 Max-Forwards: 70\r\n{routes}From: <sip:caller@192.0.2.10>;tag=caller-tag\r\nTo: {to}\r\n\
                 Call-ID: {}\r\nCSeq: {cseq} {method}\r\n",
                self.call_id, self.call_id
            ),
            "",
        );
        sim.caller_sends(msg);
    }

    fn cancel(&mut self, sim: &mut Sim) {
        let msg = message(
            &format!(
                "CANCEL sip:support@{DIST_UDP} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-{}-inv\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:caller@192.0.2.10>;tag=caller-tag\r\nTo: <sip:support@{DIST_UDP}>\r\n\
                 Call-ID: {}\r\nCSeq: 1 CANCEL\r\n",
                self.call_id, self.call_id
            ),
            "",
        );
        sim.caller_sends(msg);
    }
}

fn queue() -> QueueConfig {
    QueueConfig {
        name: "support".into(),
        ring_timeout_s: 10,
        ..QueueConfig::default()
    }
}

const ALICE: &str = "192.0.2.20:5062";
/// Alice's browser, and its WebSocket's connection on the edge.
const BROWSER: &str = "192.0.2.30:50000";
const BROWSER_CONN: ConnId = ConnId(40);
const BOB: &str = "192.0.2.21:5062";

/// Sets up a call up to the agent's answer and the caller's ACK; returns the agent's INVITE.
fn answered_call(sim: &mut Sim, call_id: &str) -> (CallerCall, SipMessage) {
    let alice = addr(ALICE);
    let mut call = CallerCall::invite(sim, call_id);
    assert_eq!(sim.caller_statuses().first(), Some(&100));
    let invite = sim
        .to_agent(alice, "INVITE")
        .pop()
        .expect("alice's phone never rang");
    // Nothing of the caller's side reaches the agent's leg.
    assert_ne!(invite.call_id(), Some(call_id));
    assert!(!String::from_utf8_lossy(&invite.to_bytes()).contains("192.0.2.10:5060;branch"));
    sim.agent_answers(alice, &invite, 180);
    sim.agent_answers(alice, &invite, 200);
    assert!(sim.caller_statuses().contains(&200));
    call.ack(sim);
    assert_eq!(
        sim.to_agent(alice, "ACK").len(),
        1,
        "the caller's ACK reaches the agent"
    );
    (call, invite)
}

#[test]
fn a_call_answered_and_hung_up_by_the_caller() {
    let mut sim = Sim::new(Mode::Tunnel, queue());
    sim.sign_in("alice", addr(ALICE));
    let (mut call, _) = answered_call(&mut sim, "call-1");
    call.in_dialog(&mut sim, "BYE", 2);
    let bye = sim
        .to_agent(addr(ALICE), "BYE")
        .pop()
        .expect("no BYE at the agent");
    sim.agent_answers(addr(ALICE), &bye, 200);
    let last = sim.caller.last().unwrap();
    assert_eq!((last.status(), last.cseq().unwrap().seq), (Some(200), 2));
    // Its record, once the edge's last media statistics had their second.
    assert!(sim.records.is_empty());
    sim.advance(Duration::from_secs(2));
    let [record] = sim.records.as_slice() else {
        panic!("one record: {:?}", sim.records);
    };
    assert_eq!(record.call_id, "call-1");
    assert_eq!(
        (record.outcome.as_str(), record.reason.as_str()),
        ("answered", "caller hung up")
    );
    assert_eq!(record.hung_up_by.as_deref(), Some("caller"));
    assert_eq!(record.agent.as_deref(), Some("alice"));
    assert_eq!(record.edge.as_deref(), Some("edge-1"));
    assert_eq!(record.offers.len(), 1);
    assert_eq!(record.offers[0].result.as_deref(), Some("answered"));
}

#[test]
fn a_call_answered_and_hung_up_by_the_agent() {
    let mut sim = Sim::new(Mode::Tunnel, queue());
    sim.sign_in("alice", addr(ALICE));
    let (_call, invite) = answered_call(&mut sim, "call-1");
    sim.agent_request(addr(ALICE), &invite, "BYE", 2);
    let bye = sim
        .caller
        .iter()
        .find(|m| m.method().is_some_and(|m| m.as_str() == "BYE"))
        .expect("the caller got no BYE")
        .clone();
    assert_eq!(bye.call_id(), Some("call-1"));
    assert_eq!(bye.to_tag().as_deref(), Some("caller-tag"));
    let ok = bye.response(200, None);
    sim.caller_sends(ok);
    assert_eq!(sim.last_to_agent(addr(ALICE)).status(), Some(200));
    sim.advance(Duration::from_secs(2));
    let [record] = sim.records.as_slice() else {
        panic!("one record: {:?}", sim.records);
    };
    assert_eq!(record.reason, "agent hung up");
    assert_eq!(record.hung_up_by.as_deref(), Some("agent"));
}

#[test]
fn a_cancel_racing_the_answer_ends_both_legs() {
    let mut sim = Sim::new(Mode::Tunnel, queue());
    let alice = addr(ALICE);
    sim.sign_in("alice", alice);
    let mut call = CallerCall::invite(&mut sim, "call-1");
    let invite = sim.to_agent(alice, "INVITE").pop().unwrap();
    sim.agent_answers(alice, &invite, 180);
    // The caller gives up as the agent answers: the two cross.
    call.cancel(&mut sim);
    sim.agent_answers(alice, &invite, 200);
    let statuses = sim.caller_statuses();
    assert!(statuses.contains(&487), "{statuses:?}");
    assert!(!statuses.contains(&200), "{statuses:?}");
    // The agent's answer is confirmed and its leg hung up.
    assert_eq!(sim.to_agent(alice, "ACK").len(), 1);
    assert_eq!(sim.to_agent(alice, "BYE").len(), 1);
}

#[test]
fn each_hand_off_mode_delivers_the_call_to_the_named_agent() {
    for mode in Mode::ALL {
        let mut sim = Sim::new(mode, queue());
        assert!(sim.saw(&Status::EdgeUp {
            edge: "edge-1".into(),
            handoff: mode.as_str()
        }));
        sim.sign_in("bob", addr(BOB));
        sim.advance(Duration::from_secs(1));
        sim.sign_in("alice", addr(ALICE));
        // Longest idle first: bob signed in first, so bob's phone rings and alice's does not.
        let _call = CallerCall::invite(&mut sim, "call-1");
        let invite = sim.to_agent(addr(BOB), "INVITE").pop();
        assert!(invite.is_some(), "{mode:?}: bob's phone never rang");
        assert!(sim.to_agent(addr(ALICE), "INVITE").is_empty(), "{mode:?}");
        let invite = invite.unwrap();
        assert!(
            invite.request_uri().unwrap().starts_with("sip:bob@"),
            "{mode:?}"
        );
        let mut answer = invite.response(200, Some("agent-tag"));
        answer.push_header("Contact", format!("<sip:bob@{BOB}>"));
        sim.phone_sends(addr(BOB), answer);
        assert!(sim.caller_statuses().contains(&200), "{mode:?}");
    }
}

#[test]
fn an_edge_dropping_mid_call_signs_its_agents_out() {
    let mut sim = Sim::new(Mode::Tunnel, queue());
    sim.sign_in("alice", addr(ALICE));
    let (_call, _) = answered_call(&mut sim, "call-1");
    sim.drop_tunnel();
    assert!(sim.saw(&Status::AgentDown {
        agent: "alice".into(),
        edge: "edge-1".into()
    }));
    assert!(sim.saw(&Status::TunnelDown {
        edge: "edge-1".into()
    }));
    // A new call now finds nobody signed in and is refused at once.
    let _second = CallerCall::invite(&mut sim, "call-2");
    let refused = sim
        .caller
        .iter()
        .filter(|m| m.call_id() == Some("call-2"))
        .filter_map(SipMessage::status)
        .find(|c| *c >= 300);
    assert!(refused.is_some(), "{:?}", sim.caller_statuses());
}

#[test]
fn ring_no_answer_goes_to_the_next_agent() {
    let mut sim = Sim::new(Mode::Tunnel, queue());
    sim.sign_in("alice", addr(ALICE));
    sim.advance(Duration::from_secs(1));
    sim.sign_in("bob", addr(BOB));
    let _call = CallerCall::invite(&mut sim, "call-1");
    let invite = sim.to_agent(addr(ALICE), "INVITE").pop().unwrap();
    sim.agent_answers(addr(ALICE), &invite, 180);
    assert!(sim.to_agent(addr(BOB), "INVITE").is_empty());
    // Alice lets it ring past the queue's ring timeout: her offer is cancelled, bob rings.
    sim.advance(Duration::from_secs(11));
    let cancel = sim
        .to_agent(addr(ALICE), "CANCEL")
        .pop()
        .expect("no CANCEL to alice");
    sim.agent_answers(addr(ALICE), &cancel, 200);
    sim.agent_answers(addr(ALICE), &invite, 487);
    let bob = sim
        .to_agent(addr(BOB), "INVITE")
        .pop()
        .expect("bob's phone never rang");
    sim.agent_answers(addr(BOB), &bob, 200);
    assert!(sim.caller_statuses().contains(&200));
    // Still in progress: its record is written at the shutdown, with both offers.
    let (reply, _flushed) = tokio::sync::oneshot::channel();
    let flush = distributor::Command::FlushRecords { reply };
    sim.dist.handle(distributor::Input::Command(flush), sim.now);
    sim.pump();
    let [record] = sim.records.as_slice() else {
        panic!("one record: {:?}", sim.records);
    };
    let offers: Vec<(&str, Option<&str>)> = record
        .offers
        .iter()
        .map(|o| (o.agent.as_str(), o.result.as_deref()))
        .collect();
    assert_eq!(
        offers,
        [("alice", Some("no-answer")), ("bob", Some("answered"))]
    );
    assert_eq!(
        (record.outcome.as_str(), record.reason.as_str()),
        ("answered", "shutting down")
    );
}

const EDGE_9: ConnId = ConnId(9);

fn agent_up(agent: &str, token: &str) -> Frame {
    Frame::AgentUp {
        agent: agent.into(),
        token: token.into(),
    }
}

/// alice's token with her own claims, signed by a key that is not the distributor's.
fn forged_token(sim: &Sim) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ring = KeyRing::load(dir.path(), 3600, unix_now()).unwrap();
    let stranger = TokenIssuer::new(
        Arc::new(RwLock::new(ring)),
        "agent-edge",
        "agent-edge-agents",
    );
    let genuine = sim.issuer.issue("alice", None, 3600).unwrap();
    let payload = genuine.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    (
        stranger
            .sign(&serde_json::from_slice(&claims).unwrap())
            .unwrap(),
        dir,
    )
}

#[test]
fn another_edge_cannot_take_an_agent_without_her_valid_token() {
    let mut sim = Sim::new(Mode::Tunnel, queue());
    sim.sign_in("alice", addr(ALICE));
    // A token that is hers and fine now, and expired by the time edge-9 uses it.
    let short = sim.issuer.issue("alice", None, 60).unwrap();
    sim.other_edge_up(EDGE_9, "edge-9");
    sim.take_other_edge_frames(EDGE_9);
    let (forged, _dir) = forged_token(&sim);
    let bob = sim.issuer.issue("bob", None, 3600).unwrap();
    sim.advance(Duration::from_secs(120));
    for (what, token) in [
        ("no token", ""),
        ("not a token", "not.a.token"),
        ("forged", forged.as_str()),
        ("another agent's", bob.as_str()),
        ("expired", short.as_str()),
    ] {
        sim.other_edge_sends(EDGE_9, agent_up("alice", token));
        assert!(
            sim.take_other_edge_frames(EDGE_9)
                .contains(&Frame::AgentDown {
                    agent: "alice".into()
                }),
            "{what}: edge-9 is told its claim was refused"
        );
        assert!(
            !sim.saw(&Status::AgentUp {
                agent: "alice".into(),
                edge: "edge-9".into()
            }),
            "{what}: alice moved to edge-9"
        );
    }
    // edge-9 speaks of alice as if it had her: nothing changes.
    let away = r#"{"state":"away","reason":"lunch"}"#;
    sim.other_edge_sends(
        EDGE_9,
        Frame::Presence {
            agent: "alice".into(),
            json: away.into(),
        },
    );
    sim.other_edge_sends(
        EDGE_9,
        Frame::AgentDown {
            agent: "alice".into(),
        },
    );
    sim.dist
        .handle(distributor::Input::EdgeDown { conn: EDGE_9 }, sim.now);
    sim.pump();
    assert!(
        !sim.saw(&Status::AgentDown {
            agent: "alice".into(),
            edge: "edge-1".into()
        }),
        "alice was signed out by another edge"
    );
    // Her next call still rings her phone behind edge-1, which answers it.
    let (_call, _) = answered_call(&mut sim, "call-after");
}

#[test]
fn a_verified_claim_from_another_edge_moves_her_and_the_old_edge_drops_her() {
    let mut sim = Sim::new(Mode::Tunnel, queue());
    sim.sign_in("alice", addr(ALICE));
    sim.other_edge_up(EDGE_9, "edge-2");
    let token = sim.issuer.issue("alice", None, 3600).unwrap();
    sim.other_edge_sends(EDGE_9, agent_up("alice", &token));
    assert!(sim.saw(&Status::AgentUp {
        agent: "alice".into(),
        edge: "edge-2".into()
    }));
    assert!(sim.saw(&Status::AgentDown {
        agent: "alice".into(),
        edge: "edge-1".into()
    }));
    // edge-1 was told, and dropped her binding.
    assert!(
        format!("{:?}", sim.edge).contains("agents: 0"),
        "{:?}",
        sim.edge
    );
    // Her next call goes to edge-2, naming her.
    let _call = CallerCall::invite(&mut sim, "call-moved");
    let frames = sim.take_other_edge_frames(EDGE_9);
    assert!(
        frames.iter().any(|f| matches!(
            f,
            Frame::Sip { agent: Some(a), message } if a == "alice" && message.starts_with(b"INVITE ")
        )),
        "{frames:?}"
    );
    assert!(sim.to_agent(addr(ALICE), "INVITE").is_empty());
}

#[test]
fn a_revoked_token_takes_its_agent_off_the_edge_that_proved_her() {
    let mut sim = Sim::new(Mode::Tunnel, queue());
    sim.other_edge_up(EDGE_9, "edge-9");
    let (token, claims) = sim
        .issuer
        .issue_claims("bob", None, &Default::default(), 3600)
        .unwrap();
    sim.other_edge_sends(EDGE_9, agent_up("bob", &token));
    assert!(sim.saw(&Status::AgentUp {
        agent: "bob".into(),
        edge: "edge-9".into()
    }));
    // edge-9 ignores the Revoke frame (the test never answers for it): bob goes anyway.
    let revoke = distributor::Command::Revoke { jti: claims.jti };
    sim.dist
        .handle(distributor::Input::Command(revoke), sim.now);
    sim.pump();
    assert!(sim.saw(&Status::AgentDown {
        agent: "bob".into(),
        edge: "edge-9".into()
    }));
    // And the revoked token proves nothing from now on.
    sim.take_other_edge_frames(EDGE_9);
    sim.other_edge_sends(EDGE_9, agent_up("bob", &token));
    assert!(
        sim.take_other_edge_frames(EDGE_9)
            .contains(&Frame::AgentDown {
                agent: "bob".into()
            })
    );
}

#[test]
fn a_token_too_long_to_pass_on_is_refused_at_registration() {
    let mut sim = Sim::new(Mode::Tunnel, queue());
    let name = "x".repeat(proto_tunnel::MAX_TOKEN);
    let token = sim.issuer.issue("alice", Some(&name), 3600).unwrap();
    let phone = addr(ALICE);
    let register = message(
        &format!(
            "REGISTER sip:{EDGE_UDP} SIP/2.0\r\nVia: SIP/2.0/UDP {phone};branch=z9hG4bK-reg-long\r\n\
             From: <sip:alice@{EDGE_UDP}>;tag=r1\r\nTo: <sip:alice@{EDGE_UDP}>\r\n\
             Call-ID: reg-long\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@{phone}>\r\n\
             Expires: 3600\r\nAuthorization: Bearer {token}\r\n"
        ),
        "",
    );
    sim.phone_sends(phone, register);
    let answer = sim.last_to_agent(phone);
    assert_eq!(answer.status(), Some(401));
    assert!(
        String::from_utf8_lossy(&answer.to_bytes()).starts_with("SIP/2.0 401 Token too long"),
        "{answer:?}"
    );
    assert!(!sim.saw(&Status::AgentUp {
        agent: "alice".into(),
        edge: "edge-1".into()
    }));
}

/// A caller G.711 offer a bridge takes (PCMA, as callers send).
const PCMA_SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
                        m=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";

/// A call to alice in her browser whose caller port is asked for and not yet answered, and
/// her browser's answer already in: returns the caller's statuses so far.
fn browser_answers_before_the_port(sim: &mut Sim) -> Vec<u16> {
    sim.sign_in_browser("alice", addr(BROWSER));
    sim.deferred_ports = Some(Vec::new());
    let invite = message(
        &format!(
            "INVITE sip:support@{DIST_UDP} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-bridged-inv\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@192.0.2.10>;tag=caller-tag\r\nTo: <sip:support@{DIST_UDP}>\r\n\
             Call-ID: bridged\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{CALLER}>\r\n\
             Content-Type: application/sdp\r\n"
        ),
        PCMA_SDP,
    );
    sim.caller_sends(invite);
    let to_browser = sim
        .to_agent(addr(BROWSER), "INVITE")
        .pop()
        .expect("alice's browser never rang");
    assert!(String::from_utf8_lossy(&to_browser.body).contains("a=fingerprint"));
    assert_eq!(sim.deferred_ports.as_ref().map(Vec::len), Some(1));
    sim.browser_answers(addr(BROWSER), &to_browser);
    sim.caller_statuses()
}

#[test]
fn a_browsers_answer_that_beats_its_callers_port_waits_for_it() {
    let mut sim = Sim::with_bridge(Mode::Tunnel, queue());
    let before = browser_answers_before_the_port(&mut sim);
    assert!(
        !before.contains(&200),
        "the caller must not get a 200 before its port: {before:?}"
    );
    sim.answer_ports(Ok(addr("203.0.113.10:40002")));
    let ok = sim
        .caller
        .iter()
        .find(|m| m.status() == Some(200))
        .expect("the 200 once the port came");
    let sdp = String::from_utf8_lossy(&ok.body);
    assert!(
        sdp.contains("m=audio 40002 RTP/AVP 8") && sdp.contains("c=IN IP4 203.0.113.10"),
        "the caller gets the bridge's RTP on the port it was given: {sdp}"
    );
    assert!(
        !sdp.contains("fingerprint"),
        "never the browser's SDP: {sdp}"
    );
}

#[test]
fn a_browsers_answer_whose_port_is_refused_is_hung_up_and_the_call_goes_back_to_the_acd() {
    let mut sim = Sim::with_bridge(Mode::Tunnel, queue());
    browser_answers_before_the_port(&mut sim);
    sim.answer_ports(Err("no UDP port free in 40000-40009".into()));
    // The browser's leg was confirmed, so it is ended with ACK and BYE, not a CANCEL.
    assert_eq!(sim.to_agent(addr(BROWSER), "ACK ").len(), 1);
    assert_eq!(sim.to_agent(addr(BROWSER), "BYE ").len(), 1);
    assert!(sim.to_agent(addr(BROWSER), "CANCEL ").is_empty());
    // The edge's 503 is the ACD's to act on, as any failed offer: the caller is not
    // answered, and waits in the queue with its ringback.
    let statuses = sim.caller_statuses();
    assert!(
        !statuses.contains(&200) && !statuses.contains(&503),
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&180), "{statuses:?}");
}

/// A desk phone's SDP, its media at 192.0.2.20:6000.
const PHONE_SDP: &str = "v=0\r\no=phone 9 9 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\n\
                         t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// The phone answers `invite` with `code` and its SDP.
fn phone_answers_with_sdp(sim: &mut Sim, invite: &SipMessage, code: u16) {
    let mut resp = invite.response(code, Some("agent-tag"));
    resp.push_header("Contact", format!("<sip:alice@{ALICE}>"));
    resp.push_header("Content-Type", "application/sdp");
    resp.body = PHONE_SDP.as_bytes().to_vec().into();
    sim.phone_sends(addr(ALICE), resp);
}

/// Checks that an SDP the caller got names the edge's caller-side port only.
fn from_the_edge_only(msg: &SipMessage) {
    let sdp = String::from_utf8_lossy(&msg.body);
    assert!(
        sdp.contains("m=audio 30000 RTP/AVP 0") && sdp.contains("c=IN IP4 198.51.100.2"),
        "the edge's caller-side port: {sdp}"
    );
    assert!(
        !sdp.contains("192.0.2.20") && !sdp.contains("6000") && !sdp.contains("o=phone"),
        "nothing of the phone's: {sdp}"
    );
}

#[test]
fn a_desk_phones_media_is_anchored_at_the_edge_early_media_and_answer_alike() {
    let mut sim = Sim::with_bridge(Mode::Tunnel, queue());
    let alice = addr(ALICE);
    sim.sign_in("alice", alice);
    let mut call = CallerCall::invite(&mut sim, "anchored");
    let invite = sim
        .to_agent(alice, "INVITE")
        .pop()
        .expect("alice's phone never rang");
    let offer = String::from_utf8_lossy(&invite.body);
    assert!(
        offer.contains("m=audio 30002 RTP/AVP 0") && offer.contains("c=IN IP4 198.51.100.2"),
        "the phone gets the edge's agent-side port: {offer}"
    );
    assert!(
        !offer.contains("192.0.2.10") && !offer.contains("40000"),
        "nothing of the caller's: {offer}"
    );
    phone_answers_with_sdp(&mut sim, &invite, 183);
    let early = sim
        .caller
        .iter()
        .find(|m| m.status() == Some(183))
        .expect("the phone's early media reaches the caller")
        .clone();
    from_the_edge_only(&early);
    phone_answers_with_sdp(&mut sim, &invite, 200);
    let ok = sim
        .caller
        .iter()
        .find(|m| m.status() == Some(200))
        .expect("the answer")
        .clone();
    from_the_edge_only(&ok);
    assert_eq!(early.body, ok.body, "the same answer, the same version");
    call.ack(&mut sim);
    assert!(sim.closed_ports.is_empty());
    call.in_dialog(&mut sim, "BYE", 2);
    let bye = sim
        .to_agent(alice, "BYE")
        .pop()
        .expect("no BYE at the agent");
    sim.agent_answers(alice, &bye, 200);
    assert_eq!(
        sim.closed_ports.len(),
        1,
        "both of the call's ports close with it"
    );
}

#[test]
fn a_desk_phones_port_that_cannot_open_refuses_the_offer_before_the_phone_rings() {
    let mut sim = Sim::with_bridge(Mode::Tunnel, queue());
    sim.refuse_agent_ports = true;
    let alice = addr(ALICE);
    sim.sign_in("alice", alice);
    CallerCall::invite(&mut sim, "no-port");
    assert!(
        sim.to_agent(alice, "INVITE").is_empty(),
        "no INVITE without the port its SDP names"
    );
    assert!(!sim.closed_ports.is_empty(), "the caller-side port closed");
    let statuses = sim.caller_statuses();
    assert!(!statuses.contains(&200), "{statuses:?}");
}

#[test]
fn a_cancelled_desk_phone_call_closes_its_ports() {
    let mut sim = Sim::with_bridge(Mode::Tunnel, queue());
    let alice = addr(ALICE);
    sim.sign_in("alice", alice);
    let mut call = CallerCall::invite(&mut sim, "cancelled");
    let invite = sim.to_agent(alice, "INVITE").pop().unwrap();
    sim.agent_answers(alice, &invite, 180);
    call.cancel(&mut sim);
    let cancel = sim
        .to_agent(alice, "CANCEL")
        .pop()
        .expect("the phone is cancelled");
    sim.agent_answers(alice, &cancel, 200);
    sim.agent_answers(alice, &invite, 487);
    assert!(sim.caller_statuses().contains(&487));
    assert_eq!(sim.closed_ports.len(), 1, "{:?}", sim.closed_ports);
}

#[test]
fn a_desk_phones_answer_that_beats_its_callers_relay_port_waits_for_it() {
    let mut sim = Sim::with_bridge(Mode::Tunnel, queue());
    // An exposed edge: the caller's port is the distributor's relay's, a round trip away.
    sim.deferred_ports = Some(Vec::new());
    let alice = addr(ALICE);
    sim.sign_in("alice", alice);
    CallerCall::invite(&mut sim, "relay-port");
    let invite = sim
        .to_agent(alice, "INVITE")
        .pop()
        .expect("the phone rings once its own port is open");
    phone_answers_with_sdp(&mut sim, &invite, 200);
    assert!(
        !sim.caller_statuses().contains(&200),
        "no 200 before the caller's port"
    );
    sim.answer_ports(Ok(addr("198.51.100.2:30000")));
    let ok = sim
        .caller
        .iter()
        .find(|m| m.status() == Some(200))
        .expect("the 200 once the port came")
        .clone();
    from_the_edge_only(&ok);
}
