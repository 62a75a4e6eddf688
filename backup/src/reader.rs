//! Reading backups back: what chains a destination holds and how far each
//! reaches ([`chains`]), which chain a restore to a revision uses
//! ([`choose`]), and that chain's full snapshot and changes, each checked
//! ([`fetch`]).

use std::io::Write as _;

use nod_proto::nodbackuppb::RevisionBatch;
use sha2::{Digest, Sha256};

use crate::manifest::{Manifest, ManifestError};
use crate::names::{self, ChainName, SegmentName};
use crate::segment::{self, SegmentError, Sequence, SequenceError, Sha256Digest, MAX_BODY};
use crate::store::{Destination, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{chain}: {cause}")]
    Manifest { chain: String, cause: ManifestError },
    #[error("{object}: {cause}")]
    Segment { object: String, cause: SegmentError },
    #[error("{object}: {cause}")]
    Sequence {
        object: String,
        cause: SequenceError,
    },
    #[error("{object}: {cause}")]
    Full { object: String, cause: String },
    #[error("{0}")]
    Choose(String),
}

/// A chain as listed: its manifest (if it has a sound one) and the
/// segments that follow on from it without a gap.
#[derive(Debug, Clone)]
pub struct ChainInfo {
    pub cluster_id: u64,
    /// `<cluster>/<chain>`, relative to the destination.
    pub dir: String,
    pub name: ChainName,
    /// None: no manifest yet (being written, or abandoned), or an unusable
    /// one (`problem` says why).
    pub manifest: Option<Manifest>,
    /// In order, consecutive from the full snapshot's revision + 1.
    pub segments: Vec<SegmentName>,
    /// Bytes of every object in the chain.
    pub stored_bytes: u64,
    pub last_modified_unix_s: i64,
    /// Why the chain reaches less far than its objects, or has no manifest.
    pub problem: Option<String>,
}

impl ChainInfo {
    pub fn complete(&self) -> bool {
        self.manifest.is_some()
    }

    /// The full snapshot's revision.
    pub fn revision(&self) -> Option<i64> {
        self.manifest.as_ref().map(|m| m.revision)
    }

    /// The last revision a restore from this chain can reach.
    pub fn reaches(&self) -> Option<i64> {
        let full = self.revision()?;
        Some(self.segments.last().map_or(full, |s| s.last))
    }

    pub fn folder(&self) -> &str {
        self.dir.rsplit('/').next().unwrap_or(&self.dir)
    }
}

/// Every chain in `dest` (of one cluster, if given), oldest first.
pub async fn chains(dest: &Destination, cluster: Option<u64>) -> Result<Vec<ChainInfo>, ReadError> {
    let mut out = Vec::new();
    for c in dest.folders("").await? {
        let Some(cluster_id) = names::parse_cluster_dir(&c) else {
            continue;
        };
        if cluster.is_some_and(|want| want != cluster_id) {
            continue;
        }
        for f in dest.folders(&c).await? {
            let Some(name) = ChainName::parse(&f) else {
                continue;
            };
            out.push(chain_info(dest, cluster_id, format!("{c}/{f}"), name).await?);
        }
    }
    out.sort_by(|a, b| (a.name, &a.dir).cmp(&(b.name, &b.dir)));
    Ok(out)
}

