//! The buffer server's media bridge, sans-IO: per call, the caller's plain RTP on one side
//! and the agent's WebRTC (ICE-lite, DTLS-SRTP, rtcp-mux, str0m in RTP mode) on the other,
//! G.711 and telephone-event relayed both ways without transcoding. All WebRTC sessions
//! share one UDP address; each caller leg has its own. A desk-phone agent's call is plain
//! RTP on both sides: a [`super::relay`] session, with a socket facing the agent as well.
//! Datagrams and `now` in, datagrams and timeouts out; the service owns the sockets.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Direction as RtcDirection, Frequency, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use super::relay::{self, Leg, Relay};
use super::rtp::{self, Rebase};
use super::sdp::{self, Direction};

/// Identifies a call's media for as long as it lives.
pub type SessionId = u64;

/// Why the bridge could not set up or update a call's media.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BridgeError {
    /// The caller's SDP has no active audio stream with an address.
    #[error("no audio stream in the offer")]
    NoAudio,
    /// The caller offered no G.711.
    #[error("no codec in common (PCMU or PCMA needed)")]
    NoCommonCodec,
    /// A body given as SDP is not a session description.
    #[error("not a session description")]
    NotSdp,
    /// The agent's SDP answer was refused by the WebRTC stack.
    #[error("bad WebRTC answer: {0}")]
    BadAnswer(String),
    /// No such session.
    #[error("no media session {0}")]
    Unknown(SessionId),
    /// A media socket could not be opened.
    #[error("media socket: {0}")]
    Socket(String),
}

impl BridgeError {
    /// The SIP status for the request that brought the bad SDP.
    pub fn status(&self) -> u16 {
        match self {
            BridgeError::Unknown(_) | BridgeError::Socket(_) => 500,
            _ => 488,
        }
    }
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// From the shared WebRTC socket.
    WebRtc,
    /// On the agent's ICE-TCP connection through the distributor (one RFC 4571 frame).
    IceTcp,
    /// To the agent's TURN allocation on the distributor (its relayed address), over the
    /// media connection: from the shared WebRTC socket as far as ICE can tell.
    Turn,
    /// From the call's own caller-leg socket.
    Caller(SessionId),
    /// From the call's own agent-leg socket (a desk-phone agent's plain RTP).
    Agent(SessionId),
}

#[derive(Debug)]
pub struct Datagram {
    pub via: Via,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

/// Counters of one direction of a call's media.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct FlowStats {
    pub packets: u64,
    pub bytes: u64,
    /// Packets missing by sequence number (RFC 3550 A.3, cumulative).
    pub lost: u64,
    /// Interarrival jitter (RFC 3550 A.8), in milliseconds.
    pub jitter_ms: u32,
}

/// A call's media statistics.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MediaStats {
    /// Caller → agent.
    pub from_caller: FlowStats,
    /// Agent → caller.
    pub from_agent: FlowStats,
    /// Datagrams dropped: not RTP, or a payload type not negotiated.
    pub dropped: u64,
    /// SRTP-shaped datagrams from the agent that gave no packet (failed authentication,
    /// replays, or before the keys were agreed).
    pub unauthenticated: u64,
    /// The WebRTC pair in use: the agent's address as we see it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ice_remote: Option<String>,
    /// How the agent's media (DTLS, SRTP) last reached us: `udp`, `tcp` (ICE-TCP through the
    /// distributor) or `turn-tls` (the agent's TURN allocation on the distributor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ice_protocol: Option<&'static str>,
    /// Milliseconds from the agent's answer to its ICE connection, once connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ice_connected_ms: Option<u64>,
    /// One direction carries nothing while the other flows: `caller-silent` (the agent
    /// hears nothing) or `agent-silent` (the caller hears nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_way: Option<&'static str>,
    /// The agent's str0m ICE state (WebRTC agents only).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ice_state: String,
    /// How the agent's media is carried: `webrtc` (a browser) or `rtp` (a desk phone, its
    /// plain RTP anchored here too: see [`super::relay`]).
    pub agent_media: &'static str,
    /// RTCP relayed each way (plain-RTP agents, whose RTCP crosses as it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtcp_relayed: Option<RtcpRelayed>,
}

/// RTCP packets relayed each way on a plain-RTP call.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RtcpRelayed {
    pub from_caller: u64,
    pub from_agent: u64,
}

/// Receiver-side bookkeeping of one direction (loss and jitter).
#[derive(Debug, Default)]
pub(super) struct Receiver {
    pub(super) stats: FlowStats,
    base_seq: Option<u64>,
    max_seq: u64,
    rebase: Rebase,
    /// Jitter of each stream (RFC 3550 A.8 is per source): a caller that switches or mixes
    /// SSRCs has timestamps on unrelated clocks, which one running estimate would read as
    /// hours of jitter. At most [`MAX_STREAMS`], the oldest forgotten.
    streams: Vec<StreamJitter>,
}

