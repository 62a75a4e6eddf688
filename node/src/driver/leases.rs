//! Lease deadlines, kept by the leader only: renewed on keep-alive, reset
//! to a full TTL when a member becomes leader (etcd's Promote), and, when
//! one runs out, a revoke proposed through the log so expiry is decided
//! once and applied everywhere in the same order. Time is what the adapter
//! gives (`now`, since the driver started). No I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::storage::kv_store::LeaseRecord;
use crate::storage::KvError;

use super::request::DriverError;

/// A revoke proposed and not yet applied is proposed again after this long.
const REVOKE_RETRY: Duration = Duration::from_secs(3);
/// Most revokes proposed in one tick.
const REVOKES_PER_TICK: usize = 64;

#[derive(Default)]
pub(crate) struct Leases {
    deadlines: BTreeMap<i64, Duration>,
    revoking: BTreeMap<i64, Duration>,
}

fn ttl(rec: &LeaseRecord) -> Duration {
    Duration::from_secs(rec.ttl.max(0) as u64)
}

impl Leases {
    /// This member became leader: every lease gets a full TTL from now.
    pub fn promote<'a>(
        &mut self,
        now: Duration,
        leases: impl Iterator<Item = (&'a i64, &'a LeaseRecord)>,
    ) {
        self.deadlines = leases.map(|(id, rec)| (*id, now + ttl(rec))).collect();
    }

    /// This member stopped leading: the new leader keeps the deadlines.
    pub fn demote(&mut self) {
        self.deadlines.clear();
        self.revoking.clear();
    }

    pub fn granted(&mut self, id: i64, ttl_secs: i64, now: Duration) {
        self.deadlines
            .insert(id, now + Duration::from_secs(ttl_secs.max(0) as u64));
    }

    pub fn revoked(&mut self, id: i64) {
        self.deadlines.remove(&id);
        self.revoking.remove(&id);
    }

    /// Renews lease `id` (record `rec`, if it exists) for a keep-alive; a
    /// lease past its deadline is as good as revoked (etcd's Renew).
    pub fn keep_alive(
        &mut self,
        id: i64,
        rec: Option<&LeaseRecord>,
        now: Duration,
    ) -> Result<i64, DriverError> {
        let expired =
            self.revoking.contains_key(&id) || self.deadlines.get(&id).is_some_and(|d| *d <= now);
        match rec {
            Some(_) if expired => Err(DriverError::Kv(KvError::LeaseNotFound)),
            None => Err(DriverError::Kv(KvError::LeaseNotFound)),
            Some(rec) => {
                self.deadlines.insert(id, now + ttl(rec));
                Ok(rec.ttl)
            }
        }
    }

    /// (remaining seconds, granted TTL); etcd rounds the remaining time up
    /// to whole seconds.
    pub fn time_to_live(
        &self,
        id: i64,
        rec: Option<&LeaseRecord>,
        now: Duration,
    ) -> Result<(i64, i64), DriverError> {
        let rec = rec.ok_or(DriverError::Kv(KvError::LeaseNotFound))?;
        let left = self
            .deadlines
            .get(&id)
            .map(|d| d.saturating_sub(now))
            .unwrap_or_default();
        Ok((left.as_millis().div_ceil(1000) as i64, rec.ttl))
    }

    /// Leases whose deadline passed and that are not being revoked (or whose
    /// revoke is overdue), oldest id first, at most a tick's worth.
    pub fn expired(&self, now: Duration) -> Vec<i64> {
        self.deadlines
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, _)| *id)
            .filter(|id| {
                self.revoking
                    .get(id)
                    .is_none_or(|t| now.saturating_sub(*t) > REVOKE_RETRY)
            })
            .take(REVOKES_PER_TICK)
            .collect()
    }

    pub fn revoke_proposed(&mut self, id: i64, now: Duration) {
        self.revoking.insert(id, now);
    }
}
