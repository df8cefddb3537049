//! The edges as the distributor sees them: who is connected and how (a tunnel, or plain SIP
//! from an address), what comes in from them, and how a message goes out to one, with the
//! hand-off encoded the way that edge asked for. All the ways an edge is reached meet here,
//! so the SIP logic elsewhere names an edge and never a transport.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use proto_tunnel::Frame;
use tracing::{debug, info, warn};

use super::{Distributor, Output};
use crate::app::status::Status;
use crate::distributor::agents::ClaimError;
use crate::handoff::{self, Mode};
use crate::ids;
use crate::metrics::Direction;
use crate::sip::transaction::{self, Transmit};
use crate::sip::{ConnId, SipMessage, Target, TransportKind};

#[derive(Debug)]
pub(super) struct Edge {
    pub(super) id: String,
    /// Reached through its tunnel (frames); else over plain SIP at `link`.
    pub(super) tunneled: bool,
    /// Where a plain-SIP edge is reached (the transport and address it registered from).
    pub(super) link: Option<Target>,
    /// How this edge wants calls handed to it (the first of its Hello's it names that we know).
    pub(super) mode: Mode,
    /// Its claims of agents that were refused, and its frames about agents (or their calls)
    /// it did not prove, all dropped: the first of each is logged, the rest counted and the
    /// counts logged when the edge goes.
    pub(super) refused: Refused,
}

/// What an edge said about agents that it could not back, counted.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Refused {
    /// `AgentUp` frames (or plain-SIP REGISTERs) whose token did not prove the claim.
    pub(super) claims: u64,
    /// `Presence`, `AgentDown` and `CallStats` frames naming an agent this edge did not prove.
    pub(super) unproved: u64,
}

/// Time a `table` route entry waits for its INVITE.
const ROUTE_TTL_MS: u32 = 5000;

/// The agent (and Call-ID) an offer's INVITE names: the note the transaction layer puts on
/// each send of that INVITE, for the hand-off encoder.
#[derive(Debug, Clone)]
pub(super) struct Handoff {
    pub(super) agent: String,
    pub(super) call_id: String,
}

fn tunnel_target(conn: ConnId) -> Target {
    Target {
        kind: TransportKind::Tunnel,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        conn: Some(conn),
    }
}

impl Distributor {
    /// A frame into an edge's tunnel; plain-SIP edges take no frames.
    pub(super) fn send_frame(&mut self, conn: ConnId, frame: Frame) {
        if self.edges.get(&conn).is_some_and(|e| e.tunneled) {
            self.push_frame(conn, frame);
        }
    }

    /// Every frame to an edge goes out here, counted.
    fn push_frame(&mut self, conn: ConnId, frame: Frame) {
        if let Some(edge) = self.edges.get(&conn) {
            self.metrics.tunnel_frame(&edge.id, Direction::Out);
        }
        self.out.push_back(Output::Frame { conn, frame });
    }

    pub(super) fn edge_up(
        &mut self,
        conn: ConnId,
        edge_id: String,
        handoffs: &[String],
        now: Instant,
    ) {
        let mode = handoffs
            .iter()
            .find_map(|h| Mode::parse(h))
            .unwrap_or(Mode::Tunnel);
        if let Some(old) = self.edge_ids.get(&edge_id).copied() {
            // The edge re-dialled before its old tunnel was seen dead.
            self.edge_down(old, now);
        }
        info!(edge = %edge_id, handoff = mode.as_str(), "edge up");
        self.metrics.edge_up(&edge_id);
        self.status(Status::EdgeUp {
            edge: edge_id.clone(),
            handoff: mode.as_str(),
        });
        self.edge_ids.insert(edge_id.clone(), conn);
        let edge = Edge {
            id: edge_id,
            tunneled: true,
            link: None,
            mode,
            refused: Refused::default(),
        };
        self.edges.insert(conn, edge);
        let json = self.identity.clone();
        self.send_frame(conn, Frame::Keys { json });
        let revoked: Vec<String> = self.revoked.iter().cloned().collect();
        for jti in revoked {
            self.send_frame(conn, Frame::Revoke { jti });
        }
    }

