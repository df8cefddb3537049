//! The media of a call to a desk-phone agent (plain RTP on both legs), anchored in the buffer
//! server: sans-IO, one session per call, driven by [`super::bridge::Bridge`].
//!
//! Each call has two UDP sockets of the edge's (the shell's): one facing the caller, one
//! facing the agent. Each side only ever sees the edge's address facing it: the SDP one side
//! sends is passed to the other with our `o=` line, our address in every `c=` line and our
//! port on the audio stream, and without the attributes that name the sender's transport
//! (`a=rtcp`, ICE candidates and credentials; see [`super::sdp::readdress`]).
//!
//! What the relay rewrites, and why no more:
//! - SDP: addresses only. The formats, `rtpmap`/`fmtp`, `ptime`, direction and `rtcp-mux`
//!   cross unchanged, so the codec is negotiated end to end by the two phones (any codec,
//!   not only G.711: nothing is transcoded), and hold and resume (`a=sendonly`/`inactive`,
//!   or `c=` 0.0.0.0, which stays 0.0.0.0) mean what they meant. Our `o=` version towards
//!   each side goes up whenever the description we give that side changes, and only then
//!   (RFC 3264 §8).
//! - RTP and RTCP: nothing. Datagrams cross byte for byte (SSRC, sequence numbers,
//!   timestamps, payload type, extensions), so the receiver's RTCP reports still describe
//!   the sender's stream and RTCP can cross as well. RTCP arrives where the phone sends it:
//!   on the RTP port with `rtcp-mux` (RFC 5761; the relay tells it by its packet type,
//!   200-204) it is relayed; a phone without `rtcp-mux` sends it to the port above, which
//!   the edge does not open, so each leg's RTCP then ends at the edge.
//! - Where to send: each side's SDP address until RTP comes from it, then where it came
//!   from (symmetric RTP, as the WebRTC bridge's caller side does; a new address in a
//!   re-offer is followed and latched again). Nothing goes to a side on hold by address.
//!
//! The statistics (packets, bytes, loss, jitter at each payload type's clock rate), media
//! inactivity and one-way audio are those of the WebRTC bridge, counted from the agent's
//! answer on; silence while either side holds is not inactivity.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::bridge::{self, MediaStats, Receiver, RtcpRelayed, Silent};
use super::rtp;
use super::sdp::{self, Direction};

/// A side of a relayed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    Caller,
    Agent,
}

impl Leg {
    pub fn other(self) -> Leg {
        match self {
            Leg::Caller => Leg::Agent,
            Leg::Agent => Leg::Caller,
        }
    }
}

/// What a datagram on one of a relayed call's sockets is.
#[derive(Debug)]
enum Kind<'a> {
    Rtp(rtp::RtpView<'a>),
    Rtcp,
}

/// RTP (RFC 3550 version 2) or RTCP multiplexed on the same port (RFC 5761 §4: packet types
/// 200-204, in the byte where RTP has its marker and payload type); anything else is not
/// media.
fn kind(bytes: &[u8]) -> Option<Kind<'_>> {
    let first = *bytes.first()?;
    if first >> 6 != 2 {
        return None;
    }
    match *bytes.get(1)? {
        200..=204 if bytes.len() >= 8 => Some(Kind::Rtcp),
        _ => rtp::parse(bytes).map(Kind::Rtp),
    }
}

/// One side of a relayed call.
#[derive(Debug)]
struct Side {
    /// Where its media goes: its SDP's address, then where its RTP comes from.
    to: Option<SocketAddr>,
    /// The address its last SDP named (a re-offer naming another is followed).
    sdp_to: Option<SocketAddr>,
    latched: bool,
    /// Its last SDP held the call by address (`c=` 0.0.0.0): nothing is sent to it.
    held_by_address: bool,
    /// The direction its last SDP said.
    direction: Direction,
    /// Clock rates of the formats its SDP named, for the jitter of what it sends.
    clock_rates: Vec<(u8, u32)>,
    /// The `o=` version of our SDP to this side and what it last said (with the version
    /// left at 0), so the version goes up exactly when the description changes.
    sdp: (u64, Option<String>),
    /// Its RTCP relayed to the other side.
    rtcp: u64,
}

impl Side {
    fn new(session_id: u64) -> Side {
        Side {
            to: None,
            sdp_to: None,
            latched: false,
            held_by_address: false,
            direction: Direction::SendRecv,
            clock_rates: Vec::new(),
            sdp: (session_id, None),
            rtcp: 0,
        }
    }

    /// What its SDP says of where it receives, and how.
    fn learn(&mut self, stream: Option<sdp::AudioStream>) {
        let Some(s) = stream else {
            // No audio stream at all: nothing to send to it.
            self.to = None;
            self.sdp_to = None;
            return;
        };
        self.direction = s.direction;
        self.held_by_address = s.held_by_address;
        if !s.held_by_address && s.to != self.sdp_to {
            // A new address (or the first): follow it, and latch again on what comes from it.
            self.sdp_to = s.to;
            self.to = s.to;
            self.latched = false;
        }
        if !s.clock_rates.is_empty() {
            self.clock_rates = s.clock_rates;
        }
    }

    fn clock_rate(&self, pt: u8) -> u32 {
        self.clock_rates
            .iter()
            .find(|(p, _)| *p == pt)
            .map_or(8000, |(_, r)| *r)
    }

    /// Whether media is held on this side (it said so, by direction or by address).
    fn holds(&self) -> bool {
        self.held_by_address || self.direction != Direction::SendRecv
    }

    /// Where to send it media now, if anywhere.
    fn destination(&self) -> Option<SocketAddr> {
        self.to.filter(|_| !self.held_by_address)
    }
}

/// Why one side's SDP could not be passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NotSdp;

