//! The secrets and certificates a system starts with: the signing key ring, token issuers,
//! the admin key, an edge's tunnel credential and the TLS files. Read from the config and
//! the environment, never from the repository.

use std::sync::{Arc, RwLock};

use super::{Context, StartError};
use crate::admin::keys::KeyRing;
use crate::admin::tokens::{MAX_AGENT_TOKEN_TTL_S, TokenIssuer};
use crate::config::Config;

/// The distributor's key ring. Retired keys stay published as long as any token they signed
/// can live: the longest lifetime an agent or edge token may be issued with.
pub fn key_ring(config: &Config) -> Result<Arc<RwLock<KeyRing>>, StartError> {
    let id = &config.identity;
    let keep = MAX_AGENT_TOKEN_TTL_S.max(id.edge_token_ttl_s);
    let ring = KeyRing::load(&id.keys_dir, keep, unix_now())
        .context(|| format!("preparing the signing key in {}", id.keys_dir.display()))?;
    Ok(Arc::new(RwLock::new(ring)))
}

/// Issues agent tokens.
pub fn token_issuer(config: &Config, ring: &Arc<RwLock<KeyRing>>) -> TokenIssuer {
    let id = &config.identity;
    TokenIssuer::new(ring.clone(), &id.issuer, &id.audience)
}

/// Issues edge credentials: the same keys, the edge audience.
pub fn edge_token_issuer(config: &Config, ring: &Arc<RwLock<KeyRing>>) -> TokenIssuer {
    let id = &config.identity;
    TokenIssuer::new(ring.clone(), &id.issuer, &id.edge_audience)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The buffer server's tunnel credential: `AGENT_EDGE_EDGE_TOKEN`, else `buffer.token_file`.
pub fn edge_credential(config: &Config) -> Result<Option<String>, StartError> {
    if let Ok(token) = std::env::var("AGENT_EDGE_EDGE_TOKEN") {
        return Ok(Some(token.trim().to_owned()));
    }
    match &config.buffer.token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .context(|| format!("reading the edge token {}", path.display()))?;
            Ok(Some(token.trim().to_owned()))
        }
        None => {
            tracing::warn!(
                "no tunnel credential: set AGENT_EDGE_EDGE_TOKEN or buffer.token_file \
                 (agent-edge token issue --edge ID); the distributor will refuse this edge"
            );
            Ok(None)
        }
    }
}

/// The admin key: `AGENT_EDGE_ADMIN_KEY`, else `admin.key_file`, generated when missing.
pub fn admin_key(config: &Config) -> Result<String, StartError> {
    if let Ok(key) = std::env::var("AGENT_EDGE_ADMIN_KEY") {
        if key.trim().len() < 16 {
            return Err(StartError::msg(
                "AGENT_EDGE_ADMIN_KEY must be at least 16 characters",
            ));
        }
        return Ok(key.trim().to_owned());
    }
    let path = &config.admin.key_file;
    if !path.is_file() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
        }
        let key = format!("{:032x}", rand::random::<u128>());
        certs::write_atomic(path, key.as_bytes(), true)
            .context(|| format!("writing the admin key {}", path.display()))?;
        tracing::info!(path = %path.display(), "generated an admin key");
    }
    let key = std::fs::read_to_string(path)
        .context(|| format!("reading the admin key {}", path.display()))?;
    Ok(key.trim().to_owned())
}

/// The operator's certificate and key, or development certificates generated at first run.
pub fn tls_files(config: &Config) -> Result<certs::TlsFiles, StartError> {
    match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => Ok(certs::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: config.tls.ca.clone().unwrap_or_else(|| cert.clone()),
        }),
        _ => certs::ensure_dev_certs(&config.tls.dir).context(|| {
            format!(
                "preparing development certificates in {}",
                config.tls.dir.display()
            )
        }),
    }
}
