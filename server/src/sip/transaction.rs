//! RFC 3261 §17 transactions (with RFC 6026's Accepted state), sans-IO in the style of quinn:
//! messages and `now` go in; datagrams to send, events for the owner and the next deadline
//! come out. The owner (a distributor or buffer task) never retransmits or times anything
//! itself, and tests run the whole state machine on a simulated clock.
//!
//! One extension to the letter of RFC 3261: an INVITE server transaction that sent a 2xx
//! keeps retransmitting it (T1 doubling to T2) until the matching ACK arrives, and reports
//! [`TxEvent::Timeout`] if none arrives within 64·T1. RFC 3261 §13.3.1.4 gives that job to the
//! UAS core; both our roles want it, and it applies on reliable transports too because a hop
//! further along may be UDP.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::message::{Header, Method, SipMessage, StartLine};
use super::target::{ConnId, Target};

/// The RFC 3261 timer base values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// Round-trip estimate.
    pub t1: Duration,
    /// Longest retransmission interval for non-INVITE requests and INVITE responses.
    pub t2: Duration,
    /// Longest time a message stays in the network.
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub timers: Timers,
    /// Answer a new INVITE with 100 Trying at once (hop by hop, so the caller stops
    /// retransmitting while we find an agent).
    pub send_100_trying: bool,
    /// A proxy's timer C: an INVITE client transaction with a provisional but no final answer
    /// after this long is cancelled and reported as timed out.
    pub timer_c: Option<Duration>,
}

/// Names a transaction for as long as it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(u64);

impl TxId {
    /// An id no layer issued, for unit tests of an owner's bookkeeping.
    #[cfg(test)]
    pub(crate) fn from_raw(n: u64) -> TxId {
        TxId(n)
    }
}

/// One message to put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit<N = ()> {
    pub to: Target,
    pub bytes: Bytes,
    /// The owner's note of the client transaction whose request this is (the first send and
    /// every retransmission; see [`TransactionLayer::send_request_with`]); `None` on anything
    /// else.
    pub note: Option<N>,
}

/// What the owner of the layer must know.
#[derive(Debug, Clone, PartialEq)]
pub enum TxEvent<N = ()> {
    /// A new request (never a retransmission). `tx` is `None` for an ACK that matched no
    /// INVITE server transaction by branch: the ACK of a 2xx, end to end. `note` is what the
    /// owner handed in with it ([`TransactionLayer::handle_message_with`]).
    Request {
        tx: Option<TxId>,
        msg: SipMessage,
        from: Target,
        note: Option<N>,
    },
    /// A CANCEL matched the INVITE server transaction `invite`, still without a final
    /// answer; the layer already answered the CANCEL with 200. The owner decides on 487.
    Cancel {
        invite: TxId,
        msg: SipMessage,
        from: Target,
    },
    /// A response on a client transaction: provisionals, the final answer, and for an
    /// INVITE each retransmitted 2xx (so the owner can repeat its ACK).
    Response { tx: TxId, msg: SipMessage },
    /// A response no client transaction waits for.
    StrayResponse { msg: SipMessage, from: Target },
    /// Client: no final answer in time (timer B, F or C); act as on 408. Server: no ACK for
    /// our final answer (timer H, or the 2xx retransmission limit).
    Timeout { tx: TxId },
    /// The transport to the transaction's peer failed.
    TransportError { tx: TxId },
    /// The transaction is gone; its id will not be seen again.
    Terminated { tx: TxId },
}

/// Why the owner's request to the layer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// No transaction with that id (it has terminated).
    #[error("no such transaction")]
    UnknownTransaction,
    /// The transaction cannot send that now (a second final answer, say).
    #[error("transaction cannot send this in its current state")]
    WrongState,
}

/// A fresh RFC 3261 branch: the magic cookie and 64 random bits.
pub fn new_branch() -> String {
    format!("z9hG4bK{:016x}", rand::random::<u64>())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // the RFC's own four names
enum Kind {
    ClientInvite,
    ClientNonInvite,
    ServerInvite,
    ServerNonInvite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Calling,
    Trying,
    Proceeding,
    Completed,
    Accepted,
    Confirmed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    /// Client retransmission (A for INVITE, E for non-INVITE).
    Retransmit,
    /// Client timeout (B, F).
    Timeout,
    /// Proxy timer C.
    C,
    /// Server retransmission of the final response (G, and 2xx in Accepted).
    ResponseRetransmit,
    /// Server wait for ACK (H) or, in Accepted, for the 2xx's ACK (L).
    WaitAck,
    /// Lingering before termination (D, I, J, K, and M/L in Accepted).
    Linger,
    /// A server transaction its owner has not answered: it answers 500 itself then.
    Unanswered,
}

/// How long an INVITE server transaction may wait for its owner's final response: callers
/// wait in queues, so far longer than any timer of RFC 3261's, but not for ever.
pub const UNANSWERED_INVITE: Duration = Duration::from_secs(3600);

/// What the ACK of a 2xx must carry to be that 2xx's: its dialog (Call-ID, the caller's From
/// tag, our To tag) and the INVITE's CSeq number. The ACK is a transaction of its own (RFC
/// 3261 §17.1.1.3), so it is matched by dialog, not branch.
type DialogAck = (String, u32, Option<String>, Option<String>);

fn dialog_ack(
    call_id: &str,
    seq: u32,
    from_tag: Option<String>,
    to_tag: Option<String>,
) -> DialogAck {
    (call_id.to_owned(), seq, from_tag, to_tag)
}

/// Server transactions match on branch, sent-by and method (ACK and CANCEL look up the
/// INVITE's), RFC 3261 §17.2.3.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ServerKey {
    branch: String,
    sent_by: String,
    method: String,
}

