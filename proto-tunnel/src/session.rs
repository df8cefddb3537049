//! Tunnel liveness and re-dialling, as pure state machines the IO shell drives.

use std::time::{Duration, Instant};

use crate::Frame;

/// Version of this protocol; a Hello with another one is refused, so an edge and a
/// distributor of different versions are told so at once instead of tripping over a frame.
/// 2: `AgentUp` carries the agent's token; exposed edges (`Expose`, `Http*`, `Ws*`).
/// 3: desk phones' Digest answers checked by the distributor (`DigestCheck`, `DigestResult`).
pub const PROTOCOL_VERSION: u16 = 3;
/// The WebSocket subprotocol of the tunnel; the distributor refuses clients without it.
pub const SUBPROTOCOL: &str = "agent-edge-tunnel.v1";

/// What the heartbeat wants done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatAction {
    /// Nothing yet.
    None,
    /// Send a Ping with this nonce.
    SendPing(u64),
    /// The peer has been silent too long: drop the tunnel.
    Dead,
}

/// Detects a dead tunnel even when TCP does not notice (a NAT that dropped its mapping, a
/// peer that froze). Any frame received proves the peer alive; after `interval` of silence a
/// Ping is sent (and again each `interval`); after `timeout` of silence the tunnel is dead.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    last_received: Instant,
    next_ping: Instant,
    nonce: u64,
}

impl Heartbeat {
    /// Starts the clock at `now`, the moment the tunnel opened: the handshake itself is the
    /// first proof that the peer is alive.
    pub fn new(interval: Duration, timeout: Duration, now: Instant) -> Self {
        Heartbeat {
            interval,
            timeout,
            last_received: now,
            next_ping: later(now, interval),
            nonce: 0,
        }
    }

    /// Call for every frame from the peer, not only Pongs: SIP traffic proves liveness just as
    /// well, so a busy tunnel sends no Pings at all.
    pub fn on_frame_received(&mut self, now: Instant) {
        self.last_received = now;
        self.next_ping = later(now, self.interval);
    }

    /// When [`Heartbeat::handle_timeout`] next has something to do, so the shell can sleep
    /// until then instead of polling.
    pub fn poll_timeout(&self) -> Instant {
        self.next_ping.min(later(self.last_received, self.timeout))
    }

    /// Call when [`Heartbeat::poll_timeout`] has passed (calling early or late is harmless).
    /// Death wins over a Ping: once the peer has been silent for `timeout`, one more Ping
    /// cannot save the tunnel. A late call sends one Ping, not one per missed interval.
    pub fn handle_timeout(&mut self, now: Instant) -> HeartbeatAction {
        if now >= later(self.last_received, self.timeout) {
            return HeartbeatAction::Dead;
        }
        if now >= self.next_ping {
            self.nonce = self.nonce.wrapping_add(1);
            self.next_ping = later(now, self.interval);
            return HeartbeatAction::SendPing(self.nonce);
        }
        HeartbeatAction::None
    }
}

/// `t + d`, but never panicking: a deadline past what `Instant` can hold is "never" in practice,
/// and a configured `Duration::MAX` must not crash the tunnel.
fn later(t: Instant, d: Duration) -> Instant {
    let mut d = d;
    loop {
        match t.checked_add(d) {
            Some(at) => return at,
            None => d /= 2,
        }
    }
}

/// Capped exponential back-off with jitter, so a fleet of edges that lost their distributor
/// at once does not dial back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// `initial` is the first step and `max` caps every step (an `initial` above `max` is
    /// capped too), so an edge never waits longer than `max` to find its distributor again.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.min(max);
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    /// The delay before the next attempt. `jitter` in `0.0..=1.0` comes from the caller's
    /// random source (this crate has none, so tests are deterministic); the delay is between
    /// half and all of the current step. Out-of-range jitter is clamped and NaN counts as 0.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let step = self.current;
        self.current = step.checked_mul(2).unwrap_or(self.max).min(self.max);
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        // Float rounding near Duration::MAX can overflow; the un-jittered step is then fine.
        Duration::try_from_secs_f64(step.as_secs_f64() * (0.5 + jitter / 2.0)).unwrap_or(step)
    }

    /// A tunnel that carried traffic starts the next outage from the first step again.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// Why the distributor refuses a tunnel's first frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The first frame was not a Hello.
    #[error("expected Hello, got another frame")]
    UnexpectedFrame,
    /// The edge speaks another protocol version.
    #[error("protocol version {theirs} is not ours ({ours})")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The edge's.
        theirs: u16,
    },
}

