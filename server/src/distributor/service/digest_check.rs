//! Desk phones' SIP Digest answers, checked for the edges. An edge challenges the phone and
//! passes its answer on; only the distributor holds the agent's password hashes. A verified
//! answer becomes an agent token for that registration, whose id is the password's: it then
//! proves the edge's claim of the agent as any token does, is refused once the password is
//! revoked, and lasts no longer than the registration.

use std::time::Instant;

use tracing::info;

use super::Distributor;
use crate::sip::digest::{self, Algorithm, Credentials};

/// What an edge asks to be checked.
#[derive(Debug)]
pub(super) struct Check<'a> {
    pub agent: &'a str,
    pub method: &'a str,
    pub authorization: &'a str,
    pub expires: u32,
}

/// Why an answer was not accepted; its text goes to the edge, which tells the phone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    #[error("{0}")]
    Malformed(digest::DigestError),
    #[error("only a REGISTER is checked")]
    NotRegister,
    #[error("credentials for another agent")]
    OtherAgent,
    #[error("credentials for another realm")]
    OtherRealm,
    #[error("the agent has no SIP password")]
    NoPassword,
    #[error("SIP password revoked")]
    Revoked,
    /// Says [`digest::WRONG_PASSWORD`], which the edge acts on.
    #[error("wrong password")]
    WrongPassword,
    #[error("SIP passwords cannot be checked now")]
    Unavailable,
}

impl Refusal {
    fn label(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) | Refusal::NotRegister => "malformed",
            Refusal::OtherAgent => "another-agent",
            Refusal::OtherRealm => "wrong-realm",
            Refusal::NoPassword => "no-password",
            Refusal::Revoked => "revoked",
            Refusal::WrongPassword => "wrong-password",
            Refusal::Unavailable => "unavailable",
        }
    }
}

/// A token made from an answer lasts the registration and this much more, so a refresh a
/// little late (or a tunnel re-dialled just before it) still proves the agent.
const TOKEN_GRACE_S: u64 = 60;

/// Longest registration a token is made for, whatever an edge asks: a day.
const MAX_EXPIRES_S: u64 = 24 * 3600;

impl Distributor {
    /// Checks `check` for the edge `edge`; on success, the token to give it.
    pub(super) fn check_digest(
        &self,
        check: &Check<'_>,
        edge: &str,
        now: Instant,
    ) -> Result<String, Refusal> {
        let result = self.verify_digest(check, now);
        let agent = check.agent;
        match &result {
            Ok(_) => {
                self.metrics.digest_check("verified");
                info!(%agent, %edge, "SIP Digest answer verified");
            }
            Err(refusal) => {
                self.metrics.digest_check(refusal.label());
                info!(%agent, %edge, reason = %refusal, "SIP Digest answer refused");
            }
        }
        result
    }

    fn verify_digest(&self, check: &Check<'_>, now: Instant) -> Result<String, Refusal> {
        let creds = Credentials::parse(check.authorization).map_err(Refusal::Malformed)?;
        if check.method != "REGISTER" {
            return Err(Refusal::NotRegister);
        }
        if creds.username != check.agent {
            return Err(Refusal::OtherAgent);
        }
        if creds.realm != digest::REALM {
            return Err(Refusal::OtherRealm);
        }
        let (Some(passwords), Some(issuer)) = (&self.sip_passwords, &self.agent_issuer) else {
            return Err(Refusal::NoPassword);
        };
        let password = passwords
            .sip_password(check.agent)
            .map_err(|e| {
                tracing::error!(error = %e, "reading a SIP password failed");
                Refusal::Unavailable
            })?
            .ok_or(Refusal::NoPassword)?;
        if self.revoked.contains(&password.id) {
            return Err(Refusal::Revoked);
        }
        let ha1 = match creds.algorithm {
            Algorithm::Sha256 => &password.ha1_sha256,
            Algorithm::Md5 => &password.ha1_md5,
        };
        if !creds.verify(ha1, check.method) {
            return Err(Refusal::WrongPassword);
        }
        let ttl = u64::from(check.expires).min(MAX_EXPIRES_S) + TOKEN_GRACE_S;
        issuer
            .issue_with_id(check.agent, &password.id, self.clock.unix(now), ttl)
            .map_err(|e| {
                tracing::error!(error = %e, "signing a token for a Digest registration failed");
                Refusal::Unavailable
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_recognises_a_wrong_password() {
        assert_eq!(Refusal::WrongPassword.to_string(), digest::WRONG_PASSWORD);
    }
}
