//! From a caller's INVITE to an answer: the call handed to the ACD, the ACD's decisions
//! carried out (offer the INVITE to an agent's edge, withdraw it, ringback, refuse), and
//! what the caller and the edges say back told to the ACD (answers, declines, cancels,
//! failures). This is where SIP meets the ACD.

use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::calls::{Call, Caller, Offer, TxKind};
use super::edges::Handoff;
use super::overload;
use super::{Distributor, Output};
use crate::acd::{CallFacts, Decision, FailCause, OfferEnd};
use crate::handoff::{self, Mode};
use crate::ids;
use crate::media::sdp;
use crate::sip::transaction::TxId;
use crate::sip::{SipMessage, Target, TransportKind};

impl Distributor {
    pub(super) fn new_call(&mut self, tx: TxId, invite: SipMessage, from: Target, now: Instant) {
        let call_id = invite.call_id().unwrap_or_default().to_owned();
        if invite.max_forwards() == Some(0) {
            self.respond(tx, &invite, 483, now);
            return;
        }
        if self.draining {
            let mut resp = invite.response(503, Some(&ids::tag()));
            resp.set_reason("Shutting down");
            resp.push_header("Retry-After", "30");
            let _ = self.layer.send_response(tx, resp, now);
            self.records.refused(&invite, "shutting down", now);
            return;
        }
        if self.overload.refuse_new_call(now) {
            let mut resp = invite.response(503, Some(&ids::tag()));
            resp.set_reason("Overloaded");
            resp.push_header("Retry-After", overload::RETRY_AFTER_S.to_string());
            let _ = self.layer.send_response(tx, resp, now);
            self.metrics.overload_refused();
            self.records.refused(&invite, "overloaded", now);
            return;
        }
        if self.calls.caller(&call_id).is_some() || self.acd.call_info(&call_id, now).is_some() {
            // Another caller's call has this Call-ID: the ACD knows calls by it.
            self.respond(tx, &invite, 482, now);
            return;
        }
        let call_type = self
            .classifier
            .classify(&CallFacts::from_invite(&invite))
            .clone();
        info!(%call_id, call_type = %call_type.name, queue = %call_type.queue, "new call");
        let caller = Caller {
            server_tx: tx,
            invite,
            target: from,
            tag: ids::tag(),
        };
        self.records.arrived(&caller.invite, now);
        self.calls.insert_caller(&call_id, caller);
        self.acd.call_arrived(&call_id, call_type, now);
    }

    /// Carries out what the ACD decided, and publishes what changed, until it is quiet.
    pub(super) fn run_acd(&mut self, now: Instant) {
        while let Some(decision) = self.acd.poll_decision() {
            match decision {
                Decision::Offer { call, agent } => self.offer(&call, &agent, now),
                Decision::Withdraw { call, agent } => {
                    let client = self
                        .calls
                        .get(&call)
                        .and_then(Call::current_offer)
                        .filter(|(_, o)| o.agent == agent)
                        .map(|(tx, _)| tx);
                    if let Some(client) = client {
                        info!(%call, %agent, "withdrawing the offer");
                        self.layer.cancel(client, now);
                    }
                }
                Decision::Queued { call } => self.ringback(&call, now),
                Decision::Refuse {
                    call,
                    status,
                    reason,
                } => {
                    self.stop_early_media(&call);
                    if let Some(c) = self.calls.caller(&call) {
                        info!(%call, status, %reason, "refusing the call");
                        let mut resp = c.invite.response(status, Some(&c.tag));
                        resp.push_header(
                            "Reason",
                            format!("SIP ;cause={status} ;text=\"{reason}\""),
                        );
                        let _ = self.layer.send_response(c.server_tx, resp, now);
                    }
                }
            }
        }
        self.publish_acd_events(now);
    }

