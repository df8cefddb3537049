//! The bridge against a str0m peer standing in for the browser, on a simulated network and
//! clock: ICE, DTLS and SRTP really happen; caller RTP is fed in as datagrams.

use super::*;
use str0m::change::SdpOffer;
use str0m::media::MediaAdded;

const WEBRTC: &str = "10.0.0.1:16100";
const BROWSER: &str = "10.0.0.2:50000";
const CALLER_LOCAL: &str = "10.0.0.1:20000";
const CALLER: &str = "192.0.2.7:4000";

const OFFER: &str = "v=0\r\no=caller 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n\
                     m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

struct Browser {
    rtc: Rtc,
    at: SocketAddr,
    mid: Option<Mid>,
    received: Vec<(u8, u16, Vec<u8>)>,
    failed: bool,
    /// `at` is a TURN allocation's relayed address: its datagrams reach the bridge over the
    /// media connection (`from_turn`), and the bridge's must go back as `Via::Turn`.
    turn: bool,
    /// Datagrams the bridge sent this browser on a path it does not use.
    misrouted: usize,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn browser_at(at: &str, offer: &str, now: Instant) -> (Browser, String) {
    let mut b = Rtc::builder().set_rtp_mode(true).clear_codecs();
    b = b.enable_pcmu(true, false).enable_pcma(true, false);
    b.codec_config().add_config(
        AGENT_TE_PT.into(),
        None,
        Codec::Tele,
        Frequency::EIGHT_KHZ,
        None,
        FormatParams::parse_line("0-16"),
    );
    let mut rtc = b.build(now);
    rtc.add_local_candidate(Candidate::host(addr(at), "udp").unwrap());
    let offer = SdpOffer::from_sdp_string(offer).unwrap();
    let answer = rtc.sdp_api().accept_offer(offer).unwrap();
    (
        Browser {
            rtc,
            at: addr(at),
            mid: None,
            received: Vec::new(),
            failed: false,
            turn: false,
            misrouted: 0,
        },
        answer.to_sdp_string(),
    )
}

fn browser(offer: &str, now: Instant) -> (Browser, String) {
    browser_at(BROWSER, offer, now)
}

fn run(
    bridge: &mut Bridge,
    b: &mut Browser,
    to_caller: &mut Vec<Vec<u8>>,
    now: &mut Instant,
    steps: u32,
) {
    run_all(bridge, std::slice::from_mut(b), to_caller, now, steps);
}

/// Moves datagrams both ways between the bridge and the browsers, and time forward by
/// `steps` × 5 ms.
fn run_all(
    bridge: &mut Bridge,
    browsers: &mut [Browser],
    to_caller: &mut Vec<Vec<u8>>,
    now: &mut Instant,
    steps: u32,
) {
    for _ in 0..steps {
        for b in browsers.iter_mut().filter(|b| !b.failed) {
            loop {
                match b.rtc.poll_output() {
                    Ok(Output::Timeout(_)) => break,
                    Ok(Output::Transmit(t)) => {
                        let bytes: Vec<u8> = t.contents.into();
                        if b.turn {
                            bridge.from_turn(&bytes, b.at, *now);
                        } else {
                            bridge.from_webrtc(&bytes, b.at, addr(WEBRTC), *now);
                        }
                    }
                    Ok(Output::Event(Event::MediaAdded(MediaAdded { mid, .. }))) => {
                        b.mid = Some(mid)
                    }
                    Ok(Output::Event(Event::RtpPacket(p))) => {
                        b.received.push((
                            *p.header.payload_type,
                            p.header.sequence_number,
                            p.payload.to_vec(),
                        ));
                    }
                    Ok(Output::Event(_)) => {}
                    Err(_) => {
                        b.failed = true;
                        break;
                    }
                }
            }
        }
        while let Some(d) = bridge.poll_datagram() {
            match d.via {
                Via::WebRtc | Via::Turn => {
                    let Some(b) = browsers.iter_mut().find(|b| b.at == d.to && !b.failed) else {
                        continue;
                    };
                    if b.turn != (d.via == Via::Turn) {
                        b.misrouted += 1;
                        continue;
                    }
                    let input = Input::Receive(
                        *now,
                        Receive {
                            proto: Protocol::Udp,
                            source: addr(WEBRTC),
                            destination: b.at,
                            contents: d.bytes.as_slice().try_into().unwrap(),
                        },
                    );
                    if b.rtc.handle_input(input).is_err() {
                        b.failed = true;
                    }
                }
                Via::Caller(_) => to_caller.push(d.bytes),
                Via::IceTcp => panic!("no ICE-TCP without a distributor's address"),
                Via::Agent(_) => panic!("no plain-RTP agent on a WebRTC call"),
            }
        }
        *now += Duration::from_millis(5);
        for b in browsers.iter_mut().filter(|b| !b.failed) {
            if b.rtc.handle_input(Input::Timeout(*now)).is_err() {
                b.failed = true;
            }
        }
        bridge.handle_timeout(*now);
    }
}

fn caller_rtp(pt: u8, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0xca, 0x11, 0xe4, 0x01];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(payload);
    p
}

