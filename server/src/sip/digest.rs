//! SIP Digest authentication (RFC 3261 §22.4, with RFC 8760's SHA-256) for desk phones and
//! softphones, which cannot send a bearer token. The work is split so that no edge ever holds
//! a password or its hash: the edge challenges with nonces it can check without remembering
//! them ([`Nonces`]), and the distributor, which alone keeps each agent's HA1 hashes, checks
//! the phone's answer ([`Credentials::verify`]). MD5 is offered after SHA-256, for phones that
//! know nothing newer (RFC 8760 §2.4: the preferred challenge first).

use aws_lc_rs::{constant_time, digest, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use md5::{Digest as _, Md5};

/// The realm of every challenge, and of the HA1 hashes kept for the agents' SIP passwords: a
/// constant, because changing it would invalidate every password issued.
pub const REALM: &str = "agent-edge";

/// The distributor's refusal of an answer whose password is wrong: the one refusal a phone
/// is challenged again for (RFC 3261 §22.2), since its user may retype it.
pub const WRONG_PASSWORD: &str = "wrong password";

/// How long a nonce is accepted. A phone reuses it for its refreshes until it gets a
/// challenge with `stale=true`, and then answers that without asking its user.
pub const NONCE_LIFETIME_S: u64 = 600;

/// The digest algorithms accepted, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Algorithm {
    Sha256,
    Md5,
}

impl Algorithm {
    /// What challenges offer, preferred first.
    pub const OFFERED: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Md5];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Md5 => "MD5",
        }
    }

    /// The `algorithm` parameter's value; none at all means MD5 (RFC 2617 §3.2.2).
    fn parse(value: Option<&str>) -> Result<Algorithm, DigestError> {
        match value {
            None => Ok(Algorithm::Md5),
            Some(v) if v.eq_ignore_ascii_case("MD5") => Ok(Algorithm::Md5),
            Some(v) if v.eq_ignore_ascii_case("SHA-256") => Ok(Algorithm::Sha256),
            Some(_) => Err(DigestError::UnsupportedAlgorithm),
        }
    }

    /// The hash of `data` in lower-case hex, as the digest computations use it.
    pub fn hex(self, data: &[u8]) -> String {
        let bytes: Vec<u8> = match self {
            Algorithm::Sha256 => digest::digest(&digest::SHA256, data).as_ref().to_vec(),
            Algorithm::Md5 => Md5::digest(data).to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl TryFrom<String> for Algorithm {
    type Error = String;

    fn try_from(name: String) -> Result<Algorithm, String> {
        Algorithm::parse(Some(&name)).map_err(|_| format!("{name}: not SHA-256 or MD5"))
    }
}

/// H(username:realm:password): what the distributor keeps instead of the password.
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hex(format!("{username}:{realm}:{password}").as_bytes())
}

/// Why an `Authorization` header is not an answer we can check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("not Digest credentials")]
    NotDigest,
    #[error("malformed Digest credentials ({0})")]
    Malformed(&'static str),
    #[error("Digest credentials without {0}")]
    Missing(&'static str),
    #[error("unsupported digest algorithm")]
    UnsupportedAlgorithm,
    /// `auth-int` (or anything but `auth`): the body would have to be hashed too, and no
    /// phone needs it for a REGISTER.
    #[error("unsupported qop")]
    UnsupportedQop,
}

/// A phone's answer to a challenge: the `Authorization` header's Digest parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    /// `Some((nc, cnonce))` with `qop=auth`; `None` for an RFC 2069 answer without qop.
    pub qop_auth: Option<(String, String)>,
}

impl Credentials {
    /// Parses `Digest username="…", realm="…", …` (RFC 3261 §25.1's credentials; names
    /// case-insensitive, values tokens or quoted strings). A parameter given twice is refused:
    /// which one counts would be a guess.
    pub fn parse(header: &str) -> Result<Credentials, DigestError> {
        let header = header.trim();
        let (scheme, rest) = header.split_once([' ', '\t']).unwrap_or((header, ""));
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(DigestError::NotDigest);
        }
        let params = auth_params(rest)?;
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let need = |name: &'static str| get(name).ok_or(DigestError::Missing(name));
        let algorithm = Algorithm::parse(get("algorithm"))?;
        let qop_auth = match get("qop") {
            None => None,
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let nc = need("nc")?;
                if nc.len() != 8 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(DigestError::Malformed("nc"));
                }
                Some((nc.to_owned(), need("cnonce")?.to_owned()))
            }
            Some(_) => return Err(DigestError::UnsupportedQop),
        };
        Ok(Credentials {
            username: need("username")?.to_owned(),
            realm: need("realm")?.to_owned(),
            nonce: need("nonce")?.to_owned(),
            uri: need("uri")?.to_owned(),
            response: need("response")?.to_ascii_lowercase(),
            algorithm,
            qop_auth,
        })
    }

    /// The response a phone that knows the password computes for `method` (RFC 2617 §3.2.2.1
    /// and RFC 7616 §3.4.1; `ha1` from [`ha1`] with this answer's algorithm).
    pub fn expected(&self, ha1: &str, method: &str) -> String {
        let h = |s: String| self.algorithm.hex(s.as_bytes());
        let ha2 = h(format!("{method}:{}", self.uri));
        match &self.qop_auth {
            Some((nc, cnonce)) => h(format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce)),
            None => h(format!("{ha1}:{}:{ha2}", self.nonce)),
        }
    }

    /// Whether the answer proves the password whose hash is `ha1`, compared in constant time.
    pub fn verify(&self, ha1: &str, method: &str) -> bool {
        let expected = self.expected(ha1, method);
        constant_time::verify_slices_are_equal(expected.as_bytes(), self.response.as_bytes())
            .is_ok()
    }
}

