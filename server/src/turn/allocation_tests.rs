//! The TURN core driven message by message with a fake clock and a fake [`Authority`] (a test
//! double of the distributor's policy: the credentials of [`credentials`], one relayed
//! address, a fixed list of permitted peers).

use super::*;
use crate::turn::credentials;
use crate::turn::stun::*;

const SECRET: &[u8] = b"turn-secret";
const UNIX_NOW: u64 = 1_700_000_000;
const REALM_NAME: &str = "example.org";
const FIRST_NONCE: &str = "first-nonce";

fn client() -> SocketAddr {
    "198.51.100.7:40000".parse().unwrap()
}
fn relayed_addr() -> SocketAddr {
    "203.0.113.1:50000".parse().unwrap()
}
fn peer() -> SocketAddr {
    "192.0.2.10:3478".parse().unwrap()
}
fn peer2() -> SocketAddr {
    "192.0.2.11:3478".parse().unwrap()
}

#[derive(Debug, Default)]
struct FakeAuthority {
    allocated: Vec<(String, SocketAddr)>,
    released: Vec<SocketAddr>,
    /// The exact addresses `permits` allows.
    peers: Vec<SocketAddr>,
    refuse_allocate: Option<Refusal>,
}

impl Authority for FakeAuthority {
    fn credential(
        &mut self,
        username: &str,
        realm: &str,
        unix_now: u64,
    ) -> Result<Principal, Refusal> {
        let parsed = credentials::parse(username).ok_or(Refusal::new(401, "Unknown user"))?;
        if parsed.expired(unix_now) {
            return Err(Refusal::new(401, "Credential expired"));
        }
        if parsed.agent == "banned" {
            return Err(Refusal::new(403, "Forbidden"));
        }
        let password = credentials::password(SECRET, username);
        Ok(Principal {
            username: username.to_owned(),
            edge: parsed.edge.to_owned(),
            agent: parsed.agent.to_owned(),
            key: long_term_key(username, realm, &password),
        })
    }

    fn allocate(
        &mut self,
        principal: &Principal,
        client: SocketAddr,
    ) -> Result<SocketAddr, Refusal> {
        if let Some(r) = &self.refuse_allocate {
            return Err(r.clone());
        }
        self.allocated.push((principal.username.clone(), client));
        Ok(relayed_addr())
    }

    fn release(&mut self, relayed: SocketAddr) {
        self.released.push(relayed);
    }

    fn permits(&self, _principal: &Principal, peer: SocketAddr) -> bool {
        self.peers.contains(&peer)
    }
}

fn config() -> TurnConfig {
    TurnConfig {
        realm: REALM_NAME.to_owned(),
        software: "agent-edge test".to_owned(),
        ..TurnConfig::default()
    }
}

