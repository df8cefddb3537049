//! Everything between this edge and its distributor: the tunnel's frames, or the plain-SIP
//! link where the edge registers its agents itself; hand-off unwrapping, the agents' presence
//! going up and the media statistics report.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto_tunnel::Frame;
use tracing::{debug, info, warn};

use crate::admin::tokens::{TokenVerifier, VerifierSettings};
use crate::app::status::Status;
use crate::buffer::routing_table::CallKey;
use crate::handoff::{self, Mode};
use crate::ids;
use crate::sip::transaction::{self, Transmit};
use crate::sip::{ConnId, Method, SipMessage, Target, TransportKind};

use super::{Buffer, Output};

/// How often the media statistics of each call in progress go to the distributor's live
/// view. They go in slices, a slice of the calls every `STATS_EVERY / STATS_SLICES`: all
/// calls at once stalled both roles for tens of milliseconds every two seconds under load.
pub(super) const STATS_EVERY: Duration = Duration::from_secs(2);
pub(super) const STATS_SLICES: u32 = 20;

/// How long a link registration of an agent lasts; refreshed at half of it.
const LINK_EXPIRES: Duration = Duration::from_secs(600);

impl Buffer {
    /// A frame to the distributor, while the tunnel is up.
    pub(super) fn send_frame(&mut self, frame: Frame) -> bool {
        match self.tunnel {
            Some(conn) => {
                self.out.push_back(Output::Frame { conn, frame });
                true
            }
            None => false,
        }
    }

    pub(super) fn tunnel_up(&mut self, conn: ConnId) {
        self.tunnel = Some(conn);
        let claims: Vec<Frame> = self
            .registrar
            .agents()
            .filter_map(|a| self.claim(a))
            .collect();
        for claim in claims {
            self.send_frame(claim);
        }
    }

    pub(super) fn tunnel_down(&mut self, conn: ConnId, now: Instant) {
        if self.tunnel == Some(conn) {
            self.tunnel = None;
            self.status(Status::TunnelDown {
                edge: self.id.clone(),
            });
            self.digest_checks_lost(now);
        }
        self.layer.connection_closed(conn);
    }

    pub(super) fn on_frame(&mut self, conn: ConnId, frame: Frame, now: Instant) {
        match frame {
            Frame::Sip { agent, message } => {
                let from = Target {
                    kind: TransportKind::Tunnel,
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    conn: Some(conn),
                };
                self.on_tunnel_sip(agent, &message, from, now);
            }
            Frame::Keys { json } => match serde_json::from_str::<VerifierSettings>(&json) {
                Ok(settings) => {
                    let verifier = TokenVerifier::new(&settings);
                    info!(?verifier, "agent token keys received");
                    self.verifier = Some(verifier);
                    // Up once agents can log in: the keys follow Welcome on each tunnel.
                    if self.announced != Some(conn) {
                        self.announced = Some(conn);
                        self.status(Status::TunnelUp {
                            edge: self.id.clone(),
                        });
                    }
                }
                Err(e) => warn!(error = %e, "unreadable token keys from the distributor"),
            },
            Frame::Revoke { jti } => {
                let revoked = self.registrar.revoke(&jti);
                // The distributor signed them out itself: no AgentDown goes back.
                for agent in revoked.agents {
                    info!(%agent, "token revoked; registration removed");
                }
                // A browser learns it at once: every WebSocket the token opened closes, and
                // the registration it retries is refused with the reason.
                for conn in revoked.conns {
                    self.layer.connection_closed(conn);
                    self.out.push_back(Output::Close { conn });
                }
                self.revoked.insert(jti);
            }
            Frame::AgentState { agent, json } => self.send_agent_state(&agent, json, now),
            Frame::DigestResult {
                request,
                token,
                refusal,
            } => self.on_digest_result(request, token, &refusal, now),
            // The distributor no longer sends this agent's calls here: a verified claim from
            // another edge moved her, or ours was refused. This edge no longer speaks for
            // her, so her binding goes (her socket stays: if she registers here again, that
            // is a new claim, and the newest wins).
            Frame::AgentDown { agent } => {
                if self.registrar.unbind(&agent) {
                    info!(%agent, "the distributor routes this agent elsewhere: binding dropped");
                }
            }
            Frame::Route {
                call_id,
                agent,
                ttl_ms,
            } => {
                let ttl = Duration::from_millis(ttl_ms.into()).min(Duration::from_secs(60));
                self.routes.insert(call_id, agent, ttl, now);
            }
            other => debug!(frame = ?other, "ignoring tunnel frame"),
        }
    }