/// Client transactions match on branch and CSeq method, RFC 3261 §17.1.3.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    branch: String,
    method: String,
}

#[derive(Debug)]
struct Tx<N> {
    kind: Kind,
    state: State,
    request: SipMessage,
    peer: Target,
    /// Last response sent (server) or the request bytes (client), for retransmission.
    wire: Bytes,
    interval: Duration,
    timers: HashMap<Timer, Instant>,
    got_provisional: bool,
    cancel_pending: bool,
    cancel_sent: bool,
    /// A Timeout was already reported (timer C), so the CANCEL's limit does not repeat it.
    timed_out: bool,
    ack_received: bool,
    server_key: Option<ServerKey>,
    client_key: Option<ClientKey>,
    /// For an INVITE server transaction in Accepted: (Call-ID, CSeq number) its ACK carries.
    ack_key: Option<DialogAck>,
    /// A client transaction's note, on each send of its request while `wire` holds it.
    note: Option<N>,
}

impl<N> Tx<N> {
    fn new(kind: Kind, state: State, request: SipMessage, peer: Target, t1: Duration) -> Tx<N> {
        Tx {
            kind,
            state,
            request,
            peer,
            wire: Bytes::new(),
            interval: t1,
            timers: HashMap::new(),
            got_provisional: false,
            cancel_pending: false,
            cancel_sent: false,
            timed_out: false,
            ack_received: false,
            server_key: None,
            client_key: None,
            ack_key: None,
            note: None,
        }
    }
}

/// What every layer of this process holds, summed (an all-in-one system runs one per role):
/// read by the distributor's live view, so a soak can tell what its memory is spent on. Each
/// layer adds what it holds after each call into it, and takes it back when dropped.
static HELD_TRANSACTIONS: AtomicUsize = AtomicUsize::new(0);
static HELD_TIMERS: AtomicUsize = AtomicUsize::new(0);

/// Transactions alive in every layer of this process, and the timers they have scheduled.
pub fn held_in_process() -> (usize, usize) {
    (
        HELD_TRANSACTIONS.load(Ordering::Relaxed),
        HELD_TIMERS.load(Ordering::Relaxed),
    )
}

/// The layer, generic over the owner's note `N`: a value the owner attaches to a request it
/// sends ([`TransactionLayer::send_request_with`]) and gets back on every [`Transmit`] of that
/// request, retransmissions included, or attaches to a request it hands in
/// ([`TransactionLayer::handle_message_with`]) and gets back on its [`TxEvent::Request`].
/// So what the owner decided about a message (the agent a hand-off names) travels with it,
/// and never through state kept on the side.
#[derive(Debug)]
pub struct TransactionLayer<N = ()> {
    config: Config,
    next_id: u64,
    txs: HashMap<TxId, Tx<N>>,
    servers: HashMap<ServerKey, TxId>,
    clients: HashMap<ClientKey, TxId>,
    accepted: HashMap<DialogAck, TxId>,
    timers: BTreeSet<(Instant, TxId, Timer)>,
    transmits: VecDeque<Transmit<N>>,
    events: VecDeque<TxEvent<N>>,
    /// (transactions, timers) last added to the process's totals ([`held_in_process`]).
    reported: (usize, usize),
}

impl<N> Drop for TransactionLayer<N> {
    fn drop(&mut self) {
        HELD_TRANSACTIONS.fetch_sub(self.reported.0, Ordering::Relaxed);
        HELD_TIMERS.fetch_sub(self.reported.1, Ordering::Relaxed);
    }
}

fn method_token(m: &Method) -> String {
    m.as_str().to_ascii_uppercase()
}

fn server_key(msg: &SipMessage, method: &str) -> Option<ServerKey> {
    let via = msg.top_via().ok()?;
    let branch = match via.branch {
        Some(b) if b.starts_with("z9hG4bK") => b,
        // An RFC 2543 peer's branch (or none) is not unique per transaction.
        _ => rfc2543_branch(msg)?,
    };
    let sent_by = match via.port {
        Some(p) => format!("{}:{p}", via.host.to_ascii_lowercase()),
        None => via.host.to_ascii_lowercase(),
    };
    Some(ServerKey {
        branch,
        sent_by,
        method: method.to_owned(),
    })
}

