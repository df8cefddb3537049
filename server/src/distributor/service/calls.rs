//! One home per call. A call's SIP side is several transactions at once: the caller's INVITE,
//! the offers made to agents' edges for it, the in-dialog requests proxied either way. Each
//! event names one transaction, so each must lead back to its call; the indexes that do that
//! live here, private, and are kept in step by one `transaction_ended` rather than by hand
//! wherever a transaction ends.

use std::collections::HashMap;

use crate::sip::transaction::TxId;
use crate::sip::{SipMessage, Target, TransportKind};

/// A caller's INVITE, while its server transaction lasts.
#[derive(Debug)]
pub(super) struct Caller {
    pub(super) server_tx: TxId,
    pub(super) invite: SipMessage,
    pub(super) target: Target,
    /// Our To tag for the ringback and a refusal.
    pub(super) tag: String,
}

/// A call offered to an agent's edge, by the client transaction carrying its INVITE. It
/// keeps its own copy of where the caller is: the edge's answer may come after the caller's
/// INVITE transaction ended (a retransmitted 2xx).
#[derive(Debug)]
pub(super) struct Offer {
    pub(super) server_tx: TxId,
    pub(super) agent: String,
    pub(super) caller: Target,
    pub(super) edge_id: String,
    /// The caller cancelled: the edge's final answer goes back to the caller.
    pub(super) abandoned: bool,
}

/// An in-dialog request proxied one way or the other.
#[derive(Debug)]
pub(super) struct Proxied {
    pub(super) server_tx: TxId,
    /// Set when the request came from the caller's side: responses then go back to the caller
    /// and need their Contact rewritten for that transport.
    pub(super) caller_kind: Option<TransportKind>,
    pub(super) edge_id: String,
}

/// What a transaction is to its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TxKind {
    /// The caller's INVITE (a server transaction).
    Caller,
    /// An offer to an agent's edge (a client transaction).
    Offer,
    /// An in-dialog request sent on (a client transaction).
    Proxied,
}

/// What an ended transaction was, handed back for the last word on it.
#[derive(Debug)]
pub(super) enum Part {
    /// The caller's INVITE: nothing of it is of use once its transaction is over.
    Caller,
    Offer(Offer),
    Proxied(Proxied),
}

/// Everything the SIP side holds for one Call-ID.
#[derive(Debug, Default)]
pub(super) struct Call {
    caller: Option<Caller>,
    /// The queue's announcement plays to the caller: only while the caller's INVITE lasts.
    playing: bool,
    offers: HashMap<TxId, Offer>,
    /// The offer made last for the caller's INVITE in progress: the one a CANCEL or the ACD's
    /// withdrawal is about. An older offer still ending is not it.
    current: Option<TxId>,
    proxied: HashMap<TxId, Proxied>,
}

impl Call {
    pub(super) fn caller(&self) -> Option<&Caller> {
        self.caller.as_ref()
    }

    pub(super) fn current_offer(&self) -> Option<(TxId, &Offer)> {
        let tx = self.current?;
        self.offers.get(&tx).map(|o| (tx, o))
    }

    /// The caller cancelled: the current offer's final answer is to go back to the caller.
    /// Returns that offer's transaction, to be cancelled in turn.
    pub(super) fn abandon_current_offer(&mut self) -> Option<TxId> {
        let tx = self.current?;
        let offer = self.offers.get_mut(&tx)?;
        offer.abandoned = true;
        Some(tx)
    }

    /// The announcement started.
    pub(super) fn mark_playing(&mut self) {
        self.playing = true;
    }

    /// Whether the announcement was playing; it is not from now on.
    pub(super) fn take_playing(&mut self) -> bool {
        std::mem::take(&mut self.playing)
    }

    fn is_empty(&self) -> bool {
        self.caller.is_none() && self.offers.is_empty() && self.proxied.is_empty()
    }
}

/// The calls by Call-ID, and which call each live transaction belongs to. Keyed by the
/// caller's Call-ID throughout: the distributor is a proxy, so an offer and every in-dialog
/// request carry the Call-ID the caller chose.
#[derive(Debug, Default)]
pub(super) struct Calls {
    calls: HashMap<String, Call>,
    /// Every transaction some call holds: whose it is, and what it is to it.
    txs: HashMap<TxId, (String, TxKind)>,
}

impl Calls {
    /// Calls with a transaction in progress.
    pub(super) fn len(&self) -> usize {
        self.calls.len()
    }

    pub(super) fn get(&self, call_id: &str) -> Option<&Call> {
        self.calls.get(call_id)
    }

    pub(super) fn get_mut(&mut self, call_id: &str) -> Option<&mut Call> {
        self.calls.get_mut(call_id)
    }

    /// The caller's INVITE of this call, while its transaction lasts.
    pub(super) fn caller(&self, call_id: &str) -> Option<&Caller> {
        self.calls.get(call_id)?.caller()
    }

    /// The call a transaction belongs to, and what it is to it.
    pub(super) fn of_tx(&self, tx: TxId) -> Option<(&str, TxKind)> {
        self.txs.get(&tx).map(|(call, kind)| (call.as_str(), *kind))
    }

