//! The media of the buffer server's bridged calls, as its core sees them: the sans-IO bridge
//! ([`crate::media::bridge`]) and which caller-side port each call got (and, for a desk-phone
//! agent's relayed call, which agent-side port). The sockets are the shell's
//! ([`super::media_io`]); here a call's ports are asked for with outputs and arrive as
//! inputs, and datagrams leave as outputs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::media::bridge::{Bridge, BridgeError, BridgeEvent, Datagram, MediaStats, SessionId};
use crate::media::relay::Leg;

/// A datagram for the bridge, from the shared WebRTC socket or a call's caller socket.
#[derive(Debug)]
pub enum MediaIn {
    WebRtc {
        bytes: Vec<u8>,
        from: SocketAddr,
    },
    /// One frame of an agent's ICE-TCP connection, relayed by the distributor; `from` is the
    /// agent's address as the distributor saw it.
    WebRtcTcp {
        bytes: Vec<u8>,
        from: SocketAddr,
    },
    /// A datagram from an agent's TURN allocation on the distributor, relayed over the media
    /// connection; `from` is the allocation's relayed address.
    WebRtcTurn {
        bytes: Vec<u8>,
        from: SocketAddr,
    },
    Caller {
        id: SessionId,
        bytes: Vec<u8>,
        from: SocketAddr,
    },
    /// On a relayed call's agent-side socket (a desk phone's plain RTP).
    Agent {
        id: SessionId,
        bytes: Vec<u8>,
        from: SocketAddr,
    },
}

#[derive(Debug)]
pub struct CallMedia {
    bridge: Bridge,
    /// The shared WebRTC address as announced.
    webrtc: SocketAddr,
    /// Each bridged call's caller-side address as announced, once its socket is open.
    caller_ports: HashMap<SessionId, SocketAddr>,
    /// Each relayed call's agent-side address as announced, once its socket is open.
    agent_ports: HashMap<SessionId, SocketAddr>,
}

impl CallMedia {
    /// `webrtc`: the shared WebRTC socket's address as agents reach it.
    pub fn new(webrtc: SocketAddr, inactivity: Duration) -> CallMedia {
        CallMedia {
            bridge: Bridge::new(webrtc, inactivity),
            webrtc,
            caller_ports: HashMap::new(),
            agent_ports: HashMap::new(),
        }
    }

    /// Quiet one way this long, the other flowing, is one-way audio.
    pub fn set_one_way_after(&mut self, after: Duration) {
        self.bridge.set_one_way_after(after);
    }

    pub fn webrtc_addr(&self) -> SocketAddr {
        self.webrtc
    }

    /// Sets up a call's WebRTC session: the agent's SDP offer. The caller's answer waits for
    /// its socket ([`CallMedia::caller_port`]).
    pub fn open(
        &mut self,
        id: SessionId,
        caller_offer: &[u8],
        now: Instant,
    ) -> Result<String, BridgeError> {
        self.bridge.open(id, caller_offer, now)
    }

    /// Where agents reach the bridge over ICE-TCP through the distributor (from its media
    /// connection), for calls set up from now on.
    pub fn set_ice_tcp(&mut self, addr: Option<SocketAddr>) {
        self.bridge.set_ice_tcp(addr);
    }

    /// The distributor's public port (ICE-TCP and TURN over TLS), while the media connection
    /// is up.
    pub fn ice_tcp(&self) -> Option<SocketAddr> {
        self.bridge.ice_tcp()
    }

    /// The call's local ICE username fragment, when its agent may come over ICE-TCP.
    pub fn ice_tcp_ufrag(&mut self, id: SessionId) -> Option<String> {
        self.bridge.ice_tcp()?;
        self.bridge.ice_ufrag(id)
    }

    /// Where the call's media to the caller goes now (its SDP's address before latching).
    pub fn caller_destination(&self, id: SessionId) -> Option<SocketAddr> {
        self.bridge.caller_destination(id)
    }

    /// The call's caller socket is open at `local` (as announced): the caller's SDP answer
    /// for a call bridged to WebRTC; none for a relayed call, whose caller gets the agent's
    /// SDP re-addressed ([`CallMedia::relay_sdp`]).
    pub fn caller_port(
        &mut self,
        id: SessionId,
        local: SocketAddr,
    ) -> Result<Option<String>, BridgeError> {
        if self.bridge.is_relay(id) {
            self.caller_ports.insert(id, local);
            return Ok(None);
        }
        let answer = self.bridge.caller_answer(id, local)?;
        self.caller_ports.insert(id, local);
        Ok(Some(answer))
    }

