//! Destinations: a directory (a volume) or an S3-compatible bucket, behind
//! `object_store`, with the one rule backups need: **nothing is ever
//! overwritten**. Small objects are put create-only (S3 `If-None-Match: *`,
//! a hard link on a file system); a large one is streamed in parts after
//! checking that its name is free (names carry the revision and the time,
//! and one writer owns a chain, so nothing races that check).
//!
//! `s3://BUCKET[/PREFIX]` takes its endpoint, region and credentials from
//! the environment as the AWS tools do (`AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint): never in a flag, which
//! `ps` would show. `file:///DIR` or a plain path is a directory, created
//! if missing.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("destination {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("{object} already exists in {dest}; backups are never overwritten")]
    Exists { dest: String, object: String },
    #[error("{object} is not in {dest}")]
    NotFound { dest: String, object: String },
    #[error("{object} in {dest} is {size} bytes, more than the {limit} this reads")]
    TooLarge {
        dest: String,
        object: String,
        size: u64,
        limit: u64,
    },
    /// The object read fine; what it was copied into refused it.
    #[error("{object} in {dest}: {cause}")]
    Sink {
        dest: String,
        object: String,
        cause: String,
    },
    #[error("{what} {object} in {dest}: {cause}")]
    Io {
        what: &'static str,
        dest: String,
        object: String,
        cause: String,
    },
}

/// An object in a destination, relative to its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub name: String,
    pub size: u64,
    pub modified_unix_s: i64,
}

