//! Which edge each signed-in agent is on, and what proved it. The ACD decides who takes a
//! call; this decides where the offer goes. An edge's word is not enough to put an agent
//! there: the claim carries the agent's own token, checked here ([`check_claim`]), and an
//! agent is on the edge whose verified claim came last. Pure.

use std::collections::{BTreeSet, HashMap};

use crate::admin::tokens::{TokenError, TokenVerifier};
use crate::sip::ConnId;

/// Why an edge's claim of an agent was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The token does not verify (signature, key, audience, issuer, expiry, claims).
    #[error("agent token refused: {0}")]
    Token(#[from] TokenError),
    /// A valid token, but for another agent.
    #[error("the token is for agent {sub}")]
    OtherAgent {
        /// The agent the token names.
        sub: String,
    },
    /// A valid token that was revoked.
    #[error("the agent token was revoked")]
    Revoked,
}

impl ClaimError {
    /// Why, as a metric's label: one of a fixed few.
    pub fn label(&self) -> &'static str {
        match self {
            ClaimError::Token(e) => match e {
                TokenError::Missing => "no-token",
                TokenError::Malformed => "malformed",
                TokenError::UnknownKey => "unknown-key",
                TokenError::BadSignature => "bad-signature",
                TokenError::Expired => "expired",
                TokenError::NotYetValid => "not-yet-valid",
                TokenError::WrongAudience => "wrong-audience",
                TokenError::MissingClaim => "missing-claim",
                TokenError::UnsupportedCritical => "unsupported-critical",
                TokenError::Signing(_) => "signing",
            },
            ClaimError::OtherAgent { .. } => "another-agent",
            ClaimError::Revoked => "revoked",
        }
    }
}

/// What proved an agent on an edge: the token's id, so revoking it takes her off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub jti: String,
}

/// Checks an edge's claim that `agent` is registered there: `token` must be an agent token
/// of ours, valid at `unix_now`, for that agent, and not revoked.
pub fn check_claim(
    verifier: &TokenVerifier,
    revoked: &BTreeSet<String>,
    agent: &str,
    token: &str,
    unix_now: u64,
) -> Result<Proof, ClaimError> {
    let claims = verifier.verify_at(token, unix_now)?;
    if claims.sub != agent {
        return Err(ClaimError::OtherAgent { sub: claims.sub });
    }
    if revoked.contains(&claims.jti) {
        return Err(ClaimError::Revoked);
    }
    Ok(Proof { jti: claims.jti })
}

/// What a verified claim changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The agent was on no edge.
    New,
    /// Already on this edge (a refresh, perhaps with a new token).
    Again,
    /// She was on another edge, which no longer has her calls.
    Moved { from: ConnId },
}

#[derive(Debug)]
struct Location {
    edge: ConnId,
    proof: Proof,
}

/// Agents known through the edges, and their edge.
#[derive(Debug, Default)]
pub struct AgentEdges {
    agents: HashMap<String, Location>,
}

impl AgentEdges {
    pub fn new() -> Self {
        Self::default()
    }

    /// An edge proved the agent signed in there (see [`check_claim`]). Signed in again on
    /// another edge: calls follow the newest verified sign-in.
    pub fn up(&mut self, agent: &str, edge: ConnId, proof: Proof) -> Claimed {
        let old = self
            .agents
            .insert(agent.to_owned(), Location { edge, proof });
        match old {
            None => Claimed::New,
            Some(l) if l.edge == edge => Claimed::Again,
            Some(l) => Claimed::Moved { from: l.edge },
        }
    }

    /// The edge reports the agent gone. Only the edge that proved the agent can remove it.
    pub fn down(&mut self, agent: &str, edge: ConnId) -> bool {
        if self.proved_by(agent, edge) {
            self.agents.remove(agent);
            return true;
        }
        false
    }

    /// Whether `edge` is the one that proved `agent`: only it speaks for her.
    pub fn proved_by(&self, agent: &str, edge: ConnId) -> bool {
        self.edge_of(agent) == Some(edge)
    }

    /// The edge's tunnel dropped: every agent on it is gone. Sorted, for repeatable output.
    pub fn edge_down(&mut self, edge: ConnId) -> Vec<String> {
        self.remove_where(|l| l.edge == edge)
            .into_iter()
            .map(|(a, _)| a)
            .collect()
    }

    /// A token was revoked: the agents it proved are gone, with the edge each was on.
    /// Sorted. Revocations are rare, so this looks at every agent.
    pub fn revoke(&mut self, jti: &str) -> Vec<(String, ConnId)> {
        self.remove_where(|l| l.proof.jti == jti)
    }

    fn remove_where(&mut self, pred: impl Fn(&Location) -> bool) -> Vec<(String, ConnId)> {
        let mut gone: Vec<(String, ConnId)> = self
            .agents
            .iter()
            .filter(|(_, l)| pred(l))
            .map(|(a, l)| (a.clone(), l.edge))
            .collect();
        gone.sort();
        for (a, _) in &gone {
            self.agents.remove(a);
        }
        gone
    }