    /// Tells a caller the call waits: 183 with the queue's announcement as early media when
    /// the queue has one and the caller offered G.711 audio, else 180.
    fn ringback(&mut self, call: &str, now: Instant) {
        let Some(c) = self.calls.caller(call) else {
            return;
        };
        let queue = self.acd.queue_of(call).unwrap_or_default();
        let early = self.media.as_ref().and_then(|m| {
            let audio = m.announcements.get(queue)?;
            let offer = sdp::audio_offer(&c.invite.body)?;
            let law = offer.law()?;
            let start = Output::EarlyMediaStart {
                call: call.to_owned(),
                to: offer.to,
                audio: audio.encoded(law),
                law,
            };
            Some((
                start,
                sdp::answer(m.from, law, rand::random::<u32>().into()),
            ))
        });
        let early = early.map(|(start, answer)| {
            if let Some(c) = self.calls.get_mut(call) {
                c.mark_playing();
            }
            self.out.push_back(start);
            answer
        });
        let Some(c) = self.calls.caller(call) else {
            return;
        };
        let mut resp = match early {
            Some(answer) => {
                let mut resp = c.invite.response(183, Some(&c.tag));
                resp.push_header("Content-Type", "application/sdp");
                resp.body = Bytes::from(answer);
                resp
            }
            None => c.invite.response(180, Some(&c.tag)),
        };
        // The early dialog's remote target (RFC 3261 §12.1.1).
        let (addr, transport) = self.addrs.for_kind(c.target.kind);
        resp.push_header("Contact", format!("<sip:{addr};transport={transport}>"));
        if self.layer.send_response(c.server_tx, resp, now).is_ok()
            && let Some((_, waited)) = self.acd.call_info(call, now)
        {
            self.metrics.ringback(waited);
        }
    }

    pub(super) fn stop_early_media(&mut self, call: &str) {
        if self.calls.get_mut(call).is_some_and(Call::take_playing) {
            self.out.push_back(Output::EarlyMediaStop {
                call: call.to_owned(),
            });
        }
    }

    /// Sends the caller's INVITE to the edge where the agent is signed in.
    fn offer(&mut self, call_id: &str, agent: &str, now: Instant) {
        let conn = self.agents.edge_of(agent);
        let edge_id = conn.and_then(|c| self.edges.get(&c)).map(|e| e.id.clone());
        let (Some(conn), Some(edge_id), Some(caller)) = (conn, edge_id, self.calls.caller(call_id))
        else {
            let cause = FailCause::EdgeGone;
            self.acd
                .offer_ended(call_id, agent, OfferEnd::Failed { cause }, now);
            return;
        };
        let (server_tx, from) = (caller.server_tx, caller.target.clone());
        let mut fwd = caller.invite.clone();
        info!(%call_id, %agent, edge = %edge_id, "offering the call");
        if let Some((call_type, waited)) = self.acd.call_info(call_id, now) {
            // For the agent's screen: what the call is and how long the caller waited.
            fwd.set_header("X-AE-Call-Type", call_type.name.clone());
            fwd.set_header("X-AE-Queue", call_type.queue.clone());
            fwd.set_header("X-AE-Waited", waited.as_secs().to_string());
        }
        fwd.push_header_front("Record-Route", self.record_route(&from));
        let target = self.edge_target(conn);
        self.prepare_forward(&mut fwd, target.kind);
        if self.edges.get(&conn).is_some_and(|e| e.mode == Mode::Uri) {
            // In the request-URI, so the CANCEL the layer may build repeats it.
            let host = match target.kind {
                TransportKind::Tunnel => format!("{edge_id}.invalid"),
                _ => target.addr.to_string(),
            };
            handoff::encode_uri(&mut fwd, &host, agent);
        }
        let handoff = Handoff {
            agent: agent.to_owned(),
            call_id: call_id.to_owned(),
        };
        let client_tx = self.layer.send_request_with(fwd, target, handoff, now);
        let offer = Offer {
            server_tx,
            agent: agent.to_owned(),
            caller: from,
            edge_id,
            abandoned: false,
        };
        self.calls.add_offer(call_id, client_tx, offer);
    }

    /// Whether the ACD still counts on this agent's offer (ringing, or being withdrawn).
    fn is_current(&self, call_id: &str, agent: &str) -> bool {
        self.acd.agent_of(call_id) == Some(agent)
    }

