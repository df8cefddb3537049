//! TURN over TLS (RFC 8656) for agents whose network lets out only TLS to port 443.
//!
//! Some agents sit behind networks that allow nothing but TLS to 443: no UDP, no ICE-TCP to
//! other ports. Their browsers still reach the edge's WebRTC through TURN over TLS on the
//! distributor's public port: the browser allocates a relayed address here and the media
//! flows between that address and the edge's WebRTC session.
//!
//! It is not an open relay: the only peers an allocation may have a permission for, send to
//! or bind a channel to are the project's own edges' WebRTC sessions, as the distributor's
//! [`allocation::Authority`] says, never an arbitrary address.
//!
//! Layout:
//! - [`stun`]: the STUN message codec (RFC 8489), ChannelData and stream framing.
//! - [`credentials`]: time-limited credentials (the "TURN REST API" style).
//! - [`allocation`]: one client connection's TURN state, sans-IO.

pub mod allocation;
pub mod credentials;
pub mod stun;