/// Where backups go.
#[derive(Clone)]
pub struct Destination {
    store: Arc<dyn ObjectStore>,
    prefix: Option<Path>,
    display: String,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl Destination {
    /// `s3://BUCKET[/PREFIX]`, `file:///DIR` or a path.
    pub fn parse(url: &str) -> Result<Destination, StoreError> {
        let bad = |why: &str| StoreError::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket (s3://BUCKET/PREFIX)"));
            }
            if bucket.contains(['?', '#']) || prefix.contains(['?', '#']) {
                return Err(bad(
                    "no query or fragment; the endpoint and region come from AWS_ENDPOINT_URL and AWS_REGION",
                ));
            }
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if std::env::var_os("AWS_REGION").is_none()
                && std::env::var_os("AWS_DEFAULT_REGION").is_none()
            {
                b = b.with_region("us-east-1");
            }
            let store = b.build().map_err(|e| bad(&e.to_string()))?;
            return Ok(Destination {
                store: Arc::new(store),
                prefix: prefix_path(prefix).map_err(|e| bad(&e))?,
                display: format!("s3://{bucket}/{}", prefix.trim_matches('/')),
            });
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(bad(
                "use s3://BUCKET/PREFIX, file:///DIR or a directory path",
            ));
        }
        let dir = url.strip_prefix("file://").unwrap_or(url);
        if dir.is_empty() {
            return Err(bad("no directory"));
        }
        std::fs::create_dir_all(dir).map_err(|e| bad(&format!("creating the directory: {e}")))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| bad(&e.to_string()))?
            .with_fsync(true)
            // A deleted chain leaves no empty folder behind.
            .with_automatic_cleanup(true);
        Ok(Destination {
            store: Arc::new(store),
            prefix: None,
            display: dir.to_string(),
        })
    }

    fn path(&self, rel: &str) -> Path {
        match &self.prefix {
            Some(p) => rel
                .split('/')
                .filter(|s| !s.is_empty())
                .fold(p.clone(), |p, part| p.join(part)),
            None => Path::from_iter(rel.split('/').filter(|s| !s.is_empty())),
        }
    }

    fn io(&self, what: &'static str, rel: &str, e: object_store::Error) -> StoreError {
        match e {
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => StoreError::Exists {
                dest: self.display.clone(),
                object: rel.to_string(),
            },
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                dest: self.display.clone(),
                object: rel.to_string(),
            },
            e => StoreError::Io {
                what,
                dest: self.display.clone(),
                object: rel.to_string(),
                cause: e.to_string(),
            },
        }
    }

    /// Puts a new object; an existing one is an error, never replaced.
    pub async fn put_new(&self, rel: &str, bytes: Bytes) -> Result<(), StoreError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.store
            .put_opts(&self.path(rel), PutPayload::from(bytes), opts)
            .await
            .map(|_| ())
            .map_err(|e| self.io("writing", rel, e))
    }

    /// Starts streaming a new, possibly large object in parts.
    pub async fn create(&self, rel: &str) -> Result<Upload, StoreError> {
        match self.store.head(&self.path(rel)).await {
            Ok(_) => {
                return Err(StoreError::Exists {
                    dest: self.display.clone(),
                    object: rel.to_string(),
                })
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.io("checking", rel, e)),
        }
        let upload = self
            .store
            .put_multipart(&self.path(rel))
            .await
            .map_err(|e| self.io("writing", rel, e))?;
        Ok(Upload {
            dest: self.clone(),
            rel: rel.to_string(),
            inner: Some(WriteMultipart::new_with_chunk_size(upload, 8 << 20)),
        })
    }

    /// Reads a whole object of at most `limit` bytes.
    pub async fn get(&self, rel: &str, limit: u64) -> Result<Bytes, StoreError> {
        let r = self
            .store
            .get(&self.path(rel))
            .await
            .map_err(|e| self.io("reading", rel, e))?;
        if r.meta.size > limit {
            return Err(StoreError::TooLarge {
                dest: self.display.clone(),
                object: rel.to_string(),
                size: r.meta.size,
                limit,
            });
        }
        r.bytes().await.map_err(|e| self.io("reading", rel, e))
    }

    /// Streams an object into `sink`, returning its size.
    pub async fn get_into<W>(&self, rel: &str, sink: &mut W) -> Result<u64, StoreError>
    where
        W: std::io::Write,
    {
        let r = self
            .store
            .get(&self.path(rel))
            .await
            .map_err(|e| self.io("reading", rel, e))?;
        let mut stream = r.into_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| self.io("reading", rel, e))?
        {
            sink.write_all(&chunk).map_err(|e| StoreError::Sink {
                dest: self.display.clone(),
                object: rel.to_string(),
                cause: e.to_string(),
            })?;
            n += chunk.len() as u64;
        }
        Ok(n)
    }

    /// What lies directly under folder `rel`.
    async fn list(&self, rel: &str) -> Result<object_store::ListResult, StoreError> {
        self.store
            .list_with_delimiter(Some(&self.path(rel)))
            .await
            .map_err(|e| self.io("listing", rel, e))
    }

    /// The folders directly under `rel` (names only).
    pub async fn folders(&self, rel: &str) -> Result<Vec<String>, StoreError> {
        let mut out: Vec<String> = self
            .list(rel)
            .await?
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The objects directly in folder `rel`, by name.
    pub async fn objects(&self, rel: &str) -> Result<Vec<Object>, StoreError> {
        let mut out: Vec<Object> = self
            .list(rel)
            .await?
            .objects
            .iter()
            .filter_map(|m| {
                Some(Object {
                    name: m.location.filename()?.to_string(),
                    size: m.size,
                    modified_unix_s: m.last_modified.timestamp(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub async fn delete(&self, rel: &str) -> Result<(), StoreError> {
        match self.store.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.io("deleting", rel, e)),
        }
    }
}

fn prefix_path(prefix: &str) -> Result<Option<Path>, String> {
    let parts: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err("the prefix may not hold . or ..".into());
    }
    Ok((!parts.is_empty()).then(|| Path::from_iter(parts)))
}

/// A large object being written in parts. Dropped without
/// [`Upload::finish`], nothing is published (the parts are aborted).
pub struct Upload {
    dest: Destination,
    rel: String,
    inner: Option<WriteMultipart>,
}

/// Parts in flight at once.
const IN_FLIGHT: usize = 4;

impl Upload {
    /// Ready for [`Upload::put`] once fewer than a few parts are in flight.
    pub fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), StoreError>> {
        let w = self.inner.as_mut().expect("not finished");
        w.poll_for_capacity(cx, IN_FLIGHT)
            .map_err(|e| self.dest.io("writing", &self.rel, e))
    }

    /// Adds bytes (buffered into parts; call after [`Upload::poll_ready`]).
    pub fn put(&mut self, bytes: Bytes) {
        self.inner.as_mut().expect("not finished").put(bytes);
    }

    /// Publishes the object.
    pub async fn finish(mut self) -> Result<(), StoreError> {
        let w = self.inner.take().expect("finished once");
        w.finish()
            .await
            .map(|_| ())
            .map_err(|e| self.dest.io("writing", &self.rel, e))
    }

    /// Gives up: the object does not appear.
    pub async fn abort(mut self) {
        if let Some(w) = self.inner.take() {
            let _ = w.abort().await;
        }
    }
}