/// What stands for the branch of a request from a peer without RFC 3261's magic cookie
/// (§17.2.3): its Request-URI, From tag, Call-ID, CSeq number and top Via, which its
/// retransmissions, its CANCEL and the ACK of a non-2xx answer all repeat. (The To tag, which
/// the rule also names, differs in that ACK, and the CSeq number already tells an in-dialog
/// request from the INVITE that made the dialog.)
fn rfc2543_branch(msg: &SipMessage) -> Option<String> {
    let via = msg.headers_named("Via").next()?;
    let via = via.split(',').next().unwrap_or(via).trim();
    Some(format!(
        "rfc2543 {} {} {} {} {via}",
        msg.request_uri()?,
        msg.from_tag().unwrap_or_default(),
        msg.call_id()?,
        msg.cseq().ok()?.seq
    ))
}

fn client_key(msg: &SipMessage) -> Option<ClientKey> {
    let branch = msg.top_via().ok()?.branch?;
    let method = method_token(&msg.cseq().ok()?.method);
    Some(ClientKey { branch, method })
}

impl<N: Clone> TransactionLayer<N> {
    pub fn new(config: Config) -> Self {
        TransactionLayer {
            config,
            next_id: 0,
            txs: HashMap::new(),
            servers: HashMap::new(),
            clients: HashMap::new(),
            accepted: HashMap::new(),
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            reported: (0, 0),
        }
    }

    /// Brings the process's totals ([`held_in_process`]) up to date with this layer.
    fn report_held(&mut self) {
        let now = (self.txs.len(), self.timers.len());
        let (was, is) = (self.reported, now);
        if is.0 >= was.0 {
            HELD_TRANSACTIONS.fetch_add(is.0 - was.0, Ordering::Relaxed);
        } else {
            HELD_TRANSACTIONS.fetch_sub(was.0 - is.0, Ordering::Relaxed);
        }
        if is.1 >= was.1 {
            HELD_TIMERS.fetch_add(is.1 - was.1, Ordering::Relaxed);
        } else {
            HELD_TIMERS.fetch_sub(was.1 - is.1, Ordering::Relaxed);
        }
        self.reported = now;
    }

    /// Timers scheduled (for the live view and the tests: none outlives its transaction's
    /// need of it).
    pub fn scheduled_timers(&self) -> usize {
        self.timers.len()
    }

    fn t(&self) -> Timers {
        self.config.timers
    }

    /// A message from the network, already parsed and validated at the transport boundary.
    pub fn handle_message(&mut self, msg: SipMessage, from: Target, now: Instant) {
        self.handle_message_with(msg, from, None, now);
    }

    /// The same, with the owner's note for the request: it comes back on the request's
    /// [`TxEvent::Request`], and is dropped when the message is a retransmission, a CANCEL or
    /// a response.
    pub fn handle_message_with(
        &mut self,
        msg: SipMessage,
        from: Target,
        note: Option<N>,
        now: Instant,
    ) {
        if msg.is_request() {
            self.handle_request(msg, from, note, now);
        } else {
            self.handle_response(msg, from, now);
        }
        self.report_held();
    }

