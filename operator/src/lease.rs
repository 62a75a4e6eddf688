//! Leader election on a `coordination.k8s.io` Lease, so two operator
//! replicas never reconcile at once. Optimistic concurrency (the Lease's
//! resourceVersion) decides races.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
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
        }
    }

    pub fn duration(&self) -> Duration {
        self.duration
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
                let held_for = SignedDuration::from_secs(i64::from(
                    spec.lease_duration_seconds.unwrap_or(secs),
                ));
                let expired = match &spec.renew_time {
                    Some(MicroTime(t)) => t.checked_add(held_for).map_or(true, |end| end < now),
                    None => true,
                };
                if !mine && !expired && spec.holder_identity.is_some() {
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
}