/// Streams (SSRCs) one direction's jitter is kept for.
const MAX_STREAMS: usize = 4;

#[derive(Debug, Clone, Copy)]
struct StreamJitter {
    ssrc: u32,
    /// Arrival (in RTP units) minus the RTP timestamp of the stream's last packet.
    last_transit: i64,
    jitter: f64,
}

impl Receiver {
    /// One packet of `len` payload bytes arrived at `arrival` (`t0`: the call's start);
    /// `clock_hz`: its payload type's RTP clock rate.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record(
        &mut self,
        ssrc: u32,
        seq: u16,
        ts: u32,
        len: usize,
        arrival: Instant,
        t0: Instant,
        clock_hz: u32,
    ) {
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        let (ext, _) = self.rebase.map(ssrc, seq, ts);
        let base = *self.base_seq.get_or_insert(ext);
        self.max_seq = self.max_seq.max(ext);
        let expected = self.max_seq - base + 1;
        self.stats.lost = expected.saturating_sub(self.stats.packets);
        let clock_hz = u128::from(clock_hz.max(1));
        let arrival_units =
            (arrival.saturating_duration_since(t0).as_micros() * clock_hz / 1_000_000) as i64;
        let transit = arrival_units - i64::from(ts);
        let stream = match self.streams.iter().position(|j| j.ssrc == ssrc) {
            Some(i) => &mut self.streams[i],
            None => {
                if self.streams.len() == MAX_STREAMS {
                    self.streams.remove(0);
                }
                self.streams.push(StreamJitter {
                    ssrc,
                    last_transit: transit,
                    jitter: 0.0,
                });
                let last = self.streams.len() - 1;
                &mut self.streams[last]
            }
        };
        let d = (transit - stream.last_transit).abs() as f64;
        stream.jitter += (d - stream.jitter) / 16.0;
        stream.last_transit = transit;
        // The stream now arriving is the one reported.
        self.stats.jitter_ms = (stream.jitter * 1000.0 / clock_hz as f64) as u32;
    }
}

#[derive(Debug)]
struct Session {
    rtc: Rtc,
    mid: Mid,
    pending: Option<SdpPendingOffer>,
    /// The caller's G.711 payload type and telephone-event payload type.
    caller_pt: u8,
    caller_te: Option<u8>,
    /// Where the caller's RTP goes: from its SDP, then from where its RTP comes (latching).
    caller_to: SocketAddr,
    latched: bool,
    caller_direction: Direction,
    /// The direction the agent last offered (its own hold).
    agent_direction: Direction,
    /// Our stream towards the caller.
    to_caller: rtp::RtpStream,
    to_caller_rebase: Rebase,
    to_agent_rebase: Rebase,
    from_caller: Receiver,
    from_agent: Receiver,
    dropped: u64,
    unauthenticated: u64,
    ice_remote: Option<SocketAddr>,
    ice_protocol: Option<&'static str>,
    /// The agent's TURN allocations heard from (their relayed addresses): what is sent to
    /// them goes over the media connection, not the WebRTC socket.
    turn_relays: Vec<SocketAddr>,
    /// When the agent's answer was applied, and how long after it ICE first connected.
    answered: Option<Instant>,
    ice_connected_after: Option<Duration>,
    ice_state: IceConnectionState,
    last_media: Instant,
    /// When media last came from each side (an agent's SRTP only once it authenticated).
    heard_caller: Option<Instant>,
    heard_agent: Option<Instant>,
    one_way: Option<Silent>,
    timeout: Instant,
    created: Instant,
    /// The `o=` version of our SDP to the caller and what it last said (our address, the
    /// direction), so the version goes up exactly when the description changes.
    caller_sdp: (u64, Option<(SocketAddr, Direction)>),
}

impl Session {
    /// A hold began or ended: each side is expected to send (again) only from now on, not
    /// measured from before (a resumed side needs a moment to start).
    fn media_resumes(&mut self, now: Instant) {
        self.heard_caller = Some(now);
        self.heard_agent = Some(now);
    }

    /// Our SDP to the caller (an answer, or an offer of our own) from `local` with
    /// `direction`. RFC 3264 §8: its `o=` version goes up whenever the description changes,
    /// and stays the same when it does not; phones that honour it ignore a change without.
    fn caller_sdp(&mut self, id: SessionId, local: SocketAddr, direction: Direction) -> String {
        let said = Some((local, direction));
        let (version, last) = &mut self.caller_sdp;
        if last.is_some() && *last != said {
            *version = version.wrapping_add(1);
        }
        *last = said;
        sdp::rtp_answer(
            local,
            self.caller_pt,
            self.caller_te,
            direction,
            id,
            *version,
        )
    }
}

