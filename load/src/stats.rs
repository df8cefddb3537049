//! What the agents saw since the last report: call counts by outcome and the setup latency
//! of each answered call, from the INVITE reaching the agent to its ACK.

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Default)]
struct Window {
    offered: u64,
    answered: u64,
    completed: u64,
    failed: u64,
    refused_busy: u64,
    disconnected: u64,
    setup_us: Vec<u64>,
}

/// Shared by every agent task; each event takes the lock for a few nanoseconds.
#[derive(Debug, Default)]
pub struct Stats {
    window: Mutex<Window>,
}

/// One report: counts and setup latency percentiles over the window it closes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// INVITEs received.
    pub offered: u64,
    /// Calls answered and ACKed.
    pub answered: u64,
    /// Calls that ended with a BYE answered 200 (either side's).
    pub completed: u64,
    /// Calls that went wrong: no ACK, the BYE refused or never answered, a CANCEL.
    pub failed: u64,
    /// INVITEs refused 486 because the agent was already on a call.
    pub refused_busy: u64,
    /// Agent connections the buffer server closed.
    pub disconnected: u64,
    pub setup_p50_ms: Option<f64>,
    pub setup_p99_ms: Option<f64>,
    pub setup_max_ms: Option<f64>,
}

/// The value at quantile `q` (0..=1) of sorted `values` (nearest rank).
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn ms(us: Option<u64>) -> Option<f64> {
    us.map(|us| us as f64 / 1000.0)
}

impl Stats {
    fn with(&self, f: impl FnOnce(&mut Window)) {
        // A poisoned lock only means another agent task panicked mid-count: keep counting.
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut w);
    }

    pub fn offered(&self) {
        self.with(|w| w.offered += 1);
    }

    pub fn answered(&self, setup: Duration) {
        let us = u64::try_from(setup.as_micros()).unwrap_or(u64::MAX);
        self.with(|w| {
            w.answered += 1;
            w.setup_us.push(us);
        });
    }

    pub fn completed(&self) {
        self.with(|w| w.completed += 1);
    }

    pub fn failed(&self) {
        self.with(|w| w.failed += 1);
    }

    pub fn refused_busy(&self) {
        self.with(|w| w.refused_busy += 1);
    }

    pub fn disconnected(&self) {
        self.with(|w| w.disconnected += 1);
    }

    /// Closes the window: its report, and a new empty window.
    pub fn take(&self) -> Report {
        let mut taken = Window::default();
        self.with(|w| std::mem::swap(w, &mut taken));
        taken.setup_us.sort_unstable();
        let s = &taken.setup_us;
        Report {
            offered: taken.offered,
            answered: taken.answered,
            completed: taken.completed,
            failed: taken.failed,
            refused_busy: taken.refused_busy,
            disconnected: taken.disconnected,
            setup_p50_ms: ms(quantile(s, 0.50)),
            setup_p99_ms: ms(quantile(s, 0.99)),
            setup_max_ms: ms(s.last().copied()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&v, 0.0), Some(1));
        assert_eq!(quantile(&[7], 0.99), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn a_report_closes_its_window() {
        let s = Stats::default();
        s.offered();
        s.answered(Duration::from_millis(3));
        s.completed();
        let r = s.take();
        assert_eq!((r.offered, r.answered, r.completed), (1, 1, 1));
        assert_eq!(r.setup_p50_ms, Some(3.0));
        let empty = s.take();
        assert_eq!((empty.offered, empty.setup_p99_ms), (0, None));
    }
}
