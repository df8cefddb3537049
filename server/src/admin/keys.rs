//! The distributor's token signing key: ECDSA P-256, generated at first run into a git-ignored
//! folder (mode 0600), published as a JWK set whose `kid` is the key's RFC 7638 thumbprint.

use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};

const SIGNING_KEY: &str = "signing-key.pem";

/// Why the signing key could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The key file or its folder.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Writing the key file failed.
    #[error(transparent)]
    Write(#[from] certs::CertError),
    /// Generating the key failed.
    #[error("generating the signing key: {0}")]
    Generate(#[from] rcgen::Error),
    /// The key file is not an ECDSA P-256 private key.
    #[error("{path}: not an ECDSA P-256 private key: {source}")]
    Invalid {
        /// The key file.
        path: PathBuf,
        /// What the JWT library said.
        source: jsonwebtoken::errors::Error,
    },
}

/// A private key that signs agent tokens, with its public half as a JWK.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    key: EncodingKey,
    public: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads `dir/signing-key.pem`, generating it first when missing.
    pub fn ensure(dir: &Path) -> Result<SigningKey, KeyError> {
        let path = dir.join(SIGNING_KEY);
        if !path.is_file() {
            std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
                path: dir.to_owned(),
                source,
            })?;
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            certs::write_atomic(&path, pair.serialize_pem().as_bytes(), true)?;
        }
        let pem = std::fs::read(&path).map_err(|source| KeyError::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_pem(&pem).map_err(|source| KeyError::Invalid { path, source })
    }

    /// A key from PKCS#8 PEM.
    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, jsonwebtoken::errors::Error> {
        let key = EncodingKey::from_ec_pem(pem)?;
        let mut public = Jwk::from_encoding_key(&key, Algorithm::ES256)?;
        let kid = public.thumbprint(ThumbprintHash::SHA256)?;
        public.common.key_id = Some(kid.clone());
        public.common.public_key_use = Some(PublicKeyUse::Signature);
        public.common.key_algorithm = Some(KeyAlgorithm::ES256);
        Ok(SigningKey { kid, key, public })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.key
    }

    /// The public keys to verify tokens with.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.public.clone()],
        }
    }
}

/// The current signing key and the retired ones, which stay published (and so keep verifying
/// the tokens they signed) for `keep_s` seconds after retirement: as long as any of their
/// tokens can live.
#[derive(Debug)]
pub struct KeyRing {
    dir: PathBuf,
    keep_s: u64,
    current: SigningKey,
    /// (retired at, unix seconds; key).
    retired: Vec<(u64, SigningKey)>,
}

const RETIRED: &str = "retired";

impl KeyRing {
    /// Loads the keys in `dir`, generating the current one when missing and deleting retired
    /// keys older than `keep_s`.
    pub fn load(dir: &Path, keep_s: u64, now: u64) -> Result<KeyRing, KeyError> {
        let current = SigningKey::ensure(dir)?;
        let mut retired = Vec::new();
        let retired_dir = dir.join(RETIRED);
        if let Ok(entries) = std::fs::read_dir(&retired_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(at) = name.split('-').next().and_then(|t| t.parse::<u64>().ok()) else {
                    continue;
                };
                if at + keep_s < now {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                let pem = std::fs::read(&path).map_err(|source| KeyError::Io {
                    path: path.clone(),
                    source,
                })?;
                let key = SigningKey::from_pem(&pem)
                    .map_err(|source| KeyError::Invalid { path, source })?;
                retired.push((at, key));
            }
        }
        retired.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.kid.cmp(&b.1.kid)));
        Ok(KeyRing {
            dir: dir.to_owned(),
            keep_s,
            current,
            retired,
        })
    }

    /// Retires the current key (still published for `keep_s`) and signs with a new one.
    pub fn rotate(&mut self, now: u64) -> Result<(), KeyError> {
        let retired_dir = self.dir.join(RETIRED);
        std::fs::create_dir_all(&retired_dir).map_err(|source| KeyError::Io {
            path: retired_dir.clone(),
            source,
        })?;
        let current_path = self.dir.join(SIGNING_KEY);
        let pem = std::fs::read(&current_path).map_err(|source| KeyError::Io {
            path: current_path.clone(),
            source,
        })?;
        let kept = retired_dir.join(format!("{now}-{}.pem", self.current.kid));
        certs::write_atomic(&kept, &pem, true)?;
        let _ = std::fs::remove_file(&current_path);
        let new = SigningKey::ensure(&self.dir)?;
        let old = std::mem::replace(&mut self.current, new);
        self.retired.push((now, old));
        Ok(())
    }

    pub fn current(&self) -> &SigningKey {
        &self.current
    }

    /// The public keys that verify tokens at `now`: the current one and the retired ones
    /// still within their grace period.
    pub fn jwks(&self, now: u64) -> JwkSet {
        let mut keys = vec![self.current.public.clone()];
        keys.extend(
            self.retired
                .iter()
                .filter(|(at, _)| at + self.keep_s >= now)
                .map(|(_, k)| k.public.clone()),
        );
        JwkSet { keys }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_generated_once_private_and_published_without_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        let a = SigningKey::ensure(dir.path()).unwrap();
        let b = SigningKey::ensure(dir.path()).unwrap();
        assert_eq!(a.kid(), b.kid());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SIGNING_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let json = serde_json::to_string(&a.jwks()).unwrap();
        assert!(
            json.contains(a.kid()) && json.contains("\"crv\":\"P-256\""),
            "{json}"
        );
        assert!(
            !json.contains("\"d\""),
            "the private scalar must not be published: {json}"
        );
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }

    #[test]
    fn rotation_keeps_the_old_key_published_for_its_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = KeyRing::load(dir.path(), 100, 1000).unwrap();
        let old = ring.current().kid().to_owned();
        ring.rotate(1000).unwrap();
        let new = ring.current().kid().to_owned();
        assert_ne!(old, new);
        let kids = |ring: &KeyRing, now| -> Vec<String> {
            ring.jwks(now)
                .keys
                .iter()
                .filter_map(|k| k.common.key_id.clone())
                .collect()
        };
        assert_eq!(kids(&ring, 1050), vec![new.clone(), old.clone()]);
        // A restart finds both, until the grace period ends.
        let again = KeyRing::load(dir.path(), 100, 1050).unwrap();
        assert_eq!(kids(&again, 1050), vec![new.clone(), old]);
        assert_eq!(kids(&again, 1101), vec![new.clone()]);
        let later = KeyRing::load(dir.path(), 100, 1200).unwrap();
        assert_eq!(kids(&later, 1200), vec![new]);
        assert_eq!(
            std::fs::read_dir(dir.path().join(RETIRED)).unwrap().count(),
            0
        );
    }
}
