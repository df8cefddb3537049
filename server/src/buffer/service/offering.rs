//! A new call from the distributor until the agent answers or it ends unanswered: the two
//! legs built, the bridge's media opened for a browser agent (or, anchored, a desk phone's),
//! the agent's answers relayed, and the CANCEL and shutdown paths that end a call still
//! ringing.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::buffer::readdress;
use crate::buffer::routing_table::{CallEntry, CallKey, CallState, Side};
use crate::ids;
use crate::media::bridge::{BridgeError, SessionId};
use crate::media::relay::Leg;
use crate::sip::transaction::{self, TxId};
use crate::sip::{Method, SipMessage, Target, TransportKind};

use super::calls::{PendingInvite, TxRole};
use super::dialog::sdp_body;
use super::{Buffer, Output};

impl Buffer {
    pub(super) fn on_new_call(
        &mut self,
        tx: TxId,
        invite: SipMessage,
        from: Target,
        handoff: Option<String>,
        now: Instant,
    ) {
        let Some(agent) = handoff else {
            debug!("INVITE from the distributor names no agent");
            self.respond(tx, &invite, 404, now);
            return;
        };
        let Some(binding) = self.registrar.get(&agent).cloned() else {
            info!(%agent, "call for an agent not registered here");
            self.respond(tx, &invite, 404, now);
            return;
        };
        if invite.max_forwards() == Some(0) {
            self.respond(tx, &invite, 483, now);
            return;
        }
        let client = match readdress::client_leg(&invite, from, ids::tag()) {
            Ok(leg) => leg,
            Err(e) => {
                let mut resp = invite.response(e.status(), Some(&ids::tag()));
                resp.set_reason(&e.to_string());
                let _ = self.layer.send_response(tx, resp, now);
                return;
            }
        };
        let local = self.local_addr(binding.target.kind);
        let agent_leg = readdress::agent_leg(
            &invite,
            &agent,
            &binding.contact,
            binding.target.clone(),
            &local,
            ids::call_id(),
            ids::tag(),
        );
        let mut out =
            readdress::request_for_leg(&invite, &agent_leg, 1, &local, &transaction::new_branch());
        let entry = CallEntry {
            agent: agent.clone(),
            client,
            agent_leg,
            state: CallState::Offering,
        };
        let key = match self.calls.insert(entry) {
            Ok(k) => k,
            Err(e) => {
                warn!(error = %e, "refusing call");
                self.respond(tx, &invite, 482, now);
                return;
            }
        };
        let turn = match binding.target.kind {
            TransportKind::Wss => self.turn_header(&agent),
            _ => None,
        };
        if binding.target.kind == TransportKind::Wss
            && let Some(media) = self.media.as_mut()
        {
            // A browser: its WebRTC meets the caller's RTP in the media bridge.
            match media.open(key.0, &invite.body, now) {
                Ok(agent_offer) => {
                    out.set_header("Content-Type", "application/sdp");
                    out.body = Bytes::from(agent_offer);
                    if let Some(turn) = &turn {
                        out.set_header("X-Turn", turn);
                    }
                    // The caller's answer follows once its port is open.
                    let remote = media.caller_destination(key.0);
                    let ice_ufrag = media.ice_tcp_ufrag(key.0);
                    self.calls.await_caller_port(key);
                    self.out.push_back(Output::OpenCallerPort {
                        call: key.0,
                        remote,
                        ice_ufrag,
                        agent: agent.clone(),
                    });
                }
                Err(e) => {
                    info!(call = ?key, error = %e, "refusing the call's media");
                    self.calls.remove(key);
                    let mut resp = invite.response(e.status(), Some(&ids::tag()));
                    resp.set_reason(&e.to_string());
                    let _ = self.layer.send_response(tx, resp, now);
                    return;
                }
            }
        }
        if binding.target.kind != TransportKind::Wss
            && self.config.anchor_desk_phone_media
            && let Some(media) = self.media.as_mut()
        {
            // A desk phone: its plain RTP and the caller's meet in the bridge, each side at a
            // port of ours. The INVITE waits for the agent-side port, which its SDP names;
            // both ports are the edge's own sockets (or the caller's, on an exposed edge,
            // the distributor's relay), opened before the next input.
            media.open_relay(key.0, sdp_body(&invite).unwrap_or_default(), now);
            let remote = media.caller_destination(key.0);
            self.calls.set_relayed(key);
            self.calls.client_invite_received(key, tx);
            self.calls.await_caller_port(key);
            let pending = PendingInvite {
                client_tx: tx,
                invite: out,
                target: binding.target,
            };
            self.calls.await_agent_port(key, pending);
            info!(%agent, call = ?key, "offering call to agent, its media anchored here");
            self.out.push_back(Output::OpenCallerPort {
                call: key.0,
                remote,
                ice_ufrag: None,
                agent,
            });
            self.out.push_back(Output::OpenAgentPort { call: key.0 });
            return;
        }
        info!(%agent, call = ?key, "offering call to agent");
        let agent_tx = self.layer.send_request(out, binding.target, now);
        self.calls.invite_sent(key, tx, agent_tx);
    }

