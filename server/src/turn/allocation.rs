//! One TURN client connection's state (RFC 8656), sans-IO: no sockets, no clock.
//!
//! A TLS connection is one 5-tuple, so it has at most one allocation. The network code owns
//! one [`TurnSession`] per connection and:
//! - cuts the stream with [`super::stun::frame_len`] and passes each frame to
//!   [`TurnSession::handle`], acting on the [`Event`]s in order (closing the connection on a
//!   [`TurnError`]);
//! - passes each datagram arriving at the relayed address to [`TurnSession::from_peer`];
//! - calls [`TurnSession::handle_timeout`] at [`TurnSession::next_timeout`];
//! - calls [`TurnSession::close`] when the connection ends.
//!
//! **The one rule:** after every call that takes `now`, ask `next_timeout` again; it moves.
//!
//! The distributor's policy (who a credential names, which relayed address, which peers are
//! allowed) is asked through [`Authority`]: peers are only the project's own edges' WebRTC
//! sessions, so this is not an open relay.
//!
//! Deliberate departures from RFC 8656: DONT-FRAGMENT is accepted and ignored (browsers may
//! send it and do not retry without it on a 420; the relay does not set DF); EVEN-PORT and
//! RESERVATION-TOKEN are answered 420 as unknown; only IPv4 relayed addresses (440 for
//! IPv6, ADDITIONAL-ADDRESS-FAMILY ignored); no MESSAGE-INTEGRITY-SHA256, USERHASH or
//! PASSWORD-ALGORITHMS (so the nonce given to [`TurnSession::new`] must not begin with the
//! RFC 8489 "obMatJos2" cookie).

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use super::stun::{self, Class, Message, MessageBuilder};

/// Permissions (peer IPs) one allocation may hold; a request for more gets 508.
pub const MAX_PERMISSIONS: usize = 64;
/// Channels one allocation may bind; a request for more gets 508.
pub const MAX_CHANNELS: usize = 64;
/// After a channel binding expires, neither its number nor its peer may be bound to another
/// for this long (RFC 8656 §12).
pub const CHANNEL_QUARANTINE: Duration = Duration::from_secs(300);

/// Attributes this server understands (comprehension-required ones outside this list get 420).
const KNOWN: &[u16] = &[
    stun::MAPPED_ADDRESS,
    stun::USERNAME,
    stun::MESSAGE_INTEGRITY,
    stun::ERROR_CODE,
    stun::UNKNOWN_ATTRIBUTES,
    stun::CHANNEL_NUMBER,
    stun::LIFETIME,
    stun::XOR_PEER_ADDRESS,
    stun::DATA_ATTR,
    stun::REALM,
    stun::NONCE,
    stun::XOR_RELAYED_ADDRESS,
    stun::REQUESTED_ADDRESS_FAMILY,
    stun::REQUESTED_TRANSPORT,
    // Accepted and ignored: see the module doc.
    stun::DONT_FRAGMENT,
    stun::XOR_MAPPED_ADDRESS,
];

/// The TURN server's settings.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// REALM, part of every long-term key.
    pub realm: String,
    /// SOFTWARE in every response (none when empty).
    pub software: String,
    /// An allocation's lifetime when the client asks for none or for less (RFC 8656: 600 s).
    pub default_lifetime: Duration,
    /// The most a client may ask for (3600 s).
    pub max_lifetime: Duration,
    /// A permission's lifetime (RFC 8656: 300 s, fixed).
    pub permission_lifetime: Duration,
    /// A channel binding's lifetime (RFC 8656: 600 s).
    pub channel_lifetime: Duration,
    /// How long a nonce is good for before requests with it get 438.
    pub nonce_lifetime: Duration,
}

impl Default for TurnConfig {
    fn default() -> TurnConfig {
        TurnConfig {
            realm: "agent-edge".to_owned(),
            software: "agent-edge".to_owned(),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(3600),
        }
    }
}

/// Who a credential is for, and its long-term key.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    pub username: String,
    pub edge: String,
    pub agent: String,
    /// MD5(username:realm:password) ([`stun::long_term_key`]).
    pub key: [u8; 16],
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("username", &self.username)
            .field("edge", &self.edge)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

