//! Agent tokens: what the distributor signs and what a buffer server checks on every
//! REGISTER. Only ES256 with a known `kid` is accepted, so `alg: none` and an HMAC "signed"
//! with the public key are refused before any claim is read.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use std::sync::{Arc, RwLock};

use super::keys::{KeyError, KeyRing};

/// Longest lifetime an agent token may be issued with (31 days).
pub const MAX_AGENT_TOKEN_TTL_S: u64 = 31 * 24 * 3600;

/// Seconds of clock difference tolerated between distributor and edge.
const LEEWAY_S: u64 = 5;

/// The claims of an agent token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The agent.
    pub sub: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    /// Token id, for revocation.
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Skill → level.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skills: BTreeMap<String, u8>,
}

/// What is published to edges: who issues tokens, for whom, and the keys to check them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifierSettings {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwkSet,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization: Bearer …` at all.
    #[error("no bearer token")]
    Missing,
    /// Not three base64url parts, not JSON, or an algorithm other than ES256.
    #[error("malformed token or unsupported algorithm")]
    Malformed,
    /// Signed with a key that is not ours (or no `kid`).
    #[error("token signed by an unknown key")]
    UnknownKey,
    /// The signature does not match the content.
    #[error("bad token signature")]
    BadSignature,
    /// Past its `exp`.
    #[error("token expired")]
    Expired,
    /// Before its `nbf`.
    #[error("token not yet valid")]
    NotYetValid,
    /// Issued for another audience or by another issuer.
    #[error("token is not for this service")]
    WrongAudience,
    /// A required claim is missing or has the wrong type.
    #[error("token lacks a required claim")]
    MissingClaim,
    /// The header lists extensions in `crit` that the recipient must understand (RFC 7515
    /// §4.1.11); we understand none, so such a token's meaning is unknown to us.
    #[error("token requires an extension we do not support")]
    UnsupportedCritical,
    /// Signing failed (issuer side).
    #[error("could not sign the token: {0}")]
    Signing(String),
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix time for a core that reads no clock: one reading of the wall clock and the instant
/// it was taken at, so a token's `exp` and `nbf` are compared with the `now` the core is
/// given. Taken once by whoever builds the core (a test picks its own).
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    at: Instant,
    unix_ms: u64,
}

impl WallClock {
    /// The wall clock now: for the code that builds a core, not for the core.
    pub fn read() -> WallClock {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        WallClock {
            at: Instant::now(),
            unix_ms,
        }
    }

    /// `unix_s` was the Unix time at `at`.
    pub fn at(at: Instant, unix_s: u64) -> WallClock {
        WallClock {
            at,
            unix_ms: unix_s.saturating_mul(1000),
        }
    }

    /// The Unix time at `now` (whole seconds; an instant before the reading counts back).
    pub fn unix(&self, now: Instant) -> u64 {
        self.unix_ms(now) / 1000
    }

    /// The Unix time of the reading, in milliseconds.
    pub fn read_ms(&self) -> u64 {
        self.unix_ms
    }

    /// The Unix time at `now` in milliseconds, for records of when things happened.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match now.checked_duration_since(self.at) {
            Some(d) => self.unix_ms.saturating_add(ms(d)),
            None => self.unix_ms.saturating_sub(ms(self.at.duration_since(now))),
        }
    }
}

/// Issues tokens for one audience (distributor side). Clones share the key ring, so a
/// rotation is seen by every issuer at once.
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    ring: Arc<RwLock<KeyRing>>,
    issuer: String,
    audience: String,
}

impl TokenIssuer {
    pub fn new(ring: Arc<RwLock<KeyRing>>, issuer: &str, audience: &str) -> Self {
        TokenIssuer {
            ring,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        }
    }

    fn ring(&self) -> std::sync::RwLockReadGuard<'_, KeyRing> {
        self.ring.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Signs with a new key from now on; the old one keeps verifying its tokens.
    pub fn rotate(&self) -> Result<(), KeyError> {
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        ring.rotate(now_unix())
    }

    /// A token for `agent`, valid from now for `ttl_s` seconds.
    pub fn issue(&self, agent: &str, name: Option<&str>, ttl_s: u64) -> Result<String, TokenError> {
        self.issue_claims(agent, name, &BTreeMap::new(), ttl_s)
            .map(|(token, _)| token)
    }