/// The side of a call that went quiet while the other still sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silent {
    /// Nothing from the caller: the agent hears nothing.
    Caller,
    /// Nothing from the agent (or only SRTP that fails authentication): the caller hears
    /// nothing.
    Agent,
}

impl Silent {
    pub fn label(self) -> &'static str {
        match self {
            Silent::Caller => "caller-silent",
            Silent::Agent => "agent-silent",
        }
    }
}

/// Everything the bridge decided that the service must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeEvent {
    /// One-way audio began (`Some`) or ended (`None`): one direction has carried nothing for
    /// the configured time while the other flowed.
    OneWay(SessionId, Option<Silent>),
    /// No media either way for the configured time: end the call.
    Inactive(SessionId),
    /// The agent's ICE connection lost consent (it may come back; media inactivity decides).
    Disconnected(SessionId),
    /// The agent's WebRTC session failed for good (DTLS: a certificate that does not match
    /// the fingerprint, or a broken handshake).
    Failed(SessionId),
}

/// All calls' media.
#[derive(Debug)]
pub struct Bridge {
    /// The shared WebRTC address as announced (ICE candidate).
    webrtc: SocketAddr,
    inactivity: Duration,
    /// Quiet one way for this long, the other flowing, is one-way audio.
    one_way_after: Duration,
    sessions: HashMap<SessionId, Session>,
    /// Calls to desk-phone agents: plain RTP both sides.
    relays: HashMap<SessionId, Relay>,
    out: VecDeque<Datagram>,
    events: VecDeque<BridgeEvent>,
    /// Datagrams on the WebRTC socket no session accepted.
    pub stray: u64,
    /// Where agents reach us over ICE-TCP (the distributor's public listener), when the edge
    /// has a media connection to it: offered as a passive TCP candidate.
    ice_tcp: Option<SocketAddr>,
    /// Each session's next WebRTC timer, in order: the owner asks for the earliest after
    /// every datagram, and a scan of every call each time cost more than the call.
    timers: BTreeSet<(Instant, SessionId)>,
    /// When media inactivity is next looked for (once a second, across all calls).
    next_sweep: Option<Instant>,
    /// One DTLS certificate for every call, made once (as most WebRTC servers do) instead of
    /// a key and a certificate per call; each DTLS handshake still agrees fresh keys.
    dtls_cert: Option<DtlsCert>,
}

/// One-way audio's time unless configured: long enough for a pause in speech to be
/// covered by comfort noise or silence packets (G.711 sends them), short enough to tell the
/// agent while the caller is still there.
pub const DEFAULT_ONE_WAY_AFTER: Duration = Duration::from_secs(5);

/// How often media inactivity is looked for: a call silent for `inactivity` is reported
/// within this much more.
const INACTIVITY_SWEEP: Duration = Duration::from_secs(1);

/// How the agent's WebRTC reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Straight to the shared WebRTC socket.
    Udp,
    /// ICE-TCP through the distributor's public port.
    Tcp,
    /// The agent's TURN-over-TLS allocation on the distributor.
    Turn,
}

impl Path {
    /// As the call's statistics name it.
    fn name(self) -> &'static str {
        match self {
            Path::Udp => "udp",
            Path::Tcp => "tcp",
            Path::Turn => "turn-tls",
        }
    }
}

/// TURN allocations one session follows (a browser makes one per TURN server and network).
const MAX_TURN_RELAYS: usize = 4;

/// The telephone-event payload type offered to agents.
const AGENT_TE_PT: u8 = 101;

/// G.711's (and telephone-event's) RTP clock.
const G711_HZ: u32 = 8000;

impl Bridge {
    /// `webrtc` is the shared WebRTC socket's address as agents reach it (a public address
    /// for an edge behind 1:1 NAT).
    pub fn new(webrtc: SocketAddr, inactivity: Duration) -> Bridge {
        Bridge {
            webrtc,
            inactivity,
            one_way_after: DEFAULT_ONE_WAY_AFTER,
            sessions: HashMap::new(),
            relays: HashMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            stray: 0,
            ice_tcp: None,
            timers: BTreeSet::new(),
            next_sweep: None,
            dtls_cert: super::dtls::provider().dtls_provider.generate_certificate(),
        }
    }

    /// Quiet one way for `after`, while the other flows, is reported as one-way audio.
    pub fn set_one_way_after(&mut self, after: Duration) {
        self.one_way_after = after;
    }

