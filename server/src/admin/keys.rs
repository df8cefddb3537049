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
}