    /// A token with the agent's name and skills, and the claims it carries.
    pub fn issue_claims(
        &self,
        agent: &str,
        name: Option<&str>,
        skills: &BTreeMap<String, u8>,
        ttl_s: u64,
    ) -> Result<(String, Claims), TokenError> {
        let now = now_unix();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: agent.to_owned(),
            iat: now,
            nbf: now,
            exp: now + ttl_s,
            jti: format!("{:032x}", rand::random::<u128>()),
            name: name.map(str::to_owned),
            skills: skills.clone(),
        };
        Ok((self.sign(&claims)?, claims))
    }

    /// A token for `agent` with a given id, valid from `unix_now` for `ttl_s` seconds: what
    /// a desk phone's verified Digest answer is turned into ([`crate::sip::digest`]), its id
    /// the SIP password's, so that revoking the password revokes it.
    pub fn issue_with_id(
        &self,
        agent: &str,
        jti: &str,
        unix_now: u64,
        ttl_s: u64,
    ) -> Result<String, TokenError> {
        self.sign(&Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: agent.to_owned(),
            iat: unix_now,
            nbf: unix_now,
            exp: unix_now + ttl_s,
            jti: jti.to_owned(),
            name: None,
            skills: BTreeMap::new(),
        })
    }

    /// Signs arbitrary claims with our key (and `kid`).
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let ring = self.ring();
        let key = ring.current();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid().to_owned());
        jsonwebtoken::encode(&header, claims, key.encoding_key())
            .map_err(|e| TokenError::Signing(e.to_string()))
    }

    /// What edges need to verify our tokens.
    pub fn verifier_settings(&self) -> VerifierSettings {
        VerifierSettings {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            jwks: self.ring().jwks(now_unix()),
        }
    }
}

/// Verifies agent tokens (buffer side) with public keys only.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Keys that are not ES256 are skipped: they could never verify an accepted token.
    pub fn new(settings: &VerifierSettings) -> TokenVerifier {
        let keys = settings
            .jwks
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((kid, key))
            })
            .collect();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.algorithms = vec![Algorithm::ES256];
        // `exp` and `nbf` are compared in `verify_at`, with the time its caller gives.
        validation.leeway = LEEWAY_S;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_audience(&[&settings.audience]);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        TokenVerifier { keys, validation }
    }

    /// Verifies against the wall clock now.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, now_unix())
    }

    /// Verifies as at `unix_now` (seconds since the epoch), so a sans-IO core checks expiry
    /// against the time it is given rather than reading the clock.
    pub fn verify_at(&self, token: &str, unix_now: u64) -> Result<Claims, TokenError> {
        let claims = self.verify_signed(token)?;
        if claims.exp.saturating_add(LEEWAY_S) < unix_now {
            return Err(TokenError::Expired);
        }
        if claims.nbf > unix_now.saturating_add(LEEWAY_S) {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }

    /// Signature, algorithm, key, issuer, audience and required claims; not the times.
    fn verify_signed(&self, token: &str) -> Result<Claims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::ES256 {
            return Err(TokenError::Malformed);
        }
        if header.crit.is_some() {
            return Err(TokenError::UnsupportedCritical);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(TokenError::UnknownKey)?;
        jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => TokenError::WrongAudience,
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                    TokenError::MissingClaim
                }
                _ => TokenError::Malformed,
            })
    }
}

