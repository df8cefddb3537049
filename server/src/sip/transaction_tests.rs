//! The transaction layer on a simulated clock: every timer at its RFC 3261 time, both
//! transports, and a whole call over a channel that loses 30% of its datagrams.

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use super::*;
use crate::sip::{TransportKind, message::SipMessage};

const MS: Duration = Duration::from_millis(1);

fn udp_peer() -> Target {
    Target::udp("127.0.0.1:5080".parse().unwrap())
}

fn tcp_peer() -> Target {
    Target {
        kind: TransportKind::Tcp,
        addr: "127.0.0.1:5080".parse().unwrap(),
        conn: Some(ConnId(9)),
    }
}

fn request(method: &str, branch: &str, cseq: u32) -> SipMessage {
    let text = format!(
        "{method} sip:alice@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@127.0.0.1>;tag=from1\r\nTo: <sip:alice@127.0.0.1>\r\n\
         Call-ID: call-1\r\nCSeq: {cseq} {method}\r\nContact: <sip:bob@127.0.0.1:5080>\r\nContent-Length: 0\r\n\r\n"
    );
    SipMessage::parse(text.as_bytes()).unwrap()
}

fn layer() -> TransactionLayer {
    TransactionLayer::new(Config::default())
}

fn drain_transmits<N: Clone>(l: &mut TransactionLayer<N>) -> Vec<Transmit<N>> {
    std::iter::from_fn(|| l.poll_transmit()).collect()
}

fn drain_events(l: &mut TransactionLayer) -> Vec<TxEvent> {
    std::iter::from_fn(|| l.poll_event()).collect()
}

/// Advances to each deadline until `until`, recording when something was sent.
fn run_until(l: &mut TransactionLayer, t0: Instant, until: Duration) -> Vec<Duration> {
    let mut sent = Vec::new();
    while let Some(at) = l.poll_timeout() {
        if at > t0 + until {
            break;
        }
        l.handle_timeout(at);
        for _ in drain_transmits(l) {
            sent.push(at - t0);
        }
    }
    sent
}

fn secs(v: &[f64]) -> Vec<Duration> {
    v.iter().map(|s| Duration::from_secs_f64(*s)).collect()
}

#[test]
fn invite_over_udp_retransmits_on_timer_a_and_times_out_on_timer_b() {
    let t0 = Instant::now();
    let mut l = layer();
    let tx = l.send_request(request("INVITE", "z9hG4bKa", 1), udp_peer(), t0);
    assert_eq!(drain_transmits(&mut l).len(), 1);
    let sent = run_until(&mut l, t0, Duration::from_secs(40));
    assert_eq!(sent, secs(&[0.5, 1.5, 3.5, 7.5, 15.5, 31.5]));
    let events = drain_events(&mut l);
    assert_eq!(
        events,
        vec![TxEvent::Timeout { tx }, TxEvent::Terminated { tx }]
    );
    assert!(l.is_empty());
}