/// A `WWW-Authenticate` value offering `algorithm` with `nonce`; `stale` tells a phone that
/// its password was right and only the nonce is old (RFC 2617 §3.2.1).
pub fn challenge(nonce: &str, algorithm: Algorithm, stale: bool) -> String {
    let stale = if stale { ", stale=true" } else { "" };
    format!(
        "Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{stale}",
        algorithm.name()
    )
}

/// RFC 7235 §2.1's auth-param list: `name=value` pairs separated by commas, each value a
/// token or a quoted string with backslash escapes.
fn auth_params(text: &str) -> Result<Vec<(String, String)>, DigestError> {
    let mut params: Vec<(String, String)> = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or(DigestError::Malformed("parameter"))?;
        let name = rest[..eq].trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(DigestError::Malformed("parameter name"));
        }
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => out.push(c),
                        None => return Err(DigestError::Malformed("quoted string")),
                    },
                    Some((_, c)) => out.push(c),
                    None => return Err(DigestError::Malformed("quoted string")),
                }
            };
            value = out;
            rest = &quoted[end + 1..];
        } else {
            let end = rest.find([',', ' ', '\t']).unwrap_or(rest.len());
            value = rest[..end].to_owned();
            rest = &rest[end..];
        }
        if params.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(DigestError::Malformed("parameter given twice"));
        }
        params.push((name.to_owned(), value));
        rest = rest.trim_start();
        match rest.strip_prefix(',') {
            Some(after) => rest = after.trim_start(),
            None if rest.is_empty() => {}
            None => return Err(DigestError::Malformed("separator")),
        }
    }
    Ok(params)
}

/// Nonces an edge checks without remembering them: the time they were issued, a random
/// part, and a MAC over both with a key of the edge's own, so a phone cannot make one up or
/// keep one for ever.
#[derive(Debug)]
pub struct Nonces {
    key: hmac::Key,
}

/// What a nonce in an answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Fresh,
    /// Ours, but older than [`NONCE_LIFETIME_S`] (or from the future).
    Stale,
    /// Not one of ours.
    Forged,
}

const NONCE_MAC: usize = 16;