    /// A new call: answers the caller's offer (media at `caller_local`, its own socket) and
    /// makes the WebRTC offer for the agent. Returns (caller answer, agent offer).
    pub fn create(
        &mut self,
        id: SessionId,
        caller_offer: &[u8],
        caller_local: SocketAddr,
        now: Instant,
    ) -> Result<(String, String), BridgeError> {
        let agent_offer = self.open(id, caller_offer, now)?;
        Ok((self.caller_answer(id, caller_local)?, agent_offer))
    }

    /// The caller's SDP answer once its media socket is known (`caller_local`, as announced).
    pub fn caller_answer(
        &mut self,
        id: SessionId,
        caller_local: SocketAddr,
    ) -> Result<String, BridgeError> {
        let s = self.sessions.get_mut(&id).ok_or(BridgeError::Unknown(id))?;
        let direction = s.caller_direction.answer();
        Ok(s.caller_sdp(id, caller_local, direction))
    }

    /// A new call, before its caller-side socket exists: takes the caller's offer and makes
    /// the WebRTC offer for the agent; [`Bridge::caller_answer`] answers the caller later.
    pub fn open(
        &mut self,
        id: SessionId,
        caller_offer: &[u8],
        now: Instant,
    ) -> Result<String, BridgeError> {
        let offer = sdp::audio_offer(caller_offer).ok_or(BridgeError::NoAudio)?;
        let pt = offer
            .payload_types
            .iter()
            .copied()
            .find(|pt| *pt == 0 || *pt == 8)
            .ok_or(BridgeError::NoCommonCodec)?;
        let mut builder = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .clear_codecs();
        builder = if pt == 0 {
            builder.enable_pcmu(true, false)
        } else {
            builder.enable_pcma(true, false)
        };
        if offer.telephone_event.is_some() {
            builder.codec_config().add_config(
                AGENT_TE_PT.into(),
                None,
                Codec::Tele,
                Frequency::EIGHT_KHZ,
                None,
                FormatParams::parse_line("0-16"),
            );
        }
        builder = builder.set_crypto_provider(super::dtls::provider());
        if let Some(cert) = &self.dtls_cert {
            builder = builder.set_dtls_cert(cert.clone());
        }
        let mut rtc = builder.build(now);
        let candidate = Candidate::host(self.webrtc, "udp")
            .map_err(|e| BridgeError::BadAnswer(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        if let Some(addr) = self.ice_tcp {
            // For agents whose network lets out only TCP to 443: the distributor passes the
            // connection on by our ICE username fragment.
            let tcp = Candidate::builder()
                .tcp()
                .host(addr)
                .tcptype(str0m::net::TcpType::Passive)
                .build()
                .map_err(|e| BridgeError::BadAnswer(e.to_string()))?;
            rtc.add_local_candidate(tcp);
        }
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, to_rtc(offer.direction), None, None, None);
        let (agent_offer, pending) = change
            .apply()
            .ok_or_else(|| BridgeError::BadAnswer("no offer".into()))?;
        let session = Session {
            rtc,
            mid,
            pending: Some(pending),
            caller_pt: pt,
            caller_te: offer.telephone_event,
            caller_to: offer.to,
            latched: false,
            caller_direction: offer.direction,
            agent_direction: Direction::SendRecv,
            to_caller: rtp::RtpStream::new(pt, rand::random(), rand::random(), rand::random()),
            to_caller_rebase: Rebase::default(),
            to_agent_rebase: Rebase::default(),
            from_caller: Receiver::default(),
            from_agent: Receiver::default(),
            dropped: 0,
            unauthenticated: 0,
            ice_remote: None,
            ice_protocol: None,
            turn_relays: Vec::new(),
            answered: None,
            ice_connected_after: None,
            ice_state: IceConnectionState::New,
            last_media: now,
            heard_caller: None,
            heard_agent: None,
            one_way: None,
            timeout: now,
            created: now,
            caller_sdp: (id, None),
        };
        self.timers.insert((now, id));
        self.next_sweep.get_or_insert(now + INACTIVITY_SWEEP);
        self.sessions.insert(id, session);
        self.drain(id, now);
        Ok(agent_offer.to_sdp_string())
    }

    /// The agent's SDP answer (in its 200 OK).
    pub fn agent_answer(
        &mut self,
        id: SessionId,
        answer: &[u8],
        now: Instant,
    ) -> Result<(), BridgeError> {
        let s = self.sessions.get_mut(&id).ok_or(BridgeError::Unknown(id))?;
        let Some(pending) = s.pending.take() else {
            return Ok(()); // a retransmitted 200: already applied
        };
        let text = String::from_utf8_lossy(answer);
        let answer =
            SdpAnswer::from_sdp_string(&text).map_err(|e| BridgeError::BadAnswer(e.to_string()))?;
        s.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| BridgeError::BadAnswer(e.to_string()))?;
        s.answered.get_or_insert(now);
        self.drain(id, now);
        Ok(())
    }

