//! agent-edge: a contact-centre agent edge.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod buffer;
pub mod config;
pub mod sip;
pub mod transport;