/// Why the distributor refuses: a STUN error code and its reason phrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub reason: String,
}

impl Refusal {
    pub fn new(code: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

/// The distributor's rules, asked by the core.
pub trait Authority {
    /// The principal a USERNAME names, with its key, or why not (401 for unknown, expired,
    /// or malformed usernames).
    fn credential(
        &mut self,
        username: &str,
        realm: &str,
        unix_now: u64,
    ) -> Result<Principal, Refusal>;
    /// A relayed transport address for a new allocation of `principal` from `client`, or why
    /// not (486 Allocation Quota Reached, 508 Insufficient Capacity, 403).
    fn allocate(
        &mut self,
        principal: &Principal,
        client: SocketAddr,
    ) -> Result<SocketAddr, Refusal>;
    /// The allocation is gone (expired, refreshed to 0, or the connection closed: see
    /// [`TurnSession::close`]).
    fn release(&mut self, relayed: SocketAddr);
    /// Whether `principal` may have a permission for / send to `peer` (the exact address).
    fn permits(&self, principal: &Principal, peer: SocketAddr) -> bool;
}

/// What the network code must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bytes to write to the client, framed for the TLS stream.
    Reply(Vec<u8>),
    /// An allocation now relays through `relayed` (comes before the Allocate's reply).
    Allocated { relayed: SocketAddr },
    /// Send `payload` from the relayed address to `peer` as one UDP datagram.
    ToPeer { peer: SocketAddr, payload: Vec<u8> },
    /// The allocation is gone; [`Authority::release`] was already called.
    Released { relayed: SocketAddr },
}

/// Bytes [`TurnSession::handle`] refused: the stream is not TURN, close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurnError {
    #[error("not STUN or ChannelData: {0}")]
    Framing(#[from] stun::StunError),
    #[error("given {got} bytes where the frame is {frame}")]
    NotOneFrame { frame: usize, got: usize },
    #[error("an incomplete frame of {0} bytes")]
    Incomplete(usize),
}

/// What was dropped silently, as RFC 8656 says, for the network code to show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    /// Send indications and ChannelData from the client not relayed (no allocation, no
    /// permission or channel, or a peer [`Authority::permits`] refuses).
    pub to_peer: u64,
    /// Datagrams from peers not relayed to the client (no live permission, too large).
    pub from_peer: u64,
    /// Framed messages from the client that did not decode (bad attributes, FINGERPRINT).
    pub malformed: u64,
}

/// One client connection's TURN state.
#[derive(Debug)]
pub struct TurnSession {
    config: Arc<TurnConfig>,
    /// The client's address as the connection sees it (XOR-MAPPED-ADDRESS).
    client: SocketAddr,
    /// The nonce requests must carry now, and when it was issued.
    nonce: String,
    nonce_issued: Instant,
    /// The nonce given at creation: later ones are derived from it and a counter.
    nonce_seed: String,
    nonces_issued: u64,
    /// Data indications' transaction ids: a prefix from the seed, then a counter.
    indication_prefix: [u8; 4],
    indications_sent: u64,
    allocation: Option<Allocation>,
    drops: Drops,
}

#[derive(Debug)]
struct Allocation {
    principal: Principal,
    relayed: SocketAddr,
    expires: Instant,
    /// The Allocate request that made it and our answer, sent again to a retransmission.
    transaction: [u8; 12],
    response: Vec<u8>,
    /// When the permission for each peer IP expires (RFC 8656 §9: by IP, any port; every
    /// Send and ChannelData still asks [`Authority::permits`] for the exact address).
    permissions: HashMap<IpAddr, Instant>,
    /// Channel bindings by number, kept through [`CHANNEL_QUARANTINE`] after expiry.
    channels: HashMap<u16, Channel>,
    /// The same bindings by peer, for the way back.
    by_peer: HashMap<SocketAddr, u16>,
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    peer: SocketAddr,
    expires: Instant,
}

/// An error answer being made.
#[derive(Debug)]
struct Failure {
    code: u16,
    reason: Cow<'static, str>,
    /// Include REALM and NONCE (401 and 438).
    challenge: bool,
    /// UNKNOWN-ATTRIBUTES (420).
    unknown: Vec<u16>,
}