/// A client's view: its credential and nonce, the session and the fake clock.
struct Harness {
    session: TurnSession,
    auth: FakeAuthority,
    start: Instant,
    now: Instant,
    username: String,
    key: [u8; 16],
    nonce: String,
    transactions: u32,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_config(config())
    }

    fn with_config(config: TurnConfig) -> Harness {
        let now = Instant::now();
        let cred = credentials::mint(SECRET, "edge-1", "alice", UNIX_NOW + 3600);
        Harness {
            session: TurnSession::new(Arc::new(config), client(), FIRST_NONCE.to_owned(), now),
            auth: FakeAuthority {
                peers: vec![peer(), peer2()],
                ..FakeAuthority::default()
            },
            start: now,
            now,
            key: long_term_key(&cred.username, REALM_NAME, &cred.password),
            username: cred.username,
            nonce: FIRST_NONCE.to_owned(),
            transactions: 0,
        }
    }

    fn tx(&mut self) -> [u8; 12] {
        self.transactions += 1;
        let mut t = [0xAA; 12];
        t[8..].copy_from_slice(&self.transactions.to_be_bytes());
        t
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
    }

    fn handle(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.session
            .handle(bytes, self.now, UNIX_NOW, &mut self.auth)
            .unwrap()
    }

    /// A request with USERNAME, REALM, NONCE and MESSAGE-INTEGRITY.
    fn signed(
        &self,
        method: u16,
        tx: [u8; 12],
        attrs: impl FnOnce(MessageBuilder) -> MessageBuilder,
    ) -> Vec<u8> {
        attrs(MessageBuilder::new(Class::Request, method, tx))
            .attr(USERNAME, self.username.as_bytes())
            .attr(REALM, REALM_NAME.as_bytes())
            .attr(NONCE, self.nonce.as_bytes())
            .build_with_integrity(&self.key)
    }

    /// Sends a signed request; returns the other events, the reply's bytes and the reply.
    fn request(
        &mut self,
        method: u16,
        attrs: impl FnOnce(MessageBuilder) -> MessageBuilder,
    ) -> (Vec<Event>, Vec<u8>, Message) {
        let tx = self.tx();
        let bytes = self.signed(method, tx, attrs);
        self.exchange(&bytes)
    }

    /// Sends `bytes`, expecting exactly one Reply among the events (checked for our
    /// transaction, SOFTWARE and, for an authenticated answer, integrity).
    fn exchange(&mut self, bytes: &[u8]) -> (Vec<Event>, Vec<u8>, Message) {
        let sent = decode(bytes).unwrap();
        let mut events = self.handle(bytes);
        let i = events
            .iter()
            .position(|e| matches!(e, Event::Reply(_)))
            .expect("a reply");
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::Reply(_)))
                .count(),
            1
        );
        let Event::Reply(raw) = events.remove(i) else {
            unreachable!()
        };
        let reply = decode(&raw).unwrap();
        assert_eq!(reply.transaction, sent.transaction);
        assert_eq!(reply.method, sent.method);
        assert_eq!(reply.software(), Some("agent-edge test"));
        assert_eq!(
            reply.fingerprint, sent.fingerprint,
            "FINGERPRINT iff the request had one"
        );
        (events, raw, reply)
    }

    fn expect_error(
        &mut self,
        method: u16,
        attrs: impl FnOnce(MessageBuilder) -> MessageBuilder,
    ) -> u16 {
        let (_, raw, reply) = self.request(method, attrs);
        assert_eq!(reply.class, Class::Error);
        let (code, _) = reply.error_code().unwrap();
        // Answers to authenticated requests are signed with the principal's key.
        if ![400, 401, 438, 441].contains(&code) {
            assert!(verify_integrity(&raw, &reply, &self.key), "{code} signed");
        }
        code
    }

    fn expect_success(
        &mut self,
        method: u16,
        attrs: impl FnOnce(MessageBuilder) -> MessageBuilder,
    ) -> (Vec<Event>, Message) {
        let (events, raw, reply) = self.request(method, attrs);
        assert_eq!(reply.class, Class::Success, "{:?}", reply.error_code());
        assert!(verify_integrity(&raw, &reply, &self.key));
        (events, reply)
    }

    fn allocate(&mut self) -> SocketAddr {
        let (events, reply) = self.expect_success(ALLOCATE, udp);
        let relayed = reply.xor_address(XOR_RELAYED_ADDRESS).unwrap();
        assert_eq!(events, vec![Event::Allocated { relayed }]);
        relayed
    }

    fn permit(&mut self, peer: SocketAddr) {
        self.expect_success(CREATE_PERMISSION, |b| b.xor_address(XOR_PEER_ADDRESS, peer));
    }

    fn send(&mut self, to: SocketAddr, data: &[u8]) -> Vec<Event> {
        let tx = self.tx();
        let bytes = MessageBuilder::new(Class::Indication, SEND, tx)
            .xor_address(XOR_PEER_ADDRESS, to)
            .attr(DATA_ATTR, data)
            .build();
        self.handle(&bytes)
    }

    fn peer_sends(&mut self, from: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
        self.session.from_peer(from, data, self.now)
    }
}

fn udp(b: MessageBuilder) -> MessageBuilder {
    b.attr(REQUESTED_TRANSPORT, &[TRANSPORT_UDP, 0, 0, 0])
}

fn no_attrs(b: MessageBuilder) -> MessageBuilder {
    b
}

#[test]
fn binding_needs_no_credentials() {
    let mut h = Harness::new();
    let tx = h.tx();
    let (events, raw, reply) =
        h.exchange(&MessageBuilder::new(Class::Request, BINDING, tx).build());
    assert!(events.is_empty());
    assert_eq!(reply.class, Class::Success);
    assert_eq!(reply.xor_address(XOR_MAPPED_ADDRESS), Some(client()));
    assert_eq!(reply.integrity_offset, None);
    // With a FINGERPRINT, the answer has one too (decode checked it is right).
    let (_, raw_fp, reply) =
        h.exchange(&MessageBuilder::new(Class::Request, BINDING, tx).build_with_fingerprint());
    assert!(reply.fingerprint);
    assert_eq!(raw_fp.len(), raw.len() + 8);
}

#[test]
fn binding_answers_an_ipv6_client() {
    let now = Instant::now();
    let v6: SocketAddr = "[2001:db8::1234:5678]:61000".parse().unwrap();
    let mut session = TurnSession::new(Arc::new(config()), v6, FIRST_NONCE.to_owned(), now);
    let tx = [0x11; 12];
    let request = MessageBuilder::new(Class::Request, BINDING, tx).build();
    let events = session
        .handle(&request, now, UNIX_NOW, &mut FakeAuthority::default())
        .unwrap();
    let [Event::Reply(raw)] = events.as_slice() else {
        panic!("{events:?}")
    };
    let reply = decode(raw).unwrap();
    assert_eq!(reply.xor_address(XOR_MAPPED_ADDRESS), Some(v6));
    // The IPv6 address is XORed with the cookie and the transaction id, not sent in clear.
    let value = reply.get(XOR_MAPPED_ADDRESS).unwrap();
    assert_eq!(value[1], FAMILY_IPV6);
    assert_ne!(
        &value[4..20],
        &"2001:db8::1234:5678"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
    );
}

