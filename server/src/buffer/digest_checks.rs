//! Desk phones' REGISTERs waiting for the distributor to check their Digest answer. Each has
//! a deadline, so a distributor that never answers leaves no phone waiting past it, and the
//! table is bounded, so a flood of answers cannot grow it. Pure.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::sip::transaction::TxId;
use crate::sip::{SipMessage, Target};

/// How long the distributor has to answer: far less than a phone's transaction lasts.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Most checks waiting at once; beyond, a phone is told to try again later.
pub const MAX_WAITING: usize = 1024;

/// A REGISTER waiting for its check.
#[derive(Debug)]
pub struct Waiting {
    pub tx: TxId,
    pub msg: SipMessage,
    pub from: Target,
    deadline: Instant,
}

#[derive(Debug, Default)]
pub struct DigestChecks {
    next: u64,
    waiting: HashMap<u64, Waiting>,
    by_deadline: BTreeSet<(Instant, u64)>,
}

impl DigestChecks {
    pub fn new() -> DigestChecks {
        DigestChecks::default()
    }

    /// Files a REGISTER; returns the id its check goes out with, or `None` when full.
    pub fn add(&mut self, tx: TxId, msg: SipMessage, from: Target, now: Instant) -> Option<u64> {
        if self.waiting.len() >= MAX_WAITING {
            return None;
        }
        self.next = self.next.wrapping_add(1);
        let id = self.next;
        let deadline = now + ANSWER_WITHIN;
        self.waiting.insert(
            id,
            Waiting {
                tx,
                msg,
                from,
                deadline,
            },
        );
        self.by_deadline.insert((deadline, id));
        Some(id)
    }

    /// The REGISTER a check's answer is for, if it still waits.
    pub fn take(&mut self, id: u64) -> Option<Waiting> {
        let waiting = self.waiting.remove(&id)?;
        self.by_deadline.remove(&(waiting.deadline, id));
        Some(waiting)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(at, _)| *at)
    }

    /// The REGISTERs whose check was not answered in time.
    pub fn expire(&mut self, now: Instant) -> Vec<Waiting> {
        let mut out = Vec::new();
        while let Some(&(at, id)) = self.by_deadline.first() {
            if at > now {
                break;
            }
            self.by_deadline.pop_first();
            if let Some(w) = self.waiting.remove(&id) {
                out.push(w);
            }
        }
        out
    }

    /// Every REGISTER still waiting (the tunnel went: no answer will come).
    pub fn drain(&mut self) -> Vec<Waiting> {
        self.by_deadline.clear();
        let mut ids: Vec<u64> = self.waiting.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| self.waiting.remove(&id))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::TransportKind;

    fn register() -> SipMessage {
        SipMessage::parse(
            b"REGISTER sip:edge SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1\r\n\
              From: <sip:alice@edge>;tag=1\r\nTo: <sip:alice@edge>\r\nCall-ID: c\r\n\
              CSeq: 2 REGISTER\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap()
    }

    fn phone() -> Target {
        Target {
            kind: TransportKind::Udp,
            addr: "127.0.0.1:5062".parse().unwrap(),
            conn: None,
        }
    }

    #[test]
    fn an_answer_finds_its_register_once_and_the_rest_expire() {
        let t0 = Instant::now();
        let mut checks = DigestChecks::new();
        let a = checks
            .add(TxId::from_raw(1), register(), phone(), t0)
            .unwrap();
        let b = checks
            .add(
                TxId::from_raw(2),
                register(),
                phone(),
                t0 + Duration::from_secs(1),
            )
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(checks.next_deadline(), Some(t0 + ANSWER_WITHIN));
        assert_eq!(checks.take(a).map(|w| w.tx), Some(TxId::from_raw(1)));
        assert!(checks.take(a).is_none(), "an answer counts once");
        assert!(checks.expire(t0 + ANSWER_WITHIN).is_empty());
        let late = checks.expire(t0 + ANSWER_WITHIN + Duration::from_secs(1));
        assert_eq!(late.len(), 1);
        assert!(checks.is_empty());
        assert_eq!(checks.next_deadline(), None);
        assert!(
            checks.take(b).is_none(),
            "an expired check's answer is ignored"
        );
    }

    #[test]
    fn the_table_is_bounded_and_a_lost_tunnel_empties_it() {
        let t0 = Instant::now();
        let mut checks = DigestChecks::new();
        for i in 0..MAX_WAITING {
            assert!(
                checks
                    .add(TxId::from_raw(i as u64), register(), phone(), t0)
                    .is_some()
            );
        }
        assert!(
            checks
                .add(TxId::from_raw(0), register(), phone(), t0)
                .is_none()
        );
        assert_eq!(checks.drain().len(), MAX_WAITING);
        assert!(checks.is_empty());
        assert_eq!(checks.next_deadline(), None);
    }
}