    /// The offer an INVITE client transaction carries, with its Call-ID.
    pub(super) fn offer(&self, tx: TxId) -> Option<(&str, &Offer)> {
        let (call_id, call) = self.call_of(tx)?;
        call.offers.get(&tx).map(|o| (call_id, o))
    }

    pub(super) fn proxied(&self, tx: TxId) -> Option<&Proxied> {
        self.call_of(tx)?.1.proxied.get(&tx)
    }

    /// A caller's new INVITE. No offer has been made for it yet.
    pub(super) fn insert_caller(&mut self, call_id: &str, caller: Caller) {
        self.txs
            .insert(caller.server_tx, (call_id.to_owned(), TxKind::Caller));
        let call = self.calls.entry(call_id.to_owned()).or_default();
        if let Some(old) = call.caller.replace(caller) {
            self.txs.remove(&old.server_tx);
        }
        call.current = None;
    }

    /// An offer for the caller's INVITE: from now on the current one.
    pub(super) fn add_offer(&mut self, call_id: &str, client_tx: TxId, offer: Offer) {
        self.txs
            .insert(client_tx, (call_id.to_owned(), TxKind::Offer));
        let call = self.calls.entry(call_id.to_owned()).or_default();
        call.offers.insert(client_tx, offer);
        call.current = Some(client_tx);
    }

    /// An in-dialog request sent on; a call is made for it when the Call-ID has none (the
    /// caller's INVITE ended long ago, or the dialog is not one of ours).
    pub(super) fn add_proxied(&mut self, call_id: &str, client_tx: TxId, proxied: Proxied) {
        self.txs
            .insert(client_tx, (call_id.to_owned(), TxKind::Proxied));
        let call = self.calls.entry(call_id.to_owned()).or_default();
        call.proxied.insert(client_tx, proxied);
    }

    /// A transaction is over (or failed for good): whatever it was goes, and its call with it
    /// once the call holds nothing. The caller's INVITE ending takes its announcement and its
    /// current offer along (both were about that INVITE); an offer ending clears the current
    /// one only if it still is that offer.
    pub(super) fn transaction_ended(&mut self, tx: TxId) -> Option<(String, Part)> {
        let (call_id, kind) = self.txs.remove(&tx)?;
        let call = self.calls.get_mut(&call_id)?;
        let part = match kind {
            TxKind::Caller => {
                call.playing = false;
                call.current = None;
                call.caller.take().map(|_| Part::Caller)
            }
            TxKind::Offer => {
                if call.current == Some(tx) {
                    call.current = None;
                }
                call.offers.remove(&tx).map(Part::Offer)
            }
            TxKind::Proxied => call.proxied.remove(&tx).map(Part::Proxied),
        };
        if call.is_empty() {
            self.calls.remove(&call_id);
        }
        Some((call_id, part?))
    }