    fn handle_request(&mut self, msg: SipMessage, from: Target, note: Option<N>, now: Instant) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        match method {
            Method::Ack => self.handle_ack(msg, from, note, now),
            Method::Cancel => self.handle_cancel(msg, from, now),
            _ => {
                let token = method_token(&method);
                let Some(key) = server_key(&msg, &token) else {
                    // No RFC 3261 branch: still serve it, as its own transaction, but it cannot
                    // be matched against retransmissions.
                    self.new_server_tx(msg, from, None, note, now);
                    return;
                };
                if let Some(&id) = self.servers.get(&key) {
                    self.retransmitted_request(id);
                    return;
                }
                self.new_server_tx(msg, from, Some(key), note, now);
            }
        }
    }

    fn retransmitted_request(&mut self, id: TxId) {
        let Some(tx) = self.txs.get(&id) else {
            return;
        };
        // Trying (no response yet) absorbs silently; otherwise repeat the last response.
        if tx.state != State::Trying && !tx.wire.is_empty() {
            let t = Transmit {
                to: tx.peer.clone(),
                bytes: tx.wire.clone(),
                note: None,
            };
            self.transmits.push_back(t);
        }
    }

    fn new_server_tx(
        &mut self,
        msg: SipMessage,
        from: Target,
        key: Option<ServerKey>,
        note: Option<N>,
        now: Instant,
    ) -> TxId {
        let invite = msg.method() == Some(&Method::Invite);
        let id = self.alloc();
        let (kind, state) = if invite {
            (Kind::ServerInvite, State::Proceeding)
        } else {
            (Kind::ServerNonInvite, State::Trying)
        };
        let mut tx = Tx::new(kind, state, msg.clone(), from.clone(), self.t().t1);
        tx.server_key = key.clone();
        if let Some(key) = key {
            self.servers.insert(key, id);
        }
        self.txs.insert(id, tx);
        // A request the owner never answers must not live for ever: a non-INVITE's client
        // gives up after 64*T1 (timer F), an INVITE's caller waits longer.
        let unanswered = if invite {
            UNANSWERED_INVITE
        } else {
            self.t().t1 * 64
        };
        self.set_timer(id, Timer::Unanswered, now + unanswered);
        if invite && self.config.send_100_trying {
            let trying = msg.response(100, None);
            let _ = self.send_response(id, trying, now);
        }
        self.events.push_back(TxEvent::Request {
            tx: Some(id),
            msg,
            from,
            note,
        });
        id
    }

    fn handle_ack(&mut self, msg: SipMessage, from: Target, note: Option<N>, now: Instant) {
        // ACK for a non-2xx final shares the INVITE's branch (RFC 3261 §17.2.3).
        if let Some(key) = server_key(&msg, "INVITE")
            && let Some(&id) = self.servers.get(&key)
            && let Some(tx) = self.txs.get_mut(&id)
            && tx.state != State::Accepted
        {
            if tx.state == State::Completed {
                tx.state = State::Confirmed;
                unschedule(
                    &mut self.timers,
                    id,
                    &mut tx.timers,
                    Timer::ResponseRetransmit,
                );
                unschedule(&mut self.timers, id, &mut tx.timers, Timer::WaitAck);
                let linger = if tx.peer.is_reliable() {
                    Duration::ZERO
                } else {
                    self.config.timers.t4
                };
                self.set_timer(id, Timer::Linger, now + linger);
            }
            return;
        }
        // The ACK of a 2xx is a new transaction of its own; it stops our 2xx retransmissions.
        if let (Some(call_id), Ok(cseq)) = (msg.call_id(), msg.cseq())
            && let Some(&id) =
                self.accepted
                    .get(&dialog_ack(call_id, cseq.seq, msg.from_tag(), msg.to_tag()))
            && let Some(tx) = self.txs.get_mut(&id)
        {
            tx.ack_received = true;
            unschedule(
                &mut self.timers,
                id,
                &mut tx.timers,
                Timer::ResponseRetransmit,
            );
        }
        self.events.push_back(TxEvent::Request {
            tx: None,
            msg,
            from,
            note,
        });
    }

    fn handle_cancel(&mut self, msg: SipMessage, from: Target, now: Instant) {
        let cancel_key = server_key(&msg, "CANCEL");
        if let Some(key) = &cancel_key
            && let Some(&id) = self.servers.get(key)
        {
            self.retransmitted_request(id);
            return;
        }
        let invite = server_key(&msg, "INVITE").and_then(|k| self.servers.get(&k).copied());
        let cancel_tx = self.new_server_tx_silent(msg.clone(), from.clone(), cancel_key);
        let Some(invite) = invite else {
            let _ = self.send_response(cancel_tx, msg.response(481, None), now);
            return;
        };
        let _ = self.send_response(cancel_tx, msg.response(200, None), now);
        let proceeding = self
            .txs
            .get(&invite)
            .is_some_and(|t| t.state == State::Proceeding);
        if proceeding {
            self.events.push_back(TxEvent::Cancel { invite, msg, from });
        }
    }

    /// A server transaction the layer answers itself (CANCEL): no Request event.
    fn new_server_tx_silent(
        &mut self,
        msg: SipMessage,
        from: Target,
        key: Option<ServerKey>,
    ) -> TxId {
        let id = self.alloc();
        let mut tx = Tx::new(Kind::ServerNonInvite, State::Trying, msg, from, self.t().t1);
        tx.server_key = key.clone();
        if let Some(key) = key {
            self.servers.insert(key, id);
        }
        self.txs.insert(id, tx);
        id
    }

    fn handle_response(&mut self, msg: SipMessage, from: Target, now: Instant) {
        let Some(code) = msg.status() else {
            return;
        };
        let id = client_key(&msg).and_then(|k| self.clients.get(&k).copied());
        let Some(id) = id else {
            self.events.push_back(TxEvent::StrayResponse { msg, from });
            return;
        };
        let t = self.t();
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        let reliable = tx.peer.is_reliable();
        match (tx.kind, tx.state) {
            (Kind::ClientInvite, State::Calling | State::Proceeding) => {
                if code < 200 {
                    tx.state = State::Proceeding;
                    unschedule(&mut self.timers, id, &mut tx.timers, Timer::Retransmit);
                    tx.got_provisional = true;
                    let send_cancel = std::mem::take(&mut tx.cancel_pending);
                    if let Some(c) = self.config.timer_c {
                        self.set_timer(id, Timer::C, now + c);
                    }
                    self.events.push_back(TxEvent::Response { tx: id, msg });
                    if send_cancel {
                        self.send_cancel(id, now);
                    }
                } else if code < 300 {
                    tx.state = State::Accepted;
                    unschedule_all(&mut self.timers, id, &mut tx.timers);
                    self.set_timer(id, Timer::Linger, now + t.t1 * 64);
                    self.events.push_back(TxEvent::Response { tx: id, msg });
                } else {
                    tx.state = State::Completed;
                    unschedule_all(&mut self.timers, id, &mut tx.timers);
                    let ack = build_ack(&tx.request, &msg);
                    tx.wire = Bytes::from(ack.to_bytes());
                    // From now on the wire holds the ACK, not the request the note is for.
                    tx.note = None;
                    let t2 = Transmit {
                        to: tx.peer.clone(),
                        bytes: tx.wire.clone(),
                        note: None,
                    };
                    self.transmits.push_back(t2);
                    let linger = if reliable {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(32)
                    };
                    self.set_timer(id, Timer::Linger, now + linger);
                    self.events.push_back(TxEvent::Response { tx: id, msg });
                }
            }
            (Kind::ClientInvite, State::Accepted) if (200..300).contains(&code) => {
                self.events.push_back(TxEvent::Response { tx: id, msg });
            }
            (Kind::ClientInvite, State::Completed) if code >= 300 => {
                let t2 = Transmit {
                    to: tx.peer.clone(),
                    bytes: tx.wire.clone(),
                    note: None,
                };
                self.transmits.push_back(t2);
            }
            (Kind::ClientNonInvite, State::Trying | State::Proceeding) => {
                if code < 200 {
                    tx.state = State::Proceeding;
                } else {
                    tx.state = State::Completed;
                    unschedule_all(&mut self.timers, id, &mut tx.timers);
                    let linger = if reliable { Duration::ZERO } else { t.t4 };
                    self.set_timer(id, Timer::Linger, now + linger);
                }
                self.events.push_back(TxEvent::Response { tx: id, msg });
            }
            _ => {}
        }
    }

    /// Starts a client transaction. `msg` carries its top Via with a fresh branch
    /// ([`new_branch`]); an ACK does not go through here ([`Self::send_stateless`]).
    pub fn send_request(&mut self, msg: SipMessage, to: Target, now: Instant) -> TxId {
        self.start_client(msg, to, None, now)
    }

    /// The same, with the owner's note: every [`Transmit`] of this request, the first and
    /// each retransmission, carries it.
    pub fn send_request_with(
        &mut self,
        msg: SipMessage,
        to: Target,
        note: N,
        now: Instant,
    ) -> TxId {
        self.start_client(msg, to, Some(note), now)
    }

    fn start_client(&mut self, msg: SipMessage, to: Target, note: Option<N>, now: Instant) -> TxId {
        let t = self.t();
        let invite = msg.method() == Some(&Method::Invite);
        let id = self.alloc();
        let key = client_key(&msg);
        let wire = Bytes::from(msg.to_bytes());
        let reliable = to.is_reliable();
        let (kind, state) = if invite {
            (Kind::ClientInvite, State::Calling)
        } else {
            (Kind::ClientNonInvite, State::Trying)
        };
        let mut tx = Tx::new(kind, state, msg, to.clone(), t.t1);
        tx.wire = wire.clone();
        tx.client_key = key.clone();
        tx.note = note.clone();
        if let Some(key) = key {
            self.clients.insert(key, id);
        }
        self.txs.insert(id, tx);
        self.transmits.push_back(Transmit {
            to,
            bytes: wire,
            note,
        });
        if !reliable {
            self.set_timer(id, Timer::Retransmit, now + t.t1);
        }
        self.set_timer(id, Timer::Timeout, now + t.t1 * 64);
        self.report_held();
        id
    }

    /// Answers on a server transaction.
    pub fn send_response(
        &mut self,
        id: TxId,
        msg: SipMessage,
        now: Instant,
    ) -> Result<(), TxError> {
        let sent = self.respond(id, msg, now);
        self.report_held();
        sent
    }

    fn respond(&mut self, id: TxId, msg: SipMessage, now: Instant) -> Result<(), TxError> {
        let t = self.t();
        let code = msg.status().ok_or(TxError::WrongState)?;
        let tx = self.txs.get_mut(&id).ok_or(TxError::UnknownTransaction)?;
        let reliable = tx.peer.is_reliable();
        let wire = Bytes::from(msg.to_bytes());
        match (tx.kind, tx.state) {
            (Kind::ServerInvite, State::Proceeding) => {
                if code < 200 {
                    tx.wire = wire.clone();
                } else if code < 300 {
                    tx.state = State::Accepted;
                    tx.wire = wire.clone();
                    tx.interval = t.t1;
                    if let (Some(call_id), Ok(cseq)) = (tx.request.call_id(), tx.request.cseq()) {
                        let key =
                            dialog_ack(call_id, cseq.seq, tx.request.from_tag(), msg.to_tag());
                        tx.ack_key = Some(key.clone());
                        self.accepted.insert(key, id);
                    }
                    self.set_timer(id, Timer::ResponseRetransmit, now + t.t1);
                    self.set_timer(id, Timer::WaitAck, now + t.t1 * 64);
                } else {
                    tx.state = State::Completed;
                    tx.wire = wire.clone();
                    tx.interval = t.t1;
                    if !reliable {
                        self.set_timer(id, Timer::ResponseRetransmit, now + t.t1);
                    }
                    self.set_timer(id, Timer::WaitAck, now + t.t1 * 64);
                }
            }
            // RFC 6026: the TU may pass further 2xx (retransmissions) while Accepted.
            (Kind::ServerInvite, State::Accepted) if (200..300).contains(&code) => {}
            (Kind::ServerNonInvite, State::Trying | State::Proceeding) => {
                tx.wire = wire.clone();
                if code < 200 {
                    tx.state = State::Proceeding;
                } else {
                    tx.state = State::Completed;
                    let linger = if reliable { Duration::ZERO } else { t.t1 * 64 };
                    self.set_timer(id, Timer::Linger, now + linger);
                }
            }
            _ => return Err(TxError::WrongState),
        }
        if code >= 200 {
            self.clear_timer(id, Timer::Unanswered);
        }
        let to = self
            .txs
            .get(&id)
            .map(|t| t.peer.clone())
            .ok_or(TxError::UnknownTransaction)?;
        self.transmits.push_back(Transmit {
            to,
            bytes: wire,
            note: None,
        });
        Ok(())
    }

    /// Cancels an INVITE client transaction (RFC 3261 §9.1): at once if a provisional came,
    /// else as soon as one does. Returns the CANCEL's transaction when sent now.
    pub fn cancel(&mut self, invite: TxId, now: Instant) -> Option<TxId> {
        let tx = self.txs.get_mut(&invite)?;
        if tx.kind != Kind::ClientInvite || !matches!(tx.state, State::Calling | State::Proceeding)
        {
            return None;
        }
        if !tx.got_provisional {
            tx.cancel_pending = true;
            return None;
        }
        self.send_cancel(invite, now)
    }

    fn send_cancel(&mut self, invite: TxId, now: Instant) -> Option<TxId> {
        let tx = self.txs.get_mut(&invite)?;
        if tx.cancel_sent {
            return None;
        }
        tx.cancel_sent = true;
        let cancel = build_cancel(&tx.request);
        let to = tx.peer.clone();
        // RFC 3261 §9.1: no final answer within 64*T1 of the CANCEL ends the INVITE too, so
        // a peer that rings for ever cannot hold the transaction for ever.
        let limit = now + self.config.timers.t1 * 64;
        self.set_timer(invite, Timer::Timeout, limit);
        Some(self.send_request(cancel, to, now))
    }

    /// Sends outside any transaction: the ACK of a 2xx, a 2xx forwarded by a proxy.
    pub fn send_stateless(&mut self, msg: SipMessage, to: Target) {
        self.transmits.push_back(Transmit {
            to,
            bytes: Bytes::from(msg.to_bytes()),
            note: None,
        });
    }

    /// Sending to `to` failed: every transaction with that peer fails.
    pub fn transport_failed(&mut self, to: &Target) {
        let ids: Vec<TxId> = self
            .txs
            .iter()
            .filter(|(_, t)| match (to.conn, t.peer.conn) {
                (Some(a), Some(b)) => a == b,
                _ => t.peer.kind == to.kind && t.peer.addr == to.addr,
            })
            .map(|(id, _)| *id)
            .collect();
        self.fail(ids);
    }

    /// A connection closed: every transaction bound to it fails.
    pub fn connection_closed(&mut self, conn: ConnId) {
        let ids: Vec<TxId> = self
            .txs
            .iter()
            .filter(|(_, t)| t.peer.conn == Some(conn))
            .map(|(id, _)| *id)
            .collect();
        self.fail(ids);
    }

    fn fail(&mut self, mut ids: Vec<TxId>) {
        ids.sort();
        for id in ids {
            let done = self.txs.get(&id).is_some_and(|t| {
                matches!(t.state, State::Completed | State::Confirmed) || t.ack_received
            });
            if !done {
                self.events.push_back(TxEvent::TransportError { tx: id });
            }
            self.terminate(id);
        }
        self.report_held();
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit<N>> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TxEvent<N>> {
        self.events.pop_front()
    }

    /// The next instant [`Self::handle_timeout`] has work (every cancelled timer leaves the
    /// schedule at once, so this is a timer some transaction waits for).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _, _)| *at)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let live = self
                .txs
                .get(&id)
                .is_some_and(|t| t.timers.get(&timer) == Some(&at));
            if live {
                if let Some(tx) = self.txs.get_mut(&id) {
                    tx.timers.remove(&timer);
                }
                self.fire(id, timer, at, now);
            }
        }
        self.report_held();
    }

    /// Timer `timer` of `id`, due at `due`, handled at `now` (later when the owner was busy).
    fn fire(&mut self, id: TxId, timer: Timer, due: Instant, now: Instant) {
        let t = self.t();
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        match (timer, tx.kind, tx.state) {
            // Timer A doubles without a cap (RFC 3261 §17.1.1.2).
            (Timer::Retransmit, Kind::ClientInvite, State::Calling) => {
                tx.interval *= 2;
                self.resend(id, Timer::Retransmit, due, now);
            }
            // Timer E doubles up to T2, and stays at T2 once a provisional came.
            (Timer::Retransmit, Kind::ClientNonInvite, State::Trying | State::Proceeding) => {
                tx.interval = if tx.state == State::Trying {
                    (tx.interval * 2).min(t.t2)
                } else {
                    t.t2
                };
                self.resend(id, Timer::Retransmit, due, now);
            }
            (Timer::Timeout, Kind::ClientInvite, State::Calling)
            | (Timer::Timeout, Kind::ClientNonInvite, State::Trying | State::Proceeding) => {
                self.events.push_back(TxEvent::Timeout { tx: id });
                self.terminate(id);
            }
            (Timer::Timeout, Kind::ClientInvite, State::Proceeding) if tx.cancel_sent => {
                // Timer C already reported the timeout that made us cancel.
                if !tx.timed_out {
                    self.events.push_back(TxEvent::Timeout { tx: id });
                }
                self.terminate(id);
            }
            (Timer::C, Kind::ClientInvite, State::Proceeding) => {
                tx.timed_out = true;
                self.events.push_back(TxEvent::Timeout { tx: id });
                self.send_cancel(id, now);
            }
            (Timer::ResponseRetransmit, Kind::ServerInvite, State::Completed | State::Accepted) => {
                if tx.state == State::Accepted && tx.ack_received {
                    return;
                }
                tx.interval = (tx.interval * 2).min(t.t2);
                self.resend(id, Timer::ResponseRetransmit, due, now);
            }
            (Timer::WaitAck, Kind::ServerInvite, State::Completed) => {
                self.events.push_back(TxEvent::Timeout { tx: id });
                self.terminate(id);
            }
            (Timer::WaitAck, Kind::ServerInvite, State::Accepted) => {
                if !tx.ack_received {
                    self.events.push_back(TxEvent::Timeout { tx: id });
                }
                self.terminate(id);
            }
            (Timer::Linger, _, _) => self.terminate(id),
            (Timer::Unanswered, Kind::ServerInvite, State::Proceeding)
            | (Timer::Unanswered, Kind::ServerNonInvite, State::Trying | State::Proceeding) => {
                let tag = format!("{:016x}", rand::random::<u64>());
                let mut resp = tx.request.response(500, Some(&tag));
                resp.set_reason("No answer from the server in time");
                let _ = self.send_response(id, resp, now);
                self.events.push_back(TxEvent::Timeout { tx: id });
            }
            _ => {}
        }
    }

    /// Sends the transaction's stored message again and schedules the next resend one
    /// (already updated) interval after this one was due, so a late wake-up does not shift
    /// every later retransmission (RFC 3261's timers count from when each was set); one
    /// missed altogether is skipped rather than sent in a burst.
    fn resend(&mut self, id: TxId, timer: Timer, due: Instant, now: Instant) {
        let Some(tx) = self.txs.get(&id) else {
            return;
        };
        let mut next = due + tx.interval;
        if next <= now {
            next = now + tx.interval;
        }
        self.transmits.push_back(Transmit {
            to: tx.peer.clone(),
            bytes: tx.wire.clone(),
            note: tx.note.clone(),
        });
        self.set_timer(id, timer, next);
    }

    /// The request a server transaction answers.
    pub fn server_request(&self, id: TxId) -> Option<&SipMessage> {
        self.txs
            .get(&id)
            .filter(|t| matches!(t.kind, Kind::ServerInvite | Kind::ServerNonInvite))
            .map(|t| &t.request)
    }

    /// The request a client transaction carries.
    pub fn client_request(&self, id: TxId) -> Option<&SipMessage> {
        self.txs
            .get(&id)
            .filter(|t| matches!(t.kind, Kind::ClientInvite | Kind::ClientNonInvite))
            .map(|t| &t.request)
    }

    pub fn len(&self) -> usize {
        self.txs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    fn alloc(&mut self) -> TxId {
        self.next_id += 1;
        TxId(self.next_id)
    }

    /// Sets (or moves) one of a transaction's timers.
    fn set_timer(&mut self, id: TxId, timer: Timer, at: Instant) {
        if let Some(tx) = self.txs.get_mut(&id) {
            if let Some(was) = tx.timers.insert(timer, at) {
                self.timers.remove(&(was, id, timer));
            }
            self.timers.insert((at, id, timer));
        }
    }

    /// Cancels one of a transaction's timers.
    fn clear_timer(&mut self, id: TxId, timer: Timer) {
        if let Some(at) = self
            .txs
            .get_mut(&id)
            .and_then(|tx| tx.timers.remove(&timer))
        {
            self.timers.remove(&(at, id, timer));
        }
    }

    fn terminate(&mut self, id: TxId) {
        let Some(tx) = self.txs.remove(&id) else {
            return;
        };
        // Its timers go with it, rather than waiting in the schedule to be skipped.
        for (timer, at) in &tx.timers {
            self.timers.remove(&(*at, id, *timer));
        }
        if let Some(k) = tx.server_key
            && self.servers.get(&k) == Some(&id)
        {
            self.servers.remove(&k);
        }
        if let Some(k) = tx.client_key
            && self.clients.get(&k) == Some(&id)
        {
            self.clients.remove(&k);
        }
        if let Some(k) = tx.ack_key
            && self.accepted.get(&k) == Some(&id)
        {
            self.accepted.remove(&k);
        }
        shrink_sparse(&mut self.txs);
        shrink_sparse(&mut self.servers);
        shrink_sparse(&mut self.clients);
        shrink_sparse(&mut self.accepted);
        self.events.push_back(TxEvent::Terminated { tx: id });
    }
}

