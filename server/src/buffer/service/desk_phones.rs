//! Desk phones and softphones that register with SIP Digest instead of a bearer token. The
//! edge challenges (its own nonces, checked without state) and hands the phone's answer to
//! the distributor, which alone holds the password hashes; the token it sends back for the
//! registration then proves the agent like any other. An edge never sees a password.

use std::time::Instant;

use proto_tunnel::Frame;
use tracing::{debug, info, warn};

use crate::buffer::registrar::AgentToken;
use crate::ids;
use crate::sip::digest::{self, Credentials, NonceCheck};
use crate::sip::register::{self, RegisterRequest};
use crate::sip::transaction::TxId;
use crate::sip::{SipMessage, Target, TransportKind};

use super::Buffer;

/// Whether `msg` answers a Digest challenge from a phone: browsers (WSS) use tokens only.
pub(super) fn answers_digest(msg: &SipMessage, from: &Target) -> bool {
    from.kind != TransportKind::Wss
        && msg.header("Authorization").is_some_and(|a| {
            a.trim_start()
                .get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("digest "))
        })
}

impl Buffer {
    /// Seconds since the core was made: the age nonces carry.
    fn nonce_clock(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs()
    }

    /// One challenge per configured algorithm, preferred first, with one fresh nonce.
    pub(super) fn push_digest_challenges(&self, resp: &mut SipMessage, stale: bool, now: Instant) {
        if self.config.digest_algorithms.is_empty() {
            return;
        }
        let nonce = self.nonces.issue(self.nonce_clock(now));
        for algorithm in &self.config.digest_algorithms {
            resp.push_header(
                "WWW-Authenticate",
                digest::challenge(&nonce, *algorithm, stale),
            );
        }
    }

    fn digest_refusal(
        &mut self,
        tx: TxId,
        msg: &SipMessage,
        code: u16,
        why: &str,
        challenge: Option<bool>,
        now: Instant,
    ) {
        let mut resp = msg.response(code, Some(&ids::tag()));
        resp.set_reason(why);
        if let Some(stale) = challenge {
            self.push_digest_challenges(&mut resp, stale, now);
        }
        if code == 503 {
            resp.push_header("Retry-After", "5");
        }
        let agent = msg
            .header("To")
            .and_then(|t| crate::sip::NameAddr::parse(t).ok())
            .and_then(|a| a.sip_uri().ok())
            .and_then(|u| u.user_unescaped())
            .unwrap_or_default();
        if challenge != Some(true) {
            info!(%agent, code, reason = %why, "registration refused");
        }
        let _ = self.layer.send_response(tx, resp, now);
    }

    /// A REGISTER with Digest credentials: checked here as far as the edge can (its agent,
    /// realm and nonce), then by the distributor.
    pub(super) fn digest_register(
        &mut self,
        tx: TxId,
        msg: &SipMessage,
        from: &Target,
        now: Instant,
    ) {
        let header = msg.header("Authorization").unwrap_or_default().to_owned();
        let creds = match Credentials::parse(&header) {
            Ok(c) => c,
            Err(e) => return self.digest_refusal(tx, msg, 400, &e.to_string(), None, now),
        };
        let Ok(request) = register::parse_register(msg, self.config.max_expires) else {
            return;
        };
        if self.config.digest_algorithms.is_empty() {
            return self.digest_refusal(tx, msg, 403, "SIP Digest is off here", None, now);
        }
        if !self.config.digest_algorithms.contains(&creds.algorithm) {
            let why = "Digest algorithm not offered";
            return self.digest_refusal(tx, msg, 401, why, Some(false), now);
        }
        if creds.username != request.agent() {
            let why = "Credentials for another agent";
            return self.digest_refusal(tx, msg, 403, why, None, now);
        }
        if creds.realm != digest::REALM {
            return self.digest_refusal(tx, msg, 401, "Unknown realm", Some(false), now);
        }
        match self.nonces.check(&creds.nonce, self.nonce_clock(now)) {
            NonceCheck::Fresh => {}
            // RFC 2617 §3.2.1: the phone answers again with the new nonce, unasked.
            NonceCheck::Stale => {
                return self.digest_refusal(tx, msg, 401, "Stale nonce", Some(true), now);
            }
            NonceCheck::Forged => {
                return self.digest_refusal(tx, msg, 401, "Unknown nonce", Some(false), now);
            }
        }
        if self.tunnel.is_none() {
            let (code, why) = if self.link.is_some() {
                (403, "SIP Digest needs the edge's tunnel")
            } else {
                (503, "The distributor is not reachable")
            };
            return self.digest_refusal(tx, msg, code, why, None, now);
        }
        let expires = match &request {
            RegisterRequest::Bind { expires, .. } => *expires,
            RegisterRequest::Unbind { .. } | RegisterRequest::Fetch { .. } => 0,
        };
        let agent = request.agent().to_owned();
        let Some(id) = self.digest_checks.add(tx, msg.clone(), from.clone(), now) else {
            let why = "Too many registrations being checked";
            return self.digest_refusal(tx, msg, 503, why, None, now);
        };
        self.send_frame(Frame::DigestCheck {
            request: id,
            agent,
            method: "REGISTER".into(),
            authorization: header,
            expires,
        });
    }

    /// The distributor checked a phone's answer.
    pub(super) fn on_digest_result(
        &mut self,
        id: u64,
        token: Option<String>,
        refusal: &str,
        now: Instant,
    ) {
        let Some(waiting) = self.digest_checks.take(id) else {
            debug!(id, "a Digest check's answer came too late");
            return;
        };
        let (tx, msg, from) = (waiting.tx, waiting.msg, waiting.from);
        let Ok(request) = register::parse_register(&msg, self.config.max_expires) else {
            return;
        };
        let Some(raw) = token else {
            // A wrong password is challenged again (RFC 3261 §22.2), so a phone whose user
            // typed it wrong can ask again; anything else is final.
            let (code, challenge) = if refusal == digest::WRONG_PASSWORD {
                (401, Some(false))
            } else {
                (403, None)
            };
            return self.digest_refusal(tx, &msg, code, refusal, challenge, now);
        };
        let jti = match self.verifier.as_ref().map(|v| v.verify(&raw)) {
            Some(Ok(claims)) if claims.sub == request.agent() => claims.jti,
            other => {
                warn!(
                    ?other,
                    "the distributor's token for a Digest registration does not verify"
                );
                let why = "The distributor's answer does not verify";
                return self.digest_refusal(tx, &msg, 503, why, None, now);
            }
        };
        self.register_proved(tx, &msg, request, Some(AgentToken { jti, raw }), &from, now);
    }

    pub(super) fn digest_checks_expired(&mut self, now: Instant) {
        for w in self.digest_checks.expire(now) {
            let why = "The distributor did not answer";
            self.digest_refusal(w.tx, &w.msg, 503, why, None, now);
        }
    }

    /// The tunnel went: no check waiting will be answered.
    pub(super) fn digest_checks_lost(&mut self, now: Instant) {
        for w in self.digest_checks.drain() {
            let why = "The distributor is not reachable";
            self.digest_refusal(w.tx, &w.msg, 503, why, None, now);
        }
    }
}
