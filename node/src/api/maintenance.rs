//! The etcd Maintenance service: Status, Alarm (replicated: list, raise,
//! clear), Defragment (a full RocksDB compaction of this member's store),
//! Snapshot (a backup stream of the whole key space), MoveLeader, Hash and
//! HashKV.

use std::sync::Arc;

use nod_raft::{NodeId, Role};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::cluster::wait_for_leader_change;
use super::etcd::etcdserverpb::alarm_request::AlarmAction;
use super::etcd::etcdserverpb::maintenance_client::MaintenanceClient;
use super::etcd::etcdserverpb::maintenance_server::Maintenance;
use super::etcd::etcdserverpb::{AlarmMember, AlarmType};
use super::etcd::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use super::status::{kv_status, to_status, BAD_TRANSFEREE};
use crate::command::Op;
use crate::server::driver::Outcome;
use crate::server::node::{Node, Route};
use crate::storage::backend::rocks;

/// The etcd version whose API and behaviour Nod matches; clients gate
/// features on it. The 3.5 API (no 3.6-only calls such as Downgrade), and
/// 3.5.13 because that is the first release whose watch progress
/// (`RequestProgress` answered in order with the events, progress
/// notifications only for synced watchers) kube-apiserver trusts: from
/// 3.5.13 on it serves consistent reads from its watch cache and offers
/// watch-list. Nod's watch streams keep that order (history and progress
/// go through one channel per stream; see `api/watch.rs`).
pub const ETCD_VERSION: &str = "3.5.13";
/// Bytes per snapshot message (etcd's).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

pub struct MaintenanceService {
    pub node: Arc<Node>,
    /// Member health, for Status's errors on the leader.
    pub autopilot: Option<Arc<crate::server::autopilot::Autopilot>>,
}

/// An alarm as etcd's Status errors name it (its Go text form).
pub fn alarm_text(a: &AlarmMember) -> String {
    let kind = AlarmType::try_from(a.alarm)
        .map(|t| t.as_str_name())
        .unwrap_or("UNKNOWN");
    format!("memberID:{} alarm:{kind} ", a.member_id)
}

