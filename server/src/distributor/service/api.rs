//! What crosses the distributor core's boundary: its inputs and outputs, the admin API's
//! commands and views, and what it is built from. Kept apart from the logic so a caller of
//! the core reads one file to learn how to drive it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use proto_tunnel::Frame;
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

use crate::acd::{self, Presence, Profile};
use crate::admin::store::{SipPassword, Store};
use crate::admin::tokens::{TokenIssuer, WallClock};
use crate::app::status::Status;
use crate::media::announcement::Announcement;
use crate::sip::{ConnId, SipMessage, SipUri, Target, TransportKind};
use crate::transport::TransportEvent;

/// What the admin API asks of the distributor task.
#[derive(Debug)]
pub enum Command {
    /// Refuse this token on every edge from now on.
    Revoke { jti: String },
    /// Who is logged in where, and the calls in progress.
    Live { reply: oneshot::Sender<LiveView> },
    /// The token keys changed (a rotation): tell every edge.
    Keys { json: String },
    /// An agent's presence, set by a supervisor. Answers whether the agent is signed in.
    Presence {
        agent: String,
        presence: Presence,
        reply: oneshot::Sender<bool>,
    },
    /// The admin store changed an agent (or removed it: `None`); a signed-in agent's skills
    /// and call limit follow at once.
    Profile {
        agent: String,
        profile: Option<Profile>,
    },
    /// The live event stream: the state now, then every change.
    Subscribe {
        reply: oneshot::Sender<(LiveView, broadcast::Receiver<Arc<str>>)>,
    },
    /// A shutdown began: new calls are refused with 503 from now on; calls in progress and
    /// waiting in queues go on.
    Drain,
    /// The shutdown's grace is over: calls still waiting in a queue are refused with 503.
    RefuseWaiting,
    /// The last step of a shutdown: every call record still open is finished and written;
    /// `reply` is told when the writer has tried them.
    FlushRecords { reply: oneshot::Sender<()> },
}

/// The distributor's state as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LiveView {
    pub agents: Vec<LiveAgent>,
    pub queues: Vec<acd::QueueView>,
    pub calls: Vec<LiveCall>,
    /// What the SIP side holds beyond the calls in progress: what memory is spent on.
    pub held: Held,
}

/// What the process's transaction layers and the distributor's SIP side hold right now.
/// Transactions outlive their calls by RFC 3261's timers (32 s for an INVITE answered with a
/// 2xx and for a non-INVITE on UDP), so after a burst these count down to nothing.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    /// Transactions in every role of this process (both in an all-in-one system).
    pub transactions: usize,
    /// Their scheduled timers.
    pub timers: usize,
    /// The distributor's own transactions, and its timers.
    pub distributor_transactions: usize,
    pub distributor_timers: usize,
    /// Calls the distributor's SIP side holds transactions for.
    pub sip_calls: usize,
    /// Call records not yet handed to the writer.
    pub records_open: usize,
}

/// A call the ACD holds, with the media statistics its edge last reported.
#[derive(Debug, Clone, Serialize)]
pub struct LiveCall {
    #[serde(flatten)]
    pub call: acd::CallView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveAgent {
    pub id: String,
    pub edge: String,
    pub state: acd::AgentState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub calls: usize,
    /// The id (`jti`) of the token she signed in with: revoking it signs her out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The addresses the caller-facing listeners are bound to.
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub tls: SocketAddr,
}

impl BoundAddrs {
    pub(super) fn for_kind(&self, kind: TransportKind) -> (SocketAddr, &'static str) {
        match kind {
            TransportKind::Tcp => (self.tcp, "tcp"),
            TransportKind::Tls => (self.tls, "tls"),
            _ => (self.udp, "udp"),
        }
    }

