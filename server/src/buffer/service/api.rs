//! What the buffer server core is told and what it asks for: the types its shell and the
//! program running it see.

use std::net::SocketAddr;

use bytes::Bytes;
use proto_tunnel::Frame;

use crate::admin::tokens::TokenVerifier;
use crate::app::status::Status;
use crate::buffer::media::MediaIn;
use crate::media::bridge::{Datagram, SessionId};
use crate::sip::{ConnId, SipMessage, Target};
use crate::transport::TransportEvent;

/// The addresses the buffer server's listeners are bound to.
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub https: SocketAddr,
}

/// How an edge without a tunnel reaches its distributor: plain SIP to a known address, where
/// it registers its agents with its own credential.
#[derive(Debug, Clone)]
pub struct Link {
    pub target: Target,
    /// The edge credential (an edge token), sent as a bearer token on each REGISTER.
    pub token: String,
    /// Checks agent tokens with the distributor's public keys from a file, since no tunnel
    /// brings them.
    pub verifier: TokenVerifier,
}

/// What the program running the buffer server asks of it.
#[derive(Debug)]
pub enum Command {
    /// A shutdown began: new calls from the distributor are refused with 503.
    Drain,
    /// How many calls are in progress, and how many of the BYEs sent by [`Command::HangUpAll`]
    /// still wait for their answer.
    Calls {
        reply: tokio::sync::oneshot::Sender<(usize, usize)>,
    },
    /// The shutdown's grace is over: answered calls are ended with BYE on both legs, calls
    /// still ringing are cancelled towards the agent and refused with 503 towards the caller.
    HangUpAll,
}

/// What the buffer server is told.
#[derive(Debug)]
pub enum Input {
    /// SIP from an agent, or from the distributor over a plain-SIP link.
    Sip { msg: SipMessage, from: Target },
    /// An agent's (or the link's) stream connection closed.
    Closed { conn: ConnId },
    /// The tunnel to the distributor opened.
    TunnelUp { conn: ConnId },
    /// The tunnel dropped; the dialler is backing off to dial again.
    TunnelDown { conn: ConnId },
    /// A frame from the distributor.
    Frame { conn: ConnId, frame: Frame },
    /// A datagram for the media bridge.
    Media(MediaIn),
    /// The caller-side socket asked for with [`Output::OpenCallerPort`]: its address as
    /// announced in SDP, or why it could not be opened.
    CallerPort {
        call: SessionId,
        result: Result<SocketAddr, String>,
    },
    /// The agent-side socket asked for with [`Output::OpenAgentPort`]: its address as
    /// announced in SDP, or why it could not be opened.
    AgentPort {
        call: SessionId,
        result: Result<SocketAddr, String>,
    },
    /// Where agents reach the bridge over ICE-TCP (the distributor's public listener, from
    /// its media connection), or none while that connection is down.
    IceTcp { addr: Option<SocketAddr> },
    /// From the program running the server (the shutdown).
    Command(Command),
    /// Sending to `to` failed at once: its transactions fail.
    SendFailed { to: Target },
}

impl From<TransportEvent> for Input {
    fn from(ev: TransportEvent) -> Input {
        match ev {
            TransportEvent::Message { msg, from, .. } => Input::Sip { msg, from },
            TransportEvent::Closed { conn } => Input::Closed { conn },
        }
    }
}

/// What the buffer server wants done.
#[derive(Debug)]
pub enum Output {
    /// SIP to an agent, or to the distributor over a plain-SIP link.
    Sip { to: Target, bytes: Bytes },
    /// A frame into the tunnel `conn`.
    Frame { conn: ConnId, frame: Frame },
    /// Close an agent's connection (its token was revoked).
    Close { conn: ConnId },
    /// Open a bridged call's caller-side port (a UDP socket of the edge's, or one of the
    /// distributor's relay when the edge is exposed); the answer comes back as
    /// [`Input::CallerPort`], at once or later. `remote`: where the caller's SDP says it
    /// receives. `ice_ufrag`: the call's WebRTC session's ICE username fragment, when its
    /// agent may reach it over ICE-TCP or TURN through the distributor (registered there
    /// with it and `agent`, whose call it is).
    OpenCallerPort {
        call: SessionId,
        remote: Option<SocketAddr>,
        ice_ufrag: Option<String>,
        agent: String,
    },
    /// Open a relayed call's agent-side port (a desk-phone agent's plain RTP, always a UDP
    /// socket of the edge's); the answer comes back as [`Input::AgentPort`] at once.
    OpenAgentPort { call: SessionId },
    /// Close the call's ports (caller-side, agent-side) and its ICE-TCP registration: the
    /// call ended.
    CloseCallerPort { call: SessionId },
    /// A media datagram, from the shared WebRTC socket or a call's caller socket.
    Datagram(Datagram),
    /// For the operator.
    Status(Status),
}