impl MaintenanceService {
    /// On the leader: one line per member it has not heard from lately
    /// (etcdctl endpoint status shows them in its ERRORS column).
    /// Refuses a caller without the root role once auth is on (etcd's
    /// rule for defragment, snapshot, hash and move-leader).
    async fn admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let ctx = self.node.ctx(request).await?;
        self.node.authorize(|a| a.check_admin(&ctx.caller))
    }

    fn unhealthy_members(&self, leader: u64) -> Vec<String> {
        let Some(a) = &self.autopilot else {
            return Vec::new();
        };
        if leader != self.node.shared.member_id {
            return Vec::new();
        }
        a.last_health()
            .unwrap_or_default()
            .iter()
            .filter(|m| !m.healthy)
            .map(|m| {
                format!(
                    "member {:x} ({}) unreachable for {}s",
                    m.id,
                    m.name,
                    m.unhealthy_ms / 1000
                )
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// Through the log, as etcd does, so a list is linearizable and a
    /// change reaches every member in order.
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        let req = request.into_inner();
        if AlarmAction::try_from(req.action).is_err() || AlarmType::try_from(req.alarm).is_err() {
            return Err(Status::invalid_argument(
                "etcdserver: unknown alarm action or type",
            ));
        }
        match self.node.propose(Op::Alarm(req), &ctx).await {
            Route::Forward(ch) => {
                MaintenanceClient::new(ch)
                    .alarm(Node::forward_request(req, &ctx))
                    .await
            }
            Route::Done(Err(s)) => Err(s),
            Route::Done(Ok(a)) => match a.outcome {
                Outcome::Alarms(alarms) => {
                    if req.action == AlarmAction::Deactivate as i32 && !alarms.is_empty() {
                        tracing::info!(
                            member = format!("{:x}", req.member_id),
                            alarm = req.alarm,
                            "alarm disarmed"
                        );
                    }
                    // etcd's answer carries no header.
                    Ok(Response::new(AlarmResponse {
                        header: None,
                        alarms,
                    }))
                }
                _ => Err(Status::internal("etcdserver: unexpected apply result")),
            },
        }
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let st = self.node.shared.status();
        let store = self.node.shared.store();
        let db_size = store.db_size();
        let db_size_in_use = store.db_size_in_use();
        // etcd lists every active alarm among a member's errors.
        let alarms: Vec<String> = store.alarms().iter().map(alarm_text).collect();
        let is_learner = store
            .member(self.node.shared.member_id)
            .is_some_and(|m| m.is_learner);
        let revision = store.current_revision();
        drop(store);
        self.node.shared.metrics.db_size.set(db_size);
        self.node.shared.metrics.db_size_in_use.set(db_size_in_use);
        Ok(Response::new(StatusResponse {
            header: Some(self.node.header(revision)),
            version: ETCD_VERSION.into(),
            db_size,
            leader: st.leader,
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors: st
                .fatal
                .into_iter()
                .chain(self.unhealthy_members(st.leader))
                .chain(alarms)
                .collect(),
            db_size_in_use,
            is_learner,
        }))
    }

    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.admin(&request).await?;
        // Off the store's lock: a compaction takes seconds on a large
        // store, and reads and writes go on beside it.
        let db = self.node.shared.store().db_handle();
        let started = std::time::Instant::now();
        let (before, after) = tokio::task::spawn_blocking(move || rocks::defragment(&db))
            .await
            .map_err(|e| Status::internal(format!("etcdserver: defragment failed: {e}")))?;
        // The quota check reads the new size at once, not a cached one.
        self.node.forget_quota_size();
        let metrics = &self.node.shared.metrics;
        metrics.db_size.set(after.total as i64);
        metrics.db_size_in_use.set(after.in_use as i64);
        metrics
            .defrag_reclaimed
            .inc_by(before.total.saturating_sub(after.total));
        tracing::info!(
            before = before.total,
            after = after.total,
            reclaimed = before.total.saturating_sub(after.total),
            took_ms = started.elapsed().as_millis() as u64,
            "defragmented the store"
        );
        // etcd's answer carries no header.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.admin(&request).await?;
        let store = self.node.shared.store();
        let (hash, rev) = store.hash_kv(0).map_err(kv_status)?;
        Ok(Response::new(HashResponse {
            header: Some(self.node.header(rev)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.admin(&request).await?;
        let store = self.node.shared.store();
        let (hash, rev) = store
            .hash_kv(request.get_ref().revision)
            .map_err(kv_status)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.node.header(rev)),
            hash,
            compact_revision: store.compacted_revision(),
        }))
    }

    type SnapshotStream = ReceiverStream<Result<SnapshotResponse, Status>>;

    /// etcd's snapshot: the store as a bbolt file of etcd's buckets
    /// (`storage::kv_store::etcd_snapshot`), in 32 KiB chunks whose
    /// `remaining_bytes` count down to 0, then its SHA-256 as a last
    /// message, as etcd sends it; etcdctl and etcd read it.
    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.admin(&request).await?;
        let (file, revision) = {
            let store = self.node.shared.store();
            (
                store.etcd_snapshot().map_err(kv_status)?,
                store.current_revision(),
            )
        };
        let header = self.node.header(revision);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let (db, sum) = file.split_at(file.len() - 32);
            let mut sent = 0;
            for chunk in db.chunks(SNAPSHOT_CHUNK) {
                sent += chunk.len();
                let m = SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: (db.len() - sent) as u64,
                    blob: chunk.to_vec(),
                };
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
            }
            let last = SnapshotResponse {
                header: Some(header),
                remaining_bytes: 0,
                blob: sum.to_vec(),
            };
            let _ = tx.send(Ok(last)).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.admin(&request).await?;
        let target = request.into_inner().target_id;
        let st = self.node.driver.raft_status().await.map_err(to_status)?;
        if st.role != Role::Leader {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        if !st.conf_state.is_voter(NodeId(target)) {
            return Err(Status::failed_precondition(BAD_TRANSFEREE));
        }
        if target != st.id.0 {
            self.node
                .driver
                .transfer_leader(NodeId(target))
                .await
                .map_err(to_status)?;
            wait_for_leader_change(&self.node, st.id.0).await;
            if self.node.shared.status().leader != target {
                return Err(Status::unavailable(
                    "etcdserver: request timed out, leader transfer took too long",
                ));
            }
        }
        // etcd's answer carries no header.
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }

    async fn downgrade(
        &self,
        _request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: downgrade is not supported by nod",
        ))
    }
}
