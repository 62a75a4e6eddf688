//! Corruption checks (etcd's `corrupt.go`): members compare `HashKV`
//! digests of their key history at one revision. Every member applies the
//! same log, so at one revision and one compaction point their digests
//! match; a difference means a member's data changed under it (a bad disk,
//! a bug, a hand edit).
//!
//! - On start (`--initial-corrupt-check`), before serving clients, a
//!   member asks the others for their digest at its own revision and
//!   refuses to start if one differs.
//! - Periodically (`--corrupt-check-time`), the leader asks every member
//!   for its digest at the leader's revision and raises the replicated
//!   CORRUPT alarm for each member that differs (for itself if most
//!   members agree with each other and not with it). While the alarm is
//!   active every member refuses writes with "etcdserver: corrupt
//!   cluster"; an operator restores the member from its peers or a backup
//!   and disarms the alarm.
//!
//! A member that is behind (it has not applied the revision yet) is asked
//! again a few times, then left out; one whose history was compacted at a
//! different point cannot be compared and is left out. Unreachable
//! members are left out with a warning, as etcd does.

use std::time::Duration;

use futures::future::join_all;
use nod_raft::Role;
use tonic::{Code, Request};

use super::node::Node;
use crate::storage::ReadError;
use nod_proto::etcd::etcdserverpb::alarm_request::AlarmAction;
use nod_proto::etcd::etcdserverpb::maintenance_client::MaintenanceClient;
use nod_proto::etcd::etcdserverpb::{AlarmRequest, AlarmType, HashKvRequest};

/// How often a member that has not reached the revision is asked again.
const BEHIND_RETRIES: u32 = 5;
const BEHIND_WAIT: Duration = Duration::from_millis(200);

/// Why a check could not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptionError {
    #[error("hashing the local store: {0}")]
    Local(#[from] ReadError),
    #[error(
        "{member:x} found data inconsistency with peers: at revision {revision} this member's hash is {hash}, {peers}"
    )]
    Mismatch {
        member: u64,
        revision: i64,
        hash: u32,
        /// Each member that differs, with its hash.
        peers: String,
    },
}

/// One member's digest at a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    pub member: u64,
    pub hash: u32,
    pub compacted: i64,
}

/// What a comparison found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The members whose data is judged corrupt.
    pub corrupt: Vec<u64>,
    /// Members whose digest was compared (this one excluded).
    pub compared: usize,
}

/// Compares `ours` (this member's digest) with the peers' at the same
/// revision. Only digests at the same compaction point are comparable.
/// A peer that differs is corrupt, unless most compared members agree
/// with each other against us: then we are.
pub fn judge(ours: Digest, peers: &[Digest]) -> Verdict {
    let comparable: Vec<&Digest> = peers
        .iter()
        .filter(|p| p.compacted == ours.compacted)
        .collect();
    let differ: Vec<&Digest> = comparable
        .iter()
        .copied()
        .filter(|p| p.hash != ours.hash)
        .collect();
    let agree = comparable.len() - differ.len() + 1;
    // The largest group of peers that agree with each other and not us.
    let mut best = 0;
    for d in &differ {
        best = best.max(differ.iter().filter(|o| o.hash == d.hash).count());
    }
    let corrupt = if !differ.is_empty() && best > agree {
        vec![ours.member]
    } else {
        differ.iter().map(|d| d.member).collect()
    };
    Verdict {
        corrupt,
        compared: comparable.len(),
    }
}

/// This member's digest at `revision` (0: its current one), and the
/// revision it is at.
fn local_digest(node: &Node, revision: i64) -> Result<(Digest, i64), CorruptionError> {
    let store = node.shared.store();
    let (hash, rev) = store.hash_kv(revision)?;
    Ok((
        Digest {
            member: node.shared.member_id,
            hash,
            compacted: store.compacted_revision(),
        },
        rev,
    ))
}