#[test]
fn non_invite_over_udp_caps_timer_e_at_t2_and_times_out_on_timer_f() {
    let t0 = Instant::now();
    let mut l = layer();
    let tx = l.send_request(request("BYE", "z9hG4bKb", 2), udp_peer(), t0);
    drain_transmits(&mut l);
    let sent = run_until(&mut l, t0, Duration::from_secs(40));
    assert_eq!(
        sent,
        secs(&[0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
    );
    assert_eq!(
        drain_events(&mut l),
        vec![TxEvent::Timeout { tx }, TxEvent::Terminated { tx }]
    );
}

#[test]
fn reliable_transports_never_retransmit_and_end_at_once() {
    let t0 = Instant::now();
    let mut l = layer();
    let tx = l.send_request(request("BYE", "z9hG4bKc", 2), tcp_peer(), t0);
    drain_transmits(&mut l);
    l.handle_timeout(t0 + Duration::from_secs(10));
    assert!(drain_transmits(&mut l).is_empty());
    let ok = request("BYE", "z9hG4bKc", 2).response(200, Some("to1"));
    l.handle_message(ok, tcp_peer(), t0 + Duration::from_secs(10));
    l.handle_timeout(t0 + Duration::from_secs(10));
    let events = drain_events(&mut l);
    assert!(matches!(events[0], TxEvent::Response { .. }));
    assert_eq!(events[1], TxEvent::Terminated { tx });
}

#[test]
fn non_2xx_final_to_invite_is_acked_by_the_layer_with_the_same_branch() {
    let t0 = Instant::now();
    let mut l = layer();
    let invite = request("INVITE", "z9hG4bKd", 1);
    let tx = l.send_request(invite.clone(), udp_peer(), t0);
    drain_transmits(&mut l);
    let busy = invite.response(486, Some("agent-tag"));
    l.handle_message(busy.clone(), udp_peer(), t0 + 100 * MS);
    let ack = drain_transmits(&mut l);
    assert_eq!(ack.len(), 1);
    let ack = SipMessage::parse(&ack[0].bytes).unwrap();
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(ack.top_via().unwrap().branch.as_deref(), Some("z9hG4bKd"));
    assert_eq!(ack.to_tag().as_deref(), Some("agent-tag"));
    assert_eq!(ack.cseq().unwrap().seq, 1);
    // A retransmitted 486 is ACKed again and not reported twice.
    l.handle_message(busy, udp_peer(), t0 + 600 * MS);
    assert_eq!(drain_transmits(&mut l).len(), 1);
    let events = drain_events(&mut l);
    assert_eq!(events.len(), 1, "{events:?}");
    // Timer D: 32 s on UDP.
    l.handle_timeout(t0 + Duration::from_secs(32));
    assert!(!l.is_empty());
    l.handle_timeout(t0 + Duration::from_secs(33));
    assert_eq!(drain_events(&mut l), vec![TxEvent::Terminated { tx }]);
}

#[test]
fn server_absorbs_retransmissions_and_repeats_its_last_response() {
    let t0 = Instant::now();
    let mut l = layer();
    let bye = request("BYE", "z9hG4bKe", 2);
    l.handle_message(bye.clone(), udp_peer(), t0);
    let Some(TxEvent::Request { tx: Some(tx), .. }) = l.poll_event() else {
        panic!("no request event")
    };
    l.handle_message(bye.clone(), udp_peer(), t0 + 500 * MS);
    assert!(
        drain_transmits(&mut l).is_empty(),
        "Trying absorbs silently"
    );
    assert!(drain_events(&mut l).is_empty(), "no second Request event");
    l.send_response(tx, bye.response(200, Some("t")), t0 + 600 * MS)
        .unwrap();
    assert_eq!(drain_transmits(&mut l).len(), 1);
    l.handle_message(bye, udp_peer(), t0 + 700 * MS);
    let again = drain_transmits(&mut l);
    assert_eq!(again.len(), 1);
    assert!(again[0].bytes.starts_with(b"SIP/2.0 200"));
    // Timer J: 64*T1 on UDP.
    l.handle_timeout(t0 + 600 * MS + Duration::from_secs(32));
    assert_eq!(drain_events(&mut l), vec![TxEvent::Terminated { tx }]);
}

#[test]
fn invite_server_sends_100_and_retransmits_a_failure_until_ack() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(Config {
        send_100_trying: true,
        ..Config::default()
    });
    let invite = request("INVITE", "z9hG4bKf", 1);
    l.handle_message(invite.clone(), udp_peer(), t0);
    let trying = drain_transmits(&mut l);
    assert!(trying[0].bytes.starts_with(b"SIP/2.0 100 Trying"));
    let Some(TxEvent::Request { tx: Some(tx), .. }) = l.poll_event() else {
        panic!()
    };
    l.send_response(tx, invite.response(486, Some("t")), t0)
        .unwrap();
    drain_transmits(&mut l);
    let sent = run_until(&mut l, t0, Duration::from_secs(8));
    assert_eq!(sent, secs(&[0.5, 1.5, 3.5, 7.5]), "timer G");
    let mut ack = request("ACK", "z9hG4bKf", 1);
    ack.set_header("To", "<sip:alice@127.0.0.1>;tag=t");
    l.handle_message(ack, udp_peer(), t0 + Duration::from_secs(8));
    assert!(
        drain_events(&mut l).is_empty(),
        "the ACK of a failure is absorbed"
    );
    assert!(
        run_until(&mut l, t0, Duration::from_secs(12)).is_empty(),
        "no more G"
    );
    l.handle_timeout(t0 + Duration::from_secs(13) + 100 * MS);
    assert_eq!(
        drain_events(&mut l),
        vec![TxEvent::Terminated { tx }],
        "timer I (T4)"
    );
}

#[test]
fn invite_server_without_ack_times_out_on_timer_h() {
    let t0 = Instant::now();
    let mut l = layer();
    let invite = request("INVITE", "z9hG4bKg", 1);
    l.handle_message(invite.clone(), udp_peer(), t0);
    let Some(TxEvent::Request { tx: Some(tx), .. }) = l.poll_event() else {
        panic!()
    };
    l.send_response(tx, invite.response(480, Some("t")), t0)
        .unwrap();
    run_until(&mut l, t0, Duration::from_secs(33));
    assert_eq!(
        drain_events(&mut l),
        vec![TxEvent::Timeout { tx }, TxEvent::Terminated { tx }]
    );
}

#[test]
fn invite_server_retransmits_2xx_until_the_end_to_end_ack() {
    let t0 = Instant::now();
    let mut l = layer();
    let invite = request("INVITE", "z9hG4bKh", 1);
    l.handle_message(invite.clone(), tcp_peer(), t0);
    let Some(TxEvent::Request { tx: Some(tx), .. }) = l.poll_event() else {
        panic!()
    };
    l.send_response(tx, invite.response(200, Some("t")), t0)
        .unwrap();
    drain_transmits(&mut l);
    let sent = run_until(&mut l, t0, Duration::from_secs(4));
    assert_eq!(
        sent,
        secs(&[0.5, 1.5, 3.5]),
        "even on TCP: a later hop may be UDP"
    );
    // The ACK of a 2xx has its own branch.
    let mut ack = request("ACK", "z9hG4bKother", 1);
    ack.set_header("To", "<sip:alice@127.0.0.1>;tag=t");
    l.handle_message(ack, tcp_peer(), t0 + Duration::from_secs(4));
    assert!(matches!(
        drain_events(&mut l)[..],
        [TxEvent::Request { tx: None, .. }]
    ));
    assert!(run_until(&mut l, t0, Duration::from_secs(20)).is_empty());
    l.handle_timeout(t0 + Duration::from_secs(33));
    assert_eq!(drain_events(&mut l), vec![TxEvent::Terminated { tx }]);
}

#[test]
fn cancel_gets_200_and_reaches_the_owner_and_unknown_cancel_gets_481() {
    let t0 = Instant::now();
    let mut l = layer();
    let invite = request("INVITE", "z9hG4bKi", 1);
    l.handle_message(invite, udp_peer(), t0);
    let Some(TxEvent::Request { tx: Some(tx), .. }) = l.poll_event() else {
        panic!()
    };
    l.handle_message(request("CANCEL", "z9hG4bKi", 1), udp_peer(), t0 + 100 * MS);
    let sent = drain_transmits(&mut l);
    assert!(sent[0].bytes.starts_with(b"SIP/2.0 200"));
    assert!(matches!(drain_events(&mut l)[..], [TxEvent::Cancel { invite, .. }] if invite == tx));
    l.handle_message(
        request("CANCEL", "z9hG4bKnone", 1),
        udp_peer(),
        t0 + 200 * MS,
    );
    let sent = drain_transmits(&mut l);
    assert!(
        sent[0].bytes.starts_with(b"SIP/2.0 481"),
        "{:?}",
        sent[0].bytes
    );
    assert!(drain_events(&mut l).is_empty());
}

#[test]
fn client_cancel_waits_for_a_provisional() {
    let t0 = Instant::now();
    let mut l = layer();
    let invite = request("INVITE", "z9hG4bKj", 1);
    let tx = l.send_request(invite.clone(), udp_peer(), t0);
    drain_transmits(&mut l);
    assert_eq!(l.cancel(tx, t0 + 100 * MS), None);
    assert!(
        drain_transmits(&mut l).is_empty(),
        "no CANCEL before a provisional"
    );
    l.handle_message(invite.response(180, Some("a")), udp_peer(), t0 + 200 * MS);
    let sent = drain_transmits(&mut l);
    assert_eq!(sent.len(), 1);
    let cancel = SipMessage::parse(&sent[0].bytes).unwrap();
    assert_eq!(cancel.method(), Some(&Method::Cancel));
    assert_eq!(
        cancel.top_via().unwrap().branch.as_deref(),
        Some("z9hG4bKj")
    );
    assert_eq!(cancel.to_tag(), None);
}

#[test]
fn timer_c_cancels_a_ringing_invite_and_reports_the_timeout_once() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(Config {
        timer_c: Some(Duration::from_secs(180)),
        ..Config::default()
    });
    let invite = request("INVITE", "z9hG4bKc1", 1);
    let tx = l.send_request(invite.clone(), udp_peer(), t0);
    l.handle_message(invite.response(180, Some("a")), udp_peer(), t0 + 100 * MS);
    drain_transmits(&mut l);
    drain_events(&mut l);
    l.handle_timeout(t0 + Duration::from_secs(181));
    let sent = drain_transmits(&mut l);
    assert!(
        sent.iter().any(|t| t.bytes.starts_with(b"CANCEL ")),
        "timer C sends CANCEL"
    );
    // The peer never answers; the INVITE ends 64*T1 after the CANCEL.
    l.handle_timeout(t0 + Duration::from_secs(300));
    let timeouts = drain_events(&mut l)
        .into_iter()
        .filter(|e| *e == TxEvent::Timeout { tx })
        .count();
    assert_eq!(timeouts, 1);
    assert!(l.client_request(tx).is_none());
}