#[test]
fn binding_with_unknown_required_attribute_gets_420() {
    let mut h = Harness::new();
    let tx = h.tx();
    let request = MessageBuilder::new(Class::Request, BINDING, tx)
        .attr(0x7ABC, b"?")
        .attr(0xC001, b"optional")
        .build();
    let (_, _, reply) = h.exchange(&request);
    assert_eq!(reply.error_code().unwrap().0, 420);
    assert_eq!(reply.unknown_attributes(), vec![0x7ABC]);
}

#[test]
fn allocate_without_integrity_is_challenged() {
    let mut h = Harness::new();
    let tx = h.tx();
    let request = udp(MessageBuilder::new(Class::Request, ALLOCATE, tx)).build_with_fingerprint();
    let (events, _, reply) = h.exchange(&request);
    assert!(events.is_empty());
    assert_eq!(reply.class, Class::Error);
    assert_eq!(
        reply.error_code(),
        Some((401, "Unauthenticated".to_owned()))
    );
    assert_eq!(reply.realm(), Some(REALM_NAME));
    assert_eq!(reply.nonce(), Some(FIRST_NONCE));
    assert_eq!(reply.integrity_offset, None);
    assert!(h.auth.allocated.is_empty());
    // Then the client signs with what it learnt, and gets its allocation.
    assert_eq!(h.allocate(), relayed_addr());
    assert_eq!(h.auth.allocated, vec![(h.username.clone(), client())]);
    assert_eq!(h.session.relayed(), Some(relayed_addr()));
    assert_eq!(h.session.principal().unwrap().agent, "alice");
}

#[test]
fn integrity_without_username_realm_or_nonce_is_400() {
    let mut h = Harness::new();
    for skip in [USERNAME, REALM, NONCE] {
        let tx = h.tx();
        let mut b = udp(MessageBuilder::new(Class::Request, ALLOCATE, tx));
        for (kind, value) in [
            (USERNAME, h.username.clone()),
            (REALM, REALM_NAME.to_owned()),
            (NONCE, h.nonce.clone()),
        ] {
            if kind != skip {
                b = b.attr(kind, value.as_bytes());
            }
        }
        let (_, _, reply) = h.exchange(&b.build_with_integrity(&h.key));
        assert_eq!(reply.error_code().unwrap().0, 400, "without {skip:#x}");
        assert_eq!(reply.nonce(), None);
        assert_eq!(reply.realm(), None);
    }
}

#[test]
fn a_nonce_not_ours_or_too_old_is_stale() {
    let mut h = Harness::new();
    h.nonce = "made-up".to_owned();
    let (_, _, reply) = h.request(ALLOCATE, udp);
    assert_eq!(reply.error_code().unwrap().0, 438);
    assert_eq!(reply.nonce(), Some(FIRST_NONCE));
    assert_eq!(reply.realm(), Some(REALM_NAME));
    h.nonce = FIRST_NONCE.to_owned();
    h.expect_success(ALLOCATE, |b| udp(b).u32_attr(LIFETIME, 3600));

    // An hour later the nonce is stale: 438 with a new one, which then works.
    h.advance(3000);
    h.expect_success(REFRESH, |b| b.u32_attr(LIFETIME, 3600));
    h.advance(700);
    let (_, _, reply) = h.request(REFRESH, no_attrs);
    assert_eq!(reply.error_code().unwrap().0, 438);
    let fresh = reply.nonce().unwrap().to_owned();
    assert_ne!(fresh, FIRST_NONCE);
    assert!(fresh.len() < 128);
    h.nonce = fresh.clone();
    h.expect_success(REFRESH, no_attrs);
    // The next 401 challenge hands out the same, current nonce.
    let tx = h.tx();
    let (_, _, reply) = h.exchange(&MessageBuilder::new(Class::Request, REFRESH, tx).build());
    assert_eq!(reply.error_code().unwrap().0, 401);
    assert_eq!(reply.nonce(), Some(fresh.as_str()));
}

