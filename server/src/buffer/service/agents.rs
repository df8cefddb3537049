//! The agents' side outside calls: registration with a bearer token (RFC 8898), the page's
//! presence MESSAGE going to the distributor, and the distributor's view of the agent
//! coming back to the page.

use std::time::{Duration, Instant};

use proto_tunnel::Frame;
use tracing::{info, warn};

use crate::admin::tokens::{self, TokenError};
use crate::buffer::registrar::AgentToken;
use crate::ids;
use crate::sip::register::{self, RegisterRequest};
use crate::sip::transaction::{self, TxId};
use crate::sip::{Method, NameAddr, SipMessage, Target, TransportKind};

use super::Buffer;

/// The content type of a page's presence MESSAGE, and of the agent state sent to it.
const PRESENCE_TYPE: &str = "application/vnd.agent-edge.presence+json";
const STATE_TYPE: &str = "application/vnd.agent-edge.state+json";

impl Buffer {
    pub(super) fn on_register(&mut self, tx: TxId, msg: &SipMessage, from: &Target, now: Instant) {
        let request = match register::parse_register(msg, self.config.max_expires) {
            Ok(r) => r,
            Err(e) => {
                let mut resp = msg.response(e.status(), Some(&ids::tag()));
                resp.set_reason(&e.to_string());
                let _ = self.layer.send_response(tx, resp, now);
                return;
            }
        };
        if super::desk_phones::answers_digest(msg, from) {
            self.digest_register(tx, msg, from, now);
            return;
        }
        let own = self.on_own_connection(msg, request.agent(), from);
        let token = match (&request, own) {
            // SIP.js signs out without its token, on the connection it registered on.
            (RegisterRequest::Unbind { .. }, true) => None,
            _ => match self.authenticate(msg, request.agent(), from, now) {
                Ok(token) => Some(token),
                Err(refusal) => {
                    let _ = self.layer.send_response(tx, *refusal, now);
                    return;
                }
            },
        };
        self.register_proved(tx, msg, request, token, from, now);
    }

    /// A REGISTER whose agent is proved (by `token`, or for an un-REGISTER by the connection
    /// it came on): bound, unbound or fetched, and answered.
    pub(super) fn register_proved(
        &mut self,
        tx: TxId,
        msg: &SipMessage,
        request: RegisterRequest,
        token: Option<AgentToken>,
        from: &Target,
        now: Instant,
    ) {
        let mut resp = msg.response(200, Some(&ids::tag()));
        match request {
            RegisterRequest::Bind {
                agent,
                contact,
                expires,
            } => {
                let Some(token) = token else {
                    return;
                };
                let target = register::target_for(&contact, from);
                resp.push_header("Contact", format!("<{contact}>;expires={expires}"));
                let before = self.registrar.get(&agent).map(|b| b.token.jti.clone());
                let jti = token.jti.clone();
                let new = self.registrar.bind(
                    &agent,
                    token,
                    contact,
                    target,
                    Duration::from_secs(expires.into()),
                    now,
                );
                if new {
                    info!(%agent, "agent registered");
                    self.agent_presence(&agent, true, now);
                } else if before.as_deref() != Some(jti.as_str()) {
                    // Registered again with another token: the distributor's proof (and the
                    // token a revocation must name) is the new one.
                    self.agent_presence(&agent, true, now);
                }
            }
            RegisterRequest::Unbind { agent } => {
                if self.registrar.unbind(&agent) {
                    self.agent_gone(&agent, now);
                }
            }
            RegisterRequest::Fetch { agent } => {
                if let Some(b) = self.registrar.get(&agent) {
                    let left = b.expires_at.saturating_duration_since(now).as_secs();
                    resp.push_header("Contact", format!("<{}>;expires={left}", b.contact));
                }
            }
        }
        let _ = self.layer.send_response(tx, resp, now);
    }

    /// A request without a token on the very connection `agent` registered on with one
    /// (SIP.js sends its un-REGISTER and presence MESSAGEs so): that connection was
    /// authenticated by the token, as a session is, and revoking the token closes it. Never
    /// for UDP, whose source anyone can forge.
    fn on_own_connection(&self, msg: &SipMessage, agent: &str, from: &Target) -> bool {
        msg.header("Authorization").is_none()
            && from.conn.is_some()
            && self
                .registrar
                .get(agent)
                .is_some_and(|b| b.target.conn == from.conn && b.target.kind == from.kind)
    }

