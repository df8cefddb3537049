//! Indexes over the calls not yet connected, so that each ACD event costs a few ordered-set
//! operations instead of a walk of every waiting and ringing call. At 1,600 calls/s the
//! walks (next timer, queue depth, calls to offer, calls to tell they wait) were the
//! distributor's limit, and a queue that grew made every event slower until nothing was
//! answered. The ACD files a call's [`Entry`] after every change to it; the entry is derived
//! from the call alone, so [`CallIndex`] can be rebuilt and compared in audits.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// Where one unconnected call is filed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub queue: String,
    /// When its timer fires (ring time, withdrawal grace, queue wait).
    pub deadline: Instant,
    pub waiting: Option<Waiting>,
}

/// A call waiting in its queue for an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Dispatch order: higher priority first, then place in line.
    pub rank: (Reverse<i32>, i64),
    pub queued_at: Instant,
    /// The caller has not been told yet that the call waits.
    pub untold: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct QueueCalls {
    /// Waiting calls by when they entered the queue: the first is the longest wait.
    waits: BTreeSet<(Instant, String)>,
    /// Calls offered to an agent or being withdrawn.
    offering: usize,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CallIndex {
    entries: BTreeMap<String, Entry>,
    deadlines: BTreeSet<(Instant, String)>,
    waiting: BTreeSet<(Reverse<i32>, i64, String)>,
    untold: BTreeSet<String>,
    queues: BTreeMap<String, QueueCalls>,
    /// Calls that started waiting in a queue since the ACD last checked that someone signed
    /// in could take them.
    to_check: BTreeSet<String>,
}

impl CallIndex {
    /// Files `call` as `entry` (`None`: connected or gone), replacing what was filed before.
    pub fn set(&mut self, call: &str, entry: Option<Entry>) {
        let old = match entry {
            Some(ref new) => self.entries.insert(call.to_owned(), new.clone()),
            None => self.entries.remove(call),
        };
        if old == entry {
            return;
        }
        let newly_waiting = entry.as_ref().is_some_and(|new| {
            new.waiting.is_some()
                && old
                    .as_ref()
                    .is_none_or(|o| o.waiting.is_none() || o.queue != new.queue)
        });
        if let Some(old) = old {
            self.file(call, &old, false);
        }
        if let Some(new) = entry {
            self.file(call, &new, true);
        }
        if newly_waiting {
            self.to_check.insert(call.to_owned());
        }
    }

    fn file(&mut self, call: &str, e: &Entry, add: bool) {
        let id = call.to_owned();
        let q = self.queues.entry(e.queue.clone()).or_default();
        if add {
            self.deadlines.insert((e.deadline, id.clone()));
        } else {
            self.deadlines.remove(&(e.deadline, id.clone()));
        }
        match &e.waiting {
            Some(w) => {
                let rank = (w.rank.0, w.rank.1, id.clone());
                let wait = (w.queued_at, id.clone());
                if add {
                    self.waiting.insert(rank);
                    q.waits.insert(wait);
                    if w.untold {
                        self.untold.insert(id);
                    }
                } else {
                    self.waiting.remove(&rank);
                    q.waits.remove(&wait);
                    self.untold.remove(&id);
                }
            }
            None if add => q.offering += 1,
            None => q.offering = q.offering.saturating_sub(1),
        }
        if q.waits.is_empty() && q.offering == 0 {
            self.queues.remove(&e.queue);
        }
    }

    /// Calls whose timer is due at `now`, earliest first.
    pub fn due(&self, now: Instant) -> Vec<String> {
        self.deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| id.clone())
            .collect()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// The first waiting call ranked after `after` (all of them from the start with `None`).
    pub fn next_waiting(
        &self,
        after: Option<&(Reverse<i32>, i64, String)>,
    ) -> Option<&(Reverse<i32>, i64, String)> {
        match after {
            None => self.waiting.first(),
            Some(a) => self
                .waiting
                .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                .next(),
        }
    }

    /// Waiting calls whose caller has not been told, in call-id order.
    pub fn untold(&self) -> Vec<String> {
        self.untold.iter().cloned().collect()
    }

    /// Waiting calls to check for an agent who could take them; all of them after `all`.
    pub fn take_to_check(&mut self, all: bool) -> BTreeSet<String> {
        if all {
            self.to_check
                .extend(self.waiting.iter().map(|(_, _, id)| id.clone()));
        }
        std::mem::take(&mut self.to_check)
    }

    /// (waiting, offering, when the longest-waiting call entered) of a queue.
    pub fn queue(&self, queue: &str) -> (usize, usize, Option<Instant>) {
        self.queues.get(queue).map_or((0, 0, None), |q| {
            (
                q.waits.len(),
                q.offering,
                q.waits.first().map(|(at, _)| *at),
            )
        })
    }

    pub fn waiting_in(&self, queue: &str) -> usize {
        self.queues.get(queue).map_or(0, |q| q.waits.len())
    }

    /// Whether `self` files the same calls the same way as `other` (the to-check list is
    /// work in progress, not part of the filing).
    pub fn same_filing(&self, other: &CallIndex) -> bool {
        self.entries == other.entries
            && self.deadlines == other.deadlines
            && self.waiting == other.waiting
            && self.untold == other.untold
            && self.queues == other.queues
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn waiting(queue: &str, t: Instant, order: i64) -> Entry {
        Entry {
            queue: queue.into(),
            deadline: t + Duration::from_secs(60),
            waiting: Some(Waiting {
                rank: (Reverse(0), order),
                queued_at: t,
                untold: true,
            }),
        }
    }

    #[test]
    fn refiling_moves_a_call_between_waiting_and_offering() {
        let t = Instant::now();
        let mut ix = CallIndex::default();
        ix.set("a", Some(waiting("sales", t, 1)));
        ix.set("b", Some(waiting("sales", t + Duration::from_secs(1), 2)));
        assert_eq!(ix.queue("sales"), (2, 0, Some(t)));
        assert_eq!(ix.take_to_check(false).len(), 2);
        ix.set(
            "a",
            Some(Entry {
                queue: "sales".into(),
                deadline: t + Duration::from_secs(20),
                waiting: None,
            }),
        );
        assert_eq!(ix.queue("sales"), (1, 1, Some(t + Duration::from_secs(1))));
        assert_eq!(ix.next_waiting(None).map(|w| w.2.as_str()), Some("b"));
        assert_eq!(ix.due(t + Duration::from_secs(20)), vec!["a".to_owned()]);
        assert!(
            ix.take_to_check(false).is_empty(),
            "offering is not waiting"
        );
        ix.set("a", None);
        ix.set("b", None);
        assert_eq!(ix.queue("sales"), (0, 0, None));
        assert!(ix.same_filing(&CallIndex::default()));
    }

    #[test]
    fn moving_to_another_queue_is_checked_again() {
        let t = Instant::now();
        let mut ix = CallIndex::default();
        ix.set("a", Some(waiting("sales", t, 1)));
        ix.take_to_check(false);
        ix.set("a", Some(waiting("overflow", t, 1)));
        assert_eq!(ix.take_to_check(false).len(), 1);
        assert_eq!(ix.waiting_in("sales"), 0);
        assert_eq!(ix.waiting_in("overflow"), 1);
    }
}
