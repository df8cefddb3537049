//! agent-edge: a contact-centre agent edge.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod acd;
pub mod admin;
pub mod buffer;
pub mod config;
pub mod distributor;
pub mod handoff;
pub mod ids;
pub mod media;
pub mod sip;
pub mod transport;

/// Prints one status line on stdout (`listening …`, `tunnel-up …`, `agent-up …`) for operators
/// and the end-to-end tests, which wait for these lines instead of sleeping.
pub fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