    /// The id of the token that proved the agent.
    pub fn token_of(&self, agent: &str) -> Option<&str> {
        self.agents.get(agent).map(|a| a.proof.jti.as_str())
    }

    pub fn edge_of(&self, agent: &str) -> Option<ConnId> {
        self.agents.get(agent).map(|l| l.edge)
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, RwLock};

    use super::*;
    use crate::admin::keys::KeyRing;
    use crate::admin::tokens::TokenIssuer;

    fn proof(jti: &str) -> Proof {
        Proof { jti: jti.into() }
    }

    #[test]
    fn agents_go_with_their_edge_and_only_their_edge_removes_them() {
        let mut edges = AgentEdges::new();
        assert_eq!(edges.up("alice", ConnId(1), proof("a")), Claimed::New);
        assert_eq!(edges.up("alice", ConnId(1), proof("a")), Claimed::Again);
        assert_eq!(edges.up("bob", ConnId(2), proof("b")), Claimed::New);
        assert!(!edges.down("bob", ConnId(1)));
        assert!(!edges.proved_by("bob", ConnId(1)));
        assert!(edges.proved_by("bob", ConnId(2)));
        assert_eq!(edges.edge_down(ConnId(1)), vec!["alice".to_string()]);
        assert_eq!(edges.edge_of("bob"), Some(ConnId(2)));
        assert_eq!(edges.len(), 1);
    }

    #[test]
    fn the_newest_verified_sign_in_wins_and_says_where_she_was() {
        let mut edges = AgentEdges::new();
        edges.up("alice", ConnId(1), proof("a1"));
        assert_eq!(
            edges.up("alice", ConnId(2), proof("a2")),
            Claimed::Moved { from: ConnId(1) }
        );
        assert!(!edges.down("alice", ConnId(1)));
        assert!(edges.edge_down(ConnId(1)).is_empty());
        assert_eq!(edges.edge_of("alice"), Some(ConnId(2)));
    }

    #[test]
    fn revoking_a_token_takes_off_the_agents_it_proved_and_only_them() {
        let mut edges = AgentEdges::new();
        edges.up("alice", ConnId(1), proof("a1"));
        edges.up("bob", ConnId(2), proof("b1"));
        // alice refreshed with a new token: the old one no longer holds her anywhere.
        edges.up("alice", ConnId(1), proof("a2"));
        assert!(edges.revoke("a1").is_empty());
        assert_eq!(edges.revoke("a2"), vec![("alice".to_owned(), ConnId(1))]);
        assert_eq!(edges.edge_of("bob"), Some(ConnId(2)));
        assert_eq!(edges.len(), 1);
    }

    struct Keys {
        agents: TokenIssuer,
        edges: TokenIssuer,
        verifier: TokenVerifier,
        _dir: tempfile::TempDir,
    }

    fn keys() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let ring = Arc::new(RwLock::new(KeyRing::load(dir.path(), 3600, now).unwrap()));
        let agents = TokenIssuer::new(ring.clone(), "agent-edge", "agent-edge-agents");
        let edges = TokenIssuer::new(ring, "agent-edge", "agent-edge-edges");
        let verifier = TokenVerifier::new(&agents.verifier_settings());
        Keys {
            agents,
            edges,
            verifier,
            _dir: dir,
        }
    }

    #[test]
    fn a_claim_needs_the_agents_own_valid_unrevoked_token() {
        let k = keys();
        let none = BTreeSet::new();
        let (token, issued) = k
            .agents
            .issue_claims("alice", None, &BTreeMap::new(), 600)
            .unwrap();
        let now = issued.iat;
        let check = |agent: &str, token: &str, revoked: &BTreeSet<String>, at: u64| {
            check_claim(&k.verifier, revoked, agent, token, at)
        };
        assert_eq!(
            check("alice", &token, &none, now),
            Ok(Proof {
                jti: issued.jti.clone()
            })
        );
        // No token, or not a token at all.
        assert_eq!(
            check("alice", "", &none, now),
            Err(ClaimError::Token(TokenError::Malformed))
        );
        // Another agent's token.
        let bob = k.agents.issue("bob", None, 600).unwrap();
        assert_eq!(
            check("alice", &bob, &none, now),
            Err(ClaimError::OtherAgent { sub: "bob".into() })
        );
        // Past its expiry, by the time given rather than the clock's.
        assert_eq!(
            check("alice", &token, &none, now + 600 + 6),
            Err(ClaimError::Token(TokenError::Expired))
        );
        // Revoked.
        let revoked: BTreeSet<String> = [issued.jti.clone()].into();
        assert_eq!(
            check("alice", &token, &revoked, now),
            Err(ClaimError::Revoked)
        );
        // An edge's credential is no agent's token, even one naming her.
        let edge = k.edges.issue("alice", None, 600).unwrap();
        assert_eq!(
            check("alice", &edge, &none, now),
            Err(ClaimError::Token(TokenError::WrongAudience))
        );
        // Forged: her claims, signed by a key that is not ours.
        let stranger = keys();
        let forged = stranger.agents.sign(&issued).unwrap();
        assert_eq!(
            check("alice", &forged, &none, now),
            Err(ClaimError::Token(TokenError::UnknownKey))
        );
    }
}