impl Nonces {
    pub fn new(secret: &[u8]) -> Nonces {
        Nonces {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// With a random key: nonces issued before a restart become forged, and a phone is
    /// simply challenged again.
    pub fn random() -> Nonces {
        Nonces::new(&rand::random::<[u8; 32]>())
    }

    pub fn issue(&self, unix_s: u64) -> String {
        self.issue_with(unix_s, rand::random())
    }

    fn issue_with(&self, unix_s: u64, random: u64) -> String {
        let mut bytes = Vec::with_capacity(16 + NONCE_MAC);
        bytes.extend_from_slice(&unix_s.to_be_bytes());
        bytes.extend_from_slice(&random.to_be_bytes());
        let tag = hmac::sign(&self.key, &bytes);
        bytes.extend_from_slice(&tag.as_ref()[..NONCE_MAC]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn check(&self, nonce: &str, unix_now: u64) -> NonceCheck {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(nonce) else {
            return NonceCheck::Forged;
        };
        if bytes.len() != 16 + NONCE_MAC {
            return NonceCheck::Forged;
        }
        let (signed, mac) = bytes.split_at(16);
        let tag = hmac::sign(&self.key, signed);
        if constant_time::verify_slices_are_equal(&tag.as_ref()[..NONCE_MAC], mac).is_err() {
            return NonceCheck::Forged;
        }
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&signed[..8]);
        let issued = u64::from_be_bytes(issued);
        if issued > unix_now.saturating_add(5) || unix_now - issued.min(unix_now) > NONCE_LIFETIME_S
        {
            return NonceCheck::Stale;
        }
        NonceCheck::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7616 §3.9.1's example (HTTP, but the computation is the same): one published
    /// answer per algorithm, computed by others than us.
    fn rfc7616(algorithm: &str, response: &str) -> Credentials {
        Credentials::parse(&format!(
            "Digest username=\"Mufasa\", realm=\"http-auth@example.org\", \
             uri=\"/dir/index.html\", algorithm={algorithm}, \
             nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", nc=00000001, \
             cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\", qop=auth, \
             response=\"{response}\", \
             opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""
        ))
        .unwrap()
    }

    #[test]
    fn rfc7616_examples_verify_with_both_algorithms() {
        for (name, algorithm, response) in [
            ("MD5", Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
            (
                "SHA-256",
                Algorithm::Sha256,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let creds = rfc7616(name, response);
            assert_eq!(creds.algorithm, algorithm);
            let ha1 = ha1(
                algorithm,
                "Mufasa",
                "http-auth@example.org",
                "Circle of Life",
            );
            assert!(creds.verify(&ha1, "GET"), "{name}");
            assert!(!creds.verify(&ha1, "POST"), "{name}: the method counts");
            let wrong = super::ha1(
                algorithm,
                "Mufasa",
                "http-auth@example.org",
                "circle of life",
            );
            assert!(!creds.verify(&wrong, "GET"), "{name}: the password counts");
        }
    }

    #[test]
    fn rfc2069_answer_without_qop() {
        // RFC 2617 §3.5's computation without qop, by hand: H(HA1:nonce:HA2).
        let ha1 = ha1(Algorithm::Md5, "alice", REALM, "secret");
        let ha2 = Algorithm::Md5.hex(b"REGISTER:sip:127.0.0.1");
        let response = Algorithm::Md5.hex(format!("{ha1}:abc:{ha2}").as_bytes());
        let creds = Credentials::parse(&format!(
            "Digest username=\"alice\",realm=\"agent-edge\",nonce=\"abc\",uri=\"sip:127.0.0.1\",response=\"{response}\""
        ))
        .unwrap();
        assert_eq!(creds.qop_auth, None);
        assert!(creds.verify(&ha1, "REGISTER"));
    }

    #[test]
    fn malformed_credentials_are_refused_not_guessed() {
        for (header, error) in [
            ("Bearer abc", DigestError::NotDigest),
            ("Digest username=\"a\"", DigestError::Missing("realm")),
            (
                "Digest username=\"a\", username=\"b\", realm=\"r\"",
                DigestError::Malformed("parameter given twice"),
            ),
            (
                "Digest username=\"a",
                DigestError::Malformed("quoted string"),
            ),
            ("Digest username", DigestError::Malformed("parameter")),
            (
                "Digest username=\"a\" realm=\"r\"",
                DigestError::Malformed("separator"),
            ),
            (
                "Digest username=a, realm=r, nonce=n, uri=u, response=r, algorithm=SHA-512",
                DigestError::UnsupportedAlgorithm,
            ),
            (
                "Digest username=a, realm=r, nonce=n, uri=u, response=r, qop=auth-int, nc=00000001, cnonce=c",
                DigestError::UnsupportedQop,
            ),
            (
                "Digest username=a, realm=r, nonce=n, uri=u, response=r, qop=auth, nc=1, cnonce=c",
                DigestError::Malformed("nc"),
            ),
        ] {
            assert_eq!(Credentials::parse(header), Err(error), "{header}");
        }
    }

    #[test]
    fn quoted_values_keep_escapes_and_commas() {
        let creds = Credentials::parse(
            "digest USERNAME=\"a\\\"b,c\" , realm=\"agent-edge\",nonce=n,uri=\"sip:x\",response=ABC",
        )
        .unwrap();
        assert_eq!(creds.username, "a\"b,c");
        assert_eq!(creds.response, "abc");
        assert_eq!(creds.algorithm, Algorithm::Md5);
    }

    #[test]
    fn nonces_are_fresh_then_stale_and_cannot_be_made_up() {
        let nonces = Nonces::new(b"edge key");
        let nonce = nonces.issue_with(1_000, 42);
        assert_eq!(nonces.check(&nonce, 1_000), NonceCheck::Fresh);
        assert_eq!(
            nonces.check(&nonce, 1_000 + NONCE_LIFETIME_S),
            NonceCheck::Fresh
        );
        assert_eq!(
            nonces.check(&nonce, 1_001 + NONCE_LIFETIME_S),
            NonceCheck::Stale
        );
        assert_eq!(nonces.check(&nonce, 900), NonceCheck::Stale);
        assert_eq!(
            Nonces::new(b"other key").check(&nonce, 1_000),
            NonceCheck::Forged
        );
        let mut tampered = nonce.into_bytes();
        tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(nonces.check(&tampered, 1_000), NonceCheck::Forged);
        assert_eq!(nonces.check("not base64 !", 1_000), NonceCheck::Forged);
        assert_eq!(nonces.check("", 1_000), NonceCheck::Forged);
    }

    #[test]
    fn challenges_name_the_realm_algorithm_and_staleness() {
        assert_eq!(
            challenge("n1", Algorithm::Sha256, false),
            "Digest realm=\"agent-edge\", nonce=\"n1\", algorithm=SHA-256, qop=\"auth\""
        );
        assert!(
            challenge("n1", Algorithm::Md5, true)
                .ends_with("algorithm=MD5, qop=\"auth\", stale=true")
        );
    }
}
