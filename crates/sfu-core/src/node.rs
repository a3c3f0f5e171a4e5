//! The SFU process's lifecycle: Starting → Ready → Draining → Drained.
//!
//! Draining is one-way: SIGTERM or `POST /v1/drain` stops new participants from joining
//! (existing ones stay, and may still reconnect or ICE-restart); once the last
//! participant has left the SFU reports Drained and the process may exit.

use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Starting,
    Ready,
    Draining { since: Instant },
    Drained { since: Instant },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotReady,
    Draining,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotReady => "this SFU is still starting",
            Self::Draining => "this SFU is draining and takes no new participants",
        })
    }
}

#[derive(Debug)]
pub struct Node {
    state: NodeState,
    participants: usize,
}

impl Default for Node {
    fn default() -> Self {
        Self { state: NodeState::Starting, participants: 0 }
    }
}

impl Node {
    pub fn state(&self) -> NodeState {
        self.state
    }

    /// Listening and able to forward.
    pub fn ready(&mut self) {
        if self.state == NodeState::Starting {
            self.state = NodeState::Ready;
        }
    }

    /// Whether a new participant may join.
    pub fn admit(&self) -> Result<(), Refusal> {
        match self.state {
            NodeState::Ready => Ok(()),
            NodeState::Starting => Err(Refusal::NotReady),
            NodeState::Draining { .. } | NodeState::Drained { .. } => Err(Refusal::Draining),
        }
    }

    pub fn drain(&mut self, now: Instant) {
        if matches!(self.state, NodeState::Starting | NodeState::Ready) {
            self.state = NodeState::Draining { since: now };
        }
        self.settle(now);
    }

    /// The number of participants on the SFU changed.
    pub fn set_participants(&mut self, count: usize, now: Instant) {
        self.participants = count;
        self.settle(now);
    }

    fn settle(&mut self, now: Instant) {
        if matches!(self.state, NodeState::Draining { .. }) && self.participants == 0 {
            self.state = NodeState::Drained { since: now };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_refuses_newcomers_and_completes_when_the_last_leaves() {
        let t = Instant::now();
        let mut node = Node::default();
        assert_eq!(node.admit(), Err(Refusal::NotReady));
        node.ready();
        assert_eq!(node.admit(), Ok(()));
        node.set_participants(2, t);
        node.drain(t);
        assert_eq!(node.state(), NodeState::Draining { since: t });
        assert_eq!(node.admit(), Err(Refusal::Draining));
        node.set_participants(1, t);
        assert!(matches!(node.state(), NodeState::Draining { .. }));
        node.set_participants(0, t);
        assert_eq!(node.state(), NodeState::Drained { since: t });
        // A drained node stays drained.
        node.ready();
        node.drain(t);
        assert_eq!(node.admit(), Err(Refusal::Draining));
    }

    #[test]
    fn an_idle_node_drains_at_once() {
        let t = Instant::now();
        let mut node = Node::default();
        node.ready();
        node.drain(t);
        assert_eq!(node.state(), NodeState::Drained { since: t });
    }
}
