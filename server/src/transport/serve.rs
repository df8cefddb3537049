//! Serving an axum router on a [`TlsListener`] with the deadline `axum::serve` leaves out: a
//! client has `header_read` (`[limits] header_read_s`) to send a request's headers (the
//! first, and each next one on a kept-alive connection), so a silent or trickling connection
//! after the handshake does not hold its socket and its place for ever. A WebSocket, once
//! upgraded, is the handler's and keeps its own deadlines.

use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tracing::debug;

use super::tls_listener::{PeerAddr, TlsListener};

/// Serves `routes` on `listener` in the background; `what` names it in the logs.
pub fn spawn(mut listener: TlsListener, routes: Router, what: &'static str, header_read: Duration) {
    tokio::spawn(async move {
        // HTTP/1.1 only, as our TLS offers in ALPN; hyper-util's auto builder would wait for
        // the client's first bytes to tell the version, before any header deadline runs.
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_read);
        loop {
            let (conn, peer) = axum::serve::Listener::accept(&mut listener).await;
            let service = routes
                .clone()
                .layer(axum::Extension(ConnectInfo(PeerAddr(peer))));
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = TowerToHyperService::new(service);
                let served = builder
                    .serve_connection(TokioIo::new(conn), service)
                    .with_upgrades()
                    .await;
                if let Err(e) = served {
                    debug!(%peer, listener = what, error = %e, "HTTPS connection ended");
                }
            });
        }
    });
}