    pub(super) fn on_frame(&mut self, conn: ConnId, frame: Frame, now: Instant) {
        let Some(edge_id) = self.edges.get(&conn).map(|e| e.id.clone()) else {
            return;
        };
        self.metrics.tunnel_frame(&edge_id, Direction::In);
        // An edge speaks only for the agents it proved with their own tokens.
        match frame {
            Frame::AgentUp { agent, token } => match self.prove(&agent, &token, now) {
                Ok(proof) => self.agent_up(&agent, conn, &edge_id, proof, now),
                Err(e) => self.claim_refused(conn, &agent, &e),
            },
            Frame::AgentDown { agent } if self.agents.proved_by(&agent, conn) => {
                self.agent_down(&agent, conn, &edge_id, now);
            }
            Frame::Presence { agent, json } if self.agents.proved_by(&agent, conn) => {
                self.presence_from_page(&agent, &json, now);
            }
            Frame::AgentDown { agent } | Frame::Presence { agent, .. } => {
                self.unproved(conn, &agent, "agent");
            }
            Frame::Sip { message, .. } => self.on_tunnel_sip(&message, conn, now),
            Frame::DigestCheck {
                request,
                agent,
                method,
                authorization,
                expires,
            } => {
                let check = super::digest_check::Check {
                    agent: &agent,
                    method: &method,
                    authorization: &authorization,
                    expires,
                };
                let (token, refusal) = match self.check_digest(&check, &edge_id, now) {
                    Ok(token) => (Some(token), String::new()),
                    Err(refusal) => (None, refusal.to_string()),
                };
                let frame = Frame::DigestResult {
                    request,
                    token,
                    refusal,
                };
                self.send_frame(conn, frame);
            }
            Frame::CallStats { call_id, json } => {
                self.media_for_record(&call_id, &edge_id, &json);
                // Kept only for calls the ACD holds, and dropped when the ACD says a call
                // ended, so the map cannot grow; and only from the edge of the call's agent.
                match self.acd.agent_of(&call_id).map(str::to_owned) {
                    Some(agent) if self.agents.proved_by(&agent, conn) => {
                        self.media_stats.insert(call_id, json);
                    }
                    Some(agent) => self.unproved(conn, &agent, "call statistics"),
                    None => {}
                }
            }
            other => debug!(frame = ?other, "ignoring tunnel frame"),
        }
    }

    pub(super) fn edge_down(&mut self, conn: ConnId, now: Instant) {
        let Some(edge) = self.edges.remove(&conn) else {
            return;
        };
        self.metrics.edge_down();
        if self.edge_ids.get(&edge.id) == Some(&conn) {
            self.edge_ids.remove(&edge.id);
        }
        let Refused { claims, unproved } = edge.refused;
        info!(
            edge = %edge.id,
            refused_claims = claims,
            unproved_frames = unproved,
            "edge down"
        );
        for agent in self.agents.edge_down(conn) {
            self.status(Status::AgentDown {
                agent: agent.clone(),
                edge: edge.id.clone(),
            });
            self.acd.sign_out(&agent, now);
        }
        self.layer.connection_closed(conn);
    }

    fn on_tunnel_sip(&mut self, bytes: &[u8], conn: ConnId, now: Instant) {
        match SipMessage::parse_checked(bytes) {
            Ok(msg) => {
                self.metrics.sip(Direction::In, &msg);
                self.on_edge_msg(msg, tunnel_target(conn), conn, now);
            }
            // An edge sending bad SIP is a bug on its side; answering would only echo it.
            Err(rejected) => warn!(error = %rejected.error, "bad SIP from an edge"),
        }
    }

    /// SIP from an edge, by tunnel or plain SIP: hand-off wrappers are answered and opened.
    pub(super) fn on_edge_msg(
        &mut self,
        msg: SipMessage,
        from: Target,
        conn: ConnId,
        now: Instant,
    ) {
        if handoff::is_wrapper_response(&msg) {
            return;
        }
        let msg = if handoff::is_wrapper(&msg) {
            let (answer, inner) = match handoff::unwrap(&msg) {
                Ok((inner, _)) => (msg.response(200, Some(&ids::tag())), Some(inner)),
                Err(e) => {
                    warn!(error = %e, "bad wrapped SIP from an edge");
                    let mut resp = msg.response(e.status(), Some(&ids::tag()));
                    resp.set_reason(&e.to_string());
                    (resp, None)
                }
            };
            self.send_raw(conn, &from, Bytes::from(answer.to_bytes()));
            match inner {
                Some(inner) => inner,
                None => return,
            }
        } else {
            msg
        };
        self.layer.handle_message(msg, from, now);
    }

    /// An edge's claim of an agent did not verify: nothing changes for the agent. The edge is
    /// told, unless it holds her already (then the claim was a refresh that proved nothing,
    /// and her proved registration stands), so it drops the binding it cannot back.
    pub(super) fn claim_refused(&mut self, conn: ConnId, agent: &str, error: &ClaimError) {
        let Some(edge) = self.edges.get_mut(&conn) else {
            return;
        };
        edge.refused.claims += 1;
        self.metrics.claim_refused(error.label());
        if edge.refused.claims == 1 {
            warn!(edge = %edge.id, %agent, %error, "refusing an edge's claim of an agent");
        } else {
            debug!(edge = %edge.id, %agent, %error, "refusing an edge's claim of an agent");
        }
        if !self.agents.proved_by(agent, conn) {
            let agent = agent.to_owned();
            self.send_frame(conn, Frame::AgentDown { agent });
        }
    }

