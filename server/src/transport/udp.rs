//! SIP over UDP (RFC 3261 §18): one socket, one datagram per message.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use super::{Transports, ingest};
use crate::sip::{SipError, Target, validate};

/// Binds the socket and spawns its reader. Returns the bound address (port 0 resolved).
pub async fn listen(transports: &Transports, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let socket = Arc::new(UdpSocket::bind(addr).await?);
    let local = socket.local_addr()?;
    transports.set_udp(socket.clone());
    let transports = transports.clone();
    tokio::spawn(async move {
        // One byte more than the limit tells an oversized datagram from one that just fits.
        let mut buf = vec![0u8; transports.max_message().max(65_535) + 1];
        loop {
            let (len, peer) = match socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP port-unreachable from an earlier send surfaces here on some systems;
                    // it concerns one peer, not the socket.
                    debug!(error = %e, "UDP receive error");
                    continue;
                }
            };
            let data = &buf[..len];
            if is_keepalive(data) {
                continue;
            }
            if len > transports.max_message() {
                warn!(%peer, len, "refusing oversized datagram");
                let error = SipError::TooLarge {
                    len,
                    max: transports.max_message(),
                };
                if let Some(resp) = validate::answer_head(data, &error) {
                    let _ = transports.send(&Target::udp(peer), Bytes::from(resp.to_bytes()));
                }
                continue;
            }
            if !ingest(&transports, data, Target::udp(peer)).await {
                break;
            }
        }
    });
    Ok(local)
}

/// RFC 5626 §3.5.1 keep-alives on UDP are bare CRLFs (and some phones send a lone NUL).
fn is_keepalive(data: &[u8]) -> bool {
    data.iter().all(|b| matches!(b, b'\r' | b'\n' | 0))
}
