//! The buffer server's routing table: one entry per call, pairing the client leg (towards the
//! caller, through the distributor) and the agent leg (towards the agent). Pure data, no IO:
//! the connection processor asks it where a message goes and what the other leg is called.

use std::collections::HashMap;

use crate::sip::Target;

/// Which leg of a call a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Towards the caller (through the distributor's tunnel).
    Client,
    /// Towards the agent.
    Agent,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Agent,
            Side::Agent => Side::Client,
        }
    }
}

/// One leg's dialog state (RFC 3261 §12) as the buffer server holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    pub call_id: String,
    /// Our tag on this leg (From tag as UAC, To tag as UAS).
    pub local_tag: String,
    /// The peer's tag, once known.
    pub remote_tag: Option<String>,
    /// Our address-of-record on this leg, as a name-addr without tag.
    pub local_uri: String,
    /// The peer's address-of-record, without tag.
    pub remote_uri: String,
    /// Request-URI for requests to the peer (its Contact).
    pub remote_target: String,
    /// Route headers for requests to the peer, in order.
    pub route_set: Vec<String>,
    /// The last CSeq number we used on this leg.
    pub local_cseq: u32,
    /// The CSeq number of the last INVITE we sent on this leg, which its ACK repeats.
    pub invite_cseq: u32,
    /// Where requests to the peer are sent.
    pub target: Target,
}

impl Leg {
    /// The next CSeq number for a request we originate on this leg.
    pub fn next_cseq(&mut self) -> u32 {
        self.local_cseq = self.local_cseq.wrapping_add(1).max(1);
        self.local_cseq
    }
}

/// Where a call stands, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// INVITE sent to the agent; no final answer yet.
    Offering,
    /// The caller cancelled; waiting for the agent leg's INVITE to end.
    Cancelling,
    /// The agent answered; waiting for the caller's ACK.
    Answered,
    /// ACKed on both legs.
    Confirmed,
    /// A BYE is on its way; the entry goes when it is answered.
    Ending,
}

/// Identifies an entry for as long as it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey(pub u64);

/// One call through this buffer server.
#[derive(Debug, Clone)]
pub struct CallEntry {
    pub agent: String,
    pub client: Leg,
    pub agent_leg: Leg,
    pub state: CallState,
}

impl CallEntry {
    pub fn leg(&self, side: Side) -> &Leg {
        match side {
            Side::Client => &self.client,
            Side::Agent => &self.agent_leg,
        }
    }

    pub fn leg_mut(&mut self, side: Side) -> &mut Leg {
        match side {
            Side::Client => &mut self.client,
            Side::Agent => &mut self.agent_leg,
        }
    }
}

/// Why an entry could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// A call with this Call-ID already has an entry (a duplicate INVITE after its
    /// transaction ended, or a Call-ID collision); the new one is refused.
    #[error("Call-ID {0} is already routed")]
    DuplicateCallId(String),
}

/// All calls, found by either leg's Call-ID.
#[derive(Debug, Default)]
pub struct RoutingTable {
    calls: HashMap<CallKey, CallEntry>,
    by_call_id: HashMap<String, (CallKey, Side)>,
    next_key: u64,
}

