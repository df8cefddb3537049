//! The protocol between the distributor and its buffer servers (edges).
//!
//! An edge dials out to the distributor over one TLS WebSocket, so it works behind NAT and
//! outbound-only firewalls; every WebSocket binary message carries one [`Frame`]. This crate
//! has no IO and reads no clock (time comes in as [`std::time::Instant`]), so the codec and
//! the liveness rules are unit-tested and fuzzed directly.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod codec;
mod frame;
pub mod media;
mod session;

pub use codec::{DecodeError, Limits, MAX_TOKEN, decode, encode, encode_into, valid_id};
pub use frame::Frame;
pub use session::{
    Backoff, HandshakeError, Heartbeat, HeartbeatAction, PROTOCOL_VERSION, SUBPROTOCOL, check_hello,
};
