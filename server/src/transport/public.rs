//! The distributor's one public TLS listener (port 443 in production): edges dial their tunnel
//! at `/tunnel`, and the agent page and SIP over WebSocket of each exposed edge are served at
//! `/edge/<id>/`, and agents' ICE-TCP connections (not TLS) go to the caller media relay
//! that passes them to their edge, and agents' TURN over TLS to the TURN server whose only
//! peers are edges' sessions. One listener, so an edge and its agents need nothing but
//! outbound 443.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;

use super::per_source::PerSource;
use super::tls_listener::{Demux, TlsListener};

/// Binds the public listener and serves `routes` on it in the background.
pub async fn listen(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    routes: Router,
    per_source: PerSource,
    header_read: std::time::Duration,
    mut demux: Demux,
) -> std::io::Result<SocketAddr> {
    // A client silent after its handshake is cut at the header deadline, TURN or not.
    demux.first_bytes = Some(header_read);
    // What is not TLS may be an agent's ICE-TCP (RFC 4571-framed STUN first); what is TLS
    // but not HTTP, an agent's TURN.
    let listener = TlsListener::bind_with(addr, tls, per_source, demux).await?;
    let local = axum::serve::Listener::local_addr(&listener)?;
    super::serve::spawn(listener, routes, "distributor.public", header_read);
    Ok(local)
}