#[test]
fn unknown_or_expired_usernames_are_401_with_a_challenge() {
    let mut h = Harness::new();
    for username in [
        "not-a-rest-username".to_owned(),
        credentials::mint(SECRET, "edge-1", "alice", UNIX_NOW - 1).username,
    ] {
        h.username = username;
        let (_, _, reply) = h.request(ALLOCATE, udp);
        assert_eq!(reply.error_code().unwrap().0, 401, "{}", h.username);
        assert_eq!(reply.realm(), Some(REALM_NAME));
        assert_eq!(reply.nonce(), Some(FIRST_NONCE));
    }
    // Another refusal of the authority passes through as it is, without a challenge.
    let banned = credentials::mint(SECRET, "edge-1", "banned", UNIX_NOW + 60);
    h.username = banned.username.clone();
    h.key = long_term_key(&banned.username, REALM_NAME, &banned.password);
    let (_, _, reply) = h.request(ALLOCATE, udp);
    assert_eq!(reply.error_code(), Some((403, "Forbidden".to_owned())));
    assert_eq!(reply.nonce(), None);
    assert!(h.auth.allocated.is_empty());
}

#[test]
fn wrong_password_or_realm_is_401() {
    let mut h = Harness::new();
    let right = h.key;
    h.key = long_term_key(&h.username, REALM_NAME, "guessed");
    let (_, _, reply) = h.request(ALLOCATE, udp);
    assert_eq!(reply.error_code().unwrap().0, 401);
    assert_eq!(reply.nonce(), Some(FIRST_NONCE));
    h.key = right;

    // Signed right but for another realm.
    let tx = h.tx();
    let cred_password = credentials::password(SECRET, &h.username);
    let key = long_term_key(&h.username, "other.org", &cred_password);
    let request = udp(MessageBuilder::new(Class::Request, ALLOCATE, tx))
        .attr(USERNAME, h.username.as_bytes())
        .attr(REALM, b"other.org")
        .attr(NONCE, FIRST_NONCE.as_bytes())
        .build_with_integrity(&key);
    let (_, _, reply) = h.exchange(&request);
    assert_eq!(reply.error_code().unwrap().0, 401);
    assert_eq!(reply.realm(), Some(REALM_NAME));
    assert!(h.auth.allocated.is_empty());
    // A tampered request: signed, then a byte changed.
    let tx = h.tx();
    let mut bytes = h.signed(ALLOCATE, tx, |b| {
        b.u32_attr(LIFETIME, 600)
            .attr(REQUESTED_TRANSPORT, &[17, 0, 0, 0])
    });
    bytes[27] ^= 1;
    let (_, _, reply) = h.exchange(&bytes);
    assert_eq!(reply.error_code().unwrap().0, 401);
}

#[test]
fn allocate_success_response() {
    let mut h = Harness::new();
    let (events, reply) = h.expect_success(ALLOCATE, udp);
    assert_eq!(
        events,
        vec![Event::Allocated {
            relayed: relayed_addr()
        }]
    );
    assert_eq!(reply.xor_address(XOR_RELAYED_ADDRESS), Some(relayed_addr()));
    assert_eq!(reply.xor_address(XOR_MAPPED_ADDRESS), Some(client()));
    assert_eq!(reply.lifetime(), Some(600));
    assert_eq!(
        h.session.next_timeout(),
        Some(h.start + Duration::from_secs(600))
    );
}

#[test]
fn allocate_lifetime_is_clamped_between_default_and_max() {
    for (asked, got) in [(1200, 1200), (7200, 3600), (30, 600), (600, 600)] {
        let mut h = Harness::new();
        let (_, reply) = h.expect_success(ALLOCATE, |b| udp(b).u32_attr(LIFETIME, asked));
        assert_eq!(reply.lifetime(), Some(got), "asked {asked}");
    }
}

#[test]
fn a_second_allocate_is_437_but_a_retransmission_gets_the_same_answer() {
    let mut h = Harness::new();
    let tx = h.tx();
    let request = h.signed(ALLOCATE, tx, udp);
    let (events, first, _) = h.exchange(&request);
    assert_eq!(events.len(), 1);
    let (events, again, _) = h.exchange(&request);
    assert!(events.is_empty(), "no second Allocated");
    assert_eq!(again, first);
    assert_eq!(h.auth.allocated.len(), 1);
    assert_eq!(h.expect_error(ALLOCATE, udp), 437);
    assert_eq!(h.auth.allocated.len(), 1);
}