    /// The agent-side socket of a relayed call opened (or not): its INVITE goes to the
    /// agent now, with the caller's SDP re-addressed to that socket.
    pub(super) fn on_agent_port(
        &mut self,
        call: SessionId,
        result: Result<SocketAddr, String>,
        now: Instant,
    ) {
        let key = CallKey(call);
        let Some(pending) = self.calls.agent_port_arrived(key) else {
            // The call ended meanwhile (its caller-side port failed): this socket goes too.
            if result.is_ok() {
                self.out.push_back(Output::CloseCallerPort { call });
            }
            return;
        };
        let PendingInvite {
            client_tx,
            mut invite,
            target,
        } = pending;
        let opened = match (result, self.media.as_mut()) {
            (Ok(local), Some(media)) => media.agent_port(call, local),
            (Ok(_), None) => Err(BridgeError::Unknown(call)),
            (Err(e), _) => Err(BridgeError::Socket(e)),
        };
        let offer = match (opened, sdp_body(&invite), self.media.as_mut()) {
            (Err(e), _, _) => Err(e),
            (Ok(()), Some(sdp), Some(media)) => {
                media.relay_sdp(call, Leg::Caller, sdp, now).map(Some)
            }
            (Ok(()), _, _) => Ok(None),
        };
        match offer {
            Ok(offer) => {
                if let Some(offer) = offer {
                    invite.body = Bytes::from(offer);
                }
                let agent_tx = self.layer.send_request(invite, target, now);
                self.calls.invite_sent(key, client_tx, agent_tx);
            }
            Err(e) => {
                warn!(call = ?key, error = %e, "cannot anchor the desk phone's media: refusing the call");
                if let Some(req) = self.layer.server_request(client_tx).cloned() {
                    let tag = self.calls.get(key).map(|e| e.client.local_tag.clone());
                    let (status, reason) = match e {
                        BridgeError::Socket(_) | BridgeError::Unknown(_) => {
                            (503, "No media port for the agent".to_owned())
                        }
                        e => (e.status(), e.to_string()),
                    };
                    let mut resp = req.response(status, tag.as_deref());
                    resp.set_reason(&reason);
                    let _ = self.layer.send_response(client_tx, resp, now);
                }
                self.end_call(key);
            }
        }
    }