async fn chain_info(
    dest: &Destination,
    cluster_id: u64,
    dir: String,
    name: ChainName,
) -> Result<ChainInfo, ReadError> {
    let objects = dest.objects(&dir).await?;
    let mut info = ChainInfo {
        cluster_id,
        dir: dir.clone(),
        name,
        manifest: None,
        segments: Vec::new(),
        stored_bytes: objects.iter().map(|o| o.size).sum(),
        last_modified_unix_s: objects.iter().map(|o| o.modified_unix_s).max().unwrap_or(0),
        problem: None,
    };
    if !objects.iter().any(|o| o.name == names::MANIFEST) {
        info.problem = Some("no manifest.json (being written, or abandoned)".into());
        return Ok(info);
    }
    let bytes = dest
        .get(
            &format!("{dir}/{}", names::MANIFEST),
            crate::manifest::MAX_MANIFEST as u64,
        )
        .await?;
    let manifest = match Manifest::parse(&bytes) {
        Ok(m) if m.cluster_id() == Some(cluster_id) => m,
        Ok(m) => {
            info.problem = Some(format!("manifest names cluster {}", m.cluster_id));
            return Ok(info);
        }
        Err(e) => {
            info.problem = Some(e.to_string());
            return Ok(info);
        }
    };
    let mut segs: Vec<SegmentName> = objects
        .iter()
        .filter_map(|o| SegmentName::parse(&o.name))
        .collect();
    segs.sort();
    let mut next = manifest.revision + 1;
    for s in segs {
        if s.first != next {
            info.problem = Some(format!(
                "segments stop at revision {}: the next one starts at {} (a segment is missing)",
                next - 1,
                s.first
            ));
            break;
        }
        next = s.last + 1;
        info.segments.push(s);
    }
    info.manifest = Some(manifest);
    Ok(info)
}