#[test]
fn transport_failure_fails_the_transactions_on_that_connection() {
    let t0 = Instant::now();
    let mut l = layer();
    let tx = l.send_request(request("INVITE", "z9hG4bKk", 1), tcp_peer(), t0);
    let other = l.send_request(request("BYE", "z9hG4bKl", 2), udp_peer(), t0);
    l.connection_closed(ConnId(9));
    assert_eq!(
        drain_events(&mut l),
        vec![TxEvent::TransportError { tx }, TxEvent::Terminated { tx }]
    );
    assert!(l.client_request(other).is_some());
}

/// A user agent client and server, each on its own layer, talking over a channel that drops
/// 30% of datagrams: the call still completes, by retransmission alone.
#[test]
fn a_whole_call_survives_thirty_percent_loss() {
    for seed in 0..20 {
        let t0 = Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut uac = layer();
        let mut uas = layer();
        let to_uas = udp_peer();
        let to_uac = Target::udp("127.0.0.1:5070".parse().unwrap());
        let invite = request("INVITE", &new_branch(), 1);
        let invite_tx = uac.send_request(invite.clone(), to_uas.clone(), t0);
        let (mut acked, mut bye_sent, mut done) = (false, false, false);
        let mut now = t0;
        while now < t0 + Duration::from_secs(60) && !(done && acked) {
            for t in drain_transmits(&mut uac) {
                if !rng.random_bool(0.3) {
                    uas.handle_message(SipMessage::parse(&t.bytes).unwrap(), to_uac.clone(), now);
                }
            }
            for t in drain_transmits(&mut uas) {
                if !rng.random_bool(0.3) {
                    uac.handle_message(SipMessage::parse(&t.bytes).unwrap(), to_uas.clone(), now);
                }
            }
            while let Some(ev) = uas.poll_event() {
                if let TxEvent::Request {
                    tx: Some(tx), msg, ..
                } = ev
                {
                    let resp = msg.response(200, Some("uas-tag"));
                    uas.send_response(tx, resp, now).unwrap();
                } else if let TxEvent::Request { tx: None, .. } = ev {
                    acked = true;
                }
            }
            while let Some(ev) = uac.poll_event() {
                match ev {
                    TxEvent::Response { tx, msg }
                        if tx == invite_tx && msg.status() == Some(200) =>
                    {
                        // Every 2xx, first or retransmitted, gets the ACK again.
                        let mut ack = request("ACK", &new_branch(), 1);
                        ack.set_header("To", "<sip:alice@127.0.0.1>;tag=uas-tag");
                        uac.send_stateless(ack, to_uas.clone());
                        if !bye_sent {
                            bye_sent = true;
                            let mut bye = request("BYE", &new_branch(), 2);
                            bye.set_header("To", "<sip:alice@127.0.0.1>;tag=uas-tag");
                            uac.send_request(bye, to_uas.clone(), now);
                        }
                    }
                    TxEvent::Response { msg, .. } if msg.cseq().unwrap().method == Method::Bye => {
                        done = msg.status() == Some(200);
                    }
                    TxEvent::Timeout { .. } => panic!("seed {seed}: a transaction timed out"),
                    _ => {}
                }
            }
            now += 50 * MS;
            uac.handle_timeout(now);
            uas.handle_timeout(now);
        }
        assert!(done, "seed {seed}: the BYE never got its 200");
        assert!(acked, "seed {seed}: the ACK never arrived");
        let later = now + Duration::from_secs(64);
        uac.handle_timeout(later);
        uas.handle_timeout(later);
        assert!(
            uac.is_empty() && uas.is_empty(),
            "seed {seed}: transactions left behind"
        );
    }
}

