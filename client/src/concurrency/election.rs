//! `Election`: leader election over a `Session`, etcd's recipe. Campaign
//! creates `prefix/<lease>` with the candidate's value and waits until it
//! is the oldest key under the prefix; the leader proclaims new values on
//! its key and resigns by deleting it; `observe` follows who leads.

use nod_proto::etcd::etcdserverpb::{
    compare, request_op, Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
};
use nod_proto::etcd::mvccpb::KeyValue;
use tokio::sync::mpsc;

use super::{create_once, first_key, wait_for_predecessors, Session};
use crate::{Client, ClientError, KeySpan, WatchOptions};

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("election: not leader")]
    NotLeader,
    #[error("election: no leader")]
    NoLeader,
    #[error(transparent)]
    Client(#[from] ClientError),
}

pub struct Election<'s> {
    session: &'s Session,
    prefix: Vec<u8>,
    key: Vec<u8>,
    /// Our key's create revision while we campaign or lead, else 0.
    revision: i64,
}

impl<'s> Election<'s> {
    pub fn new(session: &'s Session, prefix: impl Into<Vec<u8>>) -> Election<'s> {
        let mut prefix = prefix.into();
        if !prefix.ends_with(b"/") {
            prefix.push(b'/');
        }
        let key = [
            prefix.as_slice(),
            format!("{:x}", session.lease()).as_bytes(),
        ]
        .concat();
        Election {
            session,
            prefix,
            key,
            revision: 0,
        }
    }

    /// Waits until we lead, with `value` proclaimed.
    pub async fn campaign(&mut self, value: impl Into<Vec<u8>>) -> Result<(), ElectionError> {
        let value = value.into();
        let mut c = self.session.client().clone();
        let (revision, kv) = create_once(&mut c, &self.key, &value, self.session.lease()).await?;
        self.revision = if kv.create_revision != 0 {
            kv.create_revision
        } else {
            revision
        };
        if kv.value != value {
            self.proclaim(value).await?;
        }
        let waited = tokio::select! {
            r = wait_for_predecessors(&mut c, &self.prefix, self.revision) => r,
            _ = self.session.done() => Err(ClientError::LeaseLost(self.session.lease())),
        };
        if let Err(e) = waited {
            let _ = self.resign().await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Sets a new value while leading; `NotLeader` if our key is gone.
    pub async fn proclaim(&mut self, value: impl Into<Vec<u8>>) -> Result<(), ElectionError> {
        if self.revision == 0 {
            return Err(ElectionError::NotLeader);
        }
        let mut c = self.session.client().clone();
        let r = c
            .txn(TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Create as i32,
                    key: self.key.clone(),
                    target_union: Some(compare::TargetUnion::CreateRevision(self.revision)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: self.key.clone(),
                        value: value.into(),
                        lease: self.session.lease(),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            })
            .await?;
        if !r.succeeded {
            self.revision = 0;
            return Err(ElectionError::NotLeader);
        }
        Ok(())
    }

    /// Gives up leading (or campaigning): deletes our key.
    pub async fn resign(&mut self) -> Result<(), ElectionError> {
        if self.revision == 0 {
            return Ok(());
        }
        let mut c = self.session.client().clone();
        c.delete(DeleteRangeRequest {
            key: self.key.clone(),
            ..Default::default()
        })
        .await?;
        self.revision = 0;
        Ok(())
    }

    /// The current leader's key and value.
    pub async fn leader(&self) -> Result<KeyValue, ElectionError> {
        let mut c = self.session.client().clone();
        first_key(&mut c, &self.prefix)
            .await?
            .ok_or(ElectionError::NoLeader)
    }

    /// Follows the leadership: sends the leader's key and value each time
    /// it changes (`None`: no leader), until the receiver is dropped.
    pub async fn observe(&self) -> Result<mpsc::Receiver<Option<KeyValue>>, ElectionError> {
        observe(self.session.client().clone(), self.prefix.clone()).await
    }
}

/// `Election::observe` for any client, without a session.
pub async fn observe(
    client: Client,
    prefix: Vec<u8>,
) -> Result<mpsc::Receiver<Option<KeyValue>>, ElectionError> {
    let mut watcher = client
        .watcher(
            prefix.clone(),
            WatchOptions {
                span: KeySpan::Prefix,
                ..Default::default()
            },
        )
        .await?;
    let (tx, rx) = mpsc::channel(16);
    let mut c = client.clone();
    let mut last: Option<(Vec<u8>, Vec<u8>, i64)> = None;
    let first = first_key(&mut c, &prefix).await?;
    tokio::spawn(async move {
        let mut current = first;
        loop {
            let now = current
                .as_ref()
                .map(|kv| (kv.key.clone(), kv.value.clone(), kv.create_revision));
            if now != last {
                last = now;
                if tx.send(current.clone()).await.is_err() {
                    return;
                }
            }
            match watcher.next().await {
                Some(Ok(_)) => {}
                _ => return,
            }
            current = match first_key(&mut c, &prefix).await {
                Ok(kv) => kv,
                Err(_) => return,
            };
        }
    });
    Ok(rx)
}
