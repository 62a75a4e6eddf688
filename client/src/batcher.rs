//! `PutBatcher`: many small puts, one Txn each batch. Puts queue for at
//! most `linger` (or until `max_ops`, 128 like etcd's `--max-txn-ops`
//! default) and go as the success branch of one unconditional Txn; each
//! caller gets its own `PutResponse` (with the Txn's header). A key queued
//! twice ends the batch before its second put, since a Txn may name a key
//! once. A batch is one write: it is retried only when the client's rules
//! for a Txn allow (`retry.rs`), and a failure fails every put in it.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use nod_proto::etcd::etcdserverpb::{
    request_op, response_op, PutRequest, PutResponse, RequestOp, TxnRequest,
};

use crate::{Client, ClientError, Result};

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

#[derive(Clone, Debug)]
pub struct BatchOptions {
    pub max_ops: usize,
    pub linger: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_ops: MAX_TXN_OPS,
            linger: Duration::from_millis(2),
        }
    }
}

type Queued = (PutRequest, oneshot::Sender<Result<PutResponse>>);

/// Batches puts; cheap to clone. The batching task ends when every clone
/// is dropped, after sending what is queued.
#[derive(Clone)]
pub struct PutBatcher {
    tx: mpsc::Sender<Queued>,
    _task: std::sync::Arc<JoinHandle<()>>,
}

impl PutBatcher {
    pub fn new(client: &Client, options: BatchOptions) -> PutBatcher {
        let (tx, rx) = mpsc::channel(options.max_ops.max(1) * 4);
        let task = tokio::spawn(run(client.clone(), options, rx));
        PutBatcher {
            tx,
            _task: std::sync::Arc::new(task),
        }
    }

    pub async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((req, tx))
            .await
            .map_err(|_| ClientError::Protocol("put batcher stopped".into()))?;
        rx.await
            .map_err(|_| ClientError::Protocol("put batcher stopped".into()))?
    }
}

/// Splits queued puts into batches of at most `max_ops` with distinct keys,
/// in arrival order. Pure.
pub(crate) fn split(puts: &[PutRequest], max_ops: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut keys = HashSet::new();
    for (i, p) in puts.iter().enumerate() {
        if i - start == max_ops.max(1) || !keys.insert(&p.key) {
            out.push(start..i);
            start = i;
            keys.clear();
            keys.insert(&p.key);
        }
    }
    if start < puts.len() {
        out.push(start..puts.len());
    }
    out
}

fn copy_error(e: &ClientError) -> ClientError {
    match e {
        ClientError::Status(s) => ClientError::Status(s.clone()),
        other => ClientError::Protocol(other.to_string()),
    }
}

async fn run(client: Client, options: BatchOptions, mut rx: mpsc::Receiver<Queued>) {
    while let Some(first) = rx.recv().await {
        let mut queued = vec![first];
        let linger = tokio::time::sleep(options.linger);
        tokio::pin!(linger);
        while queued.len() < options.max_ops {
            tokio::select! {
                q = rx.recv() => match q {
                    Some(q) => queued.push(q),
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        let (puts, replies): (Vec<_>, Vec<_>) = queued.into_iter().unzip();
        let mut replies: Vec<Option<_>> = replies.into_iter().map(Some).collect();
        for range in split(&puts, options.max_ops) {
            let txn = TxnRequest {
                success: puts[range.clone()]
                    .iter()
                    .map(|p| RequestOp {
                        request: Some(request_op::Request::RequestPut(p.clone())),
                    })
                    .collect(),
                ..Default::default()
            };
            let mut c = client.clone();
            match c.txn(txn).await {
                Ok(r) => {
                    for (i, op) in range.clone().zip(r.responses) {
                        let put = match op.response {
                            Some(response_op::Response::ResponsePut(mut p)) => {
                                p.header = p.header.or(r.header);
                                Ok(p)
                            }
                            _ => Err(ClientError::Protocol(
                                "txn answered a put with no put".into(),
                            )),
                        };
                        if let Some(reply) = replies[i].take() {
                            let _ = reply.send(put);
                        }
                    }
                    for i in range {
                        if let Some(reply) = replies[i].take() {
                            let _ = reply
                                .send(Err(ClientError::Protocol("txn answer too short".into())));
                        }
                    }
                }
                Err(e) => {
                    for i in range {
                        if let Some(reply) = replies[i].take() {
                            let _ = reply.send(Err(copy_error(&e)));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> PutRequest {
        PutRequest {
            key: k.into(),
            ..Default::default()
        }
    }

    #[test]
    fn batches_hold_at_most_max_ops_and_never_one_key_twice() {
        let puts: Vec<_> = ["a", "b", "c", "a", "d", "e", "f", "g"].map(put).into();
        assert_eq!(split(&puts, 3), [0..3, 3..6, 6..8]);
        assert_eq!(split(&puts, 128), [0..3, 3..8]);
        assert_eq!(
            split(&puts[..1], 128),
            vec![std::ops::Range { start: 0, end: 1 }]
        );
        assert!(split(&[], 128).is_empty());
        let many: Vec<_> = (0..300).map(|i| put(&i.to_string())).collect();
        assert_eq!(split(&many, MAX_TXN_OPS), [0..128, 128..256, 256..300]);
    }
}
