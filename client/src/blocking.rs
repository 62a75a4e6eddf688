//! `blocking::Client`: the main calls without async, for scripts and
//! tests, over a `Client` and a tokio runtime the wrapper owns. Do not
//! call it from inside an async runtime (tokio refuses to block there).
//!
//! ```
//! let c = nod_client::blocking::Client::connect(&["127.0.0.1:1".to_string()]).unwrap();
//! // Nothing listens on port 1: the call fails, it does not hang.
//! let err = c
//!     .with_options(nod_client::CallOptions::default()
//!         .deadline(Some(std::time::Duration::from_millis(300))))
//!     .get("k")
//!     .unwrap_err();
//! assert!(err.to_string().contains("connect") || err.to_string().contains("healthy"), "{err}");
//! ```

use std::sync::Arc;
use std::time::Duration;

use nod_proto::etcd::etcdserverpb::*;
use nod_proto::etcd::mvccpb::KeyValue;

use crate::{CallOptions, Result};

#[derive(Clone)]
pub struct Client {
    runtime: Arc<tokio::runtime::Runtime>,
    inner: crate::Client,
}

impl Client {
    /// Connects lazily to every endpoint, with the default `CallOptions`.
    pub fn connect(endpoints: &[String]) -> Result<Client> {
        Self::from_builder(crate::Client::builder(endpoints.iter().cloned()))
    }

    pub fn from_builder(builder: crate::ClientBuilder) -> Result<Client> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| crate::ClientError::Protocol(format!("tokio runtime: {e}")))?;
        // Channels are made inside a runtime (their connections are tasks).
        let inner = {
            let _in_runtime = runtime.enter();
            builder.build()?
        };
        Ok(Client {
            runtime: Arc::new(runtime),
            inner,
        })
    }

    pub fn with_options(&self, options: CallOptions) -> Client {
        Client {
            runtime: self.runtime.clone(),
            inner: self.inner.with_options(options),
        }
    }

    /// The async client underneath (sharing endpoints and health).
    pub fn as_async(&self) -> &crate::Client {
        &self.inner
    }

    pub fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<PutResponse> {
        let req = PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        };
        self.runtime.block_on(self.inner.clone().put(req))
    }

    pub fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>> {
        self.runtime.block_on(self.inner.clone().get(key))
    }

    pub fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.runtime.block_on(self.inner.clone().range(req))
    }

    pub fn delete(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        self.runtime.block_on(self.inner.clone().delete(req))
    }

    pub fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        self.runtime.block_on(self.inner.clone().txn(req))
    }

    pub fn lease_grant(&self, ttl: Duration) -> Result<LeaseGrantResponse> {
        self.runtime
            .block_on(self.inner.clone().lease_grant(ttl.as_secs() as i64, 0))
    }

    pub fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse> {
        self.runtime.block_on(self.inner.clone().lease_revoke(id))
    }

    pub fn status(&self) -> Result<StatusResponse> {
        self.runtime.block_on(self.inner.clone().status())
    }

    pub fn member_list(&self) -> Result<MemberListResponse> {
        self.runtime.block_on(self.inner.clone().member_list())
    }
}