/// A relayed call's media.
#[derive(Debug)]
pub(super) struct Relay {
    id: u64,
    caller: Side,
    agent: Side,
    from_caller: Receiver,
    from_agent: Receiver,
    /// Datagrams that were neither RTP nor RTCP.
    dropped: u64,
    pub(super) last_media: Instant,
    heard_caller: Option<Instant>,
    heard_agent: Option<Instant>,
    pub(super) one_way: Option<Silent>,
    /// When the agent answered: media is expected (and measured) from then on.
    pub(super) answered: Option<Instant>,
    created: Instant,
}

/// A datagram the relay sends: on `leg`'s socket, to `to`.
#[derive(Debug)]
pub(super) struct Out {
    pub leg: Leg,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

impl Relay {
    /// A new call; `caller_offer`, the caller's SDP if its INVITE had one, says where the
    /// caller receives (its answer to us is made by [`Relay::pass_sdp`]).
    pub(super) fn new(id: u64, caller_offer: &[u8], now: Instant) -> Relay {
        let mut caller = Side::new(id);
        if let Ok(text) = std::str::from_utf8(caller_offer) {
            caller.learn(sdp::audio_stream(text));
        }
        Relay {
            id,
            caller,
            agent: Side::new(id),
            from_caller: Receiver::default(),
            from_agent: Receiver::default(),
            dropped: 0,
            last_media: now,
            heard_caller: None,
            heard_agent: None,
            one_way: None,
            answered: None,
            created: now,
        }
    }

    fn side(&self, leg: Leg) -> &Side {
        match leg {
            Leg::Caller => &self.caller,
            Leg::Agent => &self.agent,
        }
    }

    fn side_mut(&mut self, leg: Leg) -> &mut Side {
        match leg {
            Leg::Caller => &mut self.caller,
            Leg::Agent => &mut self.agent,
        }
    }

    /// Where `leg`'s media goes now.
    pub(super) fn destination(&self, leg: Leg) -> Option<SocketAddr> {
        self.side(leg).destination()
    }

    /// The SDP `from` sent (offer or answer: the relay does not need to know which), as the
    /// other side gets it: from `local`, our socket facing that other side.
    pub(super) fn pass_sdp(
        &mut self,
        from: Leg,
        body: &[u8],
        local: SocketAddr,
        now: Instant,
    ) -> Result<String, NotSdp> {
        let text = std::str::from_utf8(body).map_err(|_| NotSdp)?;
        if !text.trim_start().starts_with("v=") {
            return Err(NotSdp);
        }
        let side = self.side_mut(from);
        let before = (side.holds(), side.direction);
        side.learn(sdp::audio_stream(text));
        if (side.holds(), side.direction) != before {
            // A hold began or ended: each side is expected to send (again) only from now.
            self.heard_caller = Some(now);
            self.heard_agent = Some(now);
        }
        self.last_media = now;
        let id = self.id;
        let to = self.side_mut(from.other());
        let said = sdp::readdress(text, local, id, 0);
        let (version, last) = &mut to.sdp;
        if last.as_ref().is_some_and(|l| *l != said) {
            *version = version.wrapping_add(1);
        }
        *last = Some(said);
        Ok(sdp::readdress(text, local, id, *version))
    }

    /// The agent answered (its 2xx): from now on each side is expected to send.
    pub(super) fn answered(&mut self, now: Instant) {
        if self.answered.is_none() {
            self.answered = Some(now);
            self.last_media = now;
        }
    }

    /// A datagram on `from_leg`'s socket, from `from`: relayed to the other side, if media.
    pub(super) fn receive(
        &mut self,
        from_leg: Leg,
        bytes: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> Option<Out> {
        let Some(kind) = kind(bytes) else {
            self.dropped += 1;
            return None;
        };
        let created = self.created;
        let side = self.side_mut(from_leg);
        match kind {
            Kind::Rtp(p) => {
                if !side.latched {
                    // Symmetric RTP: send where it really sends from (NAT).
                    side.to = Some(from);
                    side.latched = true;
                }
                let rate = side.clock_rate(p.payload_type);
                let (receiver, heard) = match from_leg {
                    Leg::Caller => (&mut self.from_caller, &mut self.heard_caller),
                    Leg::Agent => (&mut self.from_agent, &mut self.heard_agent),
                };
                receiver.record(
                    p.ssrc,
                    p.seq,
                    p.timestamp,
                    p.payload.len(),
                    now,
                    created,
                    rate,
                );
                *heard = Some(now);
                self.last_media = now;
            }
            Kind::Rtcp => side.rtcp += 1,
        }
        let to_leg = from_leg.other();
        let Some(to) = self.side(to_leg).destination() else {
            // The other side has not said where yet (still ringing), or holds by address.
            return None;
        };
        Some(Out {
            leg: to_leg,
            to,
            bytes: bytes.to_vec(),
        })
    }

    /// On hold either way, silence is expected.
    pub(super) fn held(&self) -> bool {
        self.caller.holds() || self.agent.holds()
    }

    pub(super) fn one_way_now(&self, now: Instant, after: Duration) -> Option<Option<Silent>> {
        bridge::one_way_of(
            self.answered,
            self.heard_caller,
            self.heard_agent,
            now,
            after,
        )
    }

    pub(super) fn stats(&self) -> MediaStats {
        MediaStats {
            from_caller: self.from_caller.stats,
            from_agent: self.from_agent.stats,
            dropped: self.dropped,
            agent_media: "rtp",
            rtcp_relayed: Some(RtcpRelayed {
                from_caller: self.caller.rtcp,
                from_agent: self.agent.rtcp,
            }),
            one_way: self.one_way.map(Silent::label),
            ..MediaStats::default()
        }
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
