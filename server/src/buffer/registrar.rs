//! Who is logged in on this buffer server, and where to reach them. Pure: REGISTER and time
//! in, bindings out. An agent has one binding: a new REGISTER replaces the old contact, the
//! way a browser that reconnects takes over its own identity.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::sip::{ConnId, Target, TransportKind};

/// Where an agent is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub agent: String,
    /// The Contact URI, the request-URI of calls to the agent.
    pub contact: String,
    /// The transport and, for connection-oriented agents, the connection it registered on.
    pub target: Target,
    pub expires_at: Instant,
    /// The token the agent registered with.
    pub token: AgentToken,
}

/// The token an agent registered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentToken {
    /// Its id, so revoking it ends the binding.
    pub jti: String,
    /// The token itself: the distributor takes no edge's word for an agent, so the edge
    /// passes it on as the proof of its claim (`AgentUp`, or the link's REGISTER).
    pub raw: String,
}

/// All bindings of this buffer server, with their expiry times kept in order: the owner asks
/// for the next expiry after every message, and with thousands of agents a scan would cost
/// more than the message.
#[derive(Debug, Default)]
pub struct Registrar {
    bindings: HashMap<String, Binding>,
    by_expiry: BTreeSet<(Instant, String)>,
    /// The tokens each open agent WebSocket registered with. A binding names only the
    /// latest connection, but revoking a token must close every socket it let in (the same
    /// token registered twice keeps the first socket open, and with it presence and state).
    /// An entry goes with its connection.
    ws_tokens: HashMap<ConnId, HashSet<String>>,
}

/// What revoking a token removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Revoked {
    /// Agents whose binding is gone.
    pub agents: Vec<String>,
    /// The WebSocket connections the token registered on, to close.
    pub conns: Vec<ConnId>,
}

impl Registrar {
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds or refreshes. Returns true when the agent was not bound before.
    pub fn bind(
        &mut self,
        agent: &str,
        token: AgentToken,
        contact: String,
        target: Target,
        expires: Duration,
        now: Instant,
    ) -> bool {
        if let (TransportKind::Wss, Some(conn)) = (target.kind, target.conn) {
            self.ws_tokens
                .entry(conn)
                .or_default()
                .insert(token.jti.clone());
        }
        let binding = Binding {
            agent: agent.to_owned(),
            contact,
            target,
            expires_at: now + expires,
            token,
        };
        self.by_expiry
            .insert((binding.expires_at, agent.to_owned()));
        match self.bindings.insert(agent.to_owned(), binding) {
            Some(old) => {
                if old.expires_at != now + expires {
                    self.by_expiry.remove(&(old.expires_at, old.agent));
                }
                false
            }
            None => true,
        }
    }

    /// Removes a binding. Returns true when there was one.
    pub fn unbind(&mut self, agent: &str) -> bool {
        self.remove(agent).is_some()
    }

    fn remove(&mut self, agent: &str) -> Option<Binding> {
        let b = self.bindings.remove(agent)?;
        self.by_expiry.remove(&(b.expires_at, b.agent.clone()));
        Some(b)
    }

    pub fn get(&self, agent: &str) -> Option<&Binding> {
        self.bindings.get(agent)
    }

    pub fn agents(&self) -> impl Iterator<Item = &str> {
        self.bindings.keys().map(String::as_str)
    }