    fn call_of(&self, tx: TxId) -> Option<(&str, &Call)> {
        let (call_id, _) = self.txs.get(&tx)?;
        self.calls.get(call_id).map(|c| (call_id.as_str(), c))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::sip::transaction::{self, TransactionLayer};

    fn target() -> Target {
        Target::udp("127.0.0.1:5080".parse().unwrap())
    }

    fn request(method: &str) -> SipMessage {
        let branch = transaction::new_branch();
        let text = format!(
            "{method} sip:alice@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch={branch}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:bob@127.0.0.1>;tag=from1\r\nTo: <sip:alice@127.0.0.1>\r\n\
             Call-ID: call-1\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        );
        SipMessage::parse(text.as_bytes()).unwrap()
    }

    /// Distinct transaction ids, as the layer hands them out.
    fn tx_ids(n: usize) -> Vec<TxId> {
        let mut layer = TransactionLayer::<()>::new(transaction::Config::default());
        let now = Instant::now();
        (0..n)
            .map(|_| layer.send_request(request("OPTIONS"), target(), now))
            .collect()
    }

    fn caller(server_tx: TxId) -> Caller {
        Caller {
            server_tx,
            invite: request("INVITE"),
            target: target(),
            tag: "tag1".into(),
        }
    }

    fn offer(server_tx: TxId, agent: &str) -> Offer {
        Offer {
            server_tx,
            agent: agent.into(),
            caller: target(),
            edge_id: "edge-1".into(),
            abandoned: false,
        }
    }

    fn proxied(server_tx: TxId) -> Proxied {
        Proxied {
            server_tx,
            caller_kind: None,
            edge_id: "edge-1".into(),
        }
    }

    fn current_agent(calls: &Calls, call_id: &str) -> Option<String> {
        let (_, offer) = calls.get(call_id)?.current_offer()?;
        Some(offer.agent.clone())
    }

    #[test]
    fn a_transaction_ending_removes_only_its_own_part() {
        let [invite, o1, p1, p2] = tx_ids(4)[..] else {
            unreachable!()
        };
        let mut calls = Calls::default();
        calls.insert_caller("c1", caller(invite));
        calls.add_offer("c1", o1, offer(invite, "alice"));
        calls.add_proxied("c1", p1, proxied(invite));
        calls.add_proxied("c2", p2, proxied(invite));
        assert_eq!(calls.of_tx(invite), Some(("c1", TxKind::Caller)));
        assert_eq!(calls.of_tx(o1), Some(("c1", TxKind::Offer)));
        assert_eq!(calls.of_tx(p1), Some(("c1", TxKind::Proxied)));

        let (call_id, part) = calls.transaction_ended(p1).unwrap();
        assert_eq!(call_id, "c1");
        assert!(matches!(part, Part::Proxied(p) if p.server_tx == invite));
        assert!(calls.proxied(p1).is_none());
        assert_eq!(calls.of_tx(p1), None);
        assert!(calls.caller("c1").is_some());
        assert_eq!(
            calls.offer(o1).map(|(c, o)| (c, o.agent.as_str())),
            Some(("c1", "alice"))
        );
        assert!(calls.proxied(p2).is_some());

        let (_, part) = calls.transaction_ended(invite).unwrap();
        assert!(matches!(part, Part::Caller));
        assert!(calls.caller("c1").is_none());
        assert!(calls.offer(o1).is_some());
        // Ended once is ended: a second report changes nothing.
        assert!(calls.transaction_ended(invite).is_none());
        assert!(calls.offer(o1).is_some());
    }

    #[test]
    fn a_call_is_dropped_once_it_holds_nothing() {
        let [invite, o1, p1] = tx_ids(3)[..] else {
            unreachable!()
        };
        let mut calls = Calls::default();
        calls.insert_caller("c1", caller(invite));
        calls.add_offer("c1", o1, offer(invite, "alice"));
        calls.add_proxied("c1", p1, proxied(invite));
        calls.transaction_ended(invite);
        calls.transaction_ended(o1);
        assert!(calls.get("c1").is_some());
        calls.transaction_ended(p1);
        assert!(calls.get("c1").is_none());
        assert!(calls.calls.is_empty() && calls.txs.is_empty());
    }

    #[test]
    fn a_proxied_request_without_a_call_gets_one_of_its_own() {
        let [p1] = tx_ids(1)[..] else { unreachable!() };
        let mut calls = Calls::default();
        calls.add_proxied("c9", p1, proxied(p1));
        let call = calls.get("c9").unwrap();
        assert!(call.caller().is_none() && call.current_offer().is_none());
        calls.transaction_ended(p1);
        assert!(calls.get("c9").is_none());
    }

    #[test]
    fn the_current_offer_follows_the_newest_and_a_stale_end_leaves_it() {
        let [invite, o1, o2] = tx_ids(3)[..] else {
            unreachable!()
        };
        let mut calls = Calls::default();
        calls.insert_caller("c1", caller(invite));
        assert_eq!(current_agent(&calls, "c1"), None);
        calls.add_offer("c1", o1, offer(invite, "alice"));
        assert_eq!(current_agent(&calls, "c1").as_deref(), Some("alice"));
        calls.add_offer("c1", o2, offer(invite, "bob"));
        assert_eq!(current_agent(&calls, "c1").as_deref(), Some("bob"));

        // Alice's offer ends late (her 487 after the withdrawal): Bob's is still current.
        calls.transaction_ended(o1);
        assert_eq!(current_agent(&calls, "c1").as_deref(), Some("bob"));
        assert_eq!(
            calls.get_mut("c1").unwrap().abandon_current_offer(),
            Some(o2)
        );
        assert!(calls.offer(o2).unwrap().1.abandoned);

        calls.transaction_ended(o2);
        assert_eq!(current_agent(&calls, "c1"), None);
        assert_eq!(calls.get_mut("c1").unwrap().abandon_current_offer(), None);
    }

    #[test]
    fn the_callers_invite_ending_takes_its_announcement_and_current_offer() {
        let [invite, o1, invite2] = tx_ids(3)[..] else {
            unreachable!()
        };
        let mut calls = Calls::default();
        calls.insert_caller("c1", caller(invite));
        calls.add_offer("c1", o1, offer(invite, "alice"));
        calls.get_mut("c1").unwrap().mark_playing();
        calls.transaction_ended(invite);
        let call = calls.get_mut("c1").unwrap();
        assert!(call.current_offer().is_none());
        assert!(!call.take_playing());
        // The offer itself lives on until its own transaction ends.
        assert!(calls.offer(o1).is_some());

        // A new INVITE with that Call-ID starts with no offer of its own.
        calls.insert_caller("c1", caller(invite2));
        assert_eq!(calls.of_tx(invite2), Some(("c1", TxKind::Caller)));
        assert_eq!(current_agent(&calls, "c1"), None);
        calls.transaction_ended(o1);
        assert!(calls.caller("c1").is_some());
    }

    #[test]
    fn playing_is_reported_once() {
        let [invite] = tx_ids(1)[..] else {
            unreachable!()
        };
        let mut calls = Calls::default();
        calls.insert_caller("c1", caller(invite));
        let call = calls.get_mut("c1").unwrap();
        assert!(!call.take_playing());
        call.mark_playing();
        assert!(call.take_playing());
        assert!(!call.take_playing());
    }
}