#[test]
fn a_note_rides_on_every_send_of_its_request_and_on_nothing_else() {
    let t0 = Instant::now();
    let mut l: TransactionLayer<&str> = TransactionLayer::new(Config::default());
    let invite = request("INVITE", "z9hG4bKn1", 1);
    l.send_request_with(invite.clone(), udp_peer(), "alice", t0);
    l.send_request(request("OPTIONS", "z9hG4bKn2", 1), udp_peer(), t0);
    let first: Vec<Option<&str>> = drain_transmits(&mut l).iter().map(|t| t.note).collect();
    assert_eq!(first, vec![Some("alice"), None]);
    // Each UDP retransmission of the INVITE (timer A) carries it too; the OPTIONS' do not.
    let mut notes = Vec::new();
    while let Some(at) = l.poll_timeout() {
        if at > t0 + Duration::from_secs(2) {
            break;
        }
        l.handle_timeout(at);
        notes.extend(
            drain_transmits(&mut l)
                .into_iter()
                .map(|t| (t.note, t.bytes)),
        );
    }
    let invites = notes
        .iter()
        .filter(|(_, b)| b.starts_with(b"INVITE "))
        .count();
    assert!(invites >= 2, "{invites} INVITE retransmissions");
    for (note, bytes) in &notes {
        assert_eq!(*note == Some("alice"), bytes.starts_with(b"INVITE "));
    }
    // A failure is ACKed by the layer: that ACK is not the request the note was for.
    let busy = invite.response(486, Some("agent-tag"));
    l.handle_message(busy.clone(), udp_peer(), t0 + Duration::from_secs(2));
    l.handle_message(busy, udp_peer(), t0 + Duration::from_secs(3));
    let acks = drain_transmits(&mut l);
    assert_eq!(acks.len(), 2);
    assert!(
        acks.iter()
            .all(|t| t.note.is_none() && t.bytes.starts_with(b"ACK "))
    );
}

