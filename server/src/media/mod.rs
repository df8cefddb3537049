//! Media: G.711 and RTP packetisation and a minimal SDP reader (pure), announcements read
//! from WAV files, and the distributor's early-media player for queued callers.

pub mod announcement;
pub mod bridge;
mod dtls;
pub mod early;
pub mod g711;
pub mod relay;
pub mod rtp;
pub mod sdp;
