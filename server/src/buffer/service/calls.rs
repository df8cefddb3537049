//! A call's one home in the buffer server: its routing entry (the two legs, see
//! [`RoutingTable`]), the transactions carrying it, the ACK each leg may need again and the
//! bridge's SDP answers, and which calls' media is relayed (desk-phone agents). The indexes that find a call by Call-ID or by transaction live here
//! and nowhere else, so no handler keeps two maps in step.
//!
//! A transaction's record outlives its call: a call ended from here (a BYE of ours, the media
//! gone) still has INVITE or BYE transactions winding down in the layer, and their last events
//! must find what they were for. A record goes when the layer says its transaction ended.

use std::collections::{HashMap, HashSet};

use crate::buffer::routing_table::{CallEntry, CallKey, RoutingTable, Side, TableError};
use crate::sip::transaction::TxId;
use crate::sip::{Method, SipMessage, Target};

/// A request forwarded from one leg to the other, waiting for its answer.
#[derive(Debug, Clone)]
pub(super) struct Forwarded {
    /// The server transaction on the leg the request came from.
    pub server_tx: TxId,
    pub from_side: Side,
    pub method: Method,
}

/// The agent leg's INVITE of a relayed call, waiting for the call's agent-side port, which
/// its SDP names.
#[derive(Debug)]
pub(super) struct PendingInvite {
    /// The client leg's INVITE transaction it is for.
    pub client_tx: TxId,
    pub invite: SipMessage,
    pub target: Target,
}

/// What one of the layer's transactions is for.
#[derive(Debug, Clone)]
pub(super) enum TxRole {
    /// The client leg's INVITE, from the distributor (a server transaction).
    ClientInvite,
    /// The agent leg's INVITE (a client transaction), offered for the client leg's
    /// `client_tx`.
    AgentInvite { client_tx: TxId },
    /// Any other request relayed from one leg to the other (BYE, re-INVITE, INFO…).
    Forwarded(Forwarded),
}

/// What a call holds besides its routing entry.
#[derive(Debug, Default)]
struct CallRecord {
    /// The INVITE transactions of each leg, while they last.
    client_invite: Option<TxId>,
    agent_invite: Option<TxId>,
    /// The ACK sent on each leg (client, agent) for its last 2xx, re-sent when that 2xx is
    /// retransmitted.
    acks: [Option<SipMessage>; 2],
    /// The bridge's answer to a re-INVITE forwarded on a bridged call, sent back with the
    /// other side's 2xx.
    reinvite_answer: Option<String>,
}

fn slot(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Agent => 1,
    }
}

/// Every call through this buffer server.
#[derive(Debug, Default)]
pub(super) struct Calls {
    table: RoutingTable,
    records: HashMap<CallKey, CallRecord>,
    /// The caller's SDP answer of each bridged call, sent with the agent's 2xx; apart from
    /// [`CallRecord`] because the statistics report walks the bridged calls alone.
    caller_answers: HashMap<CallKey, String>,
    /// Bridged calls whose caller-side port is being opened, with the agent's 2xx if it
    /// came first (it waits: the caller must get our SDP, never the agent's).
    awaiting_port: HashMap<CallKey, Option<(TxId, SipMessage)>>,
    /// Calls to desk-phone agents whose plain RTP the bridge relays: every SDP crossing
    /// them is re-addressed.
    relayed: HashSet<CallKey>,
    /// Relayed calls whose agent-side port is being opened, with the INVITE for the agent.
    awaiting_agent_port: HashMap<CallKey, PendingInvite>,
    txs: HashMap<TxId, (CallKey, TxRole)>,
}

impl Calls {
    pub fn new() -> Calls {
        Calls::default()
    }

    /// A new call, refused when either leg's Call-ID is already routed.
    pub fn insert(&mut self, entry: CallEntry) -> Result<CallKey, TableError> {
        let key = self.table.insert(entry)?;
        self.records.insert(key, CallRecord::default());
        Ok(key)
    }