#[test]
fn allocate_attribute_checks() {
    let mut h = Harness::new();
    assert_eq!(h.expect_error(ALLOCATE, no_attrs), 400);
    assert_eq!(
        h.expect_error(ALLOCATE, |b| b.attr(REQUESTED_TRANSPORT, &[6, 0, 0, 0])),
        442
    );
    assert_eq!(
        h.expect_error(ALLOCATE, |b| udp(b)
            .attr(REQUESTED_ADDRESS_FAMILY, &[FAMILY_IPV6, 0, 0, 0])),
        440
    );
    // EVEN-PORT and RESERVATION-TOKEN are not supported: 420 naming them.
    let (_, _, reply) = h.request(ALLOCATE, |b| {
        udp(b)
            .attr(EVEN_PORT, &[0x80])
            .attr(RESERVATION_TOKEN, &[0; 8])
    });
    assert_eq!(reply.error_code().unwrap().0, 420);
    assert_eq!(
        reply.unknown_attributes(),
        vec![EVEN_PORT, RESERVATION_TOKEN]
    );
    let (_, _, reply) = h.request(ALLOCATE, |b| udp(b).attr(0x0FFF, b"x"));
    assert_eq!(reply.unknown_attributes(), vec![0x0FFF]);
    assert!(h.auth.allocated.is_empty());
    // DONT-FRAGMENT is ignored; an IPv4 REQUESTED-ADDRESS-FAMILY and optional unknowns too.
    h.expect_success(ALLOCATE, |b| {
        udp(b)
            .attr(DONT_FRAGMENT, b"")
            .attr(REQUESTED_ADDRESS_FAMILY, &[FAMILY_IPV4, 0, 0, 0])
            .attr(0xC123, b"whatever")
    });
}

#[test]
fn the_authority_may_refuse_an_allocation() {
    let mut h = Harness::new();
    h.auth.refuse_allocate = Some(Refusal::new(486, "Allocation Quota Reached"));
    let (_, raw, reply) = h.request(ALLOCATE, udp);
    assert_eq!(
        reply.error_code(),
        Some((486, "Allocation Quota Reached".to_owned()))
    );
    assert!(verify_integrity(&raw, &reply, &h.key));
    assert_eq!(h.session.relayed(), None);
    h.auth.refuse_allocate = Some(Refusal::new(508, "Insufficient Capacity"));
    assert_eq!(h.expect_error(ALLOCATE, udp), 508);
}

#[test]
fn another_user_on_the_allocation_is_441() {
    let mut h = Harness::new();
    h.allocate();
    let other = credentials::mint(SECRET, "edge-1", "bob", UNIX_NOW + 60);
    h.username = other.username.clone();
    h.key = long_term_key(&other.username, REALM_NAME, &other.password);
    let (_, _, reply) = h.request(REFRESH, no_attrs);
    assert_eq!(reply.error_code().unwrap().0, 441);
}

#[test]
fn refresh() {
    let mut h = Harness::new();
    assert_eq!(h.expect_error(REFRESH, no_attrs), 437);
    h.allocate();
    h.advance(500);
    let (events, reply) = h.expect_success(REFRESH, |b| b.u32_attr(LIFETIME, 1800));
    assert!(events.is_empty());
    assert_eq!(reply.lifetime(), Some(1800));
    assert_eq!(
        h.session.next_timeout(),
        Some(h.now + Duration::from_secs(1800))
    );
    // No LIFETIME: the default.
    let (_, reply) = h.expect_success(REFRESH, no_attrs);
    assert_eq!(reply.lifetime(), Some(600));
    // Zero deletes it.
    let (events, reply) = h.expect_success(REFRESH, |b| b.u32_attr(LIFETIME, 0));
    assert_eq!(reply.lifetime(), Some(0));
    assert_eq!(
        events,
        vec![Event::Released {
            relayed: relayed_addr()
        }]
    );
    assert_eq!(h.auth.released, vec![relayed_addr()]);
    assert_eq!(h.session.relayed(), None);
    assert_eq!(h.session.next_timeout(), None);
    assert_eq!(h.expect_error(REFRESH, no_attrs), 437);
    // Closing afterwards releases nothing more.
    h.session.close(&mut h.auth);
    assert_eq!(h.auth.released.len(), 1);
}

#[test]
fn create_permission_checks() {
    let mut h = Harness::new();
    let to_peer = |b: MessageBuilder| b.xor_address(XOR_PEER_ADDRESS, peer());
    assert_eq!(h.expect_error(CREATE_PERMISSION, to_peer), 437);
    h.allocate();
    assert_eq!(h.expect_error(CREATE_PERMISSION, no_attrs), 400);
    assert_eq!(
        h.expect_error(CREATE_PERMISSION, |b| b.attr(XOR_PEER_ADDRESS, &[0, 1, 0])),
        400
    );
    let v6: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
    assert_eq!(
        h.expect_error(CREATE_PERMISSION, |b| b.xor_address(XOR_PEER_ADDRESS, v6)),
        443
    );
    // One peer allowed, one not: 403 and neither installed.
    let stranger: SocketAddr = "192.0.2.99:3478".parse().unwrap();
    assert_eq!(
        h.expect_error(CREATE_PERMISSION, |b| {
            b.xor_address(XOR_PEER_ADDRESS, peer())
                .xor_address(XOR_PEER_ADDRESS, stranger)
        }),
        403
    );
    assert_eq!(h.peer_sends(peer(), b"x"), None);
    // A port of the peer's IP the authority does not allow is refused too.
    let other_port = SocketAddr::new(peer().ip(), 9);
    assert_eq!(
        h.expect_error(CREATE_PERMISSION, |b| b
            .xor_address(XOR_PEER_ADDRESS, other_port)),
        403
    );
    // Both allowed ones at once.
    let (events, _) = h.expect_success(CREATE_PERMISSION, |b| {
        b.xor_address(XOR_PEER_ADDRESS, peer())
            .xor_address(XOR_PEER_ADDRESS, peer2())
    });
    assert!(events.is_empty());
    assert!(h.peer_sends(peer(), b"x").is_some());
    assert!(h.peer_sends(peer2(), b"x").is_some());
}

