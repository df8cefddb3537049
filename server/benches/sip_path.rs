//! What one SIP message costs on the call path: parsing it at the boundary, and the buffer
//! server rebuilding it for the other leg (re-addressing) and serialising it. Issue 8's target
//! is at most 5 µs for parse plus re-address.
//!
//! `cargo bench -p agent-edge --bench sip_path`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use agent_edge::buffer::readdress::{self, LocalAddr};
use agent_edge::sip::{SipMessage, Target, TransportKind};
use criterion::{Criterion, criterion_group, criterion_main};

/// An INVITE as the buffer server receives it from the distributor, with an SDP offer.
const INVITE: &str = "INVITE sip:support@10.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/WSS dist-1.invalid;branch=z9hG4bKdist\r\n\
Via: SIP/2.0/UDP 192.0.2.7:5061;branch=z9hG4bKcaller;rport\r\n\
Record-Route: <sip:10.0.0.1:5060;transport=udp;lr>\r\n\
Max-Forwards: 69\r\n\
From: \"Carol\" <sip:carol@192.0.2.7:5061>;tag=caller-tag\r\n\
To: <sip:support@10.0.0.1:5060>\r\n\
Call-ID: caller-call-id@192.0.2.7\r\n\
CSeq: 314 INVITE\r\n\
Contact: <sip:carol@192.0.2.7:5061>\r\n\
X-AE-Call-Type: support\r\n\
X-AE-Queue: support\r\n\
X-AE-Waited: 3\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 133\r\n\r\n\
v=0\r\no=caller 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";

fn local() -> LocalAddr {
    LocalAddr {
        transport: "UDP",
        sent_by: "127.0.0.1:5070".into(),
        host: "127.0.0.1:5070".into(),
        contact: "<sip:127.0.0.1:5070>".into(),
    }
}

fn target(kind: TransportKind, addr: &str) -> Target {
    Target {
        kind,
        addr: addr.parse().unwrap(),
        conn: None,
    }
}

fn bench(c: &mut Criterion) {
    let bytes = INVITE.as_bytes();
    let parsed = SipMessage::parse(bytes).unwrap();
    assert_eq!(parsed.body.len(), 133, "the whole SDP is the body");
    c.bench_function("parse INVITE", |b| {
        b.iter(|| SipMessage::parse(black_box(bytes)).unwrap())
    });
    let invite = SipMessage::parse(bytes).unwrap();
    let local = local();
    let agent_leg = readdress::agent_leg(
        &invite,
        "alice",
        "sip:alice@192.0.2.50:5062",
        target(TransportKind::Udp, "192.0.2.50:5062"),
        &local,
        "agent-call-id".into(),
        "agent-tag".into(),
    );
    c.bench_function("re-address INVITE to the agent leg and serialise", |b| {
        b.iter(|| {
            let out = readdress::request_for_leg(
                black_box(&invite),
                &agent_leg,
                1,
                &local,
                "z9hG4bKbench",
            );
            out.to_bytes()
        })
    });
    c.bench_function("parse + re-address + serialise", |b| {
        b.iter(|| {
            let msg = SipMessage::parse(black_box(bytes)).unwrap();
            readdress::request_for_leg(&msg, &agent_leg, 1, &local, "z9hG4bKbench").to_bytes()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
