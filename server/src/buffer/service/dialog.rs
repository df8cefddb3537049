//! An established call: requests relayed in the dialog each way (re-addressed, with the
//! bridge answering or re-offering SDP for bridged calls, and re-addressing every SDP of a
//! relayed one), ACKs end to end, BYEs of our own, and the end of a call with what each
//! failed transaction meant for it.

use std::time::Instant;

use bytes::Bytes;
use proto_tunnel::Frame;
use tracing::{debug, info, warn};

use crate::buffer::readdress;
use crate::buffer::routing_table::{CallKey, CallState, Side};
use crate::media::relay::Leg;
use crate::sip::transaction::{self, TxId};
use crate::sip::{Method, SipMessage, Target};

use super::calls::{Forwarded, TxRole};
use super::{Buffer, Output};

/// A message's body when it is a session description.
pub(super) fn sdp_body(msg: &SipMessage) -> Option<&[u8]> {
    let sdp = msg.header("Content-Type").is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
    });
    (sdp && !msg.body.is_empty()).then_some(&msg.body[..])
}

/// The relay's name for a leg of the routing table.
fn leg(side: Side) -> Leg {
    match side {
        Side::Client => Leg::Caller,
        Side::Agent => Leg::Agent,
    }
}

impl Buffer {
    pub(super) fn forward_in_dialog(
        &mut self,
        tx: TxId,
        msg: SipMessage,
        key: CallKey,
        side: Side,
        now: Instant,
    ) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        // A re-INVITE on a bridged call: each side's SDP is the bridge's business.
        let mut body = None;
        if method == Method::Invite
            && !msg.body.is_empty()
            && self.calls.is_bridged(key)
            && let Some(media) = self.media.as_mut()
        {
            let result = match side {
                Side::Client => media.caller_reoffer(key.0, &msg.body, now),
                Side::Agent => media
                    .agent_reoffer(key.0, &msg.body, now)
                    .map(|(answer, offer)| (answer, Some(offer))),
            };
            match result {
                Err(e) => {
                    let mut resp = msg.response(e.status(), None);
                    resp.set_reason(&e.to_string());
                    let _ = self.layer.send_response(tx, resp, now);
                    return;
                }
                Ok((answer, None)) => {
                    // Nothing changes for the other side (a session refresh): answered here.
                    self.answer_locally(tx, &msg, key, side, answer, now);
                    return;
                }
                Ok((answer, Some(offer))) => {
                    self.calls.set_reinvite_answer(key, answer);
                    body = Some(offer);
                }
            }
        }
        // Any SDP on a relayed call (a re-INVITE's offer, an UPDATE's, a PRACK's answer):
        // the other side gets it re-addressed to our port facing it.
        if self.calls.is_relayed(key)
            && let Some(sdp) = sdp_body(&msg)
            && let Some(media) = self.media.as_mut()
        {
            match media.relay_sdp(key.0, leg(side), sdp, now) {
                Ok(sdp) => body = Some(sdp),
                Err(e) => {
                    let mut resp = msg.response(e.status(), None);
                    resp.set_reason(&e.to_string());
                    let _ = self.layer.send_response(tx, resp, now);
                    return;
                }
            }
        }
        let other = side.other();
        let Some(entry) = self.calls.get_mut(key) else {
            return;
        };
        let kind = entry.leg(other).target.kind;
        let local = self.local_addr(kind);
        let Some(entry) = self.calls.get_mut(key) else {
            return;
        };
        let leg = entry.leg_mut(other);
        let cseq = leg.next_cseq();
        if method == Method::Invite {
            leg.invite_cseq = cseq;
        }
        let mut out =
            readdress::request_for_leg(&msg, leg, cseq, &local, &transaction::new_branch());
        if let Some(body) = body {
            out.set_header("Content-Type", "application/sdp");
            out.body = Bytes::from(body);
        }
        let target = leg.target.clone();
        if method == Method::Bye {
            entry.state = CallState::Ending;
        }
        let out_tx = self.layer.send_request(out, target, now);
        let forwarded = Forwarded {
            server_tx: tx,
            from_side: side,
            method,
        };
        self.calls.forwarded(key, out_tx, forwarded);
    }

    /// An ACK for a 2xx, end to end: rebuilt for the other leg with that leg's INVITE CSeq.
    pub(super) fn on_ack(&mut self, ack: &SipMessage, _from: &Target, now: Instant) {
        let Some((key, side)) = ack.call_id().and_then(|c| self.calls.lookup(c)) else {
            return;
        };
        let other = side.other();
        let Some(entry) = self.calls.get(key) else {
            return;
        };
        let local = self.local_addr(entry.leg(other).target.kind);
        let leg = entry.leg(other);
        let out = readdress::request_for_leg(
            ack,
            leg,
            leg.invite_cseq,
            &local,
            &transaction::new_branch(),
        );
        let target = leg.target.clone();
        let mut out = out;
        if self.calls.is_relayed(key)
            && let Some(sdp) = sdp_body(ack)
        {
            // The answer to an offer the other side made in its 2xx (a delayed offer).
            match self
                .media
                .as_mut()
                .map(|m| m.relay_sdp(key.0, self::leg(side), sdp, now))
            {
                Some(Ok(sdp)) => out.body = Bytes::from(sdp),
                _ => {
                    warn!(call = ?key, "an ACK's SDP cannot be relayed: sent without it");
                    out.remove_header("Content-Type");
                    out.body = Bytes::new();
                }
            }
        }
        if let Some(entry) = self.calls.get_mut(key)
            && entry.state == CallState::Answered
        {
            entry.state = CallState::Confirmed;
        }
        self.layer.send_stateless(out.clone(), target);
        self.calls.set_ack(key, other, out);
    }

    /// The other leg answered a request forwarded from `fwd.from_side`: the answer goes back
    /// to that side, re-addressed.
    pub(super) fn on_forwarded_response(
        &mut self,
        key: CallKey,
        fwd: Forwarded,
        resp: SipMessage,
        now: Instant,
    ) {
        let Forwarded {
            server_tx,
            from_side,
            method,
        } = fwd;
        let code = resp.status().unwrap_or(500);
        if code == 100 {
            return;
        }
        let other = from_side.other();
        if (200..300).contains(&code) && method == Method::Invite {
            // A re-INVITE's 2xx is a target refresh on the leg that answered it.
            if let (Some(uri), Some(entry)) =
                (readdress::contact_uri(&resp), self.calls.get_mut(key))
            {
                entry.leg_mut(other).remote_target = uri;
            }
            if self.layer_resend_ack(key, other, &resp) {
                return;
            }
            if other == Side::Agent
                && self.calls.has_reinvite_answer(key)
                && let Some(media) = self.media.as_mut()
                && let Err(e) = media.agent_answer(key.0, &resp.body, now)
            {
                warn!(call = ?key, error = %e, "the agent's answer to the re-offer failed");
            }
        }
        let answer = if method == Method::Invite && code >= 200 {
            self.calls.take_reinvite_answer(key)
        } else {
            None
        };
        // A relayed call: the answer's SDP (or a 2xx's offer) reaches the other side
        // re-addressed; `Some(None)`: it could not be, and goes without.
        let relayed = match (self.calls.is_relayed(key), sdp_body(&resp)) {
            (true, Some(sdp)) => Some(
                self.media
                    .as_mut()
                    .and_then(|m| m.relay_sdp(key.0, leg(other), sdp, now).ok()),
            ),
            _ => None,
        };
        let Some(entry) = self.calls.get(key) else {
            return;
        };
        let local_tag = entry.leg(from_side).local_tag.clone();
        let local = self.local_addr(entry.leg(from_side).target.kind);
        if let Some(req) = self.layer.server_request(server_tx) {
            let mut out = readdress::response_for_leg(req, &resp, &local_tag, &local);
            if let Some(answer) = answer.filter(|_| (200..300).contains(&code)) {
                out.set_header("Content-Type", "application/sdp");
                out.body = Bytes::from(answer);
            }
            match relayed {
                Some(Some(sdp)) => out.body = Bytes::from(sdp),
                Some(None) => {
                    warn!(call = ?key, code, "an answer's SDP cannot be relayed: sent without it");
                    out.remove_header("Content-Type");
                    out.body = Bytes::new();
                }
                None => {}
            }
            let _ = self.layer.send_response(server_tx, out, now);
        }
        if method == Method::Bye && code >= 200 {
            self.end_call(key);
        }
    }

    /// A retransmitted 2xx on a leg whose ACK was already sent: send that ACK again.
    pub(super) fn layer_resend_ack(&mut self, key: CallKey, side: Side, resp: &SipMessage) -> bool {
        let Some(ack) = self.calls.ack(key, side) else {
            return false;
        };
        let same = resp.cseq().ok().map(|c| c.seq) == ack.cseq().ok().map(|c| c.seq);
        if !same {
            return false;
        }
        if let Some(entry) = self.calls.get(key) {
            self.layer
                .send_stateless(ack.clone(), entry.leg(side).target.clone());
        }
        true
    }

    /// Hangs up one leg with a BYE of our own; the call's entry stays for its answer.
    pub(super) fn bye(&mut self, key: CallKey, side: Side, now: Instant) {
        let Some(kind) = self.calls.get(key).map(|e| e.leg(side).target.kind) else {
            return;
        };
        let local = self.local_addr(kind);
        let Some(entry) = self.calls.get_mut(key) else {
            return;
        };
        let leg = entry.leg_mut(side);
        let cseq = leg.next_cseq();
        let bye = readdress::originate(Method::Bye, leg, cseq, &local, &transaction::new_branch());
        let target = leg.target.clone();
        let tx = self.layer.send_request(bye, target, now);
        if self.draining {
            self.hangups.insert(tx);
        }
    }

    /// Answers an in-dialog INVITE on `side` here, with the bridge's SDP.
    fn answer_locally(
        &mut self,
        tx: TxId,
        msg: &SipMessage,
        key: CallKey,
        side: Side,
        sdp: String,
        now: Instant,
    ) {
        let Some(kind) = self.calls.get(key).map(|e| e.leg(side).target.kind) else {
            return;
        };
        let local = self.local_addr(kind);
        let mut resp = msg.response(200, None);
        resp.push_header("Contact", local.contact.clone());
        resp.push_header("Content-Type", "application/sdp");
        resp.body = Bytes::from(sdp);
        let _ = self.layer.send_response(tx, resp, now);
    }

    /// Ends an answered call from here: BYE on both legs (the media stopped).
    pub(super) fn hang_up(&mut self, key: CallKey, now: Instant) {
        self.bye(key, Side::Client, now);
        self.bye(key, Side::Agent, now);
        self.end_call(key);
    }

    pub(super) fn on_stray_response(&mut self, resp: &SipMessage) {
        let Some((key, side)) = resp.call_id().and_then(|c| self.calls.lookup(c)) else {
            return;
        };
        if resp.status().is_some_and(|c| (200..300).contains(&c)) {
            self.layer_resend_ack(key, side, resp);
        }
    }

    /// A transaction failed for `cause`: the leg it was on is named in the log.
    pub(super) fn on_failure(&mut self, tx: TxId, cause: &'static str, now: Instant) {
        match self.calls.tx_ended(tx) {
            Some((key, TxRole::AgentInvite { client_tx })) => {
                let state = self.calls.get(key).map(|e| e.state);
                if state.is_some() {
                    info!(call = ?key, leg = "agent", cause, "the offer to the agent failed");
                } else {
                    // The call ended; its INVITE's record outlived it (RFC 6026).
                    debug!(call = ?key, leg = "agent", cause, "a finished call's INVITE failed");
                }
                if state == Some(CallState::Offering)
                    && let Some(req) = self.layer.server_request(client_tx).cloned()
                {
                    let tag = self.calls.get(key).map(|e| e.client.local_tag.clone());
                    let resp = req.response(408, tag.as_deref());
                    let _ = self.layer.send_response(client_tx, resp, now);
                }
                self.end_call(key);
            }
            Some((key, TxRole::Forwarded(fwd))) => {
                let leg = match fwd.from_side.other() {
                    Side::Agent => "agent",
                    Side::Client => "client",
                };
                info!(call = ?key, leg, cause, method = %fwd.method, "a forwarded request failed");
                if let Some(req) = self.layer.server_request(fwd.server_tx).cloned() {
                    let tag = self
                        .calls
                        .get(key)
                        .map(|e| e.leg(fwd.from_side).local_tag.clone());
                    let resp = req.response(408, tag.as_deref());
                    let _ = self.layer.send_response(fwd.server_tx, resp, now);
                }
                if fwd.method == Method::Bye {
                    self.end_call(key);
                }
            }
            Some((key, TxRole::ClientInvite)) => {
                // The caller never ACKed our 2xx (or the tunnel died): end the agent's side too.
                if let Some(entry) = self.calls.get(key)
                    && entry.state == CallState::Answered
                {
                    // RFC 3261 §13.3.1.4: the session ends with a BYE, on both legs here.
                    warn!(call = ?key, leg = "client", cause, "no ACK from the caller; ending the call");
                    self.bye(key, Side::Client, now);
                    self.ack_and_bye_agent(key, now);
                }
            }
            None => {}
        }
    }

    pub(super) fn on_terminated(&mut self, tx: TxId) {
        self.hangups.remove(&tx);
        if let Some((key, TxRole::AgentInvite { .. })) = self.calls.tx_ended(tx)
            && self
                .calls
                .get(key)
                .is_some_and(|e| e.state == CallState::Cancelling)
        {
            self.end_call(key);
        }
    }

    /// The call is over here: its entry goes, and its bridge, whose last statistics go to
    /// the distributor for the call's record.
    pub(super) fn end_call(&mut self, key: CallKey) {
        let call_id = self.calls.remove(key).map(|entry| {
            debug!(call = ?key, agent = %entry.agent, "call ended");
            entry.client.call_id
        });
        if let Some(stats) = self.media.as_mut().and_then(|m| m.close(key.0)) {
            let stats = serde_json::to_string(&stats).unwrap_or_default();
            info!(call = ?key, %stats, "media statistics at hang-up");
            self.out.push_back(Output::CloseCallerPort { call: key.0 });
            if let Some(call_id) = call_id {
                self.send_frame(Frame::CallStats {
                    call_id,
                    json: stats,
                });
            }
        }
    }
}
