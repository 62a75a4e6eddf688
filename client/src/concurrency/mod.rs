//! Recipes over leases, as etcd's Go `concurrency` package: `Session` (a
//! lease kept alive), `Mutex` and `Election`. Each participant owns the key
//! `prefix/<lease id in hex>`, created under its session's lease; the key
//! with the lowest create revision holds the lock (or leads), and each
//! waiter watches only the key just before its own, so a release wakes one
//! waiter. A holder that dies stops renewing its lease; the lease expires,
//! its key goes, and the next waiter proceeds.

mod election;
mod mutex;
mod session;

pub use election::{Election, ElectionError};
pub use mutex::Mutex;
pub use session::Session;

use nod_proto::etcd::etcdserverpb::{
    compare, range_request, request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use nod_proto::etcd::mvccpb::{event::EventType, KeyValue};

use crate::{prefix_end, Client, KeySpan, Result, WatchOptions};

/// Creates `key` under `lease` unless it exists; answers its create
/// revision and current value. Safe to repeat, so retried like a read.
async fn create_once(
    client: &mut Client,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<(i64, KeyValue)> {
    let txn = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: key.to_vec(),
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                lease,
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
        }],
    };
    let r = client.txn_idempotent(txn).await?;
    let revision = r.header.as_ref().map_or(0, |h| h.revision);
    if r.succeeded {
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease,
        };
        return Ok((revision, kv));
    }
    let kv = r
        .responses
        .into_iter()
        .find_map(|op| match op.response {
            Some(nod_proto::etcd::etcdserverpb::response_op::Response::ResponseRange(rr)) => {
                rr.kvs.into_iter().next()
            }
            _ => None,
        })
        .unwrap_or_default();
    Ok((revision, kv))
}

/// The key under `prefix` with the lowest create revision (the holder or
/// leader), if any.
async fn first_key(client: &mut Client, prefix: &[u8]) -> Result<Option<KeyValue>> {
    let r = client
        .range(RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            limit: 1,
            sort_order: range_request::SortOrder::Ascend as i32,
            sort_target: range_request::SortTarget::Create as i32,
            ..Default::default()
        })
        .await?;
    Ok(r.kvs.into_iter().next())
}

/// Waits until no key under `prefix` has a create revision below
/// `revision`: each time, watches the newest such key until it is deleted.
async fn wait_for_predecessors(client: &mut Client, prefix: &[u8], revision: i64) -> Result<()> {
    loop {
        let r = client
            .range(RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                limit: 1,
                sort_order: range_request::SortOrder::Descend as i32,
                sort_target: range_request::SortTarget::Create as i32,
                max_create_revision: revision - 1,
                ..Default::default()
            })
            .await?;
        let Some(last) = r.kvs.into_iter().next() else {
            return Ok(());
        };
        let at = r.header.map_or(0, |h| h.revision);
        let mut w = client
            .watcher(
                last.key.clone(),
                WatchOptions {
                    span: KeySpan::Single,
                    start_revision: at + 1,
                    no_put: true,
                    ..Default::default()
                },
            )
            .await?;
        'deleted: while let Some(batch) = w.next().await {
            for e in batch?.events {
                if e.r#type == EventType::Delete as i32 {
                    break 'deleted;
                }
            }
        }
    }
}