    /// A frame about an agent (or her call) from an edge that did not prove her: dropped.
    pub(super) fn unproved(&mut self, conn: ConnId, agent: &str, what: &str) {
        let Some(edge) = self.edges.get_mut(&conn) else {
            return;
        };
        edge.refused.unproved += 1;
        if edge.refused.unproved == 1 {
            warn!(edge = %edge.id, %agent, what, "dropping a frame about an agent this edge did not prove");
        } else {
            debug!(edge = %edge.id, %agent, what, "dropping a frame about an agent this edge did not prove");
        }
    }

    /// The edge's id, for logs and status lines (empty if it is gone).
    pub(super) fn edge_name(&self, conn: ConnId) -> String {
        self.edges
            .get(&conn)
            .map(|e| e.id.clone())
            .unwrap_or_default()
    }

    /// The edge a message came from (or goes to), by tunnel or by plain-SIP address.
    pub(super) fn edge_conn_of(&self, peer: &Target) -> Option<ConnId> {
        if peer.kind == TransportKind::Tunnel {
            return peer.conn.filter(|c| self.edges.contains_key(c));
        }
        self.edges
            .iter()
            .find(|(_, e)| {
                // A TCP edge talks on the connection it registered on, from a port of its own.
                e.link.as_ref().is_some_and(|l| {
                    l.kind == peer.kind
                        && (l.addr == peer.addr || (l.conn.is_some() && l.conn == peer.conn))
                })
            })
            .map(|(c, _)| *c)
    }

    /// Where requests for an edge go.
    pub(super) fn edge_target(&self, conn: ConnId) -> Target {
        self.edges
            .get(&conn)
            .and_then(|e| e.link.clone())
            .unwrap_or_else(|| tunnel_target(conn))
    }

    /// Bytes as they are, to an edge: a tunnel frame or a plain-SIP send.
    fn send_raw(&mut self, conn: ConnId, to: &Target, bytes: Bytes) {
        let Some(edge) = self.edges.get(&conn) else {
            return;
        };
        if edge.tunneled {
            let frame = Frame::Sip {
                agent: None,
                message: bytes,
            };
            self.push_frame(conn, frame);
        } else {
            self.out.push_back(Output::Sip {
                to: to.clone(),
                bytes,
            });
        }
    }

    /// Sends what the layer queued.
    pub(super) fn flush(&mut self) {
        while let Some(t) = self.layer.poll_transmit() {
            self.metrics.sip_sent(&t.bytes);
            if let Some(conn) = self.edge_conn_of(&t.to) {
                self.send_edge(conn, t);
            } else if t.to.kind == TransportKind::Tunnel {
                // That edge is gone.
                self.layer.transport_failed(&t.to);
            } else {
                self.out.push_back(Output::Sip {
                    to: t.to,
                    bytes: t.bytes,
                });
            }
        }
    }

    /// Sends one message to an edge, encoding a hand-off the way the edge asked: an offer's
    /// INVITE carries its [`Handoff`] as the layer's note, on every retransmission too.
    fn send_edge(&mut self, conn: ConnId, t: Transmit<Handoff>) {
        let Some(edge) = self.edges.get(&conn) else {
            return;
        };
        let handoff = t.note;
        let mut frames = Vec::with_capacity(2);
        let message = match (edge.mode, handoff) {
            (Mode::Tunnel, Some(h)) => {
                frames.push(Frame::Sip {
                    agent: Some(h.agent),
                    message: t.bytes,
                });
                None
            }
            (Mode::Table, Some(h)) => {
                frames.push(Frame::Route {
                    call_id: h.call_id,
                    agent: h.agent,
                    ttl_ms: ROUTE_TTL_MS,
                });
                Some(t.bytes)
            }
            (Mode::Message, h) => {
                let target = match h {
                    Some(h) => format!("sip:{}@{}.invalid", h.agent, edge.id),
                    None => format!("sip:{}.invalid", edge.id),
                };
                let host = format!("{}.invalid", self.config.id);
                let wrapper = handoff::wrap(&t.bytes, &target, &host, &transaction::new_branch());
                Some(Bytes::from(wrapper.to_bytes()))
            }
            // `uri` was encoded in the request-URI before the layer saw the INVITE.
            (_, _) => Some(t.bytes),
        };
        if !edge.tunneled {
            // A plain-SIP edge: only `uri` and `message` exist there, both plain bytes.
            if let Some(bytes) = message {
                self.out.push_back(Output::Sip { to: t.to, bytes });
            }
            return;
        }
        if let Some(message) = message {
            frames.push(Frame::Sip {
                agent: None,
                message,
            });
        }
        for frame in frames {
            self.push_frame(conn, frame);
        }
    }
}