#[test]
fn a_note_handed_in_with_a_request_comes_back_on_its_event_only() {
    let t0 = Instant::now();
    let mut l: TransactionLayer<String> = TransactionLayer::new(Config::default());
    let invite = request("INVITE", "z9hG4bKn3", 1);
    l.handle_message_with(invite.clone(), udp_peer(), Some("bob".into()), t0);
    // A retransmission of the same INVITE is absorbed: no event, so its note goes nowhere.
    l.handle_message_with(invite, udp_peer(), Some("mallory".into()), t0 + 500 * MS);
    let notes: Vec<Option<String>> = std::iter::from_fn(|| l.poll_event())
        .filter_map(|e| match e {
            TxEvent::Request { note, .. } => Some(note),
            _ => None,
        })
        .collect();
    assert_eq!(notes, vec![Some("bob".to_owned())]);
}

fn arbitrary_message() -> impl Strategy<Value = SipMessage> {
    let method = prop_oneof![
        Just("INVITE"),
        Just("ACK"),
        Just("BYE"),
        Just("CANCEL"),
        Just("OPTIONS")
    ];
    (method, 0u8..4, 1u32..4, prop::option::of(100u16..700)).prop_map(|(m, b, cseq, status)| {
        let req = request(m, &format!("z9hG4bK{b}"), cseq);
        match status {
            Some(code) => req.response(code, Some("x")),
            None => req,
        }
    })
}

proptest! {
    #[test]
    fn any_message_sequence_leaves_nothing_behind(
        steps in prop::collection::vec((arbitrary_message(), any::<bool>(), 0u64..3000, any::<bool>()), 0..40)
    ) {
        let t0 = Instant::now();
        let mut l = layer();
        let mut now = t0;
        for (msg, tcp, advance_ms, answer) in steps {
            let peer = if tcp { tcp_peer() } else { udp_peer() };
            l.handle_message(msg.clone(), peer.clone(), now);
            if answer && msg.is_request() {
                let tx = l.send_request(msg.clone(), peer, now);
                l.cancel(tx, now);
            }
            while let Some(ev) = l.poll_event() {
                if let TxEvent::Request { tx: Some(tx), msg, .. } = ev {
                    let _ = l.send_response(tx, msg.response(if answer { 200 } else { 404 }, Some("t")), now);
                }
            }
            drain_transmits(&mut l);
            now += Duration::from_millis(advance_ms);
            l.handle_timeout(now);
            // The schedule holds exactly the timers live transactions wait for.
            let waited: usize = l.txs.values().map(|t| t.timers.len()).sum();
            prop_assert_eq!(l.scheduled_timers(), waited);
        }
        l.handle_timeout(now + Duration::from_secs(300));
        drain_events(&mut l);
        prop_assert!(l.is_empty(), "{} transactions left", l.len());
        let _ = Bytes::new();
    }
}