    pub(super) fn is_ours(&self, uri: &SipUri) -> bool {
        let Ok(ip) = uri
            .host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
        else {
            return false;
        };
        let addr = SocketAddr::new(ip, uri.port.unwrap_or(5060));
        [self.udp, self.tcp, self.tls].contains(&addr)
    }
}

/// What the distributor is told.
#[derive(Debug)]
pub enum Input {
    /// SIP from a caller or an edge on a plain-SIP link, parsed at the boundary, and when
    /// it was read there.
    Sip {
        msg: SipMessage,
        from: Target,
        received: std::time::Instant,
    },
    /// A caller's (or a plain-SIP edge's) stream connection closed.
    Closed { conn: ConnId },
    /// An edge's tunnel opened (its credential checked) and said Hello.
    EdgeUp {
        conn: ConnId,
        edge_id: String,
        handoffs: Vec<String>,
    },
    /// An edge's tunnel closed.
    EdgeDown { conn: ConnId },
    /// A frame from an edge's tunnel.
    Frame { conn: ConnId, frame: Frame },
    /// From the admin API or the shutdown.
    Command(Command),
    /// Sending to `to` failed at once: its transactions fail.
    SendFailed { to: Target },
}

impl From<TransportEvent> for Input {
    fn from(ev: TransportEvent) -> Input {
        match ev {
            TransportEvent::Message {
                msg,
                from,
                received,
            } => Input::Sip {
                msg,
                from,
                received,
            },
            TransportEvent::Closed { conn } => Input::Closed { conn },
        }
    }
}

/// What the distributor wants done.
#[derive(Debug)]
pub enum Output {
    /// SIP to a caller or a plain-SIP edge.
    Sip { to: Target, bytes: Bytes },
    /// A frame into an edge's tunnel.
    Frame { conn: ConnId, frame: Frame },
    /// Start the queue's announcement towards a waiting caller's media address.
    EarlyMediaStart {
        call: String,
        to: SocketAddr,
        audio: Arc<[u8]>,
        law: crate::media::announcement::Law,
    },
    /// Stop a waiting caller's announcement.
    EarlyMediaStop { call: String },
    /// For the operator.
    Status(Status),
    /// A finished call record (or an update of one), for the writer.
    Record(crate::records::RecordOutput),
    /// Tell `reply` once the writer has tried every record handed over before this.
    RecordsFlushed { reply: oneshot::Sender<()> },
}

/// Where agents' skills and call limits come from (the admin store; a map in tests).
pub trait Profiles: Send + Sync + std::fmt::Debug {
    /// The agent's profile, `None` for an agent the source does not know.
    fn profile(&self, agent: &str) -> Result<Option<Profile>, String>;
}

impl Profiles for Store {
    fn profile(&self, agent: &str) -> Result<Option<Profile>, String> {
        self.agent(agent)
            .map(|a| {
                a.map(|a| Profile {
                    skills: a.skills,
                    max_calls: a.max_calls,
                })
            })
            .map_err(|e| e.to_string())
    }
}

/// Where the distributor finds an agent's SIP password (its hashes), read when an edge asks
/// for a Digest answer to be checked.
pub trait SipPasswords: Send + Sync + std::fmt::Debug {
    fn sip_password(&self, agent: &str) -> Result<Option<SipPassword>, String>;
}

impl SipPasswords for Store {
    fn sip_password(&self, agent: &str) -> Result<Option<SipPassword>, String> {
        Store::sip_password(self, agent).map_err(|e| e.to_string())
    }
}

/// Queue announcements played to waiting callers (queues with `ringback = "183"`).
#[derive(Debug)]
pub struct QueueMedia {
    /// Where the announcements are played from: the address put in the 183's SDP.
    pub from: SocketAddr,
    /// Queue → its announcement.
    pub announcements: HashMap<String, Announcement>,
}

/// What the distributor knows of identities: for edges, and for agents' profiles.
#[derive(Debug)]
pub struct Identities {
    /// The JSON of [`crate::admin::tokens::VerifierSettings`], sent to every edge so it can
    /// check agent tokens.
    pub verifier: String,
    /// Revoked token ids.
    pub revoked: Vec<String>,
    /// Checks the credentials of edges that register over plain SIP.
    pub edge_issuer: TokenIssuer,
    /// Agents' skills and call limits (none: every agent gets the defaults).
    pub profiles: Option<Arc<dyn Profiles>>,
    /// Agents' SIP passwords, for desk phones' Digest answers (none: Digest is refused).
    pub sip_passwords: Option<Arc<dyn SipPasswords>>,
    /// Signs the agent tokens a verified Digest answer is turned into.
    pub agent_issuer: Option<TokenIssuer>,
    /// The Unix time at one instant, so agent tokens' expiry is checked against the `now`
    /// the core is given (the core reads no clock).
    pub clock: WallClock,
}