    fn on_tunnel_sip(&mut self, agent: Option<String>, bytes: &[u8], from: Target, now: Instant) {
        let msg = match SipMessage::parse_checked(bytes) {
            Ok(m) => m,
            Err(rejected) => {
                warn!(error = %rejected.error, "bad SIP from the distributor");
                if let Some(answer) = rejected.answer {
                    self.send(Transmit {
                        to: from,
                        bytes: Bytes::from(answer.to_bytes()),
                        note: None,
                    });
                }
                return;
            }
        };
        self.on_distributor_msg(msg, agent, from, now);
    }

    /// Whether a message comes from (or goes to) the distributor: its tunnel, or its address
    /// on the plain-SIP link.
    pub(super) fn is_distributor(&self, peer: &Target) -> bool {
        peer.kind == TransportKind::Tunnel
            || self
                .link
                .as_ref()
                .is_some_and(|l| l.target.kind == peer.kind && l.target.addr == peer.addr)
    }

    /// SIP from the distributor, however it came: unwraps hand-off MESSAGEs, finds the agent
    /// of a new call the way this edge's mode says, and hands the message to the layer.
    pub(super) fn on_distributor_msg(
        &mut self,
        msg: SipMessage,
        agent: Option<String>,
        from: Target,
        now: Instant,
    ) {
        if handoff::is_wrapper_response(&msg) {
            return;
        }
        let (msg, agent) = if handoff::is_wrapper(&msg) {
            match handoff::unwrap(&msg) {
                Ok((inner, wrapped_agent)) => {
                    let ok = msg.response(200, Some(&ids::tag()));
                    self.send_raw(&from, Bytes::from(ok.to_bytes()));
                    (inner, wrapped_agent)
                }
                Err(e) => {
                    warn!(error = %e, "refusing a hand-off MESSAGE");
                    let mut resp = msg.response(e.status(), Some(&ids::tag()));
                    resp.set_reason(&e.to_string());
                    self.send_raw(&from, Bytes::from(resp.to_bytes()));
                    return;
                }
            }
        } else if self.mode == Mode::Message {
            // This edge takes its hand-offs wrapped; a bare INVITE names no agent.
            (msg, None)
        } else {
            (msg, agent)
        };
        let initial_invite = msg.method() == Some(&Method::Invite) && msg.to_tag().is_none();
        // Only the hand-off this edge asked for counts: an agent named any other way is not
        // taken, so a misconfigured distributor shows at once (404) instead of half working.
        let agent = match self.mode {
            Mode::Tunnel | Mode::Message => agent,
            Mode::Uri if initial_invite => handoff::decode_uri(&msg).ok(),
            Mode::Table if initial_invite => msg.call_id().and_then(|c| self.routes.take(c, now)),
            Mode::Uri | Mode::Table => None,
        };
        // The agent rides with the INVITE through the layer, to its Request event.
        self.layer.handle_message_with(msg, from, agent, now);
    }

    /// Sends what the layer queued; to the distributor in `message` mode, wrapped.
    pub(super) fn send(&mut self, t: Transmit<String>) {
        // The edge's own REGISTERs of its agents are not part of any call: never wrapped.
        let call_message = !t.bytes.starts_with(b"REGISTER ");
        let bytes = if self.mode == Mode::Message && call_message && self.is_distributor(&t.to) {
            let host = format!("{}.invalid", self.id);
            let branch = transaction::new_branch();
            let wrapper = handoff::wrap(&t.bytes, "sip:distributor.invalid", &host, &branch);
            Bytes::from(wrapper.to_bytes())
        } else {
            t.bytes
        };
        self.send_raw(&t.to, bytes);
    }

    /// Sends bytes as they are: into the tunnel, or on a SIP transport.
    fn send_raw(&mut self, to: &Target, bytes: Bytes) {
        if to.kind == TransportKind::Tunnel {
            match self.tunnel {
                Some(conn) if Some(conn) == to.conn => {
                    let frame = Frame::Sip {
                        agent: None,
                        message: bytes,
                    };
                    self.out.push_back(Output::Frame { conn, frame });
                }
                _ => debug!("tunnel down; message to the distributor dropped"),
            }
            return;
        }
        self.out.push_back(Output::Sip {
            to: to.clone(),
            bytes,
        });
    }