    /// The caller's re-INVITE offer (hold, resume, a new address): the answer for the caller,
    /// and, when the direction changed, a WebRTC re-offer for the agent with that direction
    /// (its answer comes back through [`Bridge::agent_answer`]).
    pub fn caller_reoffer(
        &mut self,
        id: SessionId,
        offer: &[u8],
        caller_local: SocketAddr,
        now: Instant,
    ) -> Result<(String, Option<String>), BridgeError> {
        let s = self.sessions.get_mut(&id).ok_or(BridgeError::Unknown(id))?;
        let o = sdp::audio_offer(offer).ok_or(BridgeError::NoAudio)?;
        if !o.payload_types.contains(&s.caller_pt) {
            return Err(BridgeError::NoCommonCodec);
        }
        if o.to != s.caller_to {
            // A new address: follow it, and latch again on what comes from it.
            s.caller_to = o.to;
            s.latched = false;
        }
        let changed = o.direction != s.caller_direction;
        if changed {
            s.media_resumes(now);
        }
        s.caller_direction = o.direction;
        s.last_media = now;
        let agent_offer = if changed {
            let mut change = s.rtc.sdp_api();
            change.set_direction(s.mid, to_rtc(o.direction));
            change.apply().map(|(offer, pending)| {
                s.pending = Some(pending);
                offer.to_sdp_string()
            })
        } else {
            None
        };
        let answer = s.caller_sdp(id, caller_local, o.direction.answer());
        self.drain(id, now);
        Ok((answer, agent_offer))
    }

    /// The agent's re-INVITE offer (its page held or resumed the call): the WebRTC answer for
    /// the agent, and an RTP offer for the caller with the same direction.
    pub fn agent_reoffer(
        &mut self,
        id: SessionId,
        offer: &[u8],
        caller_local: SocketAddr,
        now: Instant,
    ) -> Result<(String, String), BridgeError> {
        let s = self.sessions.get_mut(&id).ok_or(BridgeError::Unknown(id))?;
        let text = String::from_utf8_lossy(offer);
        let parsed = str0m::change::SdpOffer::from_sdp_string(&text)
            .map_err(|e| BridgeError::BadAnswer(e.to_string()))?;
        let answer = s
            .rtc
            .sdp_api()
            .accept_offer(parsed)
            .map_err(|e| BridgeError::BadAnswer(e.to_string()))?;
        let direction = sdp::audio_direction(offer);
        if direction != s.agent_direction {
            s.media_resumes(now);
        }
        s.agent_direction = direction;
        s.last_media = now;
        let caller_offer = s.caller_sdp(id, caller_local, direction);
        let answer = answer.to_sdp_string();
        self.drain(id, now);
        Ok((answer, caller_offer))
    }

    /// Ends a call's media and returns its statistics.
    pub fn close(&mut self, id: SessionId) -> Option<MediaStats> {
        let stats = match self.relays.remove(&id) {
            Some(r) => r.stats(),
            None => {
                let s = self.sessions.remove(&id)?;
                self.timers.remove(&(s.timeout, id));
                stats_of(&s)
            }
        };
        if self.is_empty() {
            self.next_sweep = None;
        }
        Some(stats)
    }

    pub fn stats(&self, id: SessionId) -> Option<MediaStats> {
        match self.relays.get(&id) {
            Some(r) => Some(r.stats()),
            None => self.sessions.get(&id).map(stats_of),
        }
    }

    /// A new call to a desk-phone agent: plain RTP relayed both ways (see [`super::relay`]).
    /// `caller_offer`: the caller's SDP, if its INVITE had one. Each side's SDP then goes to
    /// the other through [`Bridge::relay_sdp`].
    pub fn open_relay(&mut self, id: SessionId, caller_offer: &[u8], now: Instant) {
        self.relays.insert(id, Relay::new(id, caller_offer, now));
        self.next_sweep.get_or_insert(now + INACTIVITY_SWEEP);
    }

    /// Whether the call is relayed (plain RTP both sides) rather than bridged to WebRTC.
    pub fn is_relay(&self, id: SessionId) -> bool {
        self.relays.contains_key(&id)
    }

    /// The SDP (offer or answer) that `from` sent on a relayed call, for the other side:
    /// from `local`, our socket facing that other side, as announced.
    pub fn relay_sdp(
        &mut self,
        id: SessionId,
        from: Leg,
        body: &[u8],
        local: SocketAddr,
        now: Instant,
    ) -> Result<String, BridgeError> {
        let r = self.relays.get_mut(&id).ok_or(BridgeError::Unknown(id))?;
        r.pass_sdp(from, body, local, now)
            .map_err(|relay::NotSdp| BridgeError::NotSdp)
    }

