//! Which edge each signed-in agent is on. The ACD decides who takes a call; this decides
//! where the offer goes. Pure.

use std::collections::HashMap;

use crate::sip::ConnId;

/// Agents known through the edges, and their edge.
#[derive(Debug, Default)]
pub struct AgentEdges {
    agents: HashMap<String, ConnId>,
}

impl AgentEdges {
    pub fn new() -> Self {
        Self::default()
    }

    /// An edge reports the agent signed in. Returns false if it was already known there.
    /// Signed in again on another edge: calls follow the newest sign-in.
    pub fn up(&mut self, agent: &str, edge: ConnId) -> bool {
        self.agents.insert(agent.to_owned(), edge) != Some(edge)
    }

    /// The edge reports the agent gone. Only the edge that has the agent can remove it.
    pub fn down(&mut self, agent: &str, edge: ConnId) -> bool {
        if self.agents.get(agent) == Some(&edge) {
            self.agents.remove(agent);
            return true;
        }
        false
    }

    /// The edge's tunnel dropped: every agent on it is gone. Sorted, for repeatable output.
    pub fn edge_down(&mut self, edge: ConnId) -> Vec<String> {
        let mut gone: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, e)| **e == edge)
            .map(|(a, _)| a.clone())
            .collect();
        gone.sort();
        for a in &gone {
            self.agents.remove(a);
        }
        gone
    }

    pub fn edge_of(&self, agent: &str) -> Option<ConnId> {
        self.agents.get(agent).copied()
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

    #[test]
    fn agents_go_with_their_edge_and_only_their_edge_removes_them() {
        let mut edges = AgentEdges::new();
        assert!(edges.up("alice", ConnId(1)));
        assert!(!edges.up("alice", ConnId(1)));
        assert!(edges.up("bob", ConnId(2)));
        assert!(!edges.down("bob", ConnId(1)));
        assert_eq!(edges.edge_down(ConnId(1)), vec!["alice".to_string()]);
        assert_eq!(edges.edge_of("bob"), Some(ConnId(2)));
        assert_eq!(edges.len(), 1);
    }

    #[test]
    fn the_newest_sign_in_wins() {
        let mut edges = AgentEdges::new();
        edges.up("alice", ConnId(1));
        assert!(edges.up("alice", ConnId(2)));
        assert!(!edges.down("alice", ConnId(1)));
        assert_eq!(edges.edge_of("alice"), Some(ConnId(2)));
    }
}
