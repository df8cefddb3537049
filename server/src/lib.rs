//! agent-edge: a contact-centre agent edge.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod acd;
pub mod admin;
pub mod app;
pub mod buffer;
pub mod config;
pub mod distributor;
pub mod driver;
pub mod handoff;
pub mod ids;
pub mod media;
pub mod metrics;
pub mod records;
pub mod sip;
pub mod transport;
pub mod turn;
