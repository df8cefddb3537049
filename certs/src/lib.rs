//! Development TLS certificates for agent-edge, generated at first run and never committed.
//!
//! Every WebSocket in agent-edge is TLS (the tunnel and the agents' SIP), so a first run needs
//! certificates before anything listens. This crate makes a small development CA and a server
//! certificate for loopback signed by it, and builds the rustls configurations both ends use.
//! Production deployments name their own files in the config instead.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The files a TLS server (and a client trusting it) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server private key, PEM.
    pub key: PathBuf,
    /// The CA that signed `cert`, PEM: what clients trust.
    pub ca: PathBuf,
}

/// Why certificates could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A PEM file could not be parsed.
    #[error("{path}: not valid PEM: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{path}: no certificate found")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// Generating a key or certificate failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server-key.pem";

/// The names every generated server certificate covers.
pub const DEV_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Returns the development certificates in `dir`, generating all of them when any is missing.
pub fn ensure_dev_certs(dir: &Path) -> Result<TlsFiles, CertError> {
    ensure_dev_certs_for(dir, &[])
}

/// [`ensure_dev_certs`] whose server certificate, when generated, also covers `extra_names`
/// (host names, or IP addresses written out: a development host on a public address, such as
/// a test's distributor in a network namespace). Certificates already in `dir` are kept as
/// they are, whatever names they cover.
pub fn ensure_dev_certs_for(dir: &Path, extra_names: &[&str]) -> Result<TlsFiles, CertError> {
    let files = TlsFiles {
        cert: dir.join(SERVER_CERT),
        key: dir.join(SERVER_KEY),
        ca: dir.join(CA_CERT),
    };
    let all_there = [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY]
        .iter()
        .all(|f| dir.join(f).is_file());
    if all_there {
        return Ok(files);
    }
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })?;

    let year = current_year();
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::default();
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::CommonName, "agent-edge development CA");
    ca_params.distinguished_name = ca_name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    ca_params.not_after = rcgen::date_time_ymd(year + 5, 1, 1);
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let names: Vec<String> = DEV_NAMES
        .iter()
        .chain(extra_names)
        .map(|n| (*n).to_owned())
        .collect();
    let mut params = CertificateParams::new(names)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "agent-edge development server");
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 1, 12, 31);
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let server_cert = params.signed_by(&server_key, &issuer)?;

    write_atomic(&dir.join(CA_KEY), ca_key.serialize_pem().as_bytes(), true)?;
    write_atomic(
        &dir.join(SERVER_KEY),
        server_key.serialize_pem().as_bytes(),
        true,
    )?;
    write_atomic(&dir.join(CA_CERT), ca_cert.pem().as_bytes(), false)?;
    write_atomic(&dir.join(SERVER_CERT), server_cert.pem().as_bytes(), false)?;
    Ok(files)
}

/// A rustls server configuration from PEM files, with the aws-lc-rs provider named explicitly
/// so it never depends on which provider some other crate installed.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, CertError> {
    let chain = load_certs(&files.cert)?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|source| pem_error(&files.key, source))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A rustls client configuration trusting only the CA(s) in `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, CertError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|source| pem_error(path, source))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| pem_error(path, source))?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn pem_error(path: &Path, source: rustls_pki_types::pem::Error) -> CertError {
    match source {
        rustls_pki_types::pem::Error::Io(source) => CertError::Io {
            path: path.to_owned(),
            source,
        },
        source => CertError::Pem {
            path: path.to_owned(),
            source,
        },
    }
}

/// Writes through a temporary file and a rename, so a crash or a second process starting at
/// the same time never leaves half a key behind. Keys are readable by their owner only.
pub fn write_atomic(path: &Path, data: &[u8], secret: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(data).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The calendar year, near enough for validity windows that start a year back.
fn current_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + (secs / 31_556_952) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut c = rustls::ClientConnection::new(client, name)?;
        let mut s = rustls::ServerConnection::new(server)?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn generated_certificates_serve_localhost_and_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_dev_certs(&dir.path().join("certs")).unwrap();
        let server = server_config(&files).unwrap();
        let client = client_config(&files.ca).unwrap();
        handshake(server.clone(), client.clone(), "localhost").unwrap();
        handshake(server, client, "127.0.0.1").unwrap();
    }

    #[test]
    fn extra_names_are_covered_too() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_dev_certs_for(dir.path(), &["203.0.113.10", "edge.test"]).unwrap();
        let server = server_config(&files).unwrap();
        let client = client_config(&files.ca).unwrap();
        for name in ["203.0.113.10", "edge.test", "127.0.0.1"] {
            handshake(server.clone(), client.clone(), name).unwrap();
        }
        assert!(handshake(server, client, "203.0.113.11").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_dev_certs(dir.path()).unwrap();
        for key in [&files.key, &dir.path().join(CA_KEY)] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
    }

    #[test]
    fn existing_certificates_are_kept_and_missing_ones_regenerated() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_dev_certs(dir.path()).unwrap();
        let before = std::fs::read(&files.cert).unwrap();
        ensure_dev_certs(dir.path()).unwrap();
        assert_eq!(std::fs::read(&files.cert).unwrap(), before);
        std::fs::remove_file(&files.key).unwrap();
        ensure_dev_certs(dir.path()).unwrap();
        assert_ne!(std::fs::read(&files.cert).unwrap(), before);
    }

    #[test]
    fn a_client_trusting_another_ca_refuses_the_server() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let files_a = ensure_dev_certs(a.path()).unwrap();
        let files_b = ensure_dev_certs(b.path()).unwrap();
        let err = handshake(
            server_config(&files_a).unwrap(),
            client_config(&files_b.ca).unwrap(),
            "localhost",
        );
        assert!(err.is_err());
    }

    #[test]
    fn missing_files_are_named_in_the_error() {
        let err = client_config(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