    /// The agent of a relayed call answered (its 2xx): media is expected from now on.
    pub fn relay_answered(&mut self, id: SessionId, now: Instant) {
        if let Some(r) = self.relays.get_mut(&id) {
            r.answered(now);
        }
    }

    /// A datagram on a relayed call's agent-leg socket.
    pub fn from_agent_rtp(&mut self, id: SessionId, bytes: &[u8], from: SocketAddr, now: Instant) {
        self.relay_receive(id, Leg::Agent, bytes, from, now);
    }

    fn relay_receive(
        &mut self,
        id: SessionId,
        leg: Leg,
        bytes: &[u8],
        from: SocketAddr,
        now: Instant,
    ) {
        let Some(r) = self.relays.get_mut(&id) else {
            return;
        };
        if let Some(out) = r.receive(leg, bytes, from, now) {
            self.out.push_back(Datagram {
                via: match out.leg {
                    Leg::Caller => Via::Caller(id),
                    Leg::Agent => Via::Agent(id),
                },
                to: out.to,
                bytes: out.bytes,
            });
        }
    }

    /// A datagram on the shared WebRTC socket (`local`: the address it arrived on).
    pub fn from_webrtc(&mut self, bytes: &[u8], from: SocketAddr, local: SocketAddr, now: Instant) {
        let local = if local.ip().is_unspecified() {
            self.webrtc
        } else {
            local
        };
        self.receive_from_agent(bytes, Path::Udp, from, local, now);
    }

    /// A datagram from an agent's TURN allocation on the distributor (`from`: its relayed
    /// address), as if it had come to the shared WebRTC socket.
    pub fn from_turn(&mut self, bytes: &[u8], from: SocketAddr, now: Instant) {
        self.receive_from_agent(bytes, Path::Turn, from, self.webrtc, now);
    }

    /// One frame of an agent's ICE-TCP connection through the distributor.
    pub fn from_ice_tcp(&mut self, bytes: &[u8], from: SocketAddr, now: Instant) {
        match self.ice_tcp {
            Some(local) => self.receive_from_agent(bytes, Path::Tcp, from, local, now),
            None => self.stray += 1,
        }
    }

    /// Where agents reach us over ICE-TCP, for the sessions opened from now on.
    pub fn set_ice_tcp(&mut self, addr: Option<SocketAddr>) {
        self.ice_tcp = addr;
    }

    pub fn ice_tcp(&self) -> Option<SocketAddr> {
        self.ice_tcp
    }

    /// The session's local ICE username fragment: what an agent's ICE-TCP connection names.
    pub fn ice_ufrag(&mut self, id: SessionId) -> Option<String> {
        let s = self.sessions.get_mut(&id)?;
        Some(s.rtc.direct_api().local_ice_credentials().ufrag)
    }

