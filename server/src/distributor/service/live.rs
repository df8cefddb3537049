//! What the distributor tells about agents and calls, and what it hears from agents
//! themselves: the admin API's live view and event stream, an agent's page (its presence,
//! and the ACD's view of it), agents signing in and out with their profiles. None of it is
//! SIP: it is the ACD's state, shown and fed.

use std::sync::Arc;
use std::time::Instant;

use proto_tunnel::Frame;
use tracing::{info, warn};

use super::{Distributor, Held, LiveAgent, LiveCall, LiveView};
use crate::acd::{self, Presence, Profile};
use crate::app::status::Status;
use crate::distributor::agents::{ClaimError, Claimed, Proof, check_claim};
use crate::sip::ConnId;

/// Events kept for a slow subscriber before it starts losing them.
pub(super) const EVENT_BACKLOG: usize = 1024;

impl Distributor {
    pub(super) fn live_view(&self, now: Instant) -> LiveView {
        let snapshot = self.acd.snapshot(now);
        let agents = snapshot
            .agents
            .into_iter()
            .map(|a| LiveAgent {
                edge: self
                    .agents
                    .edge_of(&a.agent)
                    .and_then(|c| self.edges.get(&c))
                    .map(|e| e.id.clone())
                    .unwrap_or_default(),
                token: self.agents.token_of(&a.agent).map(str::to_owned),
                id: a.agent,
                state: a.state,
                reason: a.reason,
                calls: a.calls,
            })
            .collect();
        let calls = snapshot
            .calls
            .into_iter()
            .map(|call| LiveCall {
                media: self
                    .media_stats
                    .get(&call.call)
                    .and_then(|json| serde_json::from_str(json).ok()),
                call,
            })
            .collect();
        let (transactions, timers) = crate::sip::transaction::held_in_process();
        LiveView {
            agents,
            queues: snapshot.queues,
            calls,
            held: Held {
                transactions,
                timers,
                distributor_transactions: self.layer.len(),
                distributor_timers: self.layer.scheduled_timers(),
                sip_calls: self.calls.len(),
                records_open: self.records.open(),
            },
        }
    }

    /// An agent's page set its presence (the edge checked the agent's token).
    pub(super) fn presence_from_page(&mut self, agent: &str, json: &str, now: Instant) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
            return;
        };
        let presence = match v.get("state").and_then(|s| s.as_str()) {
            Some("available") => Presence::Available,
            Some("away") => {
                let reason = v
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .filter(|r| !r.is_empty() && r.len() <= 100 && !r.chars().any(char::is_control))
                    .unwrap_or("away");
                Presence::Away {
                    reason: reason.to_owned(),
                }
            }
            _ => return,
        };
        info!(%agent, ?presence, "presence from the agent's page");
        self.acd.set_presence(agent, presence, now);
    }

    /// The agent's page shows what the ACD thinks of it: sent through the agent's edge.
    fn tell_page(&mut self, view: &acd::AgentView) {
        let Some(conn) = self.agents.edge_of(&view.agent) else {
            return;
        };
        if let Ok(json) = serde_json::to_string(view) {
            let agent = view.agent.clone();
            self.send_frame(conn, Frame::AgentState { agent, json });
        }
    }

    pub(super) fn default_profile(&self) -> Profile {
        Profile {
            skills: Default::default(),
            max_calls: self.config.agent_max_calls,
        }
    }

    /// The agent's skills and call limit from the admin store; defaults for an agent the
    /// store does not know (a token issued from the command line).
    fn profile_of(&self, agent: &str) -> Profile {
        match self.profiles.as_ref().map(|p| p.profile(agent)) {
            Some(Ok(Some(profile))) => profile,
            Some(Err(e)) => {
                warn!(%agent, error = %e, "agent store failed; default profile");
                self.default_profile()
            }
            _ => self.default_profile(),
        }
    }

    /// Checks an edge's claim of `agent` with the token she registered with.
    pub(super) fn prove(
        &self,
        agent: &str,
        token: &str,
        now: Instant,
    ) -> Result<Proof, ClaimError> {
        let unix_now = self.clock.unix(now);
        check_claim(&self.agent_tokens, &self.revoked, agent, token, unix_now)
    }

    /// An edge proved `agent` signed in there. From another edge than the one she was on,
    /// she moves: her calls go here from now on (calls in progress stay where they are), and
    /// the old edge is told to drop its binding, since it no longer speaks for her.
    pub(super) fn agent_up(
        &mut self,
        agent: &str,
        conn: ConnId,
        edge_id: &str,
        proof: Proof,
        now: Instant,
    ) {
        match self.agents.up(agent, conn, proof) {
            Claimed::Again => return,
            Claimed::New => {}
            Claimed::Moved { from } => {
                let old = self.edge_name(from);
                info!(%agent, from = %old, to = %edge_id, "agent moved to another edge");
                self.status(Status::AgentDown {
                    agent: agent.to_owned(),
                    edge: old,
                });
                let agent = agent.to_owned();
                self.send_frame(from, Frame::AgentDown { agent });
            }
        }
        self.status(Status::AgentUp {
            agent: agent.to_owned(),
            edge: edge_id.to_owned(),
        });
        let profile = self.profile_of(agent);
        self.acd.sign_in(agent, profile, now);
    }

    pub(super) fn agent_down(&mut self, agent: &str, conn: ConnId, edge_id: &str, now: Instant) {
        if self.agents.down(agent, conn) {
            self.status(Status::AgentDown {
                agent: agent.to_owned(),
                edge: edge_id.to_owned(),
            });
            self.acd.sign_out(agent, now);
        }
    }

    /// Publishes what the ACD says changed: to the agents' pages, and to the event stream's
    /// subscribers when there are any.
    pub(super) fn publish_acd_events(&mut self, now: Instant) {
        while let Some(event) = self.acd.poll_event() {
            self.metrics.observe(&event);
            let edge = match &event {
                acd::AcdEvent::CallOffered { agent, .. } => self
                    .agents
                    .edge_of(agent)
                    .and_then(|c| self.edges.get(&c))
                    .map(|e| e.id.clone()),
                _ => None,
            };
            self.records.observe(&event, edge.as_deref(), now);
            match &event {
                acd::AcdEvent::Agent(view) => self.tell_page(view),
                acd::AcdEvent::CallEnded { call, .. } => {
                    self.media_stats.remove(call);
                }
                _ => {}
            }
            if self.events.receiver_count() == 0 {
                continue;
            }
            match serde_json::to_string(&event) {
                Ok(json) => {
                    let _ = self.events.send(Arc::from(json));
                }
                Err(e) => warn!(error = %e, "event not published"),
            }
        }
    }
}
