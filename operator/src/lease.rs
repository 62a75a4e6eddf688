//! Leader election on a `coordination.k8s.io` Lease, so two operator
//! replicas never reconcile at once. Optimistic concurrency (the Lease's
//! resourceVersion) decides races.
//!
//! Two rules keep it sound, both client-go's:
//! - A replica judges another's lease by its own clock: the lease is
//!   expired when its record has not changed for a full lease duration
//!   since this replica first saw it so, never by comparing the holder's
//!   `renewTime` with the local time (the clocks may disagree by more than
//!   a lease).
//! - The holder stops acting before anyone else may start: it renews every
//!   `retry_period`, bounds each attempt by the time left, and gives up
//!   once no renewal has succeeded for `renew_deadline` (two thirds of the
//!   lease), measured from the start of the last successful attempt, which
//!   is before any other replica can have seen that renewal.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// Another holder's record (holder, resourceVersion, renewTime) as last
    /// seen, and when this replica first saw it.
    observed: Mutex<Option<(String, Instant)>>,
}

/// Why a holder stopped holding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseLost {
    #[error("another replica holds the lease now")]
    TakenOver,
    #[error("no renewal succeeded within {0:?}; the lease may lapse")]
    RenewDeadlinePassed(Duration),
}

impl LeaseLock {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
            observed: Mutex::new(None),
        }
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// How long the holder keeps acting without a successful renewal: two
    /// thirds of the lease, leaving a third for clock rates and the last
    /// in-flight call.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// How often the holder renews: several tries fit in the deadline.
    pub fn retry_period(&self) -> Duration {
        self.duration / 7
    }

    /// Waits until this replica holds the lease; returns when the winning
    /// attempt started (the holder's deadlines count from there).
    pub async fn acquire(&self) -> Instant {
        loop {
            let started = Instant::now();
            match tokio::time::timeout(self.renew_deadline(), self.try_acquire()).await {
                Ok(Ok(true)) => return started,
                Ok(Ok(false)) => {
                    tracing::info!(lease = %self.name, "another replica leads; waiting")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "lease"),
                Err(_) => tracing::warn!(lease = %self.name, "taking the lease timed out"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    /// Renews the lease, taken at `acquired`, until it cannot; the caller
    /// must stop acting the moment this returns.
    pub async fn keep_renewing(&self, acquired: Instant) -> LeaseLost {
        let mut last_renewed = acquired;
        loop {
            let deadline = last_renewed + self.renew_deadline();
            // Never past the deadline, so a failed renewal is noticed at
            // the deadline and not a retry period after it.
            tokio::time::sleep_until((Instant::now() + self.retry_period()).min(deadline)).await;
            let started = Instant::now();
            if started >= deadline {
                return LeaseLost::RenewDeadlinePassed(self.renew_deadline());
            }
            // A hung call must not outlive the deadline: without this
            // bound a replica could act on past its lease.
            match tokio::time::timeout_at(deadline, self.try_acquire()).await {
                Ok(Ok(true)) => last_renewed = started,
                Ok(Ok(false)) => return LeaseLost::TakenOver,
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the lease"),
                Err(_) => return LeaseLost::RenewDeadlinePassed(self.renew_deadline()),
            }
        }
    }

    /// Takes or renews the lease. `Ok(true)`: this replica holds it now.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let secs = self.duration.as_secs().max(1) as i32;
        match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let spec = lease.spec.clone().unwrap_or_default();
                let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
                if !mine && spec.holder_identity.is_some() && !self.expired(&lease) {
                    return Ok(false);
                }
                let mut next = spec.clone();
                if !mine {
                    next.acquire_time = Some(MicroTime(now));
                    next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                next.holder_identity = Some(self.identity.clone());
                next.lease_duration_seconds = Some(secs);
                next.renew_time = Some(MicroTime(now));
                lease.spec = Some(next);
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Has another replica's lease gone unrenewed for its whole duration,
    /// by this replica's clock?
    fn expired(&self, lease: &Lease) -> bool {
        let spec = lease.spec.clone().unwrap_or_default();
        let record = format!(
            "{:?}/{:?}/{:?}",
            spec.holder_identity,
            lease.metadata.resource_version,
            spec.renew_time.map(|t| t.0)
        );
        let held_for = Duration::from_secs(
            spec.lease_duration_seconds
                .unwrap_or(self.duration.as_secs() as i32)
                .max(1) as u64,
        );
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match &*observed {
            Some((seen, since)) if *seen == record => since.elapsed() >= held_for,
            _ => {
                // A new record (or the first look): its holder renewed, as
                // far as this replica can tell, just now.
                *observed = Some((record, Instant::now()));
                false
            }
        }
    }
}