#[test]
fn permissions_are_bounded() {
    let mut h = Harness::new();
    h.auth.peers = (0..=MAX_PERMISSIONS)
        .map(|i| SocketAddr::new(std::net::Ipv4Addr::new(10, 0, 0, i as u8).into(), 5000))
        .collect();
    h.allocate();
    let peers = h.auth.peers.clone();
    for p in &peers[..MAX_PERMISSIONS] {
        h.permit(*p);
    }
    // Refreshing an existing one is fine; a new one is beyond the bound.
    h.permit(peers[0]);
    let last = peers[MAX_PERMISSIONS];
    assert_eq!(
        h.expect_error(CREATE_PERMISSION, |b| b.xor_address(XOR_PEER_ADDRESS, last)),
        508
    );
    assert_eq!(
        h.expect_error(CHANNEL_BIND, |b| {
            b.attr(CHANNEL_NUMBER, &[0x40, 0, 0, 0])
                .xor_address(XOR_PEER_ADDRESS, last)
        }),
        508
    );
}

fn bind(number: u16, to: SocketAddr) -> impl FnOnce(MessageBuilder) -> MessageBuilder {
    move |b| {
        b.attr(CHANNEL_NUMBER, &[(number >> 8) as u8, number as u8, 0, 0])
            .xor_address(XOR_PEER_ADDRESS, to)
    }
}

#[test]
fn channel_bind_checks() {
    let mut h = Harness::new();
    assert_eq!(h.expect_error(CHANNEL_BIND, bind(0x4000, peer())), 437);
    h.allocate();
    assert_eq!(h.expect_error(CHANNEL_BIND, bind(0x3FFF, peer())), 400);
    assert_eq!(h.expect_error(CHANNEL_BIND, bind(0x5000, peer())), 400);
    assert_eq!(
        h.expect_error(CHANNEL_BIND, |b| b.xor_address(XOR_PEER_ADDRESS, peer())),
        400
    );
    assert_eq!(
        h.expect_error(CHANNEL_BIND, |b| b.attr(CHANNEL_NUMBER, &[0x40, 0, 0, 0])),
        400
    );
    let stranger: SocketAddr = "192.0.2.99:3478".parse().unwrap();
    assert_eq!(h.expect_error(CHANNEL_BIND, bind(0x4000, stranger)), 403);
    h.expect_success(CHANNEL_BIND, bind(0x4000, peer()));
    // Rebinding the same pair refreshes it; another pairing of either is refused.
    h.expect_success(CHANNEL_BIND, bind(0x4000, peer()));
    assert_eq!(h.expect_error(CHANNEL_BIND, bind(0x4000, peer2())), 400);
    assert_eq!(h.expect_error(CHANNEL_BIND, bind(0x4001, peer())), 400);
    h.expect_success(CHANNEL_BIND, bind(0x4FFF, peer2()));
}

#[test]
fn relays_with_send_and_data_indications() {
    let mut h = Harness::new();
    // Before any allocation, a Send is dropped without a word.
    assert!(h.send(peer(), b"early").is_empty());
    assert_eq!(h.session.drops().to_peer, 1);
    h.allocate();
    // No permission yet: dropped both ways.
    assert!(h.send(peer(), b"hello").is_empty());
    assert_eq!(h.peer_sends(peer(), b"hi"), None);
    h.permit(peer());
    assert_eq!(
        h.send(peer(), b"hello"),
        vec![Event::ToPeer {
            peer: peer(),
            payload: b"hello".to_vec()
        }]
    );
    // The permission is for the IP, but the authority still says no to another port.
    let other_port = SocketAddr::new(peer().ip(), 9);
    assert!(h.send(other_port, b"sneaky").is_empty());
    assert_eq!(h.session.drops().to_peer, 3);
    // Without DATA or XOR-PEER-ADDRESS: dropped, and never an answer.
    let tx = h.tx();
    let no_data = MessageBuilder::new(Class::Indication, SEND, tx)
        .xor_address(XOR_PEER_ADDRESS, peer())
        .build();
    assert!(h.handle(&no_data).is_empty());

    let bytes = h.peer_sends(peer(), b"hi there").unwrap();
    assert_eq!(frame_len(&bytes), Ok(Some(bytes.len())));
    let data = decode(&bytes).unwrap();
    assert_eq!((data.class, data.method), (Class::Indication, DATA));
    assert_eq!(data.xor_address(XOR_PEER_ADDRESS), Some(peer()));
    assert_eq!(data.get(DATA_ATTR), Some(&b"hi there"[..]));
    let next = decode(&h.peer_sends(peer(), b"again").unwrap()).unwrap();
    assert_ne!(next.transaction, data.transaction);
    // Any port of a permitted IP may send to the client (RFC 8656 §9).
    assert!(h.peer_sends(other_port, b"x").is_some());
    assert_eq!(h.peer_sends(peer2(), b"x"), None);
    assert_eq!(h.session.drops().from_peer, 2);
    // Too large for a Data indication.
    assert_eq!(h.peer_sends(peer(), &vec![0; MAX_DATA_LEN + 1]), None);
    assert!(h.peer_sends(peer(), &vec![0; MAX_DATA_LEN]).is_some());
}

