//! Time-limited TURN credentials in the style of the "TURN REST API"
//! (draft-uberti-behave-turn-rest): the edge mints them for each call offered to a browser
//! agent, keyed with its own credential, the page hands them to its ICE agent, and the TURN
//! server on the distributor, which holds the same credential from the edge's media
//! connection, checks them with no state of its own.
//!
//! - username: `"{expiry_unix}:{edge}:{agent}"`, the ids made of `[A-Za-z0-9._@-]`;
//! - password: `base64(HMAC-SHA1(secret, username))`, standard base64 with padding.
//!
//! The long-term key STUN uses is then [`super::stun::long_term_key`] of the username, the
//! realm and that password.

use aws_lc_rs::hmac;
use base64::Engine as _;

/// A username and password for one agent on one edge, valid until `expires`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
    /// Unix seconds after which the TURN server refuses it.
    pub expires: u64,
}

/// The parts of a username [`parse`] accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// Unix seconds.
    pub expiry: u64,
    pub edge: &'a str,
    pub agent: &'a str,
}

impl Parsed<'_> {
    /// Whether the credential has expired at `unix_now`.
    pub fn expired(&self, unix_now: u64) -> bool {
        unix_now > self.expiry
    }
}

/// A credential for `agent` on `edge` until `expiry_unix`. Ids outside `[A-Za-z0-9._@-]`
/// give a username [`parse`] refuses (check them with [`valid_id`] first).
pub fn mint(secret: &[u8], edge: &str, agent: &str, expiry_unix: u64) -> Credential {
    let username = format!("{expiry_unix}:{edge}:{agent}");
    let password = password(secret, &username);
    Credential {
        username,
        password,
        expires: expiry_unix,
    }
}

/// The password of `username` under `secret`.
pub fn password(secret: &[u8], username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// The expiry, edge and agent of a well-formed username, whether expired or not.
pub fn parse(username: &str) -> Option<Parsed<'_>> {
    let mut parts = username.splitn(3, ':');
    let expiry = parts.next()?;
    let edge = parts.next()?;
    let agent = parts.next()?;
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !valid_id(edge) || !valid_id(agent) {
        return None;
    }
    Some(Parsed {
        expiry: expiry.parse().ok()?,
        edge,
        agent,
    })
}

/// Whether `id` may be an edge or agent id in a username: non-empty, `[A-Za-z0-9._@-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_and_parse() {
        let c = mint(b"secret", "edge-1", "alice@example.com", 1_700_000_000);
        assert_eq!(c.username, "1700000000:edge-1:alice@example.com");
        assert_eq!(c.expires, 1_700_000_000);
        assert_eq!(c.password, password(b"secret", &c.username));
        assert_ne!(c.password, password(b"other", &c.username));
        let p = parse(&c.username).unwrap();
        assert_eq!(
            p,
            Parsed {
                expiry: 1_700_000_000,
                edge: "edge-1",
                agent: "alice@example.com"
            }
        );
        assert!(!p.expired(1_700_000_000));
        assert!(p.expired(1_700_000_001));
    }

    #[test]
    fn password_is_base64_hmac_sha1() {
        // HMAC-SHA1 of the RFC 2202 test case 2: key "Jefe", "what do ya want for nothing?"
        // = effcdf6ae5eb2fa2d27416d5f184df9c259a7c79.
        assert_eq!(
            password(b"Jefe", "what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
    }

    #[test]
    fn refuses_malformed_usernames() {
        for bad in [
            "",
            "1700000000",
            "1700000000:edge-1",
            "1700000000:edge-1:",
            "1700000000::alice",
            ":edge-1:alice",
            "+17:edge-1:alice",
            "17x:edge-1:alice",
            "99999999999999999999999:edge-1:alice",
            "17:edge 1:alice",
            "17:edge-1:al:ice",
            "17:edge-1:alicé",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert!(parse("0:e:a").is_some());
        assert!(valid_id("A-z_0.9@x"));
        assert!(!valid_id("a/b"));
    }
}
