//! Where bytes from a peer become a [`SipMessage`]: parsed and checked by
//! [`validate::from_peer`], and answered by the transport itself (400, 416, 505) when they
//! are not fit to reach a transaction. Every socket a peer reaches comes through here: UDP
//! datagrams, TCP and TLS frames, and each WebSocket message on `/sip`.

use bytes::Bytes;
use tracing::debug;

use super::{TransportEvent, Transports};
use crate::sip::{SipMessage, Target, validate};

/// Parses one message from `from`; hands it to the role, or answers a broken request and
/// drops anything else. Returns false when the role has stopped listening.
pub async fn ingest(transports: &Transports, bytes: &[u8], from: Target) -> bool {
    let msg: SipMessage = match validate::from_peer(bytes) {
        Ok(msg) => msg,
        Err(rejected) => {
            debug!(peer = %from.addr, error = %rejected.error, "refusing message");
            if let Some(answer) = rejected.answer {
                let _ = transports.send(&from, Bytes::from(answer.to_bytes()));
            }
            return true;
        }
    };
    transports
        .events()
        .send(TransportEvent::Message {
            msg,
            from,
            received: std::time::Instant::now(),
        })
        .await
        .is_ok()
}