    fn receive_from_agent(
        &mut self,
        bytes: &[u8],
        path: Path,
        from: SocketAddr,
        local: SocketAddr,
        now: Instant,
    ) {
        let proto = match path {
            Path::Tcp => Protocol::Tcp,
            Path::Udp | Path::Turn => Protocol::Udp,
        };
        let Ok(contents) = bytes.try_into() else {
            self.stray += 1;
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto,
                source: from,
                destination: local,
                contents,
            },
        );
        let Some((&id, s)) = self
            .sessions
            .iter_mut()
            .find(|(_, s)| s.rtc.accepts(&input))
        else {
            self.stray += 1;
            return;
        };
        // Where the media comes from (DTLS, SRTP: RFC 7983's first byte 20 and up), not the
        // connectivity checks, which the browser keeps sending on its other pairs too.
        if bytes.first().is_some_and(|b| *b >= 20) {
            s.ice_remote = Some(from);
            s.ice_protocol = Some(path.name());
        }
        if path == Path::Turn
            && !s.turn_relays.contains(&from)
            && s.turn_relays.len() < MAX_TURN_RELAYS
        {
            s.turn_relays.push(from);
        }
        if let Err(e) = s.rtc.handle_input(input) {
            tracing::debug!(session = id, error = %e, "WebRTC input refused");
            s.dropped += 1;
        }
        let before = s.from_agent.stats.packets;
        self.drain(id, now);
        // RTP-shaped (RFC 7983: first byte 128-191, not RTCP) but no packet came of it.
        let srtp = bytes.len() >= 12
            && (128..=191).contains(&bytes[0])
            && !(192..=223).contains(&bytes[1]);
        if let Some(s) = self.sessions.get_mut(&id)
            && srtp
            && s.from_agent.stats.packets == before
        {
            s.unauthenticated += 1;
        }
    }

    /// Where the call's media to the caller goes now: its SDP's address until its RTP shows
    /// another.
    pub fn caller_destination(&self, id: SessionId) -> Option<SocketAddr> {
        match self.relays.get(&id) {
            Some(r) => r.destination(Leg::Caller),
            None => self.sessions.get(&id).map(|s| s.caller_to),
        }
    }

    /// A datagram on a call's caller-leg socket.
    pub fn from_caller(&mut self, id: SessionId, bytes: &[u8], from: SocketAddr, now: Instant) {
        if self.relays.contains_key(&id) {
            self.relay_receive(id, Leg::Caller, bytes, from, now);
            return;
        }
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(p) = rtp::parse(bytes) else {
            s.dropped += 1;
            return;
        };
        let agent_pt = if p.payload_type == s.caller_pt {
            s.caller_pt
        } else if Some(p.payload_type) == s.caller_te {
            AGENT_TE_PT
        } else {
            s.dropped += 1;
            return;
        };
        if !s.latched {
            // Symmetric RTP: answer where the caller really sends from (NAT).
            s.caller_to = from;
            s.latched = true;
        }
        s.last_media = now;
        s.heard_caller = Some(now);
        let created = s.created;
        s.from_caller.record(
            p.ssrc,
            p.seq,
            p.timestamp,
            p.payload.len(),
            now,
            created,
            G711_HZ,
        );
        let (seq, ts) = s.to_agent_rebase.map(p.ssrc, p.seq, p.timestamp);
        let mid = s.mid;
        let write = RtpWrite::new(agent_pt.into(), seq.into(), ts, now, p.payload).marker(p.marker);
        let mut direct = s.rtc.direct_api();
        if let Some(tx) = direct.stream_tx_by_mid(mid, None) {
            tx.write_rtp(write);
        }
        self.drain(id, now);
    }

    /// Time passes: every session whose timer is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<SessionId> = self
            .timers
            .range(..=(now, SessionId::MAX))
            .map(|(_, id)| *id)
            .collect();
        for id in due {
            if let Some(s) = self.sessions.get_mut(&id) {
                let _ = s.rtc.handle_input(Input::Timeout(now));
            }
            self.drain(id, now);
        }
        if self.next_sweep.is_none_or(|t| t > now) {
            return;
        }
        self.next_sweep = (!self.is_empty()).then(|| now + INACTIVITY_SWEEP);
        let (inactivity, one_way_after) = (self.inactivity, self.one_way_after);
        for (id, r) in &mut self.relays {
            // Ringing is not a media failure: a relayed call is watched from its answer on.
            if r.answered.is_none() {
                continue;
            }
            if r.held() {
                if r.one_way.take().is_some() {
                    self.events.push_back(BridgeEvent::OneWay(*id, None));
                }
                continue;
            }
            if now.saturating_duration_since(r.last_media) >= inactivity {
                r.last_media = now; // report once per period
                self.events.push_back(BridgeEvent::Inactive(*id));
            }
            if let Some(flag) = r.one_way_now(now, one_way_after)
                && flag != r.one_way
            {
                r.one_way = flag;
                self.events.push_back(BridgeEvent::OneWay(*id, flag));
            }
        }
        for (id, s) in &mut self.sessions {
            // On hold either way, silence is expected.
            let held = s.caller_direction != Direction::SendRecv
                || s.agent_direction != Direction::SendRecv;
            if held {
                // Silence on hold is no fault: a flag raised before it ends.
                if s.one_way.take().is_some() {
                    self.events.push_back(BridgeEvent::OneWay(*id, None));
                }
                continue;
            }
            if now.saturating_duration_since(s.last_media) >= inactivity {
                s.last_media = now; // report once per period
                self.events.push_back(BridgeEvent::Inactive(*id));
            }
            if let Some(flag) = one_way(s, now, one_way_after)
                && flag != s.one_way
            {
                s.one_way = flag;
                self.events.push_back(BridgeEvent::OneWay(*id, flag));
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let rtc = self.timers.first().map(|(at, _)| *at);
        rtc.into_iter().chain(self.next_sweep).min()
    }

    pub fn poll_datagram(&mut self) -> Option<Datagram> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<BridgeEvent> {
        self.events.pop_front()
    }

    pub fn len(&self) -> usize {
        self.sessions.len() + self.relays.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.relays.is_empty()
    }

    /// Runs the session's WebRTC stack until it waits, relaying what it gives.
    fn drain(&mut self, id: SessionId, now: Instant) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        loop {
            match s.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    if t != s.timeout {
                        self.timers.remove(&(s.timeout, id));
                        self.timers.insert((t, id));
                        s.timeout = t;
                    }
                    break;
                }
                Ok(Output::Transmit(t)) => self.out.push_back(Datagram {
                    via: match t.proto {
                        Protocol::Udp if s.turn_relays.contains(&t.destination) => Via::Turn,
                        Protocol::Udp => Via::WebRtc,
                        _ => Via::IceTcp,
                    },
                    to: t.destination,
                    bytes: t.contents.into(),
                }),
                Ok(Output::Event(e)) => match e {
                    Event::RtpPacket(p) => {
                        let pt: u8 = *p.header.payload_type;
                        let caller_pt = if pt == s.caller_pt {
                            s.caller_pt
                        } else if pt == AGENT_TE_PT && s.caller_te.is_some() {
                            s.caller_te.unwrap_or(AGENT_TE_PT)
                        } else {
                            s.dropped += 1;
                            continue;
                        };
                        s.last_media = now;
                        s.heard_agent = Some(now);
                        let ssrc: u32 = *p.header.ssrc;
                        let seq = p.header.sequence_number;
                        let ts = p.header.timestamp;
                        let created = s.created;
                        s.from_agent
                            .record(ssrc, seq, ts, p.payload.len(), now, created, G711_HZ);
                        let (out_seq, out_ts) = s.to_caller_rebase.map(ssrc, seq, ts);
                        let packet = s.to_caller.packet_at(
                            caller_pt,
                            out_seq as u16,
                            out_ts,
                            p.header.marker,
                            &p.payload,
                        );
                        self.out.push_back(Datagram {
                            via: Via::Caller(id),
                            to: s.caller_to,
                            bytes: packet,
                        });
                    }
                    Event::IceConnectionStateChange(state) => {
                        s.ice_state = state;
                        let connected = matches!(
                            state,
                            IceConnectionState::Connected | IceConnectionState::Completed
                        );
                        if connected && s.ice_connected_after.is_none() {
                            s.ice_connected_after =
                                s.answered.map(|at| now.saturating_duration_since(at));
                        }
                        if state == IceConnectionState::Disconnected {
                            self.events.push_back(BridgeEvent::Disconnected(id));
                        }
                    }
                    Event::Connected => {}
                    _ => {}
                },
                Err(e) => {
                    tracing::warn!(session = id, error = %e, "WebRTC session failed");
                    self.events.push_back(BridgeEvent::Failed(id));
                    self.timers.remove(&(s.timeout, id));
                    s.timeout = now + Duration::from_secs(3600);
                    self.timers.insert((s.timeout, id));
                    break;
                }
            }
        }
    }
}

