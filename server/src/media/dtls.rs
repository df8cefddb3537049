//! str0m's DTLS (dimpl on aws-lc-rs) with its configuration built once. str0m-aws-lc-rs
//! builds a dimpl `Config` for every call, and building one checks the crypto provider with a
//! key exchange in each of its groups (X25519, P-256, P-384): 40 % of the buffer server's CPU
//! per call in the call-load profile (`bench/results.md`). The configuration is the same for
//! every call, so it is built once; everything else is str0m's own provider.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use str0m::config::{CryptoProvider, DtlsCert, DtlsVersion};
use str0m::crypto::CryptoError;
use str0m::crypto::dtls::{DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, ProtocolVersion};

/// The provider every bridged call uses.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            Arc::new(CryptoProvider {
                dtls_provider: &CACHED,
                ..str0m::crypto::from_feature_flags()
            })
        })
        .clone()
}

static CACHED: CachedConfigDtls = CachedConfigDtls {
    config: OnceLock::new(),
};

#[derive(Debug)]
struct CachedConfigDtls {
    /// The configuration and the MTU it was built for, at the first call.
    config: OnceLock<Result<ConfigForMtu, String>>,
}

type ConfigForMtu = (Arc<dimpl::Config>, Option<usize>);

/// The settings str0m-aws-lc-rs uses: no server cookie (ICE has checked the peer's address
/// before any DTLS), and the MTU str0m asks for.
fn build(mtu: Option<usize>) -> Result<Arc<dimpl::Config>, String> {
    let mut builder = dimpl::Config::builder().use_server_cookie(false);
    if let Some(mtu) = mtu {
        builder = builder.mtu(mtu);
    }
    builder
        .build()
        .map(Arc::new)
        .map_err(|e| format!("dimpl config creation failed: {e}"))
}

impl DtlsProvider for CachedConfigDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        // str0m passes the same MTU for every call of a bridge; another one is built afresh.
        let config = match self.config.get_or_init(|| build(mtu).map(|c| (c, mtu))) {
            Ok((config, cached_mtu)) if *cached_mtu == mtu => config.clone(),
            Ok(_) => build(mtu).map_err(CryptoError::Other)?,
            Err(e) => return Err(CryptoError::Other(e.clone())),
        };
        let cert = cert.clone();
        let dtls = match dtls_version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, cert, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, cert, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, cert, now),
            other => {
                return Err(CryptoError::Other(format!(
                    "unsupported DTLS version: {other}"
                )));
            }
        };
        Ok(Box::new(Instance(dtls)))
    }
}

/// dimpl's DTLS as str0m drives it.
struct Instance(dimpl::Dtls);

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Instance")
    }
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.0.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.0.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.0.poll_output(buf)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.0.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.0.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.0.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.0.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.0.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.0.close()
    }
}