    /// The caller-side socket of a bridged call opened (or not).
    pub(super) fn on_caller_port(
        &mut self,
        call: SessionId,
        result: Result<SocketAddr, String>,
        now: Instant,
    ) {
        let key = CallKey(call);
        // The agent may have answered while the port was being opened (a relay's port takes
        // a round trip to the distributor): its 2xx waited, and goes on now.
        let Some(early_answer) = self.calls.caller_port_arrived(key) else {
            // The call ended meanwhile: the port goes too.
            if result.is_ok() {
                self.out.push_back(Output::CloseCallerPort { call });
            }
            return;
        };
        let answer = match (result, self.media.as_mut()) {
            (Ok(local), Some(media)) => media.caller_port(call, local).map_err(|e| e.to_string()),
            (Ok(_), None) => Err("no media bridge".to_owned()),
            (Err(e), _) => Err(e),
        };
        match answer {
            Ok(answer) => {
                if let Some(answer) = answer {
                    self.calls.set_caller_answer(key, answer);
                }
                if let Some((client_tx, resp)) = early_answer {
                    self.on_agent_invite_response(key, client_tx, resp, now);
                }
            }
            Err(e) => {
                warn!(call = ?key, error = %e, "no caller-side media port: refusing the call");
                if let Some((client_tx, _)) = early_answer {
                    // The agent's leg is confirmed, so it is hung up, not cancelled.
                    if let Some(req) = self.layer.server_request(client_tx).cloned() {
                        let mut out = req.response(503, Some(&ids::tag()));
                        out.set_reason("No media port for the caller");
                        let _ = self.layer.send_response(client_tx, out, now);
                    }
                    self.ack_and_bye_agent(key, now);
                } else {
                    self.refuse_offering(key, 503, "No media port for the caller", now);
                }
            }
        }
    }

    pub(super) fn on_agent_invite_response(
        &mut self,
        key: CallKey,
        client_tx: TxId,
        resp: SipMessage,
        now: Instant,
    ) {
        let code = resp.status().unwrap_or(500);
        if code == 100 {
            return;
        }
        if (200..300).contains(&code) && self.calls.hold_for_caller_port(key, client_tx, &resp) {
            return;
        }
        let Some(entry) = self.calls.get_mut(key) else {
            return;
        };
        if let Some(tag) = resp.to_tag() {
            entry.agent_leg.remote_tag = Some(tag);
        }
        if (200..300).contains(&code) {
            if let Some(uri) = readdress::contact_uri(&resp) {
                entry.agent_leg.remote_target = uri;
            }
            // As UAC, the route set is the Record-Route list reversed (RFC 3261 §12.1.2).
            let mut routes: Vec<String> = resp
                .headers_named("Record-Route")
                .map(str::to_owned)
                .collect();
            routes.reverse();
            entry.agent_leg.route_set = routes;
            match entry.state {
                CallState::Offering => {
                    entry.state = CallState::Answered;
                    if self.calls.is_relayed(key)
                        && let Some(media) = self.media.as_mut()
                    {
                        media.relay_answered(key.0, now);
                    }
                    if self.calls.is_bridged(key)
                        && let Some(media) = self.media.as_mut()
                        && let Err(e) = media.agent_answer(key.0, &resp.body, now)
                    {
                        warn!(call = ?key, error = %e, "the agent's answer cannot be bridged");
                        self.ack_and_bye_agent(key, now);
                        if let Some(req) = self.layer.server_request(client_tx).cloned() {
                            let mut out = req.response(e.status(), Some(&ids::tag()));
                            out.set_reason(&e.to_string());
                            let _ = self.layer.send_response(client_tx, out, now);
                        }
                        return;
                    }
                }
                CallState::Cancelling => {
                    // The agent answered as the caller hung up: confirm and end its leg.
                    self.ack_and_bye_agent(key, now);
                    return;
                }
                _ => {
                    self.layer_resend_ack(key, Side::Agent, &resp);
                    return;
                }
            }
        }
        let Some(entry) = self.calls.get(key) else {
            return;
        };
        if entry.state == CallState::Cancelling {
            if code >= 300 {
                self.end_call(key);
            }
            return;
        }
        let local_tag = entry.client.local_tag.clone();
        let local = self.local_addr(entry.client.target.kind);
        // A relayed call: the agent's SDP (in a 18x or the 2xx) reaches the caller
        // re-addressed to our caller-side port.
        let relayed = match (self.calls.is_relayed(key), sdp_body(&resp)) {
            (true, Some(sdp)) => Some(match self.media.as_mut() {
                Some(media) => media.relay_sdp(key.0, Leg::Agent, sdp, now),
                None => Err(BridgeError::Unknown(key.0)),
            }),
            _ => None,
        };
        if let Some(Err(e)) = &relayed
            && (200..300).contains(&code)
        {
            warn!(call = ?key, error = %e, "the agent's answer cannot be relayed");
            self.ack_and_bye_agent(key, now);
            if let Some(req) = self.layer.server_request(client_tx).cloned() {
                let mut out = req.response(e.status(), Some(&local_tag));
                out.set_reason(&e.to_string());
                let _ = self.layer.send_response(client_tx, out, now);
            }
            return;
        }
        if let Some(req) = self.layer.server_request(client_tx) {
            let mut out = readdress::response_for_leg(req, &resp, &local_tag, &local);
            match relayed {
                Some(Ok(sdp)) => out.body = Bytes::from(sdp),
                Some(Err(e)) => {
                    // Early media cannot be described to the caller (its port is not
                    // open yet on an exposed edge): the 18x goes without SDP.
                    debug!(call = ?key, error = %e, "provisional answer sent without SDP");
                    out.remove_header("Content-Type");
                    out.body = Bytes::new();
                }
                None => {}
            }
            if let Some(answer) = self.calls.caller_answer(key) {
                // A bridged call: the caller gets our RTP, never the agent's WebRTC SDP.
                if (200..300).contains(&code) {
                    out.set_header("Content-Type", "application/sdp");
                    out.body = Bytes::from(answer.to_owned());
                } else {
                    out.remove_header("Content-Type");
                    out.body = Bytes::new();
                }
            }
            let _ = self.layer.send_response(client_tx, out, now);
        }
        if code >= 300 {
            info!(call = ?key, code, "agent declined");
            self.end_call(key);
        }
    }