    /// A call to a desk-phone agent, plain RTP relayed both ways; its caller-side and
    /// agent-side ports are asked for next. `caller_offer`: the caller's SDP, if any.
    pub fn open_relay(&mut self, id: SessionId, caller_offer: &[u8], now: Instant) {
        self.bridge.open_relay(id, caller_offer, now);
    }

    /// Whether the call's media is relayed (a desk-phone agent).
    pub fn is_relay(&self, id: SessionId) -> bool {
        self.bridge.is_relay(id)
    }

    /// The relayed call's agent-side socket is open at `local` (as announced).
    pub fn agent_port(&mut self, id: SessionId, local: SocketAddr) -> Result<(), BridgeError> {
        if !self.bridge.is_relay(id) {
            return Err(BridgeError::Unknown(id));
        }
        self.agent_ports.insert(id, local);
        Ok(())
    }

    /// The SDP `from` sent on a relayed call, re-addressed for the other side (from our
    /// socket facing it, which must be open).
    pub fn relay_sdp(
        &mut self,
        id: SessionId,
        from: Leg,
        sdp: &[u8],
        now: Instant,
    ) -> Result<String, BridgeError> {
        let local = match from {
            Leg::Caller => self.agent_ports.get(&id),
            Leg::Agent => self.caller_ports.get(&id),
        };
        let local = local.copied().ok_or(BridgeError::Unknown(id))?;
        self.bridge.relay_sdp(id, from, sdp, local, now)
    }

    /// The relayed call's agent answered.
    pub fn relay_answered(&mut self, id: SessionId, now: Instant) {
        self.bridge.relay_answered(id, now);
    }

    pub fn agent_answer(
        &mut self,
        id: SessionId,
        sdp: &[u8],
        now: Instant,
    ) -> Result<(), BridgeError> {
        self.bridge.agent_answer(id, sdp, now)
    }

    /// A caller's re-INVITE: its answer, and the agent's re-offer if the direction changed.
    pub fn caller_reoffer(
        &mut self,
        id: SessionId,
        sdp: &[u8],
        now: Instant,
    ) -> Result<(String, Option<String>), BridgeError> {
        let local = self.caller_local(id)?;
        self.bridge.caller_reoffer(id, sdp, local, now)
    }

    /// An agent's re-INVITE: its answer, and the caller's offer.
    pub fn agent_reoffer(
        &mut self,
        id: SessionId,
        sdp: &[u8],
        now: Instant,
    ) -> Result<(String, String), BridgeError> {
        let local = self.caller_local(id)?;
        self.bridge.agent_reoffer(id, sdp, local, now)
    }

    fn caller_local(&self, id: SessionId) -> Result<SocketAddr, BridgeError> {
        self.caller_ports
            .get(&id)
            .copied()
            .ok_or(BridgeError::Unknown(id))
    }

    /// Ends a call's media: its statistics.
    pub fn close(&mut self, id: SessionId) -> Option<MediaStats> {
        self.caller_ports.remove(&id);
        self.agent_ports.remove(&id);
        self.bridge.close(id)
    }

    pub fn stats(&self, id: SessionId) -> Option<MediaStats> {
        self.bridge.stats(id)
    }

    pub fn on_input(&mut self, input: MediaIn, now: Instant) {
        match input {
            MediaIn::WebRtc { bytes, from } => {
                self.bridge.from_webrtc(&bytes, from, self.webrtc, now);
            }
            MediaIn::WebRtcTcp { bytes, from } => self.bridge.from_ice_tcp(&bytes, from, now),
            MediaIn::WebRtcTurn { bytes, from } => self.bridge.from_turn(&bytes, from, now),
            MediaIn::Caller { id, bytes, from } => self.bridge.from_caller(id, &bytes, from, now),
            MediaIn::Agent { id, bytes, from } => {
                self.bridge.from_agent_rtp(id, &bytes, from, now);
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.bridge.handle_timeout(now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.bridge.poll_timeout()
    }

    pub fn poll_event(&mut self) -> Option<BridgeEvent> {
        self.bridge.poll_event()
    }

    pub fn poll_datagram(&mut self) -> Option<Datagram> {
        self.bridge.poll_datagram()
    }
}
