//! Nod's own services beyond etcd's API: secondary indexes and queries
//! over JSON values (`proto/nod/query.proto`, docs/query.md). Declaring
//! and dropping an index go to the leader and are not sent again after an
//! unknown outcome (a repeat would answer "already exists" or "not
//! found", which would hide what happened); listings and queries are
//! reads, sent to any member and retried as reads are.

use nod_proto::nodquerypb::index_client::IndexClient;
use nod_proto::nodquerypb::query_client::QueryClient;
use nod_proto::nodquerypb::{
    IndexCreateRequest, IndexDef, IndexDescribeRequest, IndexDescription, IndexDropRequest,
    IndexListRequest, IndexRebuildRequest, IndexResponse, IndexSpec, QueryRequest, QueryResponse,
};

use crate::client::{Client, Result, MAX_MESSAGE};
use crate::endpoints::Route;
use crate::retry::Idempotence;

impl Client {
    /// Declares an index: its entries are written from then on, and the
    /// leader backfills the values already there; ready once built.
    pub async fn index_create(&mut self, spec: IndexSpec) -> Result<IndexResponse> {
        let req = IndexCreateRequest { spec: Some(spec) };
        self.unary(Route::Leader, Idempotence::NonIdempotent, move |ch| {
            let req = req.clone();
            async move { IndexClient::new(ch).create(req).await }
        })
        .await
    }

    /// Drops the index named `name` and its entries.
    pub async fn index_drop(&mut self, name: &str) -> Result<IndexResponse> {
        let req = IndexDropRequest { name: name.into() };
        self.unary(Route::Leader, Idempotence::NonIdempotent, move |ch| {
            let req = req.clone();
            async move { IndexClient::new(ch).drop(req).await }
        })
        .await
    }

    /// Drops the entries of the index named `name` and builds it again
    /// from the values (BUILDING, then READY): a unique index that FAILED
    /// on duplicates, once they are gone.
    pub async fn index_rebuild(&mut self, name: &str) -> Result<IndexResponse> {
        let req = IndexRebuildRequest { name: name.into() };
        self.unary(Route::Leader, Idempotence::NonIdempotent, move |ch| {
            let req = req.clone();
            async move { IndexClient::new(ch).rebuild(req).await }
        })
        .await
    }

    /// Every index over a prefix the caller may read, linearizably.
    pub async fn index_list(&mut self) -> Result<Vec<IndexDef>> {
        let req = IndexListRequest {
            serializable: false,
        };
        let r = self
            .unary(Route::Any, Idempotence::Idempotent, move |ch| async move {
                IndexClient::new(ch).list(req).await
            })
            .await?;
        Ok(r.indexes)
    }

    /// The index named `name`; with `verify`, also recomputed from the
    /// records and compared with its entries.
    pub async fn index_describe(&mut self, name: &str, verify: bool) -> Result<IndexDescription> {
        let req = IndexDescribeRequest {
            name: name.into(),
            serializable: false,
            verify,
        };
        self.unary(Route::Any, Idempotence::Idempotent, move |ch| {
            let req = req.clone();
            async move { IndexClient::new(ch).describe(req).await }
        })
        .await
    }

    /// Runs a query (its text says the revision and consistency).
    pub async fn query(&mut self, text: &str) -> Result<QueryResponse> {
        self.query_with(QueryRequest {
            text: text.into(),
            ..Default::default()
        })
        .await
    }

    /// Runs a query as `req` says (a plan forced, for comparisons).
    pub async fn query_with(&mut self, req: QueryRequest) -> Result<QueryResponse> {
        // Any member answers (it makes the read linearizable itself), so
        // queries spread over the cluster.
        self.unary(Route::Any, Idempotence::Idempotent, move |ch| {
            let req = req.clone();
            async move {
                QueryClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .query(req)
                    .await
            }
        })
        .await
    }
}