    pub(super) fn on_cancel(&mut self, server_tx: TxId, now: Instant) {
        let caller_call = match self.calls.of_tx(server_tx) {
            Some((call_id, TxKind::Caller)) => Some(call_id.to_owned()),
            _ => None,
        };
        let offer = caller_call
            .as_deref()
            .and_then(|c| self.calls.get_mut(c))
            .and_then(Call::abandon_current_offer);
        let call_id = caller_call.unwrap_or_default();
        match offer {
            Some(client_tx) => {
                // The edge's final answer (487) goes back to the caller.
                self.layer.cancel(client_tx, now);
            }
            None => {
                if let Some(req) = self.layer.server_request(server_tx).cloned() {
                    let tag = self.calls.caller(&call_id).map(|c| c.tag.clone());
                    let resp = req.response(487, Some(&tag.unwrap_or_else(ids::tag)));
                    let _ = self.layer.send_response(server_tx, resp, now);
                }
            }
        }
        info!(%call_id, "caller hung up before the answer");
        self.stop_early_media(&call_id);
        self.acd.call_abandoned(&call_id, now);
    }

    /// An edge's response to an offer (its Via already popped): the ACD hears how the offer
    /// went; the caller gets what a proxy owes it.
    pub(super) fn on_offer_response(&mut self, tx: TxId, mut resp: SipMessage, now: Instant) {
        let Some((call_id, offer)) = self.calls.offer(tx) else {
            return;
        };
        let code = resp.status().unwrap_or(500);
        let current = self.is_current(call_id, &offer.agent);
        let (server_tx, caller, edge_id, abandoned) = (
            offer.server_tx,
            offer.caller.clone(),
            offer.edge_id.clone(),
            offer.abandoned,
        );
        let (call_id, agent) = (call_id.to_owned(), offer.agent.clone());
        let forward = match code {
            101..=199 if current => {
                self.acd.offer_ringing(&call_id, &agent, now);
                true
            }
            200..=299 => {
                self.stop_early_media(&call_id);
                if current {
                    self.acd
                        .offer_ended(&call_id, &agent, OfferEnd::Answered, now);
                }
                // Forwarded in every case, as a proxy must: the caller's side decides.
                true
            }
            300.. if current => {
                let end = match code {
                    486 | 487 | 600 | 603 => OfferEnd::Declined { status: code },
                    488 | 606 => OfferEnd::Unacceptable { status: code },
                    _ => OfferEnd::Failed {
                        cause: FailCause::Status(code),
                    },
                };
                info!(%call_id, %agent, code, "the offer ended without an answer");
                self.acd.offer_ended(&call_id, &agent, end, now);
                false
            }
            // The caller cancelled: its 487 (or the answer that crossed the CANCEL).
            _ => abandoned,
        };
        if !forward {
            return;
        }
        self.rewrite_contact(&mut resp, caller.kind, &edge_id);
        match self.layer.send_response(server_tx, resp.clone(), now) {
            Ok(_) if (200..300).contains(&code) => {
                if let Some((_, waited)) = self.acd.call_info(&call_id, now) {
                    self.metrics.answered(waited);
                }
            }
            Ok(_) => {}
            // A retransmitted 2xx after the server transaction accepted the first one.
            Err(_) if code < 300 => self.layer.send_stateless(resp, caller),
            Err(_) => {}
        }
    }

    /// An offer got no answer or lost its edge's connection (the offer already gone from its
    /// call).
    pub(super) fn on_offer_failed(
        &mut self,
        call_id: &str,
        offer: Offer,
        cause: FailCause,
        now: Instant,
    ) {
        if self.is_current(call_id, &offer.agent) {
            warn!(agent = %offer.agent, %call_id, ?cause, "agent's leg failed: no answer to the offer");
            self.acd
                .offer_ended(call_id, &offer.agent, OfferEnd::Failed { cause }, now);
        } else if offer.abandoned
            && let Some(req) = self.layer.server_request(offer.server_tx).cloned()
        {
            self.respond(offer.server_tx, &req, 487, now);
        } else {
            // An offer long answered or withdrawn, whose transaction's record outlived it
            // (RFC 6026 keeps an accepted INVITE 32 s): its edge going is no news.
            debug!(agent = %offer.agent, %call_id, ?cause, "a finished offer's transaction failed");
        }
    }
}