#[test]
fn relays_with_channel_data() {
    let mut h = Harness::new();
    h.allocate();
    // Unbound channel: dropped.
    assert!(h.handle(&encode_channel_data(0x4001, b"x")).is_empty());
    let (events, _) = h.expect_success(CHANNEL_BIND, bind(0x4001, peer()));
    assert!(events.is_empty());
    assert_eq!(
        h.handle(&encode_channel_data(0x4001, b"hello")),
        vec![Event::ToPeer {
            peer: peer(),
            payload: b"hello".to_vec()
        }]
    );
    // The bind installed the permission, and the way back is ChannelData.
    let back = h.peer_sends(peer(), b"hey").unwrap();
    assert_eq!(back, encode_channel_data(0x4001, b"hey"));
    assert_eq!(frame_len(&back), Ok(Some(8)));
    // Another port of the same IP has no channel: a Data indication.
    let other_port = SocketAddr::new(peer().ip(), 9);
    let data = decode(&h.peer_sends(other_port, b"x").unwrap()).unwrap();
    assert_eq!(data.method, DATA);
    // Withdrawn by the authority: ChannelData to the peer is dropped.
    h.auth.peers.clear();
    assert!(h.handle(&encode_channel_data(0x4001, b"hello")).is_empty());
    assert_eq!(h.session.drops().to_peer, 2);
}

#[test]
fn permissions_channels_and_the_allocation_expire() {
    let mut h = Harness::new();
    h.allocate();
    h.expect_success(CHANNEL_BIND, bind(0x4002, peer()));
    h.permit(peer2());
    let start = h.now;
    assert_eq!(
        h.session.next_timeout(),
        Some(start + Duration::from_secs(300))
    );

    // After 300 s the permissions lapse: nothing relayed either way.
    h.advance(300);
    assert_eq!(h.peer_sends(peer(), b"x"), None);
    assert!(h.handle(&encode_channel_data(0x4002, b"x")).is_empty());
    assert!(h.session.handle_timeout(h.now, &mut h.auth).is_empty());
    // Only the allocation (600 s) and the channel's quarantine (600 + 300 s) remain.
    assert_eq!(
        h.session.next_timeout(),
        Some(start + Duration::from_secs(600))
    );

    // A refreshed allocation outlives the channel; after it the channel number stays
    // reserved for its peer until the quarantine ends.
    h.expect_success(REFRESH, |b| b.u32_attr(LIFETIME, 3600));
    h.advance(300);
    assert_eq!(h.expect_error(CHANNEL_BIND, bind(0x4002, peer2())), 400);
    h.advance(300);
    h.session.handle_timeout(h.now, &mut h.auth);
    h.expect_success(CHANNEL_BIND, bind(0x4002, peer2()));

    // The allocation's own expiry releases it.
    let end = h.session.next_timeout().unwrap();
    assert!(end <= start + Duration::from_secs(300 + 3600));
    while let Some(t) = h.session.next_timeout() {
        h.now = t;
        let events = h.session.handle_timeout(t, &mut h.auth);
        if !events.is_empty() {
            assert_eq!(
                events,
                vec![Event::Released {
                    relayed: relayed_addr()
                }]
            );
            break;
        }
    }
    assert_eq!(h.now, start + Duration::from_secs(300 + 3600));
    assert_eq!(h.auth.released, vec![relayed_addr()]);
    assert_eq!(h.session.relayed(), None);
    assert_eq!(h.peer_sends(peer2(), b"x"), None);
}

#[test]
fn an_expired_allocation_is_released_by_the_next_message() {
    let mut h = Harness::new();
    h.allocate();
    h.advance(601);
    // handle() runs the due timeouts first: Released, then 437 for the Refresh.
    let (events, _, reply) = h.request(REFRESH, no_attrs);
    assert_eq!(
        events,
        vec![Event::Released {
            relayed: relayed_addr()
        }]
    );
    assert_eq!(reply.error_code().unwrap().0, 437);
    // And a new allocation may be made on the same connection.
    h.allocate();
    assert_eq!(h.auth.allocated.len(), 2);
}

