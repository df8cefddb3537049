//! The media of the buffer server's bridged calls, as its core sees them: the sans-IO bridge
//! ([`crate::media::bridge`]) and which caller-side port each call got. The sockets are the
//! shell's ([`super::media_io`]); here a call's caller port is asked for with an output and
//! arrives as an input, and datagrams leave as outputs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::media::bridge::{Bridge, BridgeError, BridgeEvent, Datagram, MediaStats, SessionId};

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
}

#[derive(Debug)]
pub struct CallMedia {
    bridge: Bridge,
    /// The shared WebRTC address as announced.
    webrtc: SocketAddr,
    /// Each bridged call's caller-side address as announced, once its socket is open.
    caller_ports: HashMap<SessionId, SocketAddr>,
}

impl CallMedia {
    /// `webrtc`: the shared WebRTC socket's address as agents reach it.
    pub fn new(webrtc: SocketAddr, inactivity: Duration) -> CallMedia {
        CallMedia {
            bridge: Bridge::new(webrtc, inactivity),
            webrtc,
            caller_ports: HashMap::new(),
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

    /// The call's caller socket is open at `local` (as announced): the caller's SDP answer.
    pub fn caller_port(&mut self, id: SessionId, local: SocketAddr) -> Result<String, BridgeError> {
        let answer = self.bridge.caller_answer(id, local)?;
        self.caller_ports.insert(id, local);
        Ok(answer)
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
