//! Overload control at the distributor. Past what it can serve, SIP over UDP collapses: the
//! core falls behind, callers retransmit their INVITEs every 500 ms and more, which puts it
//! further behind. Two signals, either enough: how long a message waited between the
//! transport and the core (longer than `[distributor] overload_after_ms`, by default T1, by
//! which a caller has sent its INVITE again); and the core's loop spending [`BUSY_LIMIT`] of
//! its time handling inputs for [`BUSY_WINDOWS`] windows in a row (a queue forms in the
//! socket's kernel buffer too, where no wait is seen, when the readers cannot keep up). A new
//! call is then refused at once with 503 and `Retry-After`, which costs the core little, so
//! it catches up, while the calls it accepted (their transactions, ACKs and BYEs) are served
//! as before. Pure.

use std::time::{Duration, Instant};

use tracing::{info, warn};

/// What a refused caller is told to wait before trying again.
pub const RETRY_AFTER_S: u64 = 5;

/// The share of a window the core may spend handling inputs before the window counts as
/// saturated: beyond, waits grow without bound.
pub const BUSY_LIMIT: f64 = 0.95;

/// Saturated windows in a row (of [`crate::driver::LOAD_WINDOW`]) that make the core
/// overloaded: a burst is no overload.
pub const BUSY_WINDOWS: u32 = 5;

/// An overload ends, for the log, once no call was refused for this long; refusals come and
/// go call by call while the core hovers at its limit.
const QUIET: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Overload {
    after: Duration,
    /// How long the message being handled waited.
    waited: Duration,
    /// Saturated windows in a row, up to now.
    saturated: u32,
    /// The last refusal, while an overload lasts (logged once when it starts, once when it
    /// ends).
    last_refused: Option<Instant>,
    refused: u64,
}

impl Overload {
    /// `after` zero: never refuse.
    pub fn new(after: Duration) -> Overload {
        Overload {
            after,
            waited: Duration::ZERO,
            saturated: 0,
            last_refused: None,
            refused: 0,
        }
    }

    /// The message now handled waited this long for the core.
    pub fn waited(&mut self, waited: Duration) {
        self.waited = waited;
    }

    /// The share of the last window the core spent handling inputs.
    pub fn busy(&mut self, busy: f64) {
        self.saturated = if busy >= BUSY_LIMIT {
            self.saturated.saturating_add(1)
        } else {
            0
        };
    }

    /// Whether the new call now handled is to be refused.
    pub fn refuse_new_call(&mut self, now: Instant) -> bool {
        let over =
            !self.after.is_zero() && (self.waited > self.after || self.saturated >= BUSY_WINDOWS);
        if over {
            if self.last_refused.is_none() {
                warn!(
                    waited_ms = self.waited.as_millis(),
                    saturated_windows = self.saturated,
                    "overloaded: new calls are refused with 503 until the distributor catches up"
                );
            }
            self.last_refused = Some(now);
            self.refused += 1;
        } else if self
            .last_refused
            .is_some_and(|at| now.saturating_duration_since(at) >= QUIET)
        {
            info!(
                refused = self.refused,
                "no longer overloaded: new calls are served again"
            );
            self.last_refused = None;
            self.refused = 0;
        }
        over
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_invite_is_refused_and_one_in_time_is_served_again() {
        let t0 = Instant::now();
        let mut overload = Overload::new(Duration::from_millis(500));
        overload.waited(Duration::from_millis(500));
        assert!(
            !overload.refuse_new_call(t0),
            "at the limit it is still served"
        );
        overload.waited(Duration::from_millis(501));
        assert!(overload.refuse_new_call(t0));
        assert!(overload.refuse_new_call(t0), "still that late");
        assert_eq!(overload.refused, 2);
        overload.waited(Duration::from_millis(3));
        assert!(!overload.refuse_new_call(t0 + Duration::from_millis(10)));
        assert!(
            overload.last_refused.is_some(),
            "the overload lasts for the log"
        );
        assert!(!overload.refuse_new_call(t0 + QUIET));
        assert!(overload.last_refused.is_none());
        assert_eq!(overload.refused, 0);
    }

    #[test]
    fn a_core_saturated_for_long_enough_is_overloaded_and_a_burst_is_not() {
        let now = Instant::now();
        let mut overload = Overload::new(Duration::from_millis(500));
        for _ in 1..BUSY_WINDOWS {
            overload.busy(0.99);
        }
        assert!(!overload.refuse_new_call(now), "a burst");
        overload.busy(0.97);
        assert!(overload.refuse_new_call(now), "however short the wait");
        overload.busy(0.5);
        assert!(!overload.refuse_new_call(now));
    }

    #[test]
    fn zero_turns_it_off() {
        let now = Instant::now();
        let mut overload = Overload::new(Duration::ZERO);
        overload.waited(Duration::from_secs(10));
        for _ in 0..BUSY_WINDOWS {
            overload.busy(1.0);
        }
        assert!(!overload.refuse_new_call(now));
    }
}
