//! What a running system tells its operator: typed events, each with the one status line
//! people and the end-to-end tests read. The roles emit them; only the program embedding the
//! system (`main.rs` prints them on stdout) decides where they go, so rewording a log line
//! never breaks a test that waits for a status line.

use std::fmt;
use std::net::SocketAddr;
use std::sync::mpsc;

/// Events waiting for the embedding program; past this they are dropped (and logged), so a
/// program that never reads them costs no memory.
const BACKLOG: usize = 4096;

/// One thing that happened to the system as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// A listener is bound: `name` is the config key (`distributor.udp`, `buffer.https`…).
    Listening {
        name: &'static str,
        addr: SocketAddr,
    },
    /// The agent page of a buffer server.
    AgentPage { url: String },
    /// The all-in-one run's sign-in link for a demo agent.
    DemoAgent { url: String },
    /// No demo link, because a listener is reachable from beyond this host.
    NoDemoAgent,
    /// An edge connected to the distributor (tunnel, or its first plain-SIP REGISTER).
    EdgeUp { edge: String, handoff: &'static str },
    /// The distributor learnt that an agent is reachable through an edge.
    AgentUp { agent: String, edge: String },
    /// The distributor forgot an agent (signed out, or its edge went away).
    AgentDown { agent: String, edge: String },
    /// An edge's tunnel is up and agents can sign in (the token keys arrived).
    TunnelUp { edge: String },
    /// An edge lost its tunnel; its dialler is backing off to dial again.
    TunnelDown { edge: String },
    /// The distributor refused an edge's tunnel, once per distinct reason.
    TunnelRefused { edge: String, reason: String },
    /// An exposed edge's media connection to the distributor's caller media relay is up:
    /// its callers' audio can be relayed.
    MediaRelayUp { edge: String },
    /// It dropped; calls wanting a port are refused until it is back.
    MediaRelayDown { edge: String },
    /// A shutdown was asked for: new calls are refused, calls in progress run on.
    Draining { calls: usize },
    /// Everything is closed.
    Stopped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Listening { name, addr } => write!(f, "listening {name} {addr}"),
            Status::AgentPage { url } => write!(f, "agent page: {url}"),
            Status::DemoAgent { url } => write!(f, "demo agent: {url}"),
            Status::NoDemoAgent => write!(
                f,
                "demo agent: none (a listener is not on loopback); issue tokens with `agent-edge token issue --agent ID`"
            ),
            Status::EdgeUp { edge, handoff } => write!(f, "edge-up {edge} {handoff}"),
            Status::AgentUp { agent, edge } => write!(f, "agent-up {agent} {edge}"),
            Status::AgentDown { agent, edge } => write!(f, "agent-down {agent} {edge}"),
            Status::TunnelUp { edge } => write!(f, "tunnel-up {edge}"),
            Status::TunnelDown { edge } => write!(f, "tunnel-down {edge}"),
            Status::TunnelRefused { edge, reason } => write!(f, "tunnel-refused {edge} {reason}"),
            Status::MediaRelayUp { edge } => write!(f, "media-relay-up {edge}"),
            Status::MediaRelayDown { edge } => write!(f, "media-relay-down {edge}"),
            Status::Draining { calls } => write!(f, "draining {calls} calls"),
            Status::Stopped => write!(f, "stopped"),
        }
    }
}

/// Where the roles send their status events; cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct StatusSink {
    tx: mpsc::SyncSender<Status>,
}

impl StatusSink {
    /// A sink and the receiving end the embedding program reads.
    pub fn new() -> (StatusSink, mpsc::Receiver<Status>) {
        let (tx, rx) = mpsc::sync_channel(BACKLOG);
        (StatusSink { tx }, rx)
    }

    /// A sink whose events go nowhere (unit tests of a role).
    pub fn discard() -> StatusSink {
        StatusSink::new().0
    }

    pub fn emit(&self, status: Status) {
        tracing::debug!(%status, "status");
        match self.tx.try_send(status) {
            Ok(()) | Err(mpsc::TrySendError::Disconnected(_)) => {}
            Err(mpsc::TrySendError::Full(status)) => {
                tracing::warn!(%status, "status event dropped: nobody reads them");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lines_tests_and_operators_read() {
        let cases = [
            (
                Status::Listening {
                    name: "distributor.udp",
                    addr: SocketAddr::from(([127, 0, 0, 1], 5060)),
                },
                "listening distributor.udp 127.0.0.1:5060",
            ),
            (
                Status::EdgeUp {
                    edge: "edge-1".into(),
                    handoff: "table",
                },
                "edge-up edge-1 table",
            ),
            (
                Status::AgentUp {
                    agent: "alice".into(),
                    edge: "edge-1".into(),
                },
                "agent-up alice edge-1",
            ),
            (
                Status::TunnelRefused {
                    edge: "edge-1".into(),
                    reason: "HTTP 401".into(),
                },
                "tunnel-refused edge-1 HTTP 401",
            ),
        ];
        for (status, line) in cases {
            assert_eq!(status.to_string(), line);
        }
    }

    #[test]
    fn a_sink_nobody_reads_drops_instead_of_growing() {
        let (sink, rx) = StatusSink::new();
        for _ in 0..BACKLOG + 10 {
            sink.emit(Status::Stopped);
        }
        assert_eq!(rx.try_iter().count(), BACKLOG);
    }
}