impl RoutingTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, entry: CallEntry) -> Result<CallKey, TableError> {
        for call_id in [&entry.client.call_id, &entry.agent_leg.call_id] {
            if self.by_call_id.contains_key(call_id) {
                return Err(TableError::DuplicateCallId(call_id.clone()));
            }
        }
        if entry.client.call_id == entry.agent_leg.call_id {
            return Err(TableError::DuplicateCallId(entry.client.call_id));
        }
        self.next_key += 1;
        let key = CallKey(self.next_key);
        self.by_call_id
            .insert(entry.client.call_id.clone(), (key, Side::Client));
        self.by_call_id
            .insert(entry.agent_leg.call_id.clone(), (key, Side::Agent));
        self.calls.insert(key, entry);
        Ok(key)
    }

    /// The call and the leg a Call-ID belongs to.
    pub fn lookup(&self, call_id: &str) -> Option<(CallKey, Side)> {
        self.by_call_id.get(call_id).copied()
    }

    pub fn get(&self, key: CallKey) -> Option<&CallEntry> {
        self.calls.get(&key)
    }

    pub fn get_mut(&mut self, key: CallKey) -> Option<&mut CallEntry> {
        self.calls.get_mut(&key)
    }

    /// Clears an entry and both its Call-IDs (those still naming it).
    pub fn remove(&mut self, key: CallKey) -> Option<CallEntry> {
        let entry = self.calls.remove(&key)?;
        for call_id in [&entry.client.call_id, &entry.agent_leg.call_id] {
            if self.by_call_id.get(call_id).is_some_and(|(k, _)| *k == key) {
                self.by_call_id.remove(call_id);
            }
        }
        Some(entry)
    }

    /// Forgets the client leg's Call-ID of an entry whose client side is over (answered 487
    /// after a CANCEL) while its agent leg winds down, so the distributor may offer the same
    /// call again (serial forking keeps the Call-ID).
    pub fn detach_client(&mut self, key: CallKey) {
        if let Some(entry) = self.calls.get(&key)
            && self
                .by_call_id
                .get(&entry.client.call_id)
                .is_some_and(|(k, _)| *k == key)
        {
            self.by_call_id.remove(&entry.client.call_id);
        }
    }

    /// Entries whose agent leg goes to this agent, for when its registration goes away.
    pub fn calls_of_agent<'a>(&'a self, agent: &'a str) -> impl Iterator<Item = CallKey> + 'a {
        self.calls
            .iter()
            .filter(move |(_, e)| e.agent == agent)
            .map(|(k, _)| *k)
    }

    /// Every call's key, oldest first (for ending them all at shutdown).
    pub fn keys(&self) -> Vec<CallKey> {
        let mut keys: Vec<CallKey> = self.calls.keys().copied().collect();
        keys.sort_by_key(|k| k.0);
        keys
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

/// Legs and entries for the unit tests of the routing table and of its owner.
#[cfg(test)]
pub(crate) mod test_entries {
    use super::*;

    pub(crate) fn leg(call_id: &str) -> Leg {
        Leg {
            call_id: call_id.into(),
            local_tag: "l".into(),
            remote_tag: None,
            local_uri: "<sip:a@h>".into(),
            remote_uri: "<sip:b@h>".into(),
            remote_target: "sip:b@127.0.0.1:5000".into(),
            route_set: vec![],
            local_cseq: 0,
            invite_cseq: 0,
            target: Target::udp("127.0.0.1:5000".parse().unwrap()),
        }
    }

    pub(crate) fn entry(client: &str, agent: &str) -> CallEntry {
        CallEntry {
            agent: "alice".into(),
            client: leg(client),
            agent_leg: leg(agent),
            state: CallState::Offering,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_entries::{entry, leg};
    use super::*;

    #[test]
    fn a_detached_client_call_id_can_be_routed_again() {
        let mut table = RoutingTable::new();
        let first = table.insert(entry("caller", "agent-1")).unwrap();
        assert!(table.insert(entry("caller", "agent-2")).is_err());
        table.detach_client(first);
        let second = table.insert(entry("caller", "agent-2")).unwrap();
        assert_eq!(table.lookup("agent-1"), Some((first, Side::Agent)));
        table.remove(first);
        assert_eq!(table.lookup("caller"), Some((second, Side::Client)));
        assert_eq!(table.lookup("agent-1"), None);
    }

    #[test]
    fn both_call_ids_find_the_entry_and_removal_forgets_both() {
        let mut t = RoutingTable::new();
        let k = t.insert(entry("c1", "a1")).unwrap();
        assert_eq!(t.lookup("c1"), Some((k, Side::Client)));
        assert_eq!(t.lookup("a1"), Some((k, Side::Agent)));
        assert_eq!(t.calls_of_agent("alice").collect::<Vec<_>>(), vec![k]);
        assert!(t.remove(k).is_some());
        assert_eq!(t.lookup("c1"), None);
        assert_eq!(t.lookup("a1"), None);
        assert!(t.is_empty());
        assert!(t.remove(k).is_none());
    }

    #[test]
    fn duplicate_call_ids_are_refused_without_disturbing_the_first() {
        let mut t = RoutingTable::new();
        let k = t.insert(entry("c1", "a1")).unwrap();
        assert!(t.insert(entry("c1", "a2")).is_err());
        assert!(t.insert(entry("c2", "a1")).is_err());
        assert!(t.insert(entry("c3", "c3")).is_err());
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup("c1"), Some((k, Side::Client)));
        assert_eq!(t.lookup("a2"), None);
    }

    #[test]
    fn cseq_counts_up_and_never_returns_zero() {
        let mut l = leg("x");
        assert_eq!(l.next_cseq(), 1);
        assert_eq!(l.next_cseq(), 2);
        l.local_cseq = u32::MAX;
        assert_eq!(l.next_cseq(), 1);
    }
}
