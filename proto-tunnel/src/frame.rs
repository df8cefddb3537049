//! What travels through the tunnel.

use bytes::Bytes;

/// One tunnel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First frame from the edge: who it is and which hand-off encodings it accepts.
    Hello {
        /// The edge's protocol version; the distributor refuses one it does not speak.
        version: u16,
        /// Unique per edge, so the distributor can tell a reconnect from a second edge.
        edge_id: String,
        /// Hand-off encodings the edge understands, so the distributor picks one both speak.
        handoffs: Vec<String>,
    },
    /// The distributor's answer to an acceptable Hello.
    Welcome {
        /// The distributor's protocol version.
        version: u16,
        /// Names the distributor in the edge's logs.
        distributor_id: String,
    },
    /// One raw SIP message. `agent` names the agent for an INVITE handed off to the edge and
    /// is `None` for every other message.
    Sip {
        /// The agent a handed-off INVITE is for.
        agent: Option<String>,
        /// The SIP message exactly as it travels on the wire, so nothing is lost in transit.
        message: Bytes,
    },
    /// The edge has this agent registered. The distributor does not take the edge's word
    /// for it: `token` proves the claim.
    AgentUp {
        /// The agent, so the distributor knows this edge can take its calls.
        agent: String,
        /// The agent token the agent registered with, for the distributor to verify itself
        /// (signature, expiry, audience, subject, revocation).
        token: String,
    },
    /// The agent is no longer registered on the edge (edge → distributor); or the
    /// distributor no longer routes the agent's calls to this edge, because a verified claim
    /// moved her elsewhere or this edge's claim was refused (distributor → edge).
    AgentDown {
        /// The agent, so the distributor stops routing its calls here.
        agent: String,
    },
    /// Liveness probe; answered with a Pong carrying the same nonce.
    Ping {
        /// Echoed in the Pong, so a late Pong is told apart from the current one.
        nonce: u64,
    },
    /// Answer to a Ping.
    Pong {
        /// The nonce of the Ping answered.
        nonce: u64,
    },
    /// The distributor's identity settings for verifying agent tokens: JSON holding the
    /// issuer, audience and public keys (a JWK set). Sent after Welcome and on every change,
    /// so edges verify tokens without ever holding a secret.
    Keys {
        /// The settings as JSON, kept opaque here so this crate needs no JSON dependency.
        json: String,
    },
    /// An agent token was revoked: an edge refuses it from now on and drops any registration
    /// made with it.
    Revoke {
        /// The revoked token's `jti` claim.
        jti: String,
    },
    /// `table` hand-off: the INVITE with this Call-ID that follows is for `agent`; the entry
    /// expires after `ttl_ms` if no INVITE comes.
    Route {
        /// Call-ID of the INVITE to come.
        call_id: String,
        /// The agent it is for.
        agent: String,
        /// How long the entry lives, so a lost INVITE does not leave it forever.
        ttl_ms: u32,
    },
    /// The edge's media statistics of a call in progress, for the distributor's live view.
    CallStats {
        /// The call's Call-ID on the distributor's side.
        call_id: String,
        /// The statistics as JSON, opaque here like `Keys`.
        json: String,
    },
    /// An agent set its presence on its page (edge → distributor).
    Presence {
        /// The agent, as registered on the edge that sends this.
        agent: String,
        /// `{"state": "available"}` or `{"state": "away", "reason": "…"}`, opaque here.
        json: String,
    },
    /// The distributor's view of an agent changed (distributor → the agent's edge), for its
    /// page: state, reason, calls, wrap-up time left.
    AgentState {
        /// The agent.
        agent: String,
        /// The state as JSON, opaque here.
        json: String,
    },
    /// The edge asks to be exposed (edge → distributor, once, after Welcome): the distributor
    /// serves this edge's agent page and its agents' WebSockets on its public listener and
    /// carries them over this tunnel, so the edge needs no inbound connection.
    Expose,
    /// A GET for an exposed edge's page (distributor → edge).
    HttpRequest {
        /// Names the answer's frames, so several requests can be in flight.
        stream: u64,
        /// The path under `/edge/<id>/`, without the query (a sign-in token in it stays in
        /// the browser).
        path: String,
    },
    /// The start of the answer to an `HttpRequest` (edge → distributor); its body follows in
    /// `HttpBody` frames, so an asset may be larger than one frame.
    HttpHead {
        /// The request answered.
        stream: u64,
        /// The HTTP status.
        status: u16,
        /// The body's media type; the only header that crosses (the distributor sets the
        /// page's security headers itself).
        content_type: String,
    },
    /// A piece of an answer's body (edge → distributor).
    HttpBody {
        /// The request answered.
        stream: u64,
        /// The bytes.
        data: Bytes,
        /// Whether this is the last piece.
        last: bool,
    },
    /// A browser opened a WebSocket to `/edge/<id>/sip` on the distributor (distributor →
    /// edge): a virtual connection the edge treats as a WSS connection of its own.
    WsOpen {
        /// The virtual connection, numbered by the distributor per tunnel.
        conn: u64,
        /// The browser's address as the distributor saw it, for the edge's logs and Via.
        peer: String,
    },
    /// One WebSocket message on a virtual connection, either way: one SIP message (RFC 7118).
    WsMessage {
        /// The virtual connection.
        conn: u64,
        /// The message.
        data: Bytes,
    },
    /// A virtual connection ended, either way, and why.
    WsClose {
        /// The virtual connection.
        conn: u64,
        /// For the other side's logs.
        reason: String,
    },
    /// A desk phone answered the edge's Digest challenge (edge → distributor): the
    /// distributor, which alone keeps the agents' SIP password hashes, checks the answer, so
    /// no edge ever holds a password.
    DigestCheck {
        /// Names the answer, so several checks can be in flight.
        request: u64,
        /// The agent the REGISTER is for (its To user).
        agent: String,
        /// The request's method, part of the digest.
        method: String,
        /// The request's `Authorization` header value, as the phone sent it.
        authorization: String,
        /// The registration's lifetime in seconds: the token given back lasts this long and
        /// a minute more.
        expires: u32,
    },
    /// The distributor's answer to a `DigestCheck`.
    DigestResult {
        /// The check answered.
        request: u64,
        /// On success, an agent token for this registration (its `jti` is the SIP password's
        /// id), which proves the agent's claim as any token does; `None` when refused.
        token: Option<String>,
        /// Why it was refused, for the edge's answer and logs (empty on success).
        refusal: String,
    },
    /// The sender is closing the tunnel, and why.
    Close {
        /// Free text for the peer's logs, so an operator sees why without packet captures.
        reason: String,
    },
}

impl Frame {
    /// Whether the frame belongs to an exposed edge's page or virtual connections, which the
    /// tunnel's ends handle themselves and never hand to the roles.
    pub fn is_exposure(&self) -> bool {
        matches!(
            self,
            Frame::HttpRequest { .. }
                | Frame::HttpHead { .. }
                | Frame::HttpBody { .. }
                | Frame::WsOpen { .. }
                | Frame::WsMessage { .. }
                | Frame::WsClose { .. }
        )
    }
}