    /// RFC 8898: a REGISTER (or the page's presence, `what`) carries
    /// `Authorization: Bearer <token>` whose subject is the agent it names. Returns the token
    /// (and its id), or the refusal to send.
    fn authenticate(
        &self,
        msg: &SipMessage,
        agent: &str,
        from: &Target,
        now: Instant,
    ) -> Result<AgentToken, Box<SipMessage>> {
        let what = if msg.method() == Some(&Method::Register) {
            "registration"
        } else {
            "presence"
        };
        let refuse = |code: u16, why: &str, challenge: Option<String>| {
            let mut resp = msg.response(code, Some(&ids::tag()));
            resp.set_reason(why);
            if let Some(c) = challenge {
                resp.push_header("WWW-Authenticate", c);
            }
            info!(%agent, code, reason = %why, "{what} refused");
            Box::new(resp)
        };
        let Some(verifier) = &self.verifier else {
            let mut resp = refuse(503, "Agent tokens not known yet", None);
            resp.push_header("Retry-After", "5");
            return Err(resp);
        };
        let realm = "Bearer realm=\"agent-edge\"";
        let token = match tokens::bearer(msg.header("Authorization")) {
            Ok(t) => t,
            // A desk phone has no token: it is challenged to answer with its SIP password,
            // and with nothing else, since some phones give up on a challenge they do not
            // know (a Bearer one) instead of taking the next.
            Err(_)
                if what == "registration"
                    && from.kind != TransportKind::Wss
                    && !self.config.digest_algorithms.is_empty() =>
            {
                let mut resp = refuse(401, "Unauthorized", None);
                self.push_digest_challenges(&mut resp, false, now);
                return Err(resp);
            }
            Err(_) => return Err(refuse(401, "Unauthorized", Some(realm.to_owned()))),
        };
        if token.len() > proto_tunnel::MAX_TOKEN {
            // The distributor could not be given it as the proof of her registration.
            let challenge =
                format!("{realm}, error=\"invalid_token\", error_description=\"token too long\"");
            return Err(refuse(401, "Token too long", Some(challenge)));
        }
        match verifier.verify(token) {
            Ok(claims) if self.revoked.contains(&claims.jti) => {
                let challenge = format!(
                    "{realm}, error=\"invalid_token\", error_description=\"token revoked\""
                );
                Err(refuse(401, "Token revoked", Some(challenge)))
            }
            Ok(claims) if claims.sub == agent => Ok(AgentToken {
                jti: claims.jti,
                raw: token.to_owned(),
            }),
            Ok(_) => Err(refuse(403, "Token is for another agent", None)),
            Err(e) => {
                let challenge =
                    format!("{realm}, error=\"invalid_token\", error_description=\"{e}\"");
                let why = match e {
                    TokenError::Expired => "Token expired",
                    TokenError::NotYetValid => "Token not yet valid",
                    _ => "Invalid token",
                };
                Err(refuse(401, why, Some(challenge)))
            }
        }
    }

    /// An agent's page sets its presence: a MESSAGE with the agent's bearer token (or on the
    /// connection it registered on), whose body
    /// is `{"state": "available"}` or `{"state": "away", "reason": "…"}`. Passed to the
    /// distributor, whose ACD owns agents' states.
    pub(super) fn on_agent_presence(
        &mut self,
        tx: TxId,
        msg: &SipMessage,
        from: &Target,
        now: Instant,
    ) {
        let is_presence = msg
            .header("Content-Type")
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(PRESENCE_TYPE));
        if !is_presence {
            self.respond(tx, msg, 415, now);
            return;
        }
        let agent = msg
            .header("From")
            .and_then(|f| NameAddr::parse(f).ok())
            .and_then(|a| a.sip_uri().ok())
            .and_then(|u| u.user_unescaped())
            .unwrap_or_default();
        if self.registrar.get(&agent).is_none() {
            self.respond(tx, msg, 403, now);
            return;
        }
        if !self.on_own_connection(msg, &agent, from)
            && let Err(refusal) = self.authenticate(msg, &agent, from, now)
        {
            let _ = self.layer.send_response(tx, *refusal, now);
            return;
        }
        let valid = msg.body.len() <= 1024
            && serde_json::from_slice::<serde_json::Value>(&msg.body)
                .ok()
                .and_then(|v| v.get("state").and_then(|s| s.as_str()).map(str::to_owned))
                .is_some_and(|s| s == "available" || s == "away");
        if !valid {
            let mut resp = msg.response(400, Some(&ids::tag()));
            resp.set_reason("Presence must be {\"state\": \"available\" or \"away\"}");
            let _ = self.layer.send_response(tx, resp, now);
            return;
        }
        let json = String::from_utf8_lossy(&msg.body).into_owned();
        let sent = self.send_frame(Frame::Presence { agent, json });
        self.respond(tx, msg, if sent { 200 } else { 503 }, now);
    }

    /// The distributor's view of an agent changed: a MESSAGE to the agent's page.
    pub(super) fn send_agent_state(&mut self, agent: &str, json: String, now: Instant) {
        self.tell_page(agent, STATE_TYPE, &json, now);
    }

    /// A MESSAGE of `content_type` to the agent's page. Only browsers (WSS) get it: a desk
    /// phone has no use for it and may refuse it.
    pub(super) fn tell_page(&mut self, agent: &str, content_type: &str, json: &str, now: Instant) {
        let Some(binding) = self
            .registrar
            .get(agent)
            .filter(|b| b.target.kind == TransportKind::Wss)
            .cloned()
        else {
            return;
        };
        let local = self.local_addr(binding.target.kind);
        let text = format!(
            "MESSAGE {contact} SIP/2.0\r\nVia: SIP/2.0/{transport} {sent_by};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:acd@{host}>;tag={tag}\r\nTo: <sip:{agent}@{host}>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nContent-Type: {content_type}\r\n\
             Content-Length: {len}\r\n\r\n{json}",
            contact = binding.contact,
            transport = local.transport,
            sent_by = local.sent_by,
            branch = transaction::new_branch(),
            host = local.host,
            tag = ids::tag(),
            call_id = ids::call_id(),
            len = json.len(),
        );
        match SipMessage::parse(text.as_bytes()) {
            Ok(msg) => {
                self.layer.send_request(msg, binding.target, now);
            }
            Err(e) => warn!(%agent, error = %e, "message to the agent's page not sent"),
        }
    }

    pub(super) fn agent_gone(&mut self, agent: &str, now: Instant) {
        info!(%agent, "agent unregistered");
        self.agent_presence(agent, false, now);
    }
}