/// The chain a restore uses: the named one, or the newest complete chain
/// that reaches `to_revision` (the newest of all without one).
pub fn choose<'a>(
    chains: &'a [ChainInfo],
    folder: Option<&str>,
    to_revision: Option<i64>,
) -> Result<&'a ChainInfo, ReadError> {
    let fits = |c: &ChainInfo| match (c.revision(), c.reaches(), to_revision) {
        (Some(from), Some(to), Some(r)) => from <= r && r <= to,
        (Some(_), Some(_), None) => true,
        _ => false,
    };
    if let Some(folder) = folder {
        let c = chains
            .iter()
            .find(|c| c.folder() == folder)
            .ok_or_else(|| ReadError::Choose(format!("no chain {folder:?}")))?;
        if !c.complete() {
            return Err(ReadError::Choose(format!(
                "chain {folder} cannot be restored: {}",
                c.problem.as_deref().unwrap_or("no manifest")
            )));
        }
        if !fits(c) {
            return Err(ReadError::Choose(format!(
                "chain {folder} holds revisions {} to {}, not {}",
                c.revision().unwrap_or(0),
                c.reaches().unwrap_or(0),
                to_revision.unwrap_or(0)
            )));
        }
        return Ok(c);
    }
    if let Some(c) = chains.iter().rev().find(|c| fits(c)) {
        return Ok(c);
    }
    let complete: Vec<&ChainInfo> = chains.iter().filter(|c| c.complete()).collect();
    Err(ReadError::Choose(
        match (to_revision, complete.is_empty()) {
            (_, true) => "no complete backup chain in the destination".into(),
            (Some(r), false) => format!(
                "no chain reaches revision {r}; the chains hold {}",
                complete
                    .iter()
                    .map(|c| format!(
                        "{}..={}",
                        c.revision().unwrap_or(0),
                        c.reaches().unwrap_or(0)
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (None, false) => "no usable chain".into(),
        },
    ))
}

/// A chain's content, checked, up to a revision.
#[derive(Debug)]
pub struct Fetched {
    /// The etcd snapshot file (database and SHA-256), as `snapshot save`
    /// writes it.
    pub snapshot: Vec<u8>,
    /// The changes after it, up to the revision asked for.
    pub changes: Vec<RevisionBatch>,
    /// The last revision restored.
    pub revision: i64,
    /// Identifies the content: SHA-256 of the full file's hash, the
    /// revision and the last segment's hash (new cluster ids derive from it).
    pub digest: Sha256Digest,
    /// What the restore will not bring back exactly.
    pub warnings: Vec<String>,
}

/// Reads `chain`'s full snapshot and segments up to `to_revision` (all
/// without one), checking the snapshot's SHA-256 against the manifest and
/// every segment's framing, checksums and link to the one before.
pub async fn fetch(
    dest: &Destination,
    chain: &ChainInfo,
    to_revision: Option<i64>,
) -> Result<Fetched, ReadError> {
    let manifest = chain
        .manifest
        .as_ref()
        .ok_or_else(|| ReadError::Choose(format!("chain {} has no manifest", chain.dir)))?;
    let full_sha = manifest.full_sha256().expect("parse checked it");
    let object = format!("{}/{}", chain.dir, names::FULL);
    let full_err = |cause: String| ReadError::Full {
        object: object.clone(),
        cause,
    };
    let sink = Limited {
        buf: Vec::new(),
        limit: manifest.full.size,
    };
    let mut dec = zstd::stream::write::Decoder::new(sink).map_err(|e| full_err(e.to_string()))?;
    match dest.get_into(&object, &mut dec).await {
        Err(StoreError::Sink { cause, .. }) => {
            return Err(full_err(format!("does not decompress: {cause}")))
        }
        r => r?,
    };
    dec.flush()
        .map_err(|e| full_err(format!("does not decompress: {e}")))?;
    let snapshot = dec.into_inner().buf;
    if snapshot.len() < 32 || snapshot.len() as u64 != manifest.full.size {
        return Err(full_err(format!(
            "is truncated or damaged: it decompresses to {} bytes, the manifest says {}",
            snapshot.len(),
            manifest.full.size
        )));
    }
    let (db, sum) = snapshot.split_at(snapshot.len() - 32);
    if sum != full_sha || Sha256::digest(db).as_slice() != sum {
        return Err(full_err("fails its SHA-256".into()));
    }
    let upto = to_revision.unwrap_or(i64::MAX);
    let mut seq = Sequence::new(chain.cluster_id, manifest.revision, full_sha);
    let mut changes = Vec::new();
    let mut warnings = Vec::new();
    for s in &chain.segments {
        if s.first > upto {
            break;
        }
        let object = format!("{}/{}", chain.dir, s.format());
        let bytes = dest.get(&object, MAX_BODY).await?;
        let seg = segment::decode(&bytes).map_err(|cause| ReadError::Segment {
            object: object.clone(),
            cause,
        })?;
        if (seg.header.first_revision, seg.header.last_revision) != (s.first, s.last) {
            return Err(ReadError::Segment {
                object,
                cause: SegmentError::Revisions {
                    first: s.first,
                    last: s.last,
                    got: format!(
                        "a header for {}..={}",
                        seg.header.first_revision, seg.header.last_revision
                    ),
                },
            });
        }
        seq.accept(&seg)
            .map_err(|cause| ReadError::Sequence { object, cause })?;
        let auth = seg.header.auth_revision;
        if auth != 0 && auth != manifest.auth_revision && warnings.is_empty() {
            warnings.push(format!(
                "users, roles or auth settings changed after the full snapshot (auth revision {} \
                 then, {auth} by revision {}): the restore has the full snapshot's",
                manifest.auth_revision, s.last
            ));
        }
        changes.extend(seg.batches.into_iter().filter(|b| b.revision <= upto));
    }
    let revision = changes.last().map_or(manifest.revision, |b| b.revision);
    if let Some(r) = to_revision {
        if r != revision {
            return Err(ReadError::Choose(format!(
                "chain {} reaches revision {revision}, not {r}",
                chain.folder()
            )));
        }
    }
    let mut h = Sha256::new();
    h.update(full_sha);
    h.update(revision.to_be_bytes());
    h.update(seq.prev_sha256);
    Ok(Fetched {
        snapshot,
        changes,
        revision,
        digest: h.finalize().into(),
        warnings,
    })
}

/// A buffer that refuses to grow past the size the manifest gives (a
/// corrupt or hostile object cannot inflate without bound).
struct Limited {
    buf: Vec<u8>,
    limit: u64,
}

impl std::io::Write for Limited {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if (self.buf.len() + b.len()) as u64 > self.limit {
            return Err(std::io::Error::other("longer than the manifest says"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