impl Failure {
    fn new(code: u16, reason: impl Into<Cow<'static, str>>) -> Failure {
        Failure {
            code,
            reason: reason.into(),
            challenge: false,
            unknown: Vec::new(),
        }
    }

    fn challenge(code: u16, reason: impl Into<Cow<'static, str>>) -> Failure {
        Failure {
            challenge: true,
            ..Failure::new(code, reason)
        }
    }

    fn unknown(attributes: Vec<u16>) -> Failure {
        Failure {
            unknown: attributes,
            ..Failure::new(420, "Unknown Attribute")
        }
    }
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Failure {
        Failure {
            challenge: r.code == 401,
            ..Failure::new(r.code, r.reason)
        }
    }
}

type Attrs = Vec<(u16, Vec<u8>)>;

impl TurnSession {
    /// A session for a connection from `client`. `nonce` is the first NONCE handed out: make
    /// it unpredictable (random), under 128 characters, and not starting with "obMatJos2".
    pub fn new(
        config: Arc<TurnConfig>,
        client: SocketAddr,
        nonce: String,
        now: Instant,
    ) -> TurnSession {
        let digest: [u8; 16] = Md5::digest(nonce.as_bytes()).into();
        TurnSession {
            config,
            client,
            nonce: nonce.clone(),
            nonce_issued: now,
            nonce_seed: nonce,
            nonces_issued: 0,
            indication_prefix: [digest[0], digest[1], digest[2], digest[3]],
            indications_sent: 0,
            allocation: None,
            drops: Drops::default(),
        }
    }

    /// One complete message from the client, as cut by [`stun::frame_len`]. Call
    /// [`TurnSession::next_timeout`] again afterwards. An error means the bytes are not one
    /// STUN or ChannelData frame: close the connection (then call [`TurnSession::close`]).
    pub fn handle(
        &mut self,
        bytes: &[u8],
        now: Instant,
        unix_now: u64,
        authority: &mut dyn Authority,
    ) -> Result<Vec<Event>, TurnError> {
        match stun::frame_len(bytes)? {
            Some(n) if n == bytes.len() => {}
            Some(n) => {
                return Err(TurnError::NotOneFrame {
                    frame: n,
                    got: bytes.len(),
                });
            }
            None => return Err(TurnError::Incomplete(bytes.len())),
        }
        let mut events = self.handle_timeout(now, authority);
        if bytes.first().is_some_and(|b| b >> 6 == 0b01) {
            self.channel_data(bytes, now, &*authority, &mut events);
            return Ok(events);
        }
        let Ok(msg) = stun::decode(bytes) else {
            self.drops.malformed += 1;
            return Ok(events);
        };
        match msg.class {
            Class::Request => self.request(bytes, &msg, now, unix_now, authority, &mut events),
            Class::Indication if msg.method == stun::SEND => {
                self.send_indication(&msg, now, &*authority, &mut events);
            }
            // Other indications, and responses: a client sends us none; ignore them.
            Class::Indication | Class::Success | Class::Error => {}
        }
        Ok(events)
    }

    /// A datagram from `peer` arriving at this allocation's relayed address: the bytes to
    /// write to the client (ChannelData when a channel is bound to `peer`, else a Data
    /// indication), or None when there is no live permission for `peer`'s IP.
    pub fn from_peer(&mut self, peer: SocketAddr, payload: &[u8], now: Instant) -> Option<Vec<u8>> {
        let Some(a) = self.allocation.as_ref().filter(|a| now < a.expires) else {
            self.drops.from_peer += 1;
            return None;
        };
        if payload.len() > stun::MAX_DATA_LEN || !a.permitted(peer.ip(), now) {
            self.drops.from_peer += 1;
            return None;
        }
        if let Some(number) = a.live_channel_of(peer, now) {
            return Some(stun::encode_channel_data(number, payload));
        }
        let transaction = self.next_indication_transaction();
        Some(
            MessageBuilder::new(Class::Indication, stun::DATA, transaction)
                .xor_address(stun::XOR_PEER_ADDRESS, peer)
                .attr(stun::DATA_ATTR, payload)
                .build(),
        )
    }