/// Every other member's digest at `revision`, from those that answer.
async fn peer_digests(node: &Node, revision: i64) -> Vec<Digest> {
    let me = node.shared.member_id;
    let members: Vec<u64> = node
        .shared
        .store()
        .members()
        .iter()
        .map(|m| m.id)
        .filter(|&id| id != me)
        .collect();
    let asks = members.into_iter().map(|id| async move {
        let ch = node.peer_channel(id)?;
        let mut client = MaintenanceClient::new(ch);
        for _ in 0..BEHIND_RETRIES {
            let call = client.hash_kv(Request::new(HashKvRequest { revision }));
            match tokio::time::timeout(node.request_timeout, call).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    return Some(Digest {
                        member: id,
                        hash: r.hash,
                        compacted: r.compact_revision,
                    });
                }
                // Behind: it has not applied `revision` yet.
                Ok(Err(s)) if s.code() == Code::OutOfRange && s.message().contains("future") => {
                    tokio::time::sleep(BEHIND_WAIT).await;
                }
                Ok(Err(s)) => {
                    tracing::warn!(
                        member = format!("{id:x}"),
                        error = %s.message(),
                        "corruption check: cannot get the member's hash"
                    );
                    return None;
                }
                Err(_) => {
                    tracing::warn!(
                        member = format!("{id:x}"),
                        "corruption check: the member did not answer"
                    );
                    return None;
                }
            }
        }
        None
    });
    join_all(asks).await.into_iter().flatten().collect()
}

/// `--initial-corrupt-check`: this member's digest against the others' at
/// its own revision; an error names the members that differ.
pub async fn initial_check(node: &Node) -> Result<(), CorruptionError> {
    let (ours, rev) = local_digest(node, 0)?;
    let peers = peer_digests(node, rev).await;
    let differ: Vec<&Digest> = peers
        .iter()
        .filter(|p| p.compacted == ours.compacted && p.hash != ours.hash)
        .collect();
    if differ.is_empty() {
        tracing::info!(
            revision = rev,
            compared = peers
                .iter()
                .filter(|p| p.compacted == ours.compacted)
                .count(),
            "initial corruption check passed"
        );
        return Ok(());
    }
    let peers: Vec<String> = differ
        .iter()
        .map(|d| format!("member {:x} has hash {}", d.member, d.hash))
        .collect();
    Err(CorruptionError::Mismatch {
        member: ours.member,
        revision: rev,
        hash: ours.hash,
        peers: peers.join(", "),
    })
}

/// One periodic check, on the leader: raises CORRUPT for each member
/// judged corrupt. Answers the verdict (`None`: not the leader, or
/// nothing to compare).
pub async fn periodic_check(node: &Node) -> Option<Verdict> {
    if node.shared.status().role != Some(Role::Leader) {
        return None;
    }
    let (ours, rev) = match local_digest(node, 0) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "corruption check skipped");
            return None;
        }
    };
    let peers = peer_digests(node, rev).await;
    let verdict = judge(ours, &peers);
    for &member in &verdict.corrupt {
        tracing::error!(
            member = format!("{member:x}"),
            revision = rev,
            "corruption check: hashes differ; raising the CORRUPT alarm"
        );
        let req = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: member,
            alarm: AlarmType::Corrupt as i32,
        };
        if let Err(e) = node.own_alarm(req).await {
            tracing::warn!(error = %e.message(), "raising the CORRUPT alarm failed");
        }
    }
    Some(verdict)
}

/// Runs `periodic_check` every `every` until `stop`.
pub async fn run_periodic(
    node: std::sync::Arc<Node>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        periodic_check(&node).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(member: u64, hash: u32) -> Digest {
        Digest {
            member,
            hash,
            compacted: 0,
        }
    }

    #[test]
    fn the_odd_member_out_is_judged_corrupt() {
        let v = judge(d(1, 7), &[d(2, 7), d(3, 9)]);
        assert_eq!(v.corrupt, vec![3]);
        assert_eq!(v.compared, 2);
        assert!(judge(d(1, 7), &[d(2, 7), d(3, 7)]).corrupt.is_empty());
    }

    #[test]
    fn a_leader_the_others_outvote_blames_itself() {
        assert_eq!(judge(d(1, 5), &[d(2, 7), d(3, 7)]).corrupt, vec![1]);
        // Two members against each other and us: no majority, blame both.
        assert_eq!(judge(d(1, 5), &[d(2, 7), d(3, 9)]).corrupt, vec![2, 3]);
        // Two against two is no majority either.
        assert_eq!(
            judge(d(1, 5), &[d(2, 5), d(3, 7), d(4, 7)]).corrupt,
            vec![3, 4]
        );
    }

    #[test]
    fn digests_at_another_compaction_point_are_not_compared() {
        let other = Digest {
            compacted: 4,
            ..d(2, 9)
        };
        let v = judge(d(1, 7), &[other]);
        assert!(v.corrupt.is_empty());
        assert_eq!(v.compared, 0);
    }
}