    /// Removes expired bindings and returns their agents.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut gone = Vec::new();
        while let Some((at, agent)) = self.by_expiry.first().cloned()
            && at <= now
        {
            self.remove(&agent);
            gone.push(agent);
        }
        gone
    }

    /// Agents whose binding matches `pred`, removed.
    fn remove_where(&mut self, pred: impl Fn(&Binding) -> bool) -> Vec<String> {
        let gone: Vec<String> = self
            .bindings
            .values()
            .filter(|b| pred(b))
            .map(|b| b.agent.clone())
            .collect();
        for agent in &gone {
            self.remove(agent);
        }
        gone
    }

    /// Removes the bindings made with a revoked token, and every WebSocket it registered on
    /// as if closed (the owner closes them: no close comes back for a socket we end).
    pub fn revoke(&mut self, jti: &str) -> Revoked {
        let conns: Vec<ConnId> = self
            .ws_tokens
            .iter()
            .filter(|(_, jtis)| jtis.contains(jti))
            .map(|(conn, _)| *conn)
            .collect();
        let mut agents = self.remove_where(|b| b.token.jti == jti);
        for conn in &conns {
            agents.extend(self.connection_closed(*conn));
        }
        Revoked { agents, conns }
    }

    /// Whether a token registered an agent on this WebSocket connection.
    pub fn has_conn(&self, conn: ConnId) -> bool {
        self.ws_tokens.contains_key(&conn)
    }

    /// A WebSocket agent lives only as long as its socket: its binding goes with it. TCP
    /// bindings stay (the agent's Contact can be dialled again) but forget the connection.
    pub fn connection_closed(&mut self, conn: ConnId) -> Vec<String> {
        self.ws_tokens.remove(&conn);
        for b in self.bindings.values_mut() {
            if b.target.conn == Some(conn) && b.target.kind == TransportKind::Tcp {
                b.target.conn = None;
            }
        }
        self.remove_where(|b| b.target.conn == Some(conn))
    }

    /// When the next binding expires, for the owner's timer.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_expiry.first().map(|(at, _)| *at)
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(jti: &str) -> AgentToken {
        AgentToken {
            jti: jti.into(),
            raw: format!("token-{jti}"),
        }
    }

    #[test]
    fn a_refresh_moves_the_expiry_and_removals_leave_no_stale_timer() {
        let now = Instant::now();
        let mut r = Registrar::new();
        let udp = Target::udp("127.0.0.1:9".parse().unwrap());
        let secs = Duration::from_secs;
        for (agent, ttl) in [("a", 60), ("b", 90), ("c", 120)] {
            r.bind(
                agent,
                tok("j"),
                "sip:x@127.0.0.1".into(),
                udp.clone(),
                secs(ttl),
                now,
            );
        }
        // a refreshes 10 s later: its old expiry no longer counts.
        assert!(!r.bind(
            "a",
            tok("j"),
            "sip:x@127.0.0.1".into(),
            udp.clone(),
            secs(60),
            now + secs(10)
        ));
        assert_eq!(r.next_expiry(), Some(now + secs(70)));
        assert!(r.expire(now + secs(65)).is_empty());
        assert!(r.unbind("a"));
        assert_eq!(r.next_expiry(), Some(now + secs(90)));
        assert_eq!(
            r.expire(now + secs(200)),
            vec!["b".to_owned(), "c".to_owned()]
        );
        assert_eq!((r.next_expiry(), r.len()), (None, 0));
    }

    #[test]
    fn bindings_expire_and_websocket_bindings_die_with_their_socket() {
        let now = Instant::now();
        let mut r = Registrar::new();
        let ws = Target {
            kind: TransportKind::Wss,
            addr: "127.0.0.1:9".parse().unwrap(),
            conn: Some(ConnId(7)),
        };
        let tcp = Target {
            kind: TransportKind::Tcp,
            ..ws.clone()
        };
        assert!(r.bind(
            "alice",
            tok("j1"),
            "sip:a@x;transport=ws".into(),
            ws,
            Duration::from_secs(60),
            now
        ));
        assert!(r.bind(
            "bob",
            tok("j2"),
            "sip:b@127.0.0.1:9;transport=tcp".into(),
            tcp,
            Duration::from_secs(30),
            now
        ));
        assert!(!r.bind(
            "bob",
            tok("j3"),
            "sip:b@127.0.0.1:9;transport=tcp".into(),
            Target::udp("127.0.0.1:9".parse().unwrap()),
            Duration::from_secs(30),
            now
        ));
        assert_eq!(r.next_expiry(), Some(now + Duration::from_secs(30)));
        assert_eq!(
            r.revoke("j2").agents,
            Vec::<String>::new(),
            "bob re-registered with j3"
        );
        assert_eq!(r.connection_closed(ConnId(7)), vec!["alice".to_string()]);
        assert_eq!(
            r.expire(now + Duration::from_secs(29)),
            Vec::<String>::new()
        );
        assert!(!r.is_empty());
        assert_eq!(r.revoke("j3").agents, vec!["bob".to_string()]);
        assert!(r.is_empty());
    }

    #[test]
    fn revoking_a_token_names_every_websocket_it_registered_on_until_they_close() {
        let now = Instant::now();
        let mut r = Registrar::new();
        let ws = |n| Target {
            kind: TransportKind::Wss,
            addr: "127.0.0.1:9".parse().unwrap(),
            conn: Some(ConnId(n)),
        };
        let ttl = Duration::from_secs(60);
        // alice's token on sockets 1 and 2 (2 took the binding over), bob's on socket 3;
        // socket 4 registered with alice's token and is gone.
        for (agent, jti, conn) in [
            ("alice", "ja", 1),
            ("alice", "ja", 2),
            ("bob", "jb", 3),
            ("carol", "ja", 4),
        ] {
            r.bind(
                agent,
                tok(jti),
                "sip:x@x;transport=ws".into(),
                ws(conn),
                ttl,
                now,
            );
        }
        assert_eq!(r.connection_closed(ConnId(4)), vec!["carol".to_owned()]);
        let mut revoked = r.revoke("ja");
        revoked.conns.sort();
        assert_eq!(
            revoked,
            Revoked {
                agents: vec!["alice".to_owned()],
                conns: vec![ConnId(1), ConnId(2)],
            }
        );
        assert_eq!(r.revoke("ja"), Revoked::default(), "forgotten once closed");
        assert_eq!(r.len(), 1);
        assert_eq!(r.revoke("jb").conns, vec![ConnId(3)]);
        assert!(r.ws_tokens.is_empty());
    }
}
