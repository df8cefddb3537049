//! Tunnel liveness and re-dialling, as pure state machines the IO shell drives.

use std::time::{Duration, Instant};

use crate::Frame;

/// Version of this protocol; a Hello with another one is refused.
pub const PROTOCOL_VERSION: u16 = 1;
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
    pub fn new(interval: Duration, timeout: Duration, now: Instant) -> Self {
        Heartbeat {
            interval,
            timeout,
            last_received: now,
            next_ping: now + interval,
            nonce: 0,
        }
    }

    pub fn on_frame_received(&mut self, now: Instant) {
        self.last_received = now;
        self.next_ping = now + self.interval;
    }

    /// When [`Heartbeat::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Instant {
        self.next_ping.min(self.last_received + self.timeout)
    }

    pub fn handle_timeout(&mut self, now: Instant) -> HeartbeatAction {
        if now >= self.last_received + self.timeout {
            return HeartbeatAction::Dead;
        }
        if now >= self.next_ping {
            self.nonce += 1;
            self.next_ping = now + self.interval;
            return HeartbeatAction::SendPing(self.nonce);
        }
        HeartbeatAction::None
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
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    /// The delay before the next attempt. `jitter` in `0.0..=1.0` comes from the caller's
    /// random source; the delay is between half and all of the current step.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        step.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
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
    fn hello_is_checked() {
        let hello = |version| Frame::Hello {
            version,
            edge_id: "edge-1".into(),
            handoffs: vec!["tunnel".into()],
        };
        assert_eq!(
            check_hello(&hello(1)),
            Ok(("edge-1".into(), vec!["tunnel".into()]))
        );
        assert_eq!(
            check_hello(&hello(2)),
            Err(HandshakeError::VersionMismatch { ours: 1, theirs: 2 })
        );
        assert_eq!(
            check_hello(&Frame::Ping { nonce: 1 }),
            Err(HandshakeError::UnexpectedFrame)
        );
    }
}
