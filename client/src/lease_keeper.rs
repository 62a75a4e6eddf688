//! `LeaseKeeper`: keeps a lease alive from a background task, sending
//! LeaseKeepAlive at a third of its TTL over a stream to the leader, and
//! reopening the stream elsewhere when it breaks. What it knows is on a
//! `watch` channel: `Alive` with the TTL the server last granted, or
//! `Lost` (the server said the lease is gone, or no renewal came within
//! the TTL, so it may have expired). `Lost` is final. The stream carries
//! the client's login token; one the server refuses is replaced before the
//! stream is reopened.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backoff::Jitter;
use crate::{CallOptions, Client};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Renewed; `ttl` seconds from the last renewal.
    Alive { ttl: i64 },
    /// Expired or revoked, or not renewed in time.
    Lost,
}

/// Keeps one lease alive until dropped (dropping stops the renewals; the
/// lease then expires on its own unless revoked).
pub struct LeaseKeeper {
    id: i64,
    state: watch::Receiver<LeaseState>,
    task: JoinHandle<()>,
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LeaseKeeper {
    /// Starts keeping lease `id`, granted with `ttl` seconds, alive.
    pub fn start(client: &Client, id: i64, ttl: i64) -> LeaseKeeper {
        let (tx, rx) = watch::channel(LeaseState::Alive { ttl });
        let task = tokio::spawn(keep(client.clone(), id, ttl, tx));
        LeaseKeeper {
            id,
            state: rx,
            task,
        }
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn state(&self) -> LeaseState {
        *self.state.borrow()
    }

    /// A receiver that sees every change (`changed().await`).
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// Waits until the lease is lost.
    pub async fn lost(&self) {
        let mut rx = self.state.clone();
        let _ = rx.wait_for(|s| *s == LeaseState::Lost).await;
    }
}

async fn keep(client: Client, id: i64, granted_ttl: i64, tx: watch::Sender<LeaseState>) {
    let mut jitter = Jitter::from_entropy();
    let mut ttl = Duration::from_secs(granted_ttl.max(1) as u64);
    // The lease is known alive until here.
    let mut expires = Instant::now() + ttl;
    let mut failures = 0u32;
    loop {
        let now = Instant::now();
        if now >= expires {
            let _ = tx.send(LeaseState::Lost);
            return;
        }
        let limit = expires - now;
        let c = client.with_options(
            CallOptions::default()
                .attempt_timeout(limit.min(Duration::from_secs(2)))
                .deadline(Some(limit)),
        );
        let ((req_tx, mut stream), token) = match c.open_keep_alive(id).await {
            Ok(s) => s,
            Err(_) => {
                failures += 1;
                let d = client.call_options().backoff.delay(failures, &mut jitter);
                tokio::time::sleep(d.min(limit)).await;
                continue;
            }
        };
        loop {
            let wait = expires.saturating_duration_since(Instant::now());
            let answer = match tokio::time::timeout(wait, stream.message()).await {
                Ok(Ok(Some(r))) => r,
                Ok(Err(s)) => {
                    // Reopened below with a new token if this one was refused.
                    client.token_rejected(&s, token.as_ref());
                    break;
                }
                _ => break, // ended, or no answer in time
            };
            if answer.ttl <= 0 {
                let _ = tx.send(LeaseState::Lost);
                return;
            }
            failures = 0;
            ttl = Duration::from_secs(answer.ttl as u64);
            expires = Instant::now() + ttl;
            tx.send_replace(LeaseState::Alive { ttl: answer.ttl });
            tokio::time::sleep(ttl / 3).await;
            if req_tx
                .send(nod_proto::etcd::etcdserverpb::LeaseKeepAliveRequest { id })
                .await
                .is_err()
            {
                break;
            }
        }
        failures += 1;
        let d = client.call_options().backoff.delay(failures, &mut jitter);
        tokio::time::sleep(d.min(expires.saturating_duration_since(Instant::now()))).await;
    }
}