#[test]
fn a_late_wake_up_does_not_shift_the_retransmissions_after_it() {
    let t0 = Instant::now();
    let mut l = layer();
    l.send_request(request("INVITE", "z9hG4bKlate", 1), udp_peer(), t0);
    drain_transmits(&mut l);
    // Timer A is due at 0.5 s; the owner gets to it 100 ms late.
    assert_eq!(l.poll_timeout(), Some(t0 + 500 * MS));
    l.handle_timeout(t0 + 600 * MS);
    assert_eq!(drain_transmits(&mut l).len(), 1);
    assert_eq!(
        l.poll_timeout(),
        Some(t0 + 1500 * MS),
        "the next one is 1 s after the one that was due, not after the late wake-up"
    );
    // Asleep past a whole interval: the missed one is not sent in a burst.
    l.handle_timeout(t0 + 4000 * MS);
    assert_eq!(drain_transmits(&mut l).len(), 1);
    assert_eq!(l.poll_timeout(), Some(t0 + 6000 * MS));
}

/// The server transaction of a request the owner never answers.
fn unanswered(method: &str, peer: Target) -> (TransactionLayer, TxId, Instant) {
    let t0 = Instant::now();
    let mut l = layer();
    l.handle_message(request(method, "z9hG4bKunanswered", 1), peer, t0);
    let tx = drain_events(&mut l)
        .into_iter()
        .find_map(|e| match e {
            TxEvent::Request { tx: Some(tx), .. } => Some(tx),
            _ => None,
        })
        .expect("a server transaction");
    drain_transmits(&mut l);
    (l, tx, t0)
}

fn statuses(transmits: &[Transmit<()>]) -> Vec<u16> {
    transmits
        .iter()
        .filter_map(|t| SipMessage::parse(&t.bytes).ok()?.status())
        .collect()
}

#[test]
fn a_request_its_owner_never_answers_gets_500_when_its_client_gives_up() {
    let (mut l, tx, t0) = unanswered("OPTIONS", udp_peer());
    l.handle_timeout(t0 + Duration::from_secs(31));
    assert!(drain_transmits(&mut l).is_empty(), "nothing before 64*T1");
    l.handle_timeout(t0 + Duration::from_secs(32));
    assert_eq!(statuses(&drain_transmits(&mut l)), vec![500]);
    assert!(drain_events(&mut l).contains(&TxEvent::Timeout { tx }));
    // Then as any answered non-INVITE: it lingers for retransmissions, and ends.
    run_until(&mut l, t0, Duration::from_secs(100));
    assert!(l.is_empty());
    assert_eq!(l.poll_timeout(), None, "no timer left behind");
}

#[test]
fn an_invite_its_owner_never_answers_gets_500_after_the_hour_a_queue_may_take() {
    let (mut l, tx, t0) = unanswered("INVITE", tcp_peer());
    let ringing = request("INVITE", "z9hG4bKunanswered", 1).response(180, Some("t1"));
    l.send_response(tx, ringing, t0).unwrap();
    drain_transmits(&mut l);
    l.handle_timeout(t0 + UNANSWERED_INVITE - Duration::from_secs(1));
    assert!(drain_transmits(&mut l).is_empty());
    l.handle_timeout(t0 + UNANSWERED_INVITE);
    assert_eq!(statuses(&drain_transmits(&mut l)), vec![500]);
    assert!(drain_events(&mut l).contains(&TxEvent::Timeout { tx }));
}

