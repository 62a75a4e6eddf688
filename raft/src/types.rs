//! The vocabulary of the core: ids, terms, indexes, log entries, configurations,
//! hard state and snapshots. Pure data, no I/O. Values built from the wire or the
//! disk are validated by the layer that decodes them; these types only carry them.

use std::collections::BTreeSet;
use std::fmt;

macro_rules! newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

newtype!(
    /// A member's id. `NodeId(0)` means "none" and is never a member.
    NodeId
);
newtype!(
    /// A Raft term. Terms only grow (paper §5.1).
    Term
);
newtype!(
    /// A log position; the first real entry is 1, 0 is "before the log".
    Index
);

impl NodeId {
    pub const NONE: NodeId = NodeId(0);
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl Index {
    pub fn next(self) -> Index {
        Index(self.0 + 1)
    }
    /// The index before this one; `Index(0).prev()` is `Index(0)`.
    pub fn prev(self) -> Index {
        Index(self.0.saturating_sub(1))
    }
}

impl Term {
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

/// One membership step. Nod changes one server at a time (see `ConfState`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConfChangeKind {
    /// Adds a non-voting member that receives the log.
    AddLearner,
    /// Adds a voter directly (etcd's MemberAdd without --learner).
    AddVoter,
    /// Turns a learner into a voter.
    PromoteLearner,
    /// Removes a voter or a learner.
    Remove,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConfChange {
    pub kind: ConfChangeKind,
    pub node: NodeId,
    /// Opaque to the core (the server keeps the member's name and addresses here).
    pub context: Vec<u8>,
}

/// A cluster configuration: who votes and who only listens.
///
/// Invariants: (1) `voters` and `learners` are disjoint; (2) `NodeId::NONE` is in neither.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfState {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

impl ConfState {
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        ConfState {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// The configuration after `change`, or why the change does not apply.
    /// Each valid change alters the voter set by at most one server, which is
    /// what makes single-server changes safe (Ongaro's thesis §4.1).
    pub fn apply(&self, change: &ConfChange) -> Result<ConfState, String> {
        let id = change.node;
        if id.is_none() {
            return Err("node id 0 is reserved".into());
        }
        let mut next = self.clone();
        match change.kind {
            ConfChangeKind::AddLearner => {
                if self.contains(id) {
                    return Err(format!("node {id} is already a member"));
                }
                next.learners.insert(id);
            }
            ConfChangeKind::AddVoter => {
                if self.contains(id) {
                    return Err(format!("node {id} is already a member"));
                }
                next.voters.insert(id);
            }
            ConfChangeKind::PromoteLearner => {
                if !next.learners.remove(&id) {
                    return Err(format!("node {id} is not a learner"));
                }
                next.voters.insert(id);
            }
            ConfChangeKind::Remove => {
                if !next.voters.remove(&id) && !next.learners.remove(&id) {
                    return Err(format!("node {id} is not a member"));
                }
                if next.voters.is_empty() {
                    return Err(format!("removing node {id} would leave no voter"));
                }
            }
        }
        Ok(next)
    }
}

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryPayload {
    /// The no-op a new leader appends to commit entries of earlier terms (§5.4.2, §8).
    Empty,
    /// Application data, opaque to the core.
    Normal(Vec<u8>),
    /// A membership step. It takes effect as soon as it is in a log (thesis §4.1).
    ConfChange(ConfChange),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub term: Term,
    pub index: Index,
    pub payload: EntryPayload,
}

impl Entry {
    /// An approximation of the entry's encoded size, used for batching limits.
    pub fn size(&self) -> u64 {
        let body = match &self.payload {
            EntryPayload::Empty => 0,
            EntryPayload::Normal(data) => data.len(),
            EntryPayload::ConfChange(cc) => 9 + cc.context.len(),
        };
        (16 + body) as u64
    }
}

/// What must be durable before a node answers anyone: its term, its vote in
/// that term, and (lazily) how far it knows the log is committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    pub term: Term,
    pub vote: NodeId,
    pub commit: Index,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotMetadata {
    /// The last entry the snapshot covers.
    pub index: Index,
    pub term: Term,
    /// The configuration as of `index`.
    pub conf_state: ConfState,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Snapshot {
    pub metadata: SnapshotMetadata,
    /// The state machine's image, opaque to the core.
    pub data: Vec<u8>,
}

impl Snapshot {
    pub fn is_empty(&self) -> bool {
        self.metadata.index == Index(0)
    }
}

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        })
    }
}

/// Volatile state an application shows (who leads, what this node is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub leader: NodeId,
    pub role: Role,
}

/// A linearizable read that may now be served: once the state machine has
/// applied `index`, a local read reflects every write acknowledged before the
/// read was requested (paper §8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub index: Index,
    pub context: Vec<u8>,
}