fn to_rtc(d: Direction) -> RtcDirection {
    match d {
        Direction::SendRecv => RtcDirection::SendRecv,
        Direction::SendOnly => RtcDirection::SendOnly,
        Direction::RecvOnly => RtcDirection::RecvOnly,
        Direction::Inactive => RtcDirection::Inactive,
    }
}

/// Whether the session's audio is one-way now: `Some(None)` when both ways flow, `None`
/// when it cannot be told (not answered yet, or both quiet, which is inactivity's business).
/// Each side is expected to send from the agent's answer on.
fn one_way(s: &Session, now: Instant, after: Duration) -> Option<Option<Silent>> {
    one_way_of(s.answered, s.heard_caller, s.heard_agent, now, after)
}

/// [`one_way`] for any kind of session: answered at `answered`, each side last heard when.
pub(super) fn one_way_of(
    answered: Option<Instant>,
    heard_caller: Option<Instant>,
    heard_agent: Option<Instant>,
    now: Instant,
    after: Duration,
) -> Option<Option<Silent>> {
    let answered = answered?;
    let quiet =
        |heard: Option<Instant>| now.saturating_duration_since(heard.unwrap_or(answered)) >= after;
    match (quiet(heard_caller), quiet(heard_agent)) {
        (false, false) => Some(None),
        (true, false) => Some(Some(Silent::Caller)),
        (false, true) => Some(Some(Silent::Agent)),
        (true, true) => None,
    }
}

fn stats_of(s: &Session) -> MediaStats {
    MediaStats {
        from_caller: s.from_caller.stats,
        from_agent: s.from_agent.stats,
        dropped: s.dropped,
        unauthenticated: s.unauthenticated,
        ice_remote: s.ice_remote.map(|a| a.to_string()),
        ice_protocol: s.ice_protocol,
        ice_connected_ms: s
            .ice_connected_after
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        ice_state: format!("{:?}", s.ice_state),
        one_way: s.one_way.map(Silent::label),
        agent_media: "webrtc",
        rtcp_relayed: None,
    }
}

#[cfg(test)]
#[path = "bridge_tests.rs"]
mod tests;
