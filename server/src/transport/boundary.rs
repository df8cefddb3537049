//! Where bytes from a peer become a [`SipMessage`]: parsed, checked, and answered with 400 by
//! the transport itself when they are not fit to reach a transaction.

use bytes::Bytes;
use tracing::debug;

use super::{TransportEvent, Transports};
use crate::sip::{SipMessage, Target};

/// Parses one message from `from`; hands it to the role, or answers a broken request with 400
/// and drops anything else. Returns false when the role has stopped listening.
pub async fn ingest(transports: &Transports, bytes: &[u8], from: Target) -> bool {
    let msg = match SipMessage::parse(bytes) {
        Ok(msg) => msg,
        Err(e) => {
            debug!(peer = %from.addr, error = %e, "dropping unparseable message");
            return true;
        }
    };
    let checked = if msg.is_request() {
        msg.validate_request()
    } else {
        msg.validate_response()
    };
    if let Err(e) = checked {
        debug!(peer = %from.addr, error = %e, "refusing malformed message");
        if msg.is_request() && msg.method().is_some_and(|m| m.as_str() != "ACK") {
            let mut resp = msg.response(e.status(), None);
            resp.set_reason(&e.to_string());
            let _ = transports.send(&from, Bytes::from(resp.to_bytes()));
        }
        return true;
    }
    transports
        .events()
        .send(TransportEvent::Message { msg, from })
        .await
        .is_ok()
}