#[test]
fn audio_and_dtmf_cross_both_ways_unchanged() {
    let mut now = Instant::now();
    let mut bridge = Bridge::new(addr(WEBRTC), Duration::from_secs(30));
    let (caller_answer, agent_offer) = bridge
        .create(1, OFFER.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    // The caller's first choice among G.711 (PCMA), and its telephone-event.
    assert!(
        caller_answer.contains("m=audio 20000 RTP/AVP 8 101"),
        "{caller_answer}"
    );
    assert!(
        agent_offer.contains("a=ice-lite") && agent_offer.contains("a=fingerprint:"),
        "{agent_offer}"
    );
    assert!(
        agent_offer.contains("PCMA/8000") && !agent_offer.contains("PCMU/8000"),
        "{agent_offer}"
    );
    let (mut b, answer) = browser(&agent_offer, now);
    bridge.agent_answer(1, answer.as_bytes(), now).unwrap();
    let mut to_caller = Vec::new();
    run(&mut bridge, &mut b, &mut to_caller, &mut now, 200);
    assert!(b.rtc.is_connected(), "ICE and DTLS completed");

    // Caller → agent: audio and a DTMF digit, payloads unchanged.
    for seq in 1..=20u16 {
        let payload = vec![seq as u8; 160];
        bridge.from_caller(1, &caller_rtp(8, seq, &payload), addr(CALLER), now);
        run(&mut bridge, &mut b, &mut to_caller, &mut now, 4);
    }
    bridge.from_caller(
        1,
        &caller_rtp(101, 21, &[5, 0x8a, 0, 160]),
        addr(CALLER),
        now,
    );
    run(&mut bridge, &mut b, &mut to_caller, &mut now, 20);
    let audio: Vec<_> = b.received.iter().filter(|r| r.0 == 8).collect();
    assert_eq!(audio.len(), 20);
    for (i, (_, _, payload)) in audio.iter().enumerate() {
        assert_eq!(payload, &vec![(i + 1) as u8; 160]);
    }
    assert!(
        b.received
            .iter()
            .any(|r| r.0 == AGENT_TE_PT && r.2 == [5, 0x8a, 0, 160])
    );

    // Agent → caller.
    let mid = b.mid.expect("the browser saw the audio m-line");
    for i in 0..10u64 {
        let payload = vec![0xa0 + i as u8; 160];
        let write = RtpWrite::new(
            8.into(),
            (100 + i).into(),
            (i * 160) as u32,
            now,
            payload.as_slice(),
        );
        b.rtc
            .direct_api()
            .stream_tx_by_mid(mid, None)
            .unwrap()
            .write_rtp(write);
        run(&mut bridge, &mut b, &mut to_caller, &mut now, 4);
    }
    let got: Vec<_> = to_caller
        .iter()
        .filter_map(|p| rtp::parse(p).map(|v| (v.payload_type, v.seq, v.payload.to_vec())))
        .collect();
    assert_eq!(got.len(), 10, "{got:?}");
    for (i, (pt, seq, payload)) in got.iter().enumerate() {
        assert_eq!(*pt, 8);
        assert_eq!(
            *seq,
            got[0].1.wrapping_add(i as u16),
            "consecutive sequence numbers"
        );
        assert_eq!(payload, &vec![0xa0 + i as u8; 160]);
    }
    let stats = bridge.close(1).unwrap();
    assert_eq!(
        (stats.from_caller.packets, stats.from_agent.packets),
        (21, 10)
    );
    assert_eq!(stats.from_caller.lost, 0);
}

#[test]
fn a_browser_on_turn_is_answered_through_its_relay_and_the_call_says_so() {
    let mut now = Instant::now();
    let mut bridge = Bridge::new(addr(WEBRTC), Duration::from_secs(30));
    let (_, agent_offer) = bridge
        .create(1, OFFER.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    // The browser's only candidate: its relayed address on the distributor.
    let relayed = "203.0.113.10:49152";
    let (mut b, answer) = browser_at(relayed, &agent_offer, now);
    b.turn = true;
    bridge.agent_answer(1, answer.as_bytes(), now).unwrap();
    let mut to_caller = Vec::new();
    run(&mut bridge, &mut b, &mut to_caller, &mut now, 200);
    assert!(
        b.rtc.is_connected(),
        "ICE and DTLS completed through the relay"
    );
    for seq in 1..=5u16 {
        bridge.from_caller(1, &caller_rtp(8, seq, &[seq as u8; 160]), addr(CALLER), now);
        run(&mut bridge, &mut b, &mut to_caller, &mut now, 4);
    }
    assert_eq!(b.received.iter().filter(|r| r.0 == 8).count(), 5);
    assert_eq!(
        b.misrouted, 0,
        "nothing for the relay went out of the WebRTC socket"
    );
    let stats = bridge.stats(1).unwrap();
    assert_eq!(stats.ice_protocol, Some("turn-tls"));
    assert_eq!(stats.ice_remote.as_deref(), Some(relayed));
}

#[test]
fn offers_without_g711_are_refused_with_488() {
    let mut bridge = Bridge::new(addr(WEBRTC), Duration::from_secs(30));
    let g729 = "v=0\r\nc=IN IP4 192.0.2.7\r\nm=audio 4000 RTP/AVP 18\r\n";
    let err = bridge
        .create(1, g729.as_bytes(), addr(CALLER_LOCAL), Instant::now())
        .unwrap_err();
    assert_eq!(
        (err.clone(), err.status()),
        (BridgeError::NoCommonCodec, 488)
    );
    assert_eq!(
        bridge
            .create(2, b"v=0\r\n", addr(CALLER_LOCAL), Instant::now())
            .unwrap_err(),
        BridgeError::NoAudio
    );
    assert!(bridge.is_empty());
}

#[test]
fn garbage_is_dropped_and_counted_and_the_call_goes_on() {
    let mut now = Instant::now();
    let mut bridge = Bridge::new(addr(WEBRTC), Duration::from_secs(30));
    let (_, agent_offer) = bridge
        .create(1, OFFER.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    let (mut b, answer) = browser(&agent_offer, now);
    bridge.agent_answer(1, answer.as_bytes(), now).unwrap();
    let mut to_caller = Vec::new();
    run(&mut bridge, &mut b, &mut to_caller, &mut now, 200);
    bridge.from_webrtc(b"garbage", addr("203.0.113.9:1234"), addr(WEBRTC), now);
    bridge.from_webrtc(&[0x80; 300], addr(BROWSER), addr(WEBRTC), now);
    bridge.from_caller(1, b"not rtp", addr(CALLER), now);
    bridge.from_caller(1, &caller_rtp(18, 1, &[0; 20]), addr(CALLER), now);
    assert!(bridge.stray >= 1);
    bridge.from_caller(1, &caller_rtp(8, 2, &[7; 160]), addr(CALLER), now);
    run(&mut bridge, &mut b, &mut to_caller, &mut now, 20);
    assert!(
        b.received.iter().any(|r| r.2 == vec![7; 160]),
        "audio still flows"
    );
    assert!(bridge.stats(1).unwrap().dropped >= 2);
}

#[test]
fn a_wrong_dtls_fingerprint_fails_that_call_only() {
    let mut now = Instant::now();
    let mut bridge = Bridge::new(addr(WEBRTC), Duration::from_secs(30));
    let (_, offer1) = bridge
        .create(1, OFFER.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    let (_, offer2) = bridge
        .create(2, OFFER.as_bytes(), addr("10.0.0.1:20002"), now)
        .unwrap();
    let (impostor, answer1) = browser_at("10.0.0.3:50000", &offer1, now);
    let (honest, answer2) = browser_at(BROWSER, &offer2, now);
    // The first agent's answer names a certificate it does not have.
    let line = answer1
        .lines()
        .find(|l| l.starts_with("a=fingerprint:"))
        .unwrap();
    let (head, last) = line.split_at(line.len() - 1);
    let flipped = format!("{head}{}", if last == "0" { "1" } else { "0" });
    let answer1 = answer1.replace(line, &flipped);
    bridge.agent_answer(1, answer1.as_bytes(), now).unwrap();
    bridge.agent_answer(2, answer2.as_bytes(), now).unwrap();
    let mut browsers = [impostor, honest];
    let mut to_caller = Vec::new();
    run_all(&mut bridge, &mut browsers, &mut to_caller, &mut now, 400);
    for seq in 1..=5u16 {
        bridge.from_caller(1, &caller_rtp(8, seq, &[1; 160]), addr(CALLER), now);
        bridge.from_caller(
            2,
            &caller_rtp(8, seq, &[2; 160]),
            addr("192.0.2.8:4000"),
            now,
        );
        run_all(&mut bridge, &mut browsers, &mut to_caller, &mut now, 4);
    }
    assert!(
        browsers[0].received.is_empty(),
        "no media to an unverified peer"
    );
    assert_eq!(browsers[1].received.len(), 5, "the other call goes on");
    let events: Vec<_> = std::iter::from_fn(|| bridge.poll_event()).collect();
    assert!(events.contains(&BridgeEvent::Failed(1)), "{events:?}");
    assert!(!events.contains(&BridgeEvent::Failed(2)), "{events:?}");
}

#[test]
fn srtp_that_fails_authentication_is_dropped_and_counted() {
    let mut now = Instant::now();
    let mut bridge = Bridge::new(addr(WEBRTC), Duration::from_secs(30));
    let (_, offer) = bridge
        .create(1, OFFER.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    let (mut b, answer) = browser(&offer, now);
    bridge.agent_answer(1, answer.as_bytes(), now).unwrap();
    let mut to_caller = Vec::new();
    run(&mut bridge, &mut b, &mut to_caller, &mut now, 200);
    // An RTP-shaped datagram from the agent's address with a made-up authentication tag.
    let mut forged = caller_rtp(8, 500, &[9; 160]);
    forged.extend_from_slice(&[0xab; 10]);
    for _ in 0..3 {
        bridge.from_webrtc(&forged, addr(BROWSER), addr(WEBRTC), now);
    }
    assert!(to_caller.is_empty(), "nothing forged reaches the caller");
    assert_eq!(bridge.stats(1).unwrap().unauthenticated, 3);
    // Real media still flows.
    let mid = b.mid.unwrap();
    let write = RtpWrite::new(8.into(), 1.into(), 0, now, &[4u8; 160][..]);
    b.rtc
        .direct_api()
        .stream_tx_by_mid(mid, None)
        .unwrap()
        .write_rtp(write);
    run(&mut bridge, &mut b, &mut to_caller, &mut now, 10);
    assert_eq!(to_caller.len(), 1);
}

#[test]
fn the_announced_address_is_the_one_configured() {
    let mut bridge = Bridge::new(addr("203.0.113.10:16100"), Duration::from_secs(30));
    let (answer, offer) = bridge
        .create(
            1,
            OFFER.as_bytes(),
            addr("203.0.113.10:20000"),
            Instant::now(),
        )
        .unwrap();
    assert!(offer.contains("203.0.113.10 16100 typ host"), "{offer}");
    assert!(
        answer.contains("c=IN IP4 203.0.113.10") && answer.contains("m=audio 20000 "),
        "{answer}"
    );
}

#[test]
fn hold_and_resume_reach_the_other_side() {
    use str0m::change::SdpAnswer;
    let mut now = Instant::now();
    let mut bridge = Bridge::new(addr(WEBRTC), Duration::from_secs(30));
    let (_, offer) = bridge
        .create(1, OFFER.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    let (mut b, answer) = browser(&offer, now);
    bridge.agent_answer(1, answer.as_bytes(), now).unwrap();
    let mut to_caller = Vec::new();
    run(&mut bridge, &mut b, &mut to_caller, &mut now, 200);

    // The caller holds: it answers recvonly, and the agent is re-offered sendonly.
    let hold = OFFER.replace(
        "m=audio 4000 RTP/AVP 8 0 101\r\n",
        "m=audio 4000 RTP/AVP 8 0 101\r\na=sendonly\r\n",
    );
    let (caller_answer, reoffer) = bridge
        .caller_reoffer(1, hold.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    assert!(caller_answer.contains("a=recvonly"), "{caller_answer}");
    let reoffer = reoffer.expect("the direction changed");
    assert!(reoffer.contains("a=sendonly"), "{reoffer}");
    let agent_answer = b
        .rtc
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(&reoffer).unwrap())
        .unwrap()
        .to_sdp_string();
    assert!(agent_answer.contains("a=recvonly"), "{agent_answer}");
    bridge
        .agent_answer(1, agent_answer.as_bytes(), now)
        .unwrap();
    // Music on hold still reaches the agent; a refresh with the same direction needs no
    // re-offer.
    bridge.from_caller(1, &caller_rtp(8, 1, &[3; 160]), addr(CALLER), now);
    run(&mut bridge, &mut b, &mut to_caller, &mut now, 10);
    assert!(b.received.iter().any(|r| r.2 == vec![3; 160]));
    let (_, none) = bridge
        .caller_reoffer(1, hold.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    assert_eq!(none, None);
    // Silence on hold is not a dead call.
    run(&mut bridge, &mut b, &mut to_caller, &mut now, 7000);
    assert!(!std::iter::from_fn(|| bridge.poll_event()).any(|e| e == BridgeEvent::Inactive(1)));

    // The caller resumes; then the agent holds from its side.
    let (caller_answer, reoffer) = bridge
        .caller_reoffer(1, OFFER.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    assert!(caller_answer.contains("a=sendrecv"));
    let agent_answer = b
        .rtc
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(&reoffer.unwrap()).unwrap())
        .unwrap()
        .to_sdp_string();
    bridge
        .agent_answer(1, agent_answer.as_bytes(), now)
        .unwrap();
    let mid = b.mid.unwrap();
    let mut change = b.rtc.sdp_api();
    change.set_direction(mid, RtcDirection::SendOnly);
    let (offer, pending) = change.apply().unwrap();
    let (answer, caller_offer) = bridge
        .agent_reoffer(1, offer.to_sdp_string().as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    assert!(
        caller_offer.contains("a=sendonly") && caller_offer.contains("RTP/AVP 8 101"),
        "{caller_offer}"
    );
    assert!(answer.contains("a=recvonly"), "{answer}");
    b.rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    run(&mut bridge, &mut b, &mut to_caller, &mut now, 10);
}

/// The version in an SDP's `o=` line.
fn sdp_version(sdp: &str) -> u64 {
    let o = sdp.lines().find(|l| l.starts_with("o=")).unwrap();
    o.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn the_callers_sdp_version_goes_up_when_it_changes_and_only_then() {
    let now = Instant::now();
    let mut bridge = Bridge::new(addr(WEBRTC), Duration::from_secs(30));
    let (first, offer) = bridge
        .create(1, OFFER.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    let (_, answer) = browser(&offer, now);
    bridge.agent_answer(1, answer.as_bytes(), now).unwrap();
    let v0 = sdp_version(&first);
    let hold = OFFER.replace(
        "m=audio 4000 RTP/AVP 8 0 101\r\n",
        "m=audio 4000 RTP/AVP 8 0 101\r\na=sendonly\r\n",
    );
    let (held, _) = bridge
        .caller_reoffer(1, hold.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    assert_eq!(sdp_version(&held), v0 + 1, "recvonly is a change: {held}");
    let (again, _) = bridge
        .caller_reoffer(1, hold.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    assert_eq!(
        sdp_version(&again),
        v0 + 1,
        "the same answer keeps its version"
    );
    let (resumed, _) = bridge
        .caller_reoffer(1, OFFER.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    assert_eq!(sdp_version(&resumed), v0 + 2, "{resumed}");
}

#[test]
fn jitter_is_kept_per_stream_so_two_ssrcs_on_unrelated_clocks_do_not_read_as_hours() {
    let t0 = Instant::now();
    let mut rx = Receiver::default();
    // Two streams interleaved, each regular: 20 ms apart, 160 timestamp units apart, their
    // timestamps from unrelated random starts.
    for i in 0..100u32 {
        let arrival = t0 + Duration::from_millis(u64::from(i) * 10);
        let (ssrc, base, n) = if i % 2 == 0 {
            (0x1111, 7u32, i / 2)
        } else {
            (0x2222, 0x9000_0000, i / 2)
        };
        let seq = u16::try_from(n).unwrap();
        rx.record(ssrc, seq, base + n * 160, 172, arrival, t0, 8000);
    }
    assert!(rx.stats.jitter_ms <= 1, "{:?}", rx.stats);

    // One stream whose packets arrive 0 or 30 ms late: jitter shows.
    let mut late = Receiver::default();
    for n in 0..100u32 {
        let delay = if n % 2 == 0 { 0 } else { 30 };
        let arrival = t0 + Duration::from_millis(u64::from(n) * 20 + delay);
        late.record(
            9,
            u16::try_from(n).unwrap(),
            n * 160,
            172,
            arrival,
            t0,
            8000,
        );
    }
    assert!(late.stats.jitter_ms >= 10, "{:?}", late.stats);
}

/// 20 ms of audio each way (both when `caller`/`agent` say so), as the clock moves on.
fn talk(
    bridge: &mut Bridge,
    b: &mut Browser,
    now: &mut Instant,
    seq: &mut u16,
    (caller, agent): (bool, bool),
    ms: u32,
) -> Vec<BridgeEvent> {
    let mut events = Vec::new();
    let mut to_caller = Vec::new();
    let mid = b.mid.expect("the browser saw the audio m-line");
    for _ in 0..ms / 20 {
        *seq = seq.wrapping_add(1);
        if caller {
            bridge.from_caller(1, &caller_rtp(8, *seq, &[1; 160]), addr(CALLER), *now);
        }
        if agent {
            let write = RtpWrite::new(
                8.into(),
                u64::from(*seq).into(),
                u32::from(*seq) * 160,
                *now,
                &[2u8; 160][..],
            );
            b.rtc
                .direct_api()
                .stream_tx_by_mid(mid, None)
                .unwrap()
                .write_rtp(write);
        }
        run(bridge, b, &mut to_caller, now, 4);
        events.extend(std::iter::from_fn(|| bridge.poll_event()));
    }
    events
}

#[test]
fn one_way_audio_is_flagged_after_its_time_and_cleared_when_both_ways_flow() {
    let mut now = Instant::now();
    let mut bridge = Bridge::new(addr(WEBRTC), Duration::from_secs(30));
    bridge.set_one_way_after(Duration::from_secs(3));
    let (_, agent_offer) = bridge
        .create(1, OFFER.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    let (mut b, answer) = browser(&agent_offer, now);
    bridge.agent_answer(1, answer.as_bytes(), now).unwrap();
    run(&mut bridge, &mut b, &mut Vec::new(), &mut now, 200);
    let mut seq = 0;
    let both = talk(&mut bridge, &mut b, &mut now, &mut seq, (true, true), 5000);
    assert!(both.is_empty(), "both ways flow: {both:?}");
    assert_eq!(bridge.stats(1).unwrap().one_way, None);

    // The caller goes quiet: flagged after 3 s (the check is once a second), not before.
    let early = talk(&mut bridge, &mut b, &mut now, &mut seq, (false, true), 2800);
    assert!(early.is_empty(), "{early:?}");
    let flagged = talk(&mut bridge, &mut b, &mut now, &mut seq, (false, true), 1400);
    assert_eq!(flagged, [BridgeEvent::OneWay(1, Some(Silent::Caller))]);
    assert_eq!(bridge.stats(1).unwrap().one_way, Some("caller-silent"));
    let more = talk(&mut bridge, &mut b, &mut now, &mut seq, (false, true), 3000);
    assert!(more.is_empty(), "flagged once: {more:?}");

    // It comes back: cleared at the next check.
    let back = talk(&mut bridge, &mut b, &mut now, &mut seq, (true, true), 1200);
    assert_eq!(back, [BridgeEvent::OneWay(1, None)]);
    // Now the agent is the quiet one.
    let agent = talk(&mut bridge, &mut b, &mut now, &mut seq, (true, false), 4500);
    assert_eq!(agent, [BridgeEvent::OneWay(1, Some(Silent::Agent))]);
    assert_eq!(bridge.stats(1).unwrap().one_way, Some("agent-silent"));

    // A hold ends the flag (silence on hold is no fault), and after the resume each side
    // gets the full time again before the other's silence counts.
    let hold = OFFER.replace(
        "m=audio 4000 RTP/AVP 8 0 101\r\n",
        "m=audio 4000 RTP/AVP 8 0 101\r\na=sendonly\r\n",
    );
    bridge
        .caller_reoffer(1, hold.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    let held = talk(
        &mut bridge,
        &mut b,
        &mut now,
        &mut seq,
        (false, false),
        5000,
    );
    assert_eq!(held, [BridgeEvent::OneWay(1, None)]);
    bridge
        .caller_reoffer(1, OFFER.as_bytes(), addr(CALLER_LOCAL), now)
        .unwrap();
    let resumed = talk(&mut bridge, &mut b, &mut now, &mut seq, (true, false), 2800);
    assert!(
        resumed.is_empty(),
        "not measured from before the hold: {resumed:?}"
    );
}