#[test]
fn an_answered_request_leaves_no_timer_for_its_owner_s_silence() {
    let (mut l, tx, t0) = unanswered("INVITE", tcp_peer());
    let ok = request("INVITE", "z9hG4bKunanswered", 1).response(486, Some("t1"));
    l.send_response(tx, ok, t0).unwrap();
    drain_transmits(&mut l);
    // Over TCP the answered INVITE waits for its ACK (timer H) and is gone: nothing waits
    // an hour in the schedule.
    run_until(&mut l, t0, Duration::from_secs(60));
    assert!(l.is_empty());
    assert_eq!(l.poll_timeout(), None);
    assert!(statuses(&drain_transmits(&mut l)).is_empty());
}

#[test]
fn the_ack_of_a_2xx_is_matched_by_its_dialog_not_only_call_id_and_cseq() {
    let t0 = Instant::now();
    let mut l = layer();
    let invite = request("INVITE", "z9hG4bKdlg", 1);
    l.handle_message(invite.clone(), udp_peer(), t0);
    let Some(TxEvent::Request { tx: Some(id), .. }) = l.poll_event() else {
        panic!()
    };
    l.send_response(id, invite.response(200, Some("ours")), t0)
        .unwrap();
    drain_transmits(&mut l);
    // Same Call-ID and CSeq, but another dialog's tags: not this 2xx's ACK.
    for (from_tag, to_tag) in [("from1", "theirs"), ("stranger", "ours")] {
        let mut ack = request("ACK", "z9hG4bKack1", 1);
        ack.set_header("From", format!("<sip:bob@127.0.0.1>;tag={from_tag}"));
        ack.set_header("To", format!("<sip:alice@127.0.0.1>;tag={to_tag}"));
        l.handle_message(ack, udp_peer(), t0 + 100 * MS);
    }
    drain_events(&mut l);
    assert_eq!(
        run_until(&mut l, t0, Duration::from_secs(2)),
        secs(&[0.5, 1.5]),
        "the 2xx goes on being retransmitted"
    );
    let mut ack = request("ACK", "z9hG4bKack2", 1);
    ack.set_header("To", "<sip:alice@127.0.0.1>;tag=ours");
    l.handle_message(ack, udp_peer(), t0 + Duration::from_secs(2));
    assert!(
        run_until(&mut l, t0, Duration::from_secs(20)).is_empty(),
        "its own ACK stops it"
    );
}

/// `request` as an RFC 2543 peer sends it: its top Via without a magic-cookie branch.
fn rfc2543(method: &str, cseq: u32, branch: Option<&str>) -> SipMessage {
    let mut msg = request(method, "unused", cseq);
    let via = match branch {
        Some(b) => format!("SIP/2.0/UDP 127.0.0.1:5080;branch={b}"),
        None => "SIP/2.0/UDP 127.0.0.1:5080".to_owned(),
    };
    msg.set_header("Via", via);
    msg
}

#[test]
fn an_rfc2543_peers_retransmissions_and_ack_find_their_transaction() {
    for branch in [None, Some("1")] {
        let t0 = Instant::now();
        let mut l = layer();
        // An INVITE and its retransmission: one transaction, the answer repeated.
        l.handle_message(rfc2543("INVITE", 1, branch), udp_peer(), t0);
        let Some(TxEvent::Request { tx: Some(tx), .. }) = l.poll_event() else {
            panic!("no request event")
        };
        let busy = rfc2543("INVITE", 1, branch).response(486, Some("t"));
        l.send_response(tx, busy, t0).unwrap();
        assert_eq!(statuses(&drain_transmits(&mut l)), vec![486]);
        l.handle_message(rfc2543("INVITE", 1, branch), udp_peer(), t0 + 100 * MS);
        assert!(
            drain_events(&mut l).is_empty(),
            "{branch:?}: no second INVITE"
        );
        assert_eq!(statuses(&drain_transmits(&mut l)), vec![486]);
        // Its ACK (To tag ours now) stops the 486's retransmissions.
        let mut ack = rfc2543("ACK", 1, branch);
        ack.set_header("To", "<sip:alice@127.0.0.1>;tag=t");
        l.handle_message(ack, udp_peer(), t0 + 200 * MS);
        assert!(
            run_until(&mut l, t0, Duration::from_secs(10)).is_empty(),
            "{branch:?}: the ACK matched, nothing retransmitted"
        );
        // Another INVITE of the same call with a new CSeq is a new transaction.
        l.handle_message(
            rfc2543("INVITE", 2, branch),
            udp_peer(),
            t0 + Duration::from_secs(11),
        );
        assert!(
            drain_events(&mut l)
                .iter()
                .any(|e| matches!(e, TxEvent::Request { tx: Some(t), .. } if *t != tx)),
            "{branch:?}"
        );
    }
}

