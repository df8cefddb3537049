//! Where bytes from a peer become a [`SipMessage`]: parsed, checked, and answered with 400 by
//! the transport itself when they are not fit to reach a transaction.

use bytes::Bytes;
use tracing::debug;

use super::{TransportEvent, Transports};
use crate::sip::{SipMessage, Target};

/// Parses one message from `from`; hands it to the role, or answers a broken request with 400
/// and drops anything else. Returns false when the role has stopped listening.
pub async fn ingest(transports: &Transports, bytes: &[u8], from: Target) -> bool {
    let msg = match SipMessage::parse_checked(bytes) {
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
        .send(TransportEvent::Message { msg, from })
        .await
        .is_ok()
}