    /// Confirms the agent's 2xx and hangs its leg up: for an answer that raced the caller's
    /// CANCEL, or a caller whose ACK never came.
    pub(super) fn ack_and_bye_agent(&mut self, key: CallKey, now: Instant) {
        let Some(entry) = self.calls.get(key) else {
            return;
        };
        let local = self.local_addr(entry.agent_leg.target.kind);
        let leg = &entry.agent_leg;
        let branch = transaction::new_branch();
        let ack = readdress::originate(Method::Ack, leg, leg.invite_cseq, &local, &branch);
        self.layer.send_stateless(ack, leg.target.clone());
        self.bye(key, Side::Agent, now);
        self.end_call(key);
    }

    /// Ends a call still ringing at the agent: `status` to the caller, CANCEL to the agent.
    pub(super) fn refuse_offering(
        &mut self,
        key: CallKey,
        status: u16,
        reason: &str,
        now: Instant,
    ) {
        let client_tx = self.calls.client_invite(key);
        if let Some(entry) = self.calls.get_mut(key) {
            entry.state = CallState::Cancelling;
        }
        if let (Some(tx), Some(entry)) = (client_tx, self.calls.get(key))
            && let Some(req) = self.layer.server_request(tx).cloned()
        {
            let mut resp = req.response(status, Some(&entry.client.local_tag));
            resp.set_reason(reason);
            let _ = self.layer.send_response(tx, resp, now);
        }
        self.calls.detach_client(key);
        if let Some(agent_tx) = self.calls.agent_invite(key) {
            self.layer.cancel(agent_tx, now);
        } else if self.calls.awaits_agent_port(key) {
            // Never offered to the agent (its media port was still being opened).
            self.end_call(key);
        }
    }

    pub(super) fn on_cancel(&mut self, invite_tx: TxId, now: Instant) {
        let Some((key, TxRole::ClientInvite)) = self.calls.tx(invite_tx) else {
            return;
        };
        if self.calls.get(key).map(|e| e.state) == Some(CallState::Offering) {
            // The client side is over; the distributor may offer the same call (same
            // Call-ID) again, here, while the agent leg winds down.
            self.refuse_offering(key, 487, "Request Terminated", now);
        }
    }
}