    /// The call and the leg a Call-ID belongs to.
    pub fn lookup(&self, call_id: &str) -> Option<(CallKey, Side)> {
        self.table.lookup(call_id)
    }

    pub fn get(&self, key: CallKey) -> Option<&CallEntry> {
        self.table.get(key)
    }

    pub fn get_mut(&mut self, key: CallKey) -> Option<&mut CallEntry> {
        self.table.get_mut(key)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Every call's key, oldest first.
    pub fn keys(&self) -> Vec<CallKey> {
        self.table.keys()
    }

    /// See [`RoutingTable::detach_client`].
    pub fn detach_client(&mut self, key: CallKey) {
        self.table.detach_client(key);
    }

    /// The call is over here. Its transactions' records stay until each transaction ends.
    pub fn remove(&mut self, key: CallKey) -> Option<CallEntry> {
        self.records.remove(&key);
        self.caller_answers.remove(&key);
        self.awaiting_port.remove(&key);
        self.relayed.remove(&key);
        self.awaiting_agent_port.remove(&key);
        self.table.remove(key)
    }

    /// The INVITE went to the agent: both legs' INVITE transactions belong to the call.
    pub fn invite_sent(&mut self, key: CallKey, client_tx: TxId, agent_tx: TxId) {
        if let Some(record) = self.records.get_mut(&key) {
            record.client_invite = Some(client_tx);
            record.agent_invite = Some(agent_tx);
        }
        self.txs.insert(client_tx, (key, TxRole::ClientInvite));
        let role = TxRole::AgentInvite { client_tx };
        self.txs.insert(agent_tx, (key, role));
    }

    /// The client leg's INVITE is the call's before the agent's is sent (a relayed call's
    /// waits for its port): a CANCEL or a refusal meanwhile finds it.
    pub fn client_invite_received(&mut self, key: CallKey, client_tx: TxId) {
        if let Some(record) = self.records.get_mut(&key) {
            record.client_invite = Some(client_tx);
            self.txs.insert(client_tx, (key, TxRole::ClientInvite));
        }
    }

    /// A request was relayed on `tx` for the call.
    pub fn forwarded(&mut self, key: CallKey, tx: TxId, forwarded: Forwarded) {
        self.txs.insert(tx, (key, TxRole::Forwarded(forwarded)));
    }

    /// What a transaction is for, and its call.
    pub fn tx(&self, tx: TxId) -> Option<(CallKey, &TxRole)> {
        self.txs.get(&tx).map(|(key, role)| (*key, role))
    }

    /// The transaction ended (or failed): its record goes, and it no longer stands for its
    /// call's INVITE on either leg.
    pub fn tx_ended(&mut self, tx: TxId) -> Option<(CallKey, TxRole)> {
        let (key, role) = self.txs.remove(&tx)?;
        if let Some(record) = self.records.get_mut(&key) {
            if record.client_invite == Some(tx) {
                record.client_invite = None;
            }
            if record.agent_invite == Some(tx) {
                record.agent_invite = None;
            }
        }
        Some((key, role))
    }

    /// The client leg's INVITE transaction, while it lasts.
    pub fn client_invite(&self, key: CallKey) -> Option<TxId> {
        self.records.get(&key)?.client_invite
    }

    /// The agent leg's INVITE transaction, while it lasts.
    pub fn agent_invite(&self, key: CallKey) -> Option<TxId> {
        self.records.get(&key)?.agent_invite
    }

    pub fn set_ack(&mut self, key: CallKey, side: Side, ack: SipMessage) {
        if let Some(record) = self.records.get_mut(&key) {
            record.acks[slot(side)] = Some(ack);
        }
    }

    /// The ACK last sent on `side`, for a retransmitted 2xx.
    pub fn ack(&self, key: CallKey, side: Side) -> Option<&SipMessage> {
        self.records.get(&key)?.acks[slot(side)].as_ref()
    }

    /// The call's media goes through the bridge; `sdp` is what the caller gets.
    pub fn set_caller_answer(&mut self, key: CallKey, sdp: String) {
        if self.records.contains_key(&key) {
            self.caller_answers.insert(key, sdp);
        }
    }

    /// The call's caller-side port is asked for.
    pub fn await_caller_port(&mut self, key: CallKey) {
        if self.records.contains_key(&key) {
            self.awaiting_port.insert(key, None);
        }
    }

    /// Keeps the agent's 2xx of a call still waiting for its port; false when it need not
    /// wait.
    pub fn hold_for_caller_port(
        &mut self,
        key: CallKey,
        client_tx: TxId,
        resp: &SipMessage,
    ) -> bool {
        match self.awaiting_port.get_mut(&key) {
            Some(slot) => {
                // A retransmitted 2xx replaces the first: the same answer.
                *slot = Some((client_tx, resp.clone()));
                true
            }
            None => false,
        }
    }

    /// The port's answer came: the 2xx that waited for it, if any; none when the call was
    /// not waiting (it ended meanwhile).
    #[allow(clippy::option_option)]
    pub fn caller_port_arrived(&mut self, key: CallKey) -> Option<Option<(TxId, SipMessage)>> {
        self.awaiting_port.remove(&key)
    }

    pub fn caller_answer(&self, key: CallKey) -> Option<&str> {
        self.caller_answers.get(&key).map(String::as_str)
    }

    /// Whether the call is bridged to a browser's WebRTC (the bridge answers its SDP).
    pub fn is_bridged(&self, key: CallKey) -> bool {
        self.caller_answers.contains_key(&key)
    }

    /// The call's media is relayed (a desk-phone agent's plain RTP anchored here).
    pub fn set_relayed(&mut self, key: CallKey) {
        if self.records.contains_key(&key) {
            self.relayed.insert(key);
        }
    }

    pub fn is_relayed(&self, key: CallKey) -> bool {
        self.relayed.contains(&key)
    }

    /// The calls whose media goes through the bridge (bridged or relayed), in no order.
    pub fn bridged(&self) -> impl Iterator<Item = CallKey> + '_ {
        self.caller_answers.keys().chain(&self.relayed).copied()
    }

