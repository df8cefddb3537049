//! How many connections each source address holds open on a listener, so one host cannot
//! take every socket and every handshake task. A contact centre's agents often share one NAT
//! address, so the limit is per listener and configurable, and a refusal is logged once per
//! address until it is back under the limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tracing::{debug, warn};

use super::lock;

/// The open connections of one listener, by source address.
#[derive(Debug, Clone)]
pub struct PerSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max: usize,
    what: &'static str,
    open: Mutex<HashMap<IpAddr, Count>>,
}

#[derive(Debug, Default)]
struct Count {
    open: usize,
    /// Whether a refusal was logged since the address was last under the limit.
    told: bool,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    inner: Arc<Inner>,
    ip: IpAddr,
}

impl PerSource {
    /// At most `max` connections from one address to the listener named `what` (for logs).
    pub fn new(max: usize, what: &'static str) -> PerSource {
        PerSource {
            inner: Arc::new(Inner {
                max,
                what,
                open: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A place for a new connection from `ip`, or `None` when it already holds `max`.
    pub fn admit(&self, ip: IpAddr) -> Option<Admitted> {
        let mut open = lock(&self.inner.open);
        let count = open.entry(ip).or_default();
        if count.open >= self.inner.max {
            if count.told {
                debug!(%ip, listener = self.inner.what, "connection refused: per-address limit");
            } else {
                count.told = true;
                warn!(
                    %ip,
                    listener = self.inner.what,
                    limit = self.inner.max,
                    "refusing connections from an address holding the most allowed (said once until it is under the limit)"
                );
            }
            return None;
        }
        count.open += 1;
        Some(Admitted {
            inner: self.inner.clone(),
            ip,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = lock(&self.inner.open);
        if let Some(count) = open.get_mut(&self.ip) {
            count.open = count.open.saturating_sub(1);
            count.told = false;
            if count.open == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn an_address_holds_at_most_its_limit_and_others_are_not_affected() {
        let limits = PerSource::new(2, "test");
        let first = limits.admit(A).unwrap();
        let _second = limits.admit(A).unwrap();
        assert!(limits.admit(A).is_none());
        assert!(
            limits.admit(B).is_some(),
            "another address has its own places"
        );
        drop(first);
        assert!(
            limits.admit(A).is_some(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn the_table_forgets_an_address_with_nothing_open() {
        let limits = PerSource::new(1, "test");
        drop(limits.admit(A).unwrap());
        assert!(lock(&limits.inner.open).is_empty());
    }
}
