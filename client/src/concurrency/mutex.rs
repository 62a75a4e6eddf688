//! `Mutex`: a distributed lock over a `Session`, etcd's recipe: create
//! `prefix/<lease>` if absent, then wait until every key under the prefix
//! created before it is gone.

use nod_proto::etcd::etcdserverpb::DeleteRangeRequest;

use super::{create_once, first_key, wait_for_predecessors, Session};
use crate::{ClientError, Result};

pub struct Mutex<'s> {
    session: &'s Session,
    prefix: Vec<u8>,
    key: Vec<u8>,
    /// The create revision of our key, once locked.
    revision: i64,
}

impl<'s> Mutex<'s> {
    pub fn new(session: &'s Session, prefix: impl Into<Vec<u8>>) -> Mutex<'s> {
        let mut prefix = prefix.into();
        if !prefix.ends_with(b"/") {
            prefix.push(b'/');
        }
        let key = [
            prefix.as_slice(),
            format!("{:x}", session.lease()).as_bytes(),
        ]
        .concat();
        Mutex {
            session,
            prefix,
            key,
            revision: 0,
        }
    }

    /// Waits for the lock. On error our key is deleted, so no one waits
    /// behind a lock attempt that gave up.
    pub async fn lock(&mut self) -> Result<()> {
        let mut c = self.session.client().clone();
        let (revision, kv) = create_once(&mut c, &self.key, b"", self.session.lease()).await?;
        let mine = if kv.create_revision != 0 {
            kv.create_revision
        } else {
            revision
        };
        let owner = first_key(&mut c, &self.prefix).await?;
        if owner.is_some_and(|o| o.create_revision == mine) {
            self.revision = mine;
            return Ok(());
        }
        let waited = tokio::select! {
            r = wait_for_predecessors(&mut c, &self.prefix, mine) => r,
            _ = self.session.done() => Err(ClientError::LeaseLost(self.session.lease())),
        };
        if let Err(e) = waited {
            let _ = self.unlock().await;
            return Err(e);
        }
        self.revision = mine;
        Ok(())
    }

    /// Releases the lock (deletes our key).
    pub async fn unlock(&mut self) -> Result<()> {
        let mut c = self.session.client().clone();
        c.delete(DeleteRangeRequest {
            key: self.key.clone(),
            ..Default::default()
        })
        .await?;
        self.revision = 0;
        Ok(())
    }

    /// Our key; its create revision orders waiters (a fencing token).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The create revision of our key while locked, else 0.
    pub fn revision(&self) -> i64 {
        self.revision
    }
}