    pub fn any_bridged(&self) -> bool {
        !self.caller_answers.is_empty() || !self.relayed.is_empty()
    }

    /// The relayed call's INVITE for the agent waits for its agent-side port.
    pub fn await_agent_port(&mut self, key: CallKey, pending: PendingInvite) {
        if self.records.contains_key(&key) {
            self.awaiting_agent_port.insert(key, pending);
        }
    }

    /// Whether the call's INVITE for the agent still waits (it was never sent).
    pub fn awaits_agent_port(&self, key: CallKey) -> bool {
        self.awaiting_agent_port.contains_key(&key)
    }

    /// The port's answer came: the INVITE that waited for it; none when the call ended.
    pub fn agent_port_arrived(&mut self, key: CallKey) -> Option<PendingInvite> {
        self.awaiting_agent_port.remove(&key)
    }

    pub fn set_reinvite_answer(&mut self, key: CallKey, sdp: String) {
        if let Some(record) = self.records.get_mut(&key) {
            record.reinvite_answer = Some(sdp);
        }
    }

    pub fn has_reinvite_answer(&self, key: CallKey) -> bool {
        self.records
            .get(&key)
            .is_some_and(|r| r.reinvite_answer.is_some())
    }

    pub fn take_reinvite_answer(&mut self, key: CallKey) -> Option<String> {
        self.records.get_mut(&key)?.reinvite_answer.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::routing_table::test_entries::entry;

    fn call(calls: &mut Calls, client: &str, agent: &str) -> CallKey {
        calls.insert(entry(client, agent)).unwrap()
    }

    fn ack() -> SipMessage {
        let text = "ACK sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
                    From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\n\
                    CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n";
        SipMessage::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn a_transaction_ending_takes_only_its_own_part() {
        let mut calls = Calls::new();
        let key = call(&mut calls, "c1", "a1");
        let (client_tx, agent_tx, bye_tx) =
            (TxId::from_raw(1), TxId::from_raw(2), TxId::from_raw(3));
        calls.invite_sent(key, client_tx, agent_tx);
        let bye = Forwarded {
            server_tx: TxId::from_raw(4),
            from_side: Side::Agent,
            method: Method::Bye,
        };
        calls.forwarded(key, bye_tx, bye);

        let ended = calls.tx_ended(agent_tx);
        assert!(
            matches!(ended, Some((k, TxRole::AgentInvite { client_tx: c })) if k == key && c == client_tx)
        );
        assert_eq!(calls.agent_invite(key), None);
        assert_eq!(calls.client_invite(key), Some(client_tx));
        assert!(matches!(calls.tx(bye_tx), Some((k, TxRole::Forwarded(_))) if k == key));
        assert!(calls.tx_ended(agent_tx).is_none(), "a record goes once");
    }

    #[test]
    fn records_outlive_their_call_until_their_transaction_ends() {
        let mut calls = Calls::new();
        let key = call(&mut calls, "c1", "a1");
        calls.invite_sent(key, TxId::from_raw(1), TxId::from_raw(2));
        calls.set_caller_answer(key, "v=0".into());
        calls.set_ack(key, Side::Agent, ack());
        assert!(calls.any_bridged());
        let relayed = call(&mut calls, "c2", "a2");
        calls.set_relayed(relayed);
        let pending = PendingInvite {
            client_tx: TxId::from_raw(5),
            invite: ack(),
            target: Target::udp("127.0.0.1:5".parse().unwrap()),
        };
        calls.await_agent_port(relayed, pending);
        assert!(calls.is_relayed(relayed) && calls.awaits_agent_port(relayed));
        assert_eq!(calls.bridged().count(), 2, "both kinds report statistics");
        calls.remove(relayed);
        assert!(!calls.is_relayed(relayed) && calls.agent_port_arrived(relayed).is_none());

        assert!(calls.remove(key).is_some());
        assert!(!calls.any_bridged());
        assert!(calls.ack(key, Side::Agent).is_none());
        assert_eq!(calls.lookup("c1"), None);
        // The layer still runs the INVITE transactions: their events find the (gone) call.
        assert!(matches!(calls.tx(TxId::from_raw(1)), Some((k, TxRole::ClientInvite)) if k == key));
        assert!(calls.tx_ended(TxId::from_raw(1)).is_some());
        assert!(calls.tx(TxId::from_raw(1)).is_none());
    }

    #[test]
    fn a_call_that_is_gone_takes_no_new_state() {
        let mut calls = Calls::new();
        let key = call(&mut calls, "c1", "a1");
        calls.remove(key);
        calls.set_caller_answer(key, "v=0".into());
        calls.set_reinvite_answer(key, "v=0".into());
        calls.set_ack(key, Side::Client, ack());
        assert!(!calls.is_bridged(key));
        assert!(!calls.has_reinvite_answer(key));
        assert!(calls.ack(key, Side::Client).is_none());
    }

    #[test]
    fn each_leg_keeps_its_own_ack_and_a_reinvite_answer_is_taken_once() {
        let mut calls = Calls::new();
        let key = call(&mut calls, "c1", "a1");
        calls.set_ack(key, Side::Client, ack());
        assert!(calls.ack(key, Side::Client).is_some());
        assert!(calls.ack(key, Side::Agent).is_none());
        calls.set_reinvite_answer(key, "v=0".into());
        assert!(calls.has_reinvite_answer(key));
        assert_eq!(calls.take_reinvite_answer(key).as_deref(), Some("v=0"));
        assert_eq!(calls.take_reinvite_answer(key), None);
    }
}