/// Gives back the room a burst left in a map: a `HashMap` keeps its capacity when emptied,
/// so the table a peak of 50,000 transactions grew (a few hundred bytes a slot) would stay
/// that size for as long as the process runs. Once it holds under a quarter of its room it is
/// shrunk to twice what it holds: the next shrink needs it to have at least halved again, so
/// the rehashing costs a constant per removal.
fn shrink_sparse<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    const SMALL: usize = 1024;
    let (len, room) = (map.len(), map.capacity());
    if room > SMALL && len < room / 4 {
        map.shrink_to(len * 2);
    }
}

/// Cancels one timer of transaction `id` (whose timers are `timers`) in the layer's
/// `schedule` as well: the schedule holds only what some transaction still waits for, so
/// cancelled timers do not stay in it until they would have been due (timer C: three
/// minutes after a call that was answered in a second).
fn unschedule(
    schedule: &mut BTreeSet<(Instant, TxId, Timer)>,
    id: TxId,
    timers: &mut HashMap<Timer, Instant>,
    timer: Timer,
) {
    if let Some(at) = timers.remove(&timer) {
        schedule.remove(&(at, id, timer));
    }
}

/// Cancels every timer of transaction `id`, in its own map and in the schedule.
fn unschedule_all(
    schedule: &mut BTreeSet<(Instant, TxId, Timer)>,
    id: TxId,
    timers: &mut HashMap<Timer, Instant>,
) {
    for (timer, at) in timers.drain() {
        schedule.remove(&(at, id, timer));
    }
}

