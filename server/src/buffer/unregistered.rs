//! WebSocket connections that talk but have not registered. The transport cuts a socket that
//! says nothing; one that keeps sending (OPTIONS, garbage the parser answers) without ever
//! registering an agent would hold its place for ever. Each such connection gets a deadline
//! from its first message; the core closes it then unless it has registered by then. Pure.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::sip::ConnId;

#[derive(Debug)]
pub struct Unregistered {
    within: Duration,
    deadlines: HashMap<ConnId, Instant>,
    by_deadline: BTreeSet<(Instant, ConnId)>,
}

impl Unregistered {
    /// Connections have `within` from their first message to register.
    pub fn new(within: Duration) -> Unregistered {
        Unregistered {
            within,
            deadlines: HashMap::new(),
            by_deadline: BTreeSet::new(),
        }
    }

    /// A message from `conn`, which has no registration: its deadline starts now, unless it
    /// already runs.
    pub fn seen(&mut self, conn: ConnId, now: Instant) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.deadlines.entry(conn) {
            let at = now + self.within;
            e.insert(at);
            self.by_deadline.insert((at, conn));
        }
    }

    /// The connection is gone (or registered): forget it.
    pub fn forget(&mut self, conn: ConnId) {
        if let Some(at) = self.deadlines.remove(&conn) {
            self.by_deadline.remove(&(at, conn));
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(at, _)| *at)
    }

    /// The connections whose deadline has passed, forgotten; the caller closes those still
    /// without a registration.
    pub fn expire(&mut self, now: Instant) -> Vec<ConnId> {
        let mut due = Vec::new();
        while let Some(&(at, conn)) = self.by_deadline.first() {
            if at > now {
                break;
            }
            self.by_deadline.pop_first();
            self.deadlines.remove(&conn);
            due.push(conn);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_deadline_runs_from_the_first_message_and_only_once() {
        let t0 = Instant::now();
        let mut u = Unregistered::new(10 * S);
        u.seen(ConnId(1), t0);
        u.seen(ConnId(1), t0 + 5 * S);
        u.seen(ConnId(2), t0 + 3 * S);
        assert_eq!(u.next_deadline(), Some(t0 + 10 * S));
        assert!(u.expire(t0 + 9 * S).is_empty());
        assert_eq!(u.expire(t0 + 10 * S), vec![ConnId(1)]);
        assert_eq!(u.expire(t0 + 20 * S), vec![ConnId(2)]);
        assert!(u.deadlines.is_empty() && u.by_deadline.is_empty());
    }

    #[test]
    fn a_forgotten_connection_never_comes_due() {
        let t0 = Instant::now();
        let mut u = Unregistered::new(S);
        u.seen(ConnId(1), t0);
        u.forget(ConnId(1));
        assert_eq!(u.next_deadline(), None);
        assert!(u.expire(t0 + 5 * S).is_empty());
    }
}