#[test]
fn close_releases_the_allocation() {
    let mut h = Harness::new();
    h.session.close(&mut h.auth);
    assert!(h.auth.released.is_empty());
    h.allocate();
    h.session.close(&mut h.auth);
    assert_eq!(h.auth.released, vec![relayed_addr()]);
    assert_eq!(h.session.relayed(), None);
    assert_eq!(h.session.principal(), None);
}

#[test]
fn responses_garbage_and_unframeable_bytes() {
    let mut h = Harness::new();
    h.allocate();
    let tx = h.tx();
    // Responses and other indications from the client are ignored.
    for class in [Class::Success, Class::Error] {
        let bytes = MessageBuilder::new(class, ALLOCATE, tx).build();
        assert!(h.handle(&bytes).is_empty());
    }
    let bytes = MessageBuilder::new(Class::Indication, BINDING, tx).build();
    assert!(h.handle(&bytes).is_empty());
    // A request with a method TURN does not have: 400.
    assert_eq!(h.expect_error(0x0ABC, no_attrs), 400);
    // A SEND "request" is not a Send indication.
    assert_eq!(h.expect_error(SEND, no_attrs), 400);
    // Framed but malformed: an attribute past the end; a wrong FINGERPRINT. Dropped.
    let mut bad = MessageBuilder::new(Class::Request, BINDING, tx)
        .attr(SOFTWARE, b"abcd")
        .build();
    bad[23] = 40;
    assert!(h.handle(&bad).is_empty());
    let mut bad_fp = MessageBuilder::new(Class::Request, BINDING, tx).build_with_fingerprint();
    bad_fp[27] ^= 0xFF;
    assert!(h.handle(&bad_fp).is_empty());
    assert_eq!(h.session.drops().malformed, 2);
    // Not one frame: errors for the network code to close on.
    let good = MessageBuilder::new(Class::Request, BINDING, tx).build();
    let err = |h: &mut Harness, b: &[u8]| h.session.handle(b, h.now, UNIX_NOW, &mut h.auth);
    assert!(matches!(
        err(&mut h, &[0xFF; 20]),
        Err(TurnError::Framing(_))
    ));
    assert!(matches!(
        err(&mut h, &good[..10]),
        Err(TurnError::Incomplete(10))
    ));
    assert!(matches!(err(&mut h, &[]), Err(TurnError::Incomplete(0))));
    let mut two = good.clone();
    two.extend_from_slice(&good);
    assert!(matches!(
        err(&mut h, &two),
        Err(TurnError::NotOneFrame { .. })
    ));
    // The allocation survived all that.
    assert_eq!(h.session.relayed(), Some(relayed_addr()));
}

#[test]
fn authenticated_answers_carry_integrity_and_fingerprint() {
    let mut h = Harness::new();
    let tx = h.tx();
    let request = udp(MessageBuilder::new(Class::Request, ALLOCATE, tx))
        .attr(USERNAME, h.username.as_bytes())
        .attr(REALM, REALM_NAME.as_bytes())
        .attr(NONCE, FIRST_NONCE.as_bytes())
        .build_with_integrity_and_fingerprint(&h.key);
    let (_, raw, reply) = h.exchange(&request);
    assert_eq!(reply.class, Class::Success);
    assert!(reply.fingerprint);
    assert!(verify_integrity(&raw, &reply, &h.key));
    // MESSAGE-INTEGRITY then FINGERPRINT, last.
    let kinds: Vec<u16> = reply.attributes.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        &kinds[kinds.len() - 3..],
        &[SOFTWARE, MESSAGE_INTEGRITY, FINGERPRINT]
    );
    // The FINGERPRINT value is the CRC-32 of what precedes it XOR 0x5354554e.
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&raw[..raw.len() - 8]);
    assert_eq!(raw[raw.len() - 4..], (crc ^ 0x5354_554E).to_be_bytes());
    // An error to an authenticated request is signed as well.
    let tx = h.tx();
    let request = MessageBuilder::new(Class::Request, ALLOCATE, tx)
        .attr(REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .attr(USERNAME, h.username.as_bytes())
        .attr(REALM, REALM_NAME.as_bytes())
        .attr(NONCE, FIRST_NONCE.as_bytes())
        .build_with_integrity_and_fingerprint(&h.key);
    let (_, raw, reply) = h.exchange(&request);
    assert_eq!(reply.error_code().unwrap().0, 437);
    assert!(verify_integrity(&raw, &reply, &h.key));
    assert!(!verify_integrity(&raw, &reply, &[0; 16]));
}
