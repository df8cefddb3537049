//! Any bytes from a TURN client: the stream splitter, the STUN and ChannelData decoders and
//! a TURN session never panic; a decoded message survives encoding and decoding again; and
//! whatever was allocated is released when the connection closes. Each request that decodes
//! is also handled re-signed with the test credentials, so the fuzzer reaches past
//! authentication into Allocate, Refresh, CreatePermission and ChannelBind.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_edge::turn::allocation::{Authority, Principal, Refusal, TurnConfig, TurnSession};
use agent_edge::turn::stun::{self, Class, MessageBuilder};
use libfuzzer_sys::fuzz_target;

const NONCE: &str = "fuzz-nonce";
const PASSWORD: &str = "fuzz-password";

/// Every username is good (with [`PASSWORD`]); peers in 192.0.2.0/24 are allowed.
#[derive(Debug, Default)]
struct TestAuthority {
    live: u32,
}

impl Authority for TestAuthority {
    fn credential(&mut self, username: &str, realm: &str, _: u64) -> Result<Principal, Refusal> {
        Ok(Principal {
            username: username.to_owned(),
            edge: "edge-1".to_owned(),
            agent: "fuzz".to_owned(),
            key: stun::long_term_key(username, realm, PASSWORD),
        })
    }

    fn allocate(&mut self, p: &Principal, _: SocketAddr) -> Result<SocketAddr, Refusal> {
        if p.username.starts_with('q') {
            return Err(Refusal::new(486, "Allocation Quota Reached"));
        }
        self.live += 1;
        Ok(SocketAddr::from(([203, 0, 113, 1], 50_000)))
    }

    fn release(&mut self, _: SocketAddr) {
        assert!(self.live > 0, "released more than allocated");
        self.live -= 1;
    }

    fn permits(&self, _: &Principal, peer: SocketAddr) -> bool {
        matches!(peer, SocketAddr::V4(a) if a.ip().octets()[..3] == [192, 0, 2])
    }
}

fuzz_target!(|data: &[u8]| {
    let config = Arc::new(TurnConfig::default());
    let t0 = Instant::now();
    let client = SocketAddr::from(([198, 51, 100, 7], 40_000));
    let mut session = TurnSession::new(config.clone(), client, NONCE.to_owned(), t0);
    let mut authority = TestAuthority::default();
    let mut now = t0;

    let _ = stun::decode(data);
    let _ = stun::decode_channel_data(data);
    let mut rest = data;
    while let Ok(Some(n)) = stun::frame_len(rest) {
        let (frame, tail) = rest.split_at(n);
        rest = tail;
        session
            .handle(frame, now, 1_700_000_000, &mut authority)
            .expect("one whole frame is never an error");
        if let Some((_, payload)) = stun::decode_channel_data(frame) {
            let peer = SocketAddr::from(([192, 0, 2, 10], 3478));
            let _ = session.from_peer(peer, payload, now);
        }
        if let Ok(msg) = stun::decode(frame) {
            // Round trip: the attributes before MESSAGE-INTEGRITY survive re-encoding.
            let mut b = MessageBuilder::new(msg.class, msg.method, msg.transaction);
            let plain: Vec<_> = msg
                .attributes
                .iter()
                .filter(|(k, _)| ![stun::MESSAGE_INTEGRITY, stun::FINGERPRINT].contains(k))
                .cloned()
                .collect();
            for (kind, value) in &plain {
                b = b.attr(*kind, value);
            }
            let again = stun::decode(&b.clone().build()).expect("our own encoding decodes");
            assert_eq!(
                (again.class, again.method, again.transaction),
                (msg.class, msg.method, msg.transaction)
            );
            assert_eq!(again.attributes, plain);
            if msg.class == Class::Request {
                let username = msg.username().unwrap_or("user");
                let key = stun::long_term_key(username, &config.realm, PASSWORD);
                let signed = plain
                    .iter()
                    .filter(|(k, _)| ![stun::USERNAME, stun::REALM, stun::NONCE].contains(k))
                    .fold(
                        MessageBuilder::new(msg.class, msg.method, msg.transaction),
                        |b, (kind, value)| b.attr(*kind, value),
                    )
                    .attr(stun::USERNAME, username.as_bytes())
                    .attr(stun::REALM, config.realm.as_bytes())
                    .attr(stun::NONCE, NONCE.as_bytes())
                    .finish(Some(&key), msg.fingerprint);
                if stun::frame_len(&signed) == Ok(Some(signed.len())) {
                    session
                        .handle(&signed, now, 1_700_000_000, &mut authority)
                        .expect("one whole frame is never an error");
                }
            }
        }
        if let Some(peer) = stun::decode(frame)
            .ok()
            .and_then(|m| m.xor_address(stun::XOR_PEER_ADDRESS))
        {
            let _ = session.from_peer(peer, frame, now);
        }
        now += Duration::from_secs(u64::from(frame.len() as u8));
        if session.next_timeout().is_some_and(|t| t <= now) {
            session.handle_timeout(now, &mut authority);
        }
    }
    session.close(&mut authority);
    assert_eq!(authority.live, 0, "an allocation left behind");
    assert_eq!(session.relayed(), None);
});
