//! Overload control at the distributor. Past what it can serve, SIP over UDP collapses: the
//! core falls behind, callers retransmit their INVITEs every 500 ms and more, which puts it
//! further behind. The signal is how long a message waited between the socket and the core:
//! a new call whose INVITE waited longer than `[distributor] overload_after_ms` is refused at
//! once with 503 and `Retry-After`, which costs the core little, so it catches up, while the
//! calls it accepted (their transactions, ACKs and BYEs) are served as before. Pure.

use std::time::Duration;

use tracing::{info, warn};

/// What a refused caller is told to wait before trying again.
pub const RETRY_AFTER_S: u64 = 5;

#[derive(Debug)]
pub struct Overload {
    after: Duration,
    /// How long the message being handled waited.
    waited: Duration,
    /// Refusing since the first late INVITE, until one comes in time: logged once each way.
    refusing: bool,
    refused: u64,
}

impl Overload {
    /// `after` zero: never refuse.
    pub fn new(after: Duration) -> Overload {
        Overload {
            after,
            waited: Duration::ZERO,
            refusing: false,
            refused: 0,
        }
    }

    /// The message now handled waited this long for the core.
    pub fn waited(&mut self, waited: Duration) {
        self.waited = waited;
    }

    /// Whether the new call now handled is to be refused.
    pub fn refuse_new_call(&mut self) -> bool {
        let over = !self.after.is_zero() && self.waited > self.after;
        if over {
            if !self.refusing {
                self.refusing = true;
                warn!(
                    waited_ms = self.waited.as_millis(),
                    "overloaded: new calls are refused with 503 until the distributor catches up"
                );
            }
            self.refused += 1;
        } else if self.refusing {
            self.refusing = false;
            info!(
                refused = self.refused,
                "no longer overloaded: new calls are served again"
            );
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
        let mut overload = Overload::new(Duration::from_millis(200));
        overload.waited(Duration::from_millis(200));
        assert!(
            !overload.refuse_new_call(),
            "at the limit it is still served"
        );
        overload.waited(Duration::from_millis(201));
        assert!(overload.refuse_new_call());
        assert!(overload.refuse_new_call(), "still that late");
        assert_eq!(overload.refused, 2);
        overload.waited(Duration::from_millis(3));
        assert!(!overload.refuse_new_call());
        assert!(!overload.refusing);
        assert_eq!(overload.refused, 0);
    }

    #[test]
    fn zero_turns_it_off() {
        let mut overload = Overload::new(Duration::ZERO);
        overload.waited(Duration::from_secs(10));
        assert!(!overload.refuse_new_call());
    }
}
