//! Edges without a tunnel: such an edge registers each of its agents over plain SIP, with
//! the edge's credential on every REGISTER, and becomes an edge like a tunnelled one for as
//! long as it does. Apart from [`super::edges`] because it is a registrar's work (credentials,
//! bindings, refusals), not a link's.

use std::time::Instant;

use tracing::info;

use super::Distributor;
use super::edges::Edge;
use crate::admin::tokens::{self, TokenVerifier};
use crate::app::status::Status;
use crate::handoff::{self, Mode};
use crate::ids;
use crate::sip::register::{self, RegisterRequest};
use crate::sip::transaction::TxId;
use crate::sip::{SipMessage, SipUri, Target};

impl Distributor {
    /// An edge without a tunnel registers its agents here, each REGISTER carrying the edge's
    /// credential; its Contact says where and how (`ae-handoff`) calls reach the agent.
    pub(super) fn edge_register(&mut self, tx: TxId, msg: &SipMessage, from: Target, now: Instant) {
        let refuse = |this: &mut Self, code: u16, why: &str| {
            let mut resp = msg.response(code, Some(&ids::tag()));
            resp.set_reason(why);
            if code == 401 {
                resp.push_header("WWW-Authenticate", "Bearer realm=\"agent-edge-edges\"");
            }
            let _ = this.layer.send_response(tx, resp, now);
        };
        let verifier = TokenVerifier::new(&self.edge_issuer.verifier_settings());
        let edge_id = match tokens::bearer(msg.header("Authorization"))
            .and_then(|t| verifier.verify(t))
        {
            Ok(claims) => claims.sub,
            Err(e) => {
                info!(peer = %from.addr, error = %e, "refusing a REGISTER without an edge credential");
                return refuse(self, 401, "An edge credential is required");
            }
        };
        let request = match register::parse_register(msg, 3600) {
            Ok(r) => r,
            Err(e) => return refuse(self, e.status(), &e.to_string()),
        };
        let conn = match self.edge_ids.get(&edge_id).copied() {
            Some(conn) if self.edges.get(&conn).is_some_and(|e| e.tunneled) => {
                return refuse(self, 409, "This edge is connected by tunnel");
            }
            Some(conn) => conn,
            None => crate::transport::next_conn_id(),
        };
        match request {
            RegisterRequest::Bind {
                agent,
                contact,
                expires,
            } => {
                let mode = SipUri::parse(&contact).ok().and_then(|u| {
                    u.param(handoff::LINK_MODE_PARAM)
                        .flatten()
                        .and_then(Mode::parse)
                });
                let Some(mode @ (Mode::Uri | Mode::Message)) = mode else {
                    return refuse(self, 488, "Over plain SIP the hand-off is uri or message");
                };
                // The edge's credential says which edge this is, not which agents it has:
                // the agent's own token must come with the claim.
                let token = msg.header(handoff::LINK_AGENT_TOKEN).unwrap_or_default();
                let proof = match self.prove(&agent, token.trim(), now) {
                    Ok(proof) => proof,
                    Err(e) => {
                        info!(edge = %edge_id, %agent, error = %e, "refusing an edge's REGISTER of an agent");
                        if let Some(edge) = self.edges.get_mut(&conn) {
                            edge.refused.claims += 1;
                        }
                        return refuse(self, 403, "The agent's token does not prove this claim");
                    }
                };
                let link = register::target_for(&contact, &from);
                if !self.edges.contains_key(&conn) {
                    info!(edge = %edge_id, handoff = mode.as_str(), "edge up over plain SIP");
                    self.metrics.edge_up(&edge_id);
                    self.status(Status::EdgeUp {
                        edge: edge_id.clone(),
                        handoff: mode.as_str(),
                    });
                }
                self.edge_ids.insert(edge_id.clone(), conn);
                self.edges.insert(
                    conn,
                    Edge {
                        id: edge_id.clone(),
                        tunneled: false,
                        link: Some(link),
                        mode,
                        refused: self.edges.get(&conn).map(|e| e.refused).unwrap_or_default(),
                    },
                );
                self.agent_up(&agent, conn, &edge_id, proof, now);
                let mut resp = msg.response(200, Some(&ids::tag()));
                resp.push_header("Contact", format!("<{contact}>;expires={expires}"));
                let _ = self.layer.send_response(tx, resp, now);
            }
            RegisterRequest::Unbind { agent } => {
                if self.agents.proved_by(&agent, conn) {
                    self.agent_down(&agent, conn, &edge_id, now);
                } else {
                    self.unproved(conn, &agent, "un-REGISTER");
                }
                let _ = self
                    .layer
                    .send_response(tx, msg.response(200, Some(&ids::tag())), now);
            }
            RegisterRequest::Fetch { .. } => {
                let _ = self
                    .layer
                    .send_response(tx, msg.response(200, Some(&ids::tag())), now);
            }
        }
    }
}