    /// Sends the media statistics of this slice's bridged calls to the distributor, for its
    /// live view.
    pub(super) fn report_stats(&mut self) {
        let (Some(conn), Some(media)) = (self.tunnel, &self.media) else {
            return;
        };
        let slice = self.stats_slice % u64::from(STATS_SLICES);
        let in_slice = |key: &CallKey| key.0 % u64::from(STATS_SLICES) == slice;
        for key in self.calls.bridged().filter(in_slice) {
            let (Some(entry), Some(stats)) = (self.calls.get(key), media.stats(key.0)) else {
                continue;
            };
            let Ok(json) = serde_json::to_string(&stats) else {
                continue;
            };
            let frame = Frame::CallStats {
                call_id: entry.client.call_id.clone(),
                json,
            };
            self.out.push_back(Output::Frame { conn, frame });
        }
    }

    /// Tells the distributor an agent logged in or out: a tunnel frame, or over a plain-SIP
    /// link a REGISTER of the agent at this edge, with the edge's credential.
    pub(super) fn agent_presence(&mut self, agent: &str, up: bool, now: Instant) {
        if self.link.is_some() {
            let expires = if up { LINK_EXPIRES } else { Duration::ZERO };
            self.link_register(agent, expires, now);
            return;
        }
        let frame = if up {
            self.claim(agent)
        } else {
            Some(Frame::AgentDown {
                agent: agent.to_owned(),
            })
        };
        if let Some(frame) = frame {
            self.send_frame(frame);
        }
    }

    /// The claim that a registered agent is here, with her token as its proof.
    fn claim(&self, agent: &str) -> Option<Frame> {
        let binding = self.registrar.get(agent)?;
        Some(Frame::AgentUp {
            agent: agent.to_owned(),
            token: binding.token.raw.clone(),
        })
    }

    fn link_register(&mut self, agent: &str, expires: Duration, now: Instant) {
        let Some(link) = self.link.clone() else {
            return;
        };
        let local = self.local_addr(link.target.kind);
        let dist = link.target.addr;
        // The agent's own token proves the claim; an un-REGISTER needs none.
        let proof = match self.registrar.get(agent) {
            Some(b) if !expires.is_zero() => {
                format!("{}: {}\r\n", handoff::LINK_AGENT_TOKEN, b.token.raw)
            }
            _ => String::new(),
        };
        let transport = local.transport.to_ascii_lowercase();
        self.link_cseq = self.link_cseq.wrapping_add(1);
        let text = format!(
            "REGISTER sip:{dist} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{agent}@{dist}>;tag={}\r\nTo: <sip:{agent}@{dist}>\r\n\
             Call-ID: {}-{agent}@{}\r\nCSeq: {} REGISTER\r\n\
             Contact: <sip:{agent}@{};transport={transport};{}={}>\r\nExpires: {}\r\n\
             Authorization: Bearer {}\r\n{proof}Content-Length: 0\r\n\r\n",
            local.transport,
            local.sent_by,
            transaction::new_branch(),
            ids::tag(),
            self.id,
            local.host,
            self.link_cseq,
            local.host,
            handoff::LINK_MODE_PARAM,
            self.mode.as_str(),
            expires.as_secs(),
            link.token,
        );
        match SipMessage::parse(text.as_bytes()) {
            Ok(register) => {
                self.layer.send_request(register, link.target, now);
            }
            Err(e) => warn!(error = %e, "could not build the link REGISTER"),
        }
        if self.link_refresh.is_none() {
            self.link_refresh = Some(now + LINK_EXPIRES / 2);
        }
    }

    /// Registers every agent again before the distributor forgets them.
    pub(super) fn refresh_link(&mut self, now: Instant) {
        self.link_refresh = Some(now + LINK_EXPIRES / 2);
        let agents: Vec<String> = self.registrar.agents().map(str::to_owned).collect();
        for agent in agents {
            self.link_register(&agent, LINK_EXPIRES, now);
        }
    }
}
