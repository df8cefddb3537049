//! Which agents are logged in, on which edge, and who is free. A minimal selection (longest
//! idle first among agents below their call limit); queues and skills are the ACD's job.
//! Pure: events and time in, decisions out.

use std::collections::HashMap;
use std::time::Instant;

use crate::sip::ConnId;

#[derive(Debug, Clone, PartialEq, Eq)]
struct AgentRecord {
    edge: ConnId,
    calls: usize,
    idle_since: Instant,
}

/// All agents known through the edges' tunnels.
#[derive(Debug, Default)]
pub struct AgentPool {
    agents: HashMap<String, AgentRecord>,
}

impl AgentPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// An edge reports the agent logged in. Returns false if it was already known there.
    pub fn up(&mut self, agent: &str, edge: ConnId, now: Instant) -> bool {
        match self.agents.get_mut(agent) {
            Some(rec) if rec.edge == edge => false,
            Some(rec) => {
                // Logged in again on another edge: calls follow the newest login.
                rec.edge = edge;
                true
            }
            None => {
                self.agents.insert(
                    agent.to_owned(),
                    AgentRecord {
                        edge,
                        calls: 0,
                        idle_since: now,
                    },
                );
                true
            }
        }
    }

    /// The edge reports the agent gone. Only the edge that has the agent can remove it.
    pub fn down(&mut self, agent: &str, edge: ConnId) -> bool {
        if self.agents.get(agent).is_some_and(|r| r.edge == edge) {
            self.agents.remove(agent);
            return true;
        }
        false
    }

    /// The edge's tunnel dropped: every agent on it is gone.
    pub fn edge_down(&mut self, edge: ConnId) -> Vec<String> {
        let mut gone: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, r)| r.edge == edge)
            .map(|(a, _)| a.clone())
            .collect();
        gone.sort();
        for a in &gone {
            self.agents.remove(a);
        }
        gone
    }

    /// Picks the agent idle the longest among those with fewer than `max_calls` calls, and
    /// counts the call against it. Ties go to the smaller name, so the choice is repeatable.
    pub fn take(&mut self, max_calls: usize) -> Option<(String, ConnId)> {
        let (name, rec) = self
            .agents
            .iter_mut()
            .filter(|(_, r)| r.calls < max_calls)
            .min_by(|(a, ra), (b, rb)| ra.idle_since.cmp(&rb.idle_since).then(a.cmp(b)))?;
        rec.calls += 1;
        Some((name.clone(), rec.edge))
    }

    /// A call of the agent ended; with no call left it is idle from now.
    pub fn release(&mut self, agent: &str, now: Instant) {
        if let Some(rec) = self.agents.get_mut(agent) {
            rec.calls = rec.calls.saturating_sub(1);
            if rec.calls == 0 {
                rec.idle_since = now;
            }
        }
    }

    pub fn edge_of(&self, agent: &str) -> Option<ConnId> {
        self.agents.get(agent).map(|r| r.edge)
    }

    /// (agent, edge, calls in progress) for every agent, sorted by agent.
    pub fn snapshot(&self) -> Vec<(String, ConnId, usize)> {
        let mut out: Vec<_> = self
            .agents
            .iter()
            .map(|(a, r)| (a.clone(), r.edge, r.calls))
            .collect();
        out.sort();
        out
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn longest_idle_agent_is_chosen_and_busy_agents_are_skipped() {
        let t0 = Instant::now();
        let mut pool = AgentPool::new();
        pool.up("bob", ConnId(1), t0 + Duration::from_secs(1));
        pool.up("alice", ConnId(1), t0);
        assert_eq!(pool.take(1), Some(("alice".into(), ConnId(1))));
        assert_eq!(pool.take(1), Some(("bob".into(), ConnId(1))));
        assert_eq!(pool.take(1), None);
        pool.release("alice", t0 + Duration::from_secs(5));
        pool.release("bob", t0 + Duration::from_secs(3));
        assert_eq!(pool.take(1).map(|a| a.0), Some("bob".into()));
    }

    #[test]
    fn call_limit_allows_several_calls() {
        let t0 = Instant::now();
        let mut pool = AgentPool::new();
        pool.up("alice", ConnId(1), t0);
        assert!(pool.take(2).is_some());
        assert!(pool.take(2).is_some());
        assert!(pool.take(2).is_none());
    }

    #[test]
    fn agents_go_with_their_edge_and_only_their_edge_removes_them() {
        let t0 = Instant::now();
        let mut pool = AgentPool::new();
        assert!(pool.up("alice", ConnId(1), t0));
        assert!(!pool.up("alice", ConnId(1), t0));
        assert!(pool.up("bob", ConnId(2), t0));
        assert!(!pool.down("bob", ConnId(1)));
        assert_eq!(pool.edge_down(ConnId(1)), vec!["alice".to_string()]);
        assert_eq!(pool.edge_of("bob"), Some(ConnId(2)));
        assert_eq!(pool.len(), 1);
    }
}