/// Checks an edge's first frame; gives its id and accepted hand-offs.
pub fn check_hello(frame: &Frame) -> Result<(String, Vec<String>), HandshakeError> {
    match frame {
        Frame::Hello {
            version,
            edge_id,
            handoffs,
        } if *version == PROTOCOL_VERSION => Ok((edge_id.clone(), handoffs.clone())),
        Frame::Hello { version, .. } => Err(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: *version,
        }),
        _ => Err(HandshakeError::UnexpectedFrame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::any;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn heartbeat_pings_on_silence_and_declares_death() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(5 * S, 15 * S, t0);
        assert_eq!(hb.poll_timeout(), t0 + 5 * S);
        assert_eq!(hb.handle_timeout(t0 + 4 * S), HeartbeatAction::None);
        assert_eq!(hb.handle_timeout(t0 + 5 * S), HeartbeatAction::SendPing(1));
        assert_eq!(hb.poll_timeout(), t0 + 10 * S);
        assert_eq!(hb.handle_timeout(t0 + 10 * S), HeartbeatAction::SendPing(2));
        assert_eq!(hb.poll_timeout(), t0 + 15 * S);
        assert_eq!(hb.handle_timeout(t0 + 15 * S), HeartbeatAction::Dead);
    }

    #[test]
    fn any_frame_keeps_the_tunnel_alive() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(5 * S, 15 * S, t0);
        hb.on_frame_received(t0 + 14 * S);
        assert_eq!(hb.handle_timeout(t0 + 15 * S), HeartbeatAction::None);
        assert_eq!(hb.poll_timeout(), t0 + 19 * S);
        assert_eq!(hb.handle_timeout(t0 + 29 * S), HeartbeatAction::Dead);
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let full: Vec<u128> = (0..5).map(|_| b.next_delay(1.0).as_millis()).collect();
        assert_eq!(full, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(50));
        assert_eq!(b.next_delay(0.5), Duration::from_millis(150));
    }

    #[test]
    fn nonces_keep_increasing_across_received_frames() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(5 * S, 15 * S, t0);
        assert_eq!(hb.handle_timeout(t0 + 5 * S), HeartbeatAction::SendPing(1));
        hb.on_frame_received(t0 + 6 * S);
        assert_eq!(hb.handle_timeout(t0 + 10 * S), HeartbeatAction::None);
        assert_eq!(hb.handle_timeout(t0 + 11 * S), HeartbeatAction::SendPing(2));
    }

    #[test]
    fn a_late_wake_up_sends_one_ping() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(5 * S, 60 * S, t0);
        assert_eq!(hb.handle_timeout(t0 + 23 * S), HeartbeatAction::SendPing(1));
        assert_eq!(hb.handle_timeout(t0 + 23 * S), HeartbeatAction::None);
        assert_eq!(hb.poll_timeout(), t0 + 28 * S);
    }

    #[test]
    fn death_wins_when_the_timeout_is_shorter_than_the_interval() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(10 * S, 3 * S, t0);
        assert_eq!(hb.poll_timeout(), t0 + 3 * S);
        assert_eq!(hb.handle_timeout(t0 + 3 * S), HeartbeatAction::Dead);
    }

    #[test]
    fn huge_durations_do_not_panic() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(Duration::MAX, Duration::MAX, t0);
        assert!(hb.poll_timeout() > t0);
        assert_eq!(hb.handle_timeout(t0 + 1000 * S), HeartbeatAction::None);
        hb.on_frame_received(t0 + S);
        let mut b = Backoff::new(Duration::MAX / 2, Duration::MAX);
        for _ in 0..4 {
            let d = b.next_delay(1.0);
            assert!(d >= Duration::MAX / 2);
        }
    }

    #[test]
    fn backoff_jitter_is_clamped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.next_delay(f64::NAN), Duration::from_millis(50));
        assert_eq!(b.next_delay(-3.0), Duration::from_millis(100));
        assert_eq!(b.next_delay(7.0), Duration::from_millis(400));
        assert_eq!(b.next_delay(f64::INFINITY), Duration::from_millis(800));
    }

    #[test]
    fn backoff_initial_above_max_is_capped() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(2));
        assert_eq!(b.next_delay(1.0), Duration::from_secs(2));
        b.reset();
        assert_eq!(b.next_delay(1.0), Duration::from_secs(2));
    }

    proptest::proptest! {
        #[test]
        fn heartbeat_never_panics_and_always_looks_ahead(
            interval_ms in 1u64..10_000,
            timeout_ms in 1u64..30_000,
            steps in proptest::collection::vec((any::<bool>(), 0u64..20_000), 0..50),
        ) {
            let t0 = Instant::now();
            let ms = Duration::from_millis;
            let mut hb = Heartbeat::new(ms(interval_ms), ms(timeout_ms), t0);
            let mut now = t0;
            let mut last_nonce = 0;
            for (received, dt) in steps {
                now += ms(dt);
                if received {
                    hb.on_frame_received(now);
                }
                match hb.handle_timeout(now) {
                    HeartbeatAction::Dead => break,
                    HeartbeatAction::SendPing(n) => {
                        proptest::prop_assert!(n > last_nonce);
                        last_nonce = n;
                        proptest::prop_assert!(hb.poll_timeout() > now);
                    }
                    HeartbeatAction::None => proptest::prop_assert!(hb.poll_timeout() > now),
                }
            }
        }

        #[test]
        fn backoff_stays_within_half_and_all_of_max(
            initial_ms in 0u64..10_000,
            max_ms in 0u64..100_000,
            jitters in proptest::collection::vec(proptest::num::f64::ANY, 0..40),
        ) {
            let max = Duration::from_millis(max_ms);
            let mut b = Backoff::new(Duration::from_millis(initial_ms), max);
            for j in jitters {
                proptest::prop_assert!(b.next_delay(j) <= max);
            }
        }
    }

    #[test]
    fn hello_is_checked() {
        let hello = |version| Frame::Hello {
            version,
            edge_id: "edge-1".into(),
            handoffs: vec!["tunnel".into()],
        };
        assert_eq!(
            check_hello(&hello(PROTOCOL_VERSION)),
            Ok(("edge-1".into(), vec!["tunnel".into()]))
        );
        let older = PROTOCOL_VERSION - 1;
        assert_eq!(
            check_hello(&hello(older)),
            Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: older
            })
        );
        assert_eq!(
            check_hello(&Frame::Ping { nonce: 1 }),
            Err(HandshakeError::UnexpectedFrame)
        );
    }
}