/// One answered call as each role's layer sees it over UDP: an INVITE client transaction
/// (180 then 200: timer C set, then cancelled), an INVITE server transaction answered 200
/// and ACKed, a BYE sent and answered, a BYE received and answered.
fn one_answered_call(l: &mut TransactionLayer, n: u32, now: Instant) {
    let invite = request("INVITE", &format!("z9hG4bKout{n}"), 1);
    let out = l.send_request(invite.clone(), udp_peer(), now);
    l.handle_message(invite.response(180, Some("a")), udp_peer(), now);
    l.handle_message(invite.response(200, Some("a")), udp_peer(), now);
    let bye = request("BYE", &format!("z9hG4bKbye{n}"), 2);
    l.send_request(bye.clone(), udp_peer(), now);
    l.handle_message(bye.response(200, Some("a")), udp_peer(), now);

    let mut incoming = request("INVITE", &format!("z9hG4bKin{n}"), 1);
    incoming.set_header("Call-ID", format!("in-{n}"));
    l.handle_message(incoming.clone(), udp_peer(), now);
    let mut their_bye = request("BYE", &format!("z9hG4bKtheirs{n}"), 2);
    their_bye.set_header("Call-ID", format!("in-{n}"));
    while let Some(ev) = l.poll_event() {
        if let TxEvent::Request {
            tx: Some(tx), msg, ..
        } = ev
            && tx != out
        {
            l.send_response(tx, msg.response(200, Some("t")), now)
                .unwrap();
        }
    }
    let mut ack = request("ACK", &format!("z9hG4bKack{n}"), 1);
    ack.set_header("Call-ID", format!("in-{n}"));
    ack.set_header("To", "<sip:alice@127.0.0.1>;tag=t");
    l.handle_message(ack, udp_peer(), now);
    l.handle_message(their_bye, udp_peer(), now);
    while let Some(ev) = l.poll_event() {
        if let TxEvent::Request {
            tx: Some(tx), msg, ..
        } = ev
        {
            l.send_response(tx, msg.response(200, Some("t")), now)
                .unwrap();
        }
    }
    drain_transmits(l);
}

#[test]
fn an_answered_call_leaves_nothing_once_its_32_s_windows_close() {
    let t0 = Instant::now();
    let mut l = layer();
    one_answered_call(&mut l, 1, t0);
    assert_eq!(l.len(), 4, "both INVITEs, both BYEs");
    // Nothing outlives RFC 3261's windows: the 2xx's (timers L and M, 64*T1) and the BYE
    // server's (timer J, 64*T1); timer C (three minutes), cancelled by the 200, is not left
    // in the schedule to wake the layer up for nothing.
    run_until(&mut l, t0, Duration::from_secs(32) + MS);
    assert!(l.is_empty(), "{} transactions left", l.len());
    assert_eq!(l.scheduled_timers(), 0);
    assert_eq!(l.poll_timeout(), None);
}

#[test]
fn a_burst_gives_back_its_room_once_it_is_over() {
    let t0 = Instant::now();
    let mut l = layer();
    for n in 0..5000 {
        one_answered_call(&mut l, n, t0);
    }
    let peak = l.txs.capacity();
    assert!(peak >= 20_000, "{peak}");
    assert!(l.scheduled_timers() >= 20_000);
    run_until(&mut l, t0, Duration::from_secs(33));
    drain_events(&mut l);
    assert!(l.is_empty());
    assert_eq!(l.scheduled_timers(), 0);
    // The tables a burst grew are shrunk as they empty, not kept at their peak.
    for (name, room) in [
        ("txs", l.txs.capacity()),
        ("servers", l.servers.capacity()),
        ("clients", l.clients.capacity()),
        ("accepted", l.accepted.capacity()),
    ] {
        assert!(room <= 2048, "{name} kept room for {room}");
    }
    // And the layer takes the next burst as well as the first.
    one_answered_call(&mut l, 9999, t0 + Duration::from_secs(40));
    assert_eq!(l.len(), 4);
    assert_held_is_consistent(&l);
}

fn assert_held_is_consistent(l: &TransactionLayer) {
    let waited: usize = l.txs.values().map(|t| t.timers.len()).sum();
    assert_eq!(l.scheduled_timers(), waited);
}