    /// The relayed address of the allocation, while there is one.
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.allocation.as_ref().map(|a| a.relayed)
    }

    /// Whom the allocation is for, while there is one.
    pub fn principal(&self) -> Option<&Principal> {
        self.allocation.as_ref().map(|a| &a.principal)
    }

    /// What was dropped so far.
    pub fn drops(&self) -> Drops {
        self.drops
    }

    /// When to call [`TurnSession::handle_timeout`] next (None: no allocation).
    pub fn next_timeout(&self) -> Option<Instant> {
        let a = self.allocation.as_ref()?;
        let permissions = a.permissions.values().copied();
        let channels = a
            .channels
            .values()
            .map(|c| after(c.expires, CHANNEL_QUARANTINE));
        permissions.chain(channels).chain([a.expires]).min()
    }

    /// Expiries due at `now`: the allocation (then [`Event::Released`], after
    /// [`Authority::release`]), permissions and channel bindings.
    pub fn handle_timeout(&mut self, now: Instant, authority: &mut dyn Authority) -> Vec<Event> {
        let mut events = Vec::new();
        let Some(a) = self.allocation.as_mut() else {
            return events;
        };
        if now >= a.expires {
            let relayed = a.relayed;
            self.allocation = None;
            authority.release(relayed);
            events.push(Event::Released { relayed });
            return events;
        }
        a.permissions.retain(|_, expires| now < *expires);
        a.channels
            .retain(|_, c| now < after(c.expires, CHANNEL_QUARANTINE));
        let channels = &a.channels;
        a.by_peer.retain(|_, number| channels.contains_key(number));
        events
    }

    /// The connection is gone: the allocation, if any, is released.
    pub fn close(&mut self, authority: &mut dyn Authority) {
        if let Some(a) = self.allocation.take() {
            authority.release(a.relayed);
        }
    }

    fn request(
        &mut self,
        raw: &[u8],
        msg: &Message,
        now: Instant,
        unix_now: u64,
        authority: &mut dyn Authority,
        events: &mut Vec<Event>,
    ) {
        if msg.method == stun::BINDING {
            let unknown = msg.unknown_required(KNOWN);
            let reply = if unknown.is_empty() {
                let attrs = vec![(
                    stun::XOR_MAPPED_ADDRESS,
                    stun::encode_xor_address(self.client, &msg.transaction),
                )];
                self.success(msg, attrs, None)
            } else {
                self.error(msg, Failure::unknown(unknown), None)
            };
            events.push(Event::Reply(reply));
            return;
        }
        let principal = match self.authenticate(raw, msg, now, unix_now, &mut *authority) {
            Ok(p) => p,
            Err(failure) => {
                events.push(Event::Reply(self.error(msg, failure, None)));
                return;
            }
        };
        let key = principal.key;
        if msg.method == stun::ALLOCATE
            && let Some(a) = &self.allocation
            && a.transaction == msg.transaction
        {
            events.push(Event::Reply(a.response.clone()));
            return;
        }
        let unknown = msg.unknown_required(KNOWN);
        let result = if !unknown.is_empty() {
            Err(Failure::unknown(unknown))
        } else {
            match msg.method {
                stun::ALLOCATE => self.allocate(msg, principal, now, authority, events),
                stun::REFRESH => self.refresh(msg, now, authority, events),
                stun::CREATE_PERMISSION => self.create_permission(msg, now, &*authority),
                stun::CHANNEL_BIND => self.channel_bind(msg, now, &*authority),
                _ => Err(Failure::new(400, "Bad Request: not a TURN request method")),
            }
        };
        let reply = match result {
            Ok(attrs) => self.success(msg, attrs, Some(&key)),
            Err(failure) => self.error(msg, failure, Some(&key)),
        };
        if msg.method == stun::ALLOCATE
            && let Some(a) = self.allocation.as_mut()
            && a.transaction == msg.transaction
        {
            a.response = reply.clone();
        }
        events.push(Event::Reply(reply));
    }

    /// The long-term credential checks of RFC 8489 §9.2.4 (in RFC 5389's order: the nonce
    /// before the username), plus 441 for another user's request on this allocation.
    fn authenticate(
        &mut self,
        raw: &[u8],
        msg: &Message,
        now: Instant,
        unix_now: u64,
        authority: &mut dyn Authority,
    ) -> Result<Principal, Failure> {
        if now >= after(self.nonce_issued, self.config.nonce_lifetime) {
            self.rotate_nonce(now);
        }
        if msg.integrity_offset.is_none() {
            return Err(Failure::challenge(401, "Unauthenticated"));
        }
        let (Some(username), Some(realm), Some(nonce)) = (msg.username(), msg.realm(), msg.nonce())
        else {
            return Err(Failure::new(
                400,
                "Bad Request: MESSAGE-INTEGRITY without USERNAME, REALM and NONCE",
            ));
        };
        if nonce != self.nonce {
            return Err(Failure::challenge(438, "Stale Nonce"));
        }
        if let Some(a) = &self.allocation
            && a.principal.username != username
        {
            return Err(Failure::new(441, "Wrong Credentials"));
        }
        if realm != self.config.realm {
            return Err(Failure::challenge(401, "Unauthenticated: wrong realm"));
        }
        let principal = authority.credential(username, realm, unix_now)?;
        if !stun::verify_integrity(raw, msg, &principal.key) {
            return Err(Failure::challenge(
                401,
                "Unauthenticated: MESSAGE-INTEGRITY is wrong",
            ));
        }
        Ok(principal)
    }

    fn allocate(
        &mut self,
        msg: &Message,
        principal: Principal,
        now: Instant,
        authority: &mut dyn Authority,
        events: &mut Vec<Event>,
    ) -> Result<Attrs, Failure> {
        if self.allocation.is_some() {
            return Err(Failure::new(437, "Allocation Mismatch"));
        }
        match msg.requested_transport() {
            Some(stun::TRANSPORT_UDP) => {}
            Some(_) => return Err(Failure::new(442, "Unsupported Transport Protocol")),
            None => return Err(Failure::new(400, "Bad Request: REQUESTED-TRANSPORT")),
        }
        if msg.has(stun::REQUESTED_ADDRESS_FAMILY) {
            match msg.requested_address_family() {
                Some(stun::FAMILY_IPV4) => {}
                Some(_) => return Err(Failure::new(440, "Address Family not Supported")),
                None => return Err(Failure::new(400, "Bad Request: REQUESTED-ADDRESS-FAMILY")),
            }
        }
        let relayed = authority.allocate(&principal, self.client)?;
        let lifetime = self.lifetime(msg.lifetime());
        self.allocation = Some(Allocation {
            principal,
            relayed,
            expires: after(now, lifetime),
            transaction: msg.transaction,
            response: Vec::new(),
            permissions: HashMap::new(),
            channels: HashMap::new(),
            by_peer: HashMap::new(),
        });
        events.push(Event::Allocated { relayed });
        Ok(vec![
            (
                stun::XOR_RELAYED_ADDRESS,
                stun::encode_xor_address(relayed, &msg.transaction),
            ),
            (stun::LIFETIME, seconds(lifetime).to_be_bytes().to_vec()),
            (
                stun::XOR_MAPPED_ADDRESS,
                stun::encode_xor_address(self.client, &msg.transaction),
            ),
        ])
    }

    fn refresh(
        &mut self,
        msg: &Message,
        now: Instant,
        authority: &mut dyn Authority,
        events: &mut Vec<Event>,
    ) -> Result<Attrs, Failure> {
        let lifetime = self.lifetime(msg.lifetime());
        let Some(a) = self.allocation.as_mut() else {
            return Err(Failure::new(437, "Allocation Mismatch"));
        };
        if msg
            .requested_address_family()
            .is_some_and(|f| f != stun::FAMILY_IPV4)
        {
            return Err(Failure::new(443, "Peer Address Family Mismatch"));
        }
        if msg.lifetime() == Some(0) {
            let relayed = a.relayed;
            self.allocation = None;
            authority.release(relayed);
            events.push(Event::Released { relayed });
            return Ok(vec![(stun::LIFETIME, 0u32.to_be_bytes().to_vec())]);
        }
        a.expires = after(now, lifetime);
        Ok(vec![(
            stun::LIFETIME,
            seconds(lifetime).to_be_bytes().to_vec(),
        )])
    }

    fn create_permission(
        &mut self,
        msg: &Message,
        now: Instant,
        authority: &dyn Authority,
    ) -> Result<Attrs, Failure> {
        let lifetime = self.config.permission_lifetime;
        let Some(a) = self.allocation.as_mut() else {
            return Err(Failure::new(437, "Allocation Mismatch"));
        };
        let mut peers = Vec::new();
        for value in msg.get_all(stun::XOR_PEER_ADDRESS) {
            match stun::decode_xor_address(value, &msg.transaction) {
                Some(peer) => peers.push(peer),
                None => return Err(Failure::new(400, "Bad Request: XOR-PEER-ADDRESS")),
            }
        }
        if peers.is_empty() {
            return Err(Failure::new(400, "Bad Request: no XOR-PEER-ADDRESS"));
        }
        if peers.iter().any(|p| p.is_ipv4() != a.relayed.is_ipv4()) {
            return Err(Failure::new(443, "Peer Address Family Mismatch"));
        }
        if peers.iter().any(|p| !authority.permits(&a.principal, *p)) {
            return Err(Failure::new(403, "Forbidden"));
        }
        let mut new_ips: Vec<IpAddr> = peers
            .iter()
            .map(|p| p.ip())
            .filter(|ip| !a.permissions.contains_key(ip))
            .collect();
        new_ips.sort();
        new_ips.dedup();
        if a.permissions.len() + new_ips.len() > MAX_PERMISSIONS {
            return Err(Failure::new(508, "Insufficient Capacity"));
        }
        for peer in peers {
            a.permissions.insert(peer.ip(), after(now, lifetime));
        }
        Ok(Vec::new())
    }

    fn channel_bind(
        &mut self,
        msg: &Message,
        now: Instant,
        authority: &dyn Authority,
    ) -> Result<Attrs, Failure> {
        let (channel_lifetime, permission_lifetime) = (
            self.config.channel_lifetime,
            self.config.permission_lifetime,
        );
        let Some(a) = self.allocation.as_mut() else {
            return Err(Failure::new(437, "Allocation Mismatch"));
        };
        let Some(number) = msg
            .channel_number()
            .filter(|n| stun::CHANNEL_RANGE.contains(n))
        else {
            return Err(Failure::new(
                400,
                "Bad Request: CHANNEL-NUMBER missing or outside 0x4000-0x4FFF",
            ));
        };
        let Some(peer) = msg.xor_address(stun::XOR_PEER_ADDRESS) else {
            return Err(Failure::new(400, "Bad Request: XOR-PEER-ADDRESS"));
        };
        if peer.is_ipv4() != a.relayed.is_ipv4() {
            return Err(Failure::new(443, "Peer Address Family Mismatch"));
        }
        if a.channels.get(&number).is_some_and(|c| c.peer != peer) {
            return Err(Failure::new(
                400,
                "Bad Request: channel bound to another peer",
            ));
        }
        if a.by_peer.get(&peer).is_some_and(|n| *n != number) {
            return Err(Failure::new(
                400,
                "Bad Request: peer bound to another channel",
            ));
        }
        if !authority.permits(&a.principal, peer) {
            return Err(Failure::new(403, "Forbidden"));
        }
        if (!a.channels.contains_key(&number) && a.channels.len() >= MAX_CHANNELS)
            || (!a.permissions.contains_key(&peer.ip()) && a.permissions.len() >= MAX_PERMISSIONS)
        {
            return Err(Failure::new(508, "Insufficient Capacity"));
        }
        a.channels.insert(
            number,
            Channel {
                peer,
                expires: after(now, channel_lifetime),
            },
        );
        a.by_peer.insert(peer, number);
        a.permissions
            .insert(peer.ip(), after(now, permission_lifetime));
        Ok(Vec::new())
    }

    fn send_indication(
        &mut self,
        msg: &Message,
        now: Instant,
        authority: &dyn Authority,
        events: &mut Vec<Event>,
    ) {
        let target = (|| {
            self.allocation.as_ref()?;
            if !msg.unknown_required(KNOWN).is_empty() {
                return None;
            }
            Some((
                msg.xor_address(stun::XOR_PEER_ADDRESS)?,
                msg.get(stun::DATA_ATTR)?,
            ))
        })();
        self.relay_to_peer(target, now, authority, events);
    }

    fn channel_data(
        &mut self,
        bytes: &[u8],
        now: Instant,
        authority: &dyn Authority,
        events: &mut Vec<Event>,
    ) {
        let target = (|| {
            let a = self.allocation.as_ref()?;
            let (number, data) = stun::decode_channel_data(bytes)?;
            let channel = a.channels.get(&number).filter(|c| now < c.expires)?;
            Some((channel.peer, data))
        })();
        self.relay_to_peer(target, now, authority, events);
    }

    /// `data` for `peer` goes out when the allocation holds a live permission for the peer's
    /// IP and the distributor still permits that exact address; otherwise it is counted.
    fn relay_to_peer(
        &mut self,
        target: Option<(SocketAddr, &[u8])>,
        now: Instant,
        authority: &dyn Authority,
        events: &mut Vec<Event>,
    ) {
        let allowed = match (&self.allocation, target) {
            (Some(a), Some((peer, _))) => {
                a.permitted(peer.ip(), now) && authority.permits(&a.principal, peer)
            }
            _ => false,
        };
        match target {
            Some((peer, data)) if allowed => events.push(Event::ToPeer {
                peer,
                payload: data.to_vec(),
            }),
            _ => self.drops.to_peer += 1,
        }
    }

    /// An allocation's lifetime for a requested one (RFC 8656 §7.2): the request capped at
    /// the maximum, but never under the default; the default when none is asked.
    fn lifetime(&self, requested: Option<u32>) -> Duration {
        let c = &self.config;
        match requested {
            Some(secs) => Duration::from_secs(u64::from(secs))
                .min(c.max_lifetime)
                .max(c.default_lifetime),
            None => c.default_lifetime,
        }
    }

    fn rotate_nonce(&mut self, now: Instant) {
        self.nonces_issued += 1;
        let mut md5 = Md5::new();
        md5.update(self.nonce_seed.as_bytes());
        md5.update(self.nonces_issued.to_be_bytes());
        let digest: [u8; 16] = md5.finalize().into();
        self.nonce = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.nonce_issued = now;
    }

    fn next_indication_transaction(&mut self) -> [u8; 12] {
        self.indications_sent += 1;
        let mut t = [0u8; 12];
        t[..4].copy_from_slice(&self.indication_prefix);
        t[4..].copy_from_slice(&self.indications_sent.to_be_bytes());
        t
    }

    fn success(&self, req: &Message, attrs: Attrs, key: Option<&[u8; 16]>) -> Vec<u8> {
        let mut b = MessageBuilder::new(Class::Success, req.method, req.transaction);
        for (kind, value) in &attrs {
            b = b.attr(*kind, value);
        }
        self.finish(b, req, key)
    }

    fn error(&self, req: &Message, failure: Failure, key: Option<&[u8; 16]>) -> Vec<u8> {
        let mut b = MessageBuilder::new(Class::Error, req.method, req.transaction)
            .error(failure.code, &failure.reason);
        if !failure.unknown.is_empty() {
            b = b.unknown_attributes(&failure.unknown);
        }
        if failure.challenge {
            b = b
                .attr(stun::REALM, self.config.realm.as_bytes())
                .attr(stun::NONCE, self.nonce.as_bytes());
        }
        self.finish(b, req, key)
    }

    /// SOFTWARE, then MESSAGE-INTEGRITY for an authenticated request, then FINGERPRINT
    /// when the request had one.
    fn finish(&self, mut b: MessageBuilder, req: &Message, key: Option<&[u8; 16]>) -> Vec<u8> {
        if !self.config.software.is_empty() {
            b = b.attr(stun::SOFTWARE, self.config.software.as_bytes());
        }
        b.finish(key.map(|k| k.as_slice()), req.fingerprint)
    }
}

impl Allocation {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|e| now < *e)
    }

    fn live_channel_of(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        let number = *self.by_peer.get(&peer)?;
        let channel = self.channels.get(&number)?;
        (channel.peer == peer && now < channel.expires).then_some(number)
    }
}

/// `at + d`, or `at` itself should that not be representable (an absurd configuration).
fn after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d).unwrap_or(at)
}

fn seconds(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

#[cfg(test)]
#[path = "allocation_tests.rs"]
mod tests;
