//! What travels through the tunnel.

use bytes::Bytes;

/// One tunnel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First frame from the edge: who it is and which hand-off encodings it accepts.
    Hello {
        version: u16,
        edge_id: String,
        handoffs: Vec<String>,
    },
    /// The distributor's answer to an acceptable Hello.
    Welcome {
        version: u16,
        distributor_id: String,
    },
    /// One raw SIP message. `agent` names the agent for an INVITE handed off to the edge and
    /// is `None` for every other message.
    Sip {
        agent: Option<String>,
        message: Bytes,
    },
    /// The edge has this agent registered.
    AgentUp { agent: String },
    /// The agent is no longer registered on the edge.
    AgentDown { agent: String },
    /// Liveness probe; answered with a Pong carrying the same nonce.
    Ping { nonce: u64 },
    /// Answer to a Ping.
    Pong { nonce: u64 },
    /// The distributor's identity settings for verifying agent tokens: JSON holding the
    /// issuer, audience and public keys (a JWK set). Sent after Welcome and on every change,
    /// so edges verify tokens without ever holding a secret.
    Keys { json: String },
    /// An agent token was revoked: an edge refuses it from now on and drops any registration
    /// made with it.
    Revoke { jti: String },
    /// `table` hand-off: the INVITE with this Call-ID that follows is for `agent`; the entry
    /// expires after `ttl_ms` if no INVITE comes.
    Route {
        call_id: String,
        agent: String,
        ttl_ms: u32,
    },
    /// The sender is closing the tunnel, and why.
    Close { reason: String },
}