/// The token of an `Authorization: Bearer <token>` value (RFC 6750, RFC 8898).
pub fn bearer(authorization: Option<&str>) -> Result<&str, TokenError> {
    let value = authorization.ok_or(TokenError::Missing)?.trim();
    let (scheme, token) = value
        .split_once(char::is_whitespace)
        .ok_or(TokenError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(TokenError::Missing);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    fn setup() -> (TokenIssuer, TokenVerifier, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load(dir.path(), 3600, now_unix()).unwrap();
        let issuer = TokenIssuer::new(Arc::new(RwLock::new(ring)), "agent-edge", "agents");
        let verifier = TokenVerifier::new(&issuer.verifier_settings());
        (issuer, verifier, dir)
    }

    fn claims(issuer: &TokenIssuer, f: impl FnOnce(&mut Claims)) -> String {
        let now = now_unix();
        let mut c = Claims {
            iss: "agent-edge".into(),
            aud: "agents".into(),
            sub: "alice".into(),
            iat: now,
            nbf: now,
            exp: now + 600,
            jti: "j1".into(),
            name: None,
            skills: BTreeMap::new(),
        };
        f(&mut c);
        issuer.sign(&c).unwrap()
    }

    #[test]
    fn a_fresh_token_verifies_and_names_its_agent() {
        let (issuer, verifier, _d) = setup();
        let token = issuer.issue("alice", Some("Alice"), 600).unwrap();
        let c = verifier.verify(&token).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.name.as_deref()),
            ("alice", Some("Alice"))
        );
    }

    #[test]
    fn each_kind_of_bad_token_is_refused_for_its_reason() {
        let (issuer, verifier, _d) = setup();
        let now = now_unix();
        let expired = claims(&issuer, |c| c.exp = now - 3600);
        assert_eq!(verifier.verify(&expired), Err(TokenError::Expired));
        let early = claims(&issuer, |c| c.nbf = now + 3600);
        assert_eq!(verifier.verify(&early), Err(TokenError::NotYetValid));
        let other_aud = claims(&issuer, |c| c.aud = "someone-else".into());
        assert_eq!(verifier.verify(&other_aud), Err(TokenError::WrongAudience));
        let other_iss = claims(&issuer, |c| c.iss = "mallory".into());
        assert_eq!(verifier.verify(&other_iss), Err(TokenError::WrongAudience));

        let (stranger, _, _d2) = setup();
        let foreign = stranger.issue("alice", None, 600).unwrap();
        assert_eq!(verifier.verify(&foreign), Err(TokenError::UnknownKey));

        let good = issuer.issue("alice", None, 600).unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        payload["sub"] = "bob".into();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(payload.to_string()),
            parts[2]
        );
        assert_eq!(verifier.verify(&tampered), Err(TokenError::BadSignature));

        let none = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert_eq!(verifier.verify(&none), Err(TokenError::Malformed));

        // HS256 "signed" with the public key, the classic key-confusion attack.
        let public = serde_json::to_vec(&issuer.verifier_settings().jwks).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(issuer.ring().current().kid().to_owned());
        let hs = jsonwebtoken::encode(
            &header,
            &serde_json::from_slice::<serde_json::Value>(&B64.decode(parts[1]).unwrap()).unwrap(),
            &jsonwebtoken::EncodingKey::from_secret(&public),
        )
        .unwrap();
        assert_eq!(verifier.verify(&hs), Err(TokenError::Malformed));

        assert_eq!(verifier.verify("not.a.token"), Err(TokenError::Malformed));
        assert_eq!(verifier.verify(""), Err(TokenError::Malformed));
    }

    #[test]
    fn a_token_naming_a_critical_extension_is_refused() {
        let (issuer, verifier, _d) = setup();
        let (_, claims) = issuer
            .issue_claims("alice", None, &BTreeMap::new(), 600)
            .unwrap();
        let ring = issuer.ring();
        let key = ring.current();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid().to_owned());
        let sign = |h: &Header| jsonwebtoken::encode(h, &claims, key.encoding_key()).unwrap();
        assert!(verifier.verify(&sign(&header)).is_ok());
        header.crit = Some(vec!["exp-ext".into()]);
        header.extras.insert("exp-ext", true);
        assert_eq!(
            verifier.verify(&sign(&header)),
            Err(TokenError::UnsupportedCritical)
        );
    }

    #[test]
    fn times_are_checked_against_the_time_given() {
        let (issuer, verifier, _d) = setup();
        let now = now_unix();
        let token = claims(&issuer, |c| {
            c.nbf = now + 100;
            c.exp = now + 200;
        });
        assert_eq!(
            verifier.verify_at(&token, now),
            Err(TokenError::NotYetValid)
        );
        assert!(
            verifier.verify_at(&token, now + 96).is_ok(),
            "within the leeway"
        );
        assert!(
            verifier.verify_at(&token, now + 205).is_ok(),
            "within the leeway"
        );
        assert_eq!(
            verifier.verify_at(&token, now + 206),
            Err(TokenError::Expired)
        );
        assert_eq!(verifier.verify(&token), Err(TokenError::NotYetValid));
    }

    #[test]
    fn a_wall_clock_follows_the_instants_it_is_given() {
        let at = Instant::now();
        let clock = WallClock::at(at, 1_000);
        let s = std::time::Duration::from_secs;
        assert_eq!(clock.unix(at), 1_000);
        assert_eq!(clock.unix(at + s(61)), 1_061);
        if let Some(before) = at.checked_sub(s(10)) {
            assert_eq!(clock.unix(before), 990);
        }
    }

    #[test]
    fn tokens_signed_before_a_rotation_still_verify() {
        let (issuer, _, _d) = setup();
        let before = issuer.issue("alice", None, 600).unwrap();
        issuer.rotate().unwrap();
        let after = issuer.issue("alice", None, 600).unwrap();
        let verifier = TokenVerifier::new(&issuer.verifier_settings());
        assert!(verifier.verify(&before).is_ok());
        assert!(verifier.verify(&after).is_ok());
        assert_ne!(
            jsonwebtoken::decode_header(&before).unwrap().kid,
            jsonwebtoken::decode_header(&after).unwrap().kid
        );
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer   abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(TokenError::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(TokenError::Missing));
        assert_eq!(bearer(Some("Bearer")), Err(TokenError::Missing));
        assert_eq!(
            bearer(Some("Digest username=\"a\"")),
            Err(TokenError::Missing)
        );
    }
}