fn copy_headers(from: &SipMessage, names: &[&str]) -> Vec<Header> {
    from.headers
        .iter()
        .filter(|h| names.iter().any(|n| h.name.eq_ignore_ascii_case(n)))
        .cloned()
        .collect()
}

/// The ACK a client INVITE transaction sends for a non-2xx final (RFC 3261 §17.1.1.3).
fn build_ack(invite: &SipMessage, resp: &SipMessage) -> SipMessage {
    hop_request(invite, Method::Ack, resp.header("To"))
}

/// The CANCEL for a client INVITE transaction (RFC 3261 §9.1).
fn build_cancel(invite: &SipMessage) -> SipMessage {
    hop_request(invite, Method::Cancel, None)
}

fn hop_request(invite: &SipMessage, method: Method, to: Option<&str>) -> SipMessage {
    let uri = invite.request_uri().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    if let Some(via) = invite.header("Via") {
        headers.push(Header {
            name: "Via".into(),
            value: via.to_owned(),
        });
    }
    headers.push(Header {
        name: "Max-Forwards".into(),
        value: "70".into(),
    });
    headers.extend(copy_headers(invite, &["Route", "From"]));
    headers.push(Header {
        name: "To".into(),
        value: to.or(invite.header("To")).unwrap_or_default().to_owned(),
    });
    headers.extend(copy_headers(invite, &["Call-ID"]));
    let seq = invite.cseq().map_or(1, |c| c.seq);
    headers.push(Header {
        name: "CSeq".into(),
        value: format!("{seq} {method}"),
    });
    SipMessage {
        start: StartLine::Request { method, uri },
        headers,
        body: Bytes::new(),
    }
}

#[cfg(test)]
#[path = "transaction_tests.rs"]
mod tests;
