//! How a node behaves: timing in ticks, batching limits, safety options.
//! `Config::validate` runs before a node is built.

use crate::error::ConfigError;
use crate::types::{Index, NodeId};

/// How linearizable reads are confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOnlyOption {
    /// A quorum round of heartbeats confirms leadership for every batched read (§8).
    Safe,
    /// The leader answers from its lease; only allowed with check-quorum, and only
    /// safe while clocks drift less than the election timeout allows.
    LeaseBased,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// A follower that hears nothing from a leader for a random time in
    /// `[election_tick, 2 * election_tick)` ticks starts an election.
    pub election_tick: u64,
    /// A leader sends heartbeats every `heartbeat_tick` ticks.
    pub heartbeat_tick: u64,
    /// Largest sum of entry sizes in one Append message (at least one entry is always sent).
    pub max_size_per_msg: u64,
    /// Most Append messages in flight to one follower in replicate state.
    pub max_inflight_msgs: usize,
    /// Most bytes of proposals appended but not yet committed; more is refused.
    pub max_uncommitted_size: u64,
    /// Largest sum of entry sizes handed to the application in one Ready.
    pub max_committed_size_per_ready: u64,
    /// A leader that has not heard from a quorum within an election timeout steps down,
    /// and followers ignore vote requests while they hear from a leader.
    pub check_quorum: bool,
    /// Campaign only after a pre-vote round shows an election could be won (thesis §9.6).
    pub pre_vote: bool,
    pub read_only: ReadOnlyOption,
    /// A follower left in snapshot state this many ticks without an answer is probed again.
    pub snapshot_timeout_tick: u64,
    /// How far the application's durable state machine has applied (0: it
    /// restarts from the snapshot and replays the log).
    pub applied: Index,
    /// Seed of the RNG that draws election timeouts; the core has no other randomness.
    pub seed: u64,
}

impl Config {
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            max_uncommitted_size: 64 * 1024 * 1024,
            max_committed_size_per_ready: 16 * 1024 * 1024,
            check_quorum: true,
            pre_vote: true,
            read_only: ReadOnlyOption::Safe,
            snapshot_timeout_tick: 50,
            applied: Index(0),
            seed: id.0,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id.is_none() {
            return Err(ConfigError::Invalid("id must not be 0".into()));
        }
        if self.heartbeat_tick == 0 {
            return Err(ConfigError::Invalid(
                "heartbeat_tick must be at least 1".into(),
            ));
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(ConfigError::Invalid(format!(
                "election_tick ({}) must be greater than heartbeat_tick ({})",
                self.election_tick, self.heartbeat_tick
            )));
        }
        if self.max_inflight_msgs == 0 {
            return Err(ConfigError::Invalid(
                "max_inflight_msgs must be at least 1".into(),
            ));
        }
        if self.read_only == ReadOnlyOption::LeaseBased && self.election_tick < 4 {
            return Err(ConfigError::Invalid(
                "lease-based reads need election_tick of at least 4 (the lease keeps a two-tick margin)".into(),
            ));
        }
        if self.read_only == ReadOnlyOption::LeaseBased && !self.check_quorum {
            return Err(ConfigError::Invalid(
                "lease-based reads need check_quorum: without it a deposed leader could serve stale reads"
                    .into(),
            ));
        }
        if self.snapshot_timeout_tick == 0 {
            return Err(ConfigError::Invalid(
                "snapshot_timeout_tick must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_refuses_unsafe_or_meaningless_settings() {
        let base = Config::new(NodeId(1));
        assert!(base.validate().is_ok());
        type Change = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Change)> = vec![
            ("id must not be 0", Box::new(|c| c.id = NodeId::NONE)),
            ("heartbeat_tick", Box::new(|c| c.heartbeat_tick = 0)),
            (
                "greater than heartbeat_tick",
                Box::new(|c| c.election_tick = c.heartbeat_tick),
            ),
            ("max_inflight_msgs", Box::new(|c| c.max_inflight_msgs = 0)),
            (
                "check_quorum",
                Box::new(|c| {
                    c.read_only = ReadOnlyOption::LeaseBased;
                    c.check_quorum = false;
                }),
            ),
            (
                "snapshot_timeout_tick",
                Box::new(|c| c.snapshot_timeout_tick = 0),
            ),
        ];
        for (needle, change) in cases {
            let mut c = base.clone();
            change(&mut c);
            match c.validate() {
                Err(ConfigError::Invalid(msg)) => {
                    assert!(msg.contains(needle), "{msg} should mention {needle}")
                }
                other => panic!("expected a refusal mentioning {needle}, got {other:?}"),
            }
        }
    }
}
