//! `Session`: a lease granted with a TTL and kept alive by a `LeaseKeeper`
//! until closed or dropped, as etcd's `concurrency.Session`.

use crate::{Client, LeaseKeeper, LeaseState, Result};

pub struct Session {
    client: Client,
    keeper: LeaseKeeper,
}

impl Session {
    /// Grants a lease of `ttl` seconds and keeps it alive.
    pub async fn new(client: &Client, ttl: i64) -> Result<Session> {
        let mut c = client.clone();
        let granted = c.lease_grant(ttl, 0).await?;
        Ok(Session {
            keeper: LeaseKeeper::start(client, granted.id, granted.ttl),
            client: client.clone(),
        })
    }

    pub fn lease(&self) -> i64 {
        self.keeper.id()
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn is_alive(&self) -> bool {
        self.keeper.state() != LeaseState::Lost
    }

    /// Resolves when the lease is lost (expired, revoked, not renewed).
    pub async fn done(&self) {
        self.keeper.lost().await;
    }

    /// Stops renewing and revokes the lease: every key under it goes.
    pub async fn close(self) -> Result<()> {
        let id = self.keeper.id();
        let mut c = self.client.clone();
        drop(self.keeper);
        c.lease_revoke(id).await.map(|_| ())
    }
}
