//! A chain's `manifest.json`: what its full snapshot is and where it came
//! from. Written once, after the full snapshot, and never rewritten; its
//! presence is what makes a chain usable.

use serde::{Deserialize, Serialize};

use crate::segment::Sha256Digest;

pub const FORMAT: &str = "nod-backup/1";
/// The largest manifest a reader accepts.
pub const MAX_MANIFEST: usize = 64 << 10;
/// The largest full snapshot a restore reads (it is held in memory).
pub const MAX_FULL: u64 = 64 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub nod_version: String,
    /// Hex, as etcdctl prints ids (JSON numbers lose bits past 2^53).
    pub cluster_id: String,
    pub created_unix_ms: i64,
    /// The store's revision in the full snapshot.
    pub revision: i64,
    /// The serving member's applied Raft index when the backup began.
    pub raft_index: u64,
    pub auth_revision: u64,
    pub full: FullObject,
    /// Whether segments of changes follow the full snapshot.
    pub incremental: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullObject {
    pub object: String,
    /// The snapshot file's size, and the object's (compressed).
    pub size: u64,
    pub stored_size: u64,
    /// The snapshot file's own trailing SHA-256 (hex): the first segment's
    /// `prev_sha256`.
    pub sha256: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is {0} bytes, more than the {MAX_MANIFEST} allowed")]
    TooLarge(usize),
    #[error("manifest does not parse: {0}")]
    Parse(String),
    #[error("manifest format is {0:?}; this nod reads {FORMAT:?}")]
    Format(String),
    #[error("manifest {field} is invalid: {what}")]
    Field { field: &'static str, what: String },
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("plain fields serialize");
        v.push(b'\n');
        v
    }

    /// Parses and checks a manifest read from a destination.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse(e.to_string()))?;
        if m.format != FORMAT {
            return Err(ManifestError::Format(m.format));
        }
        let field = |field, what: &str| ManifestError::Field {
            field,
            what: what.to_string(),
        };
        m.cluster_id()
            .ok_or_else(|| field("cluster_id", "not 16 hex digits"))?;
        if !(1..=crate::segment::MAX_REVISION).contains(&m.revision) {
            return Err(field("revision", "out of range"));
        }
        if m.full.size > MAX_FULL {
            return Err(field("full.size", "larger than a restore reads (64 GiB)"));
        }
        if m.full.object != crate::names::FULL {
            return Err(field("full.object", "must be full.db.zst"));
        }
        m.full_sha256()
            .ok_or_else(|| field("full.sha256", "not 64 hex digits"))?;
        Ok(m)
    }

    pub fn cluster_id(&self) -> Option<u64> {
        parse_id(&self.cluster_id)
    }

    pub fn full_sha256(&self) -> Option<Sha256Digest> {
        parse_sha256(&self.full.sha256)
    }
}

pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

fn parse_id(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())?
}

pub fn format_sha256(d: &Sha256Digest) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_sha256(s: &str) -> Option<Sha256Digest> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut d = [0u8; 32];
    for (i, out) in d.iter_mut().enumerate() {
        *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            nod_version: "0.1.0".into(),
            cluster_id: format_id(0x8e9e_05c5_2164_694d),
            created_unix_ms: 1_796_515_200_000,
            revision: 1234,
            raft_index: 4321,
            auth_revision: 3,
            full: FullObject {
                object: crate::names::FULL.into(),
                size: 1 << 20,
                stored_size: 1 << 16,
                sha256: format_sha256(&[0x5a; 32]),
            },
            incremental: true,
        }
    }

    #[test]
    fn round_trip() {
        let m = manifest();
        let back = Manifest::parse(&m.to_json()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.cluster_id(), Some(0x8e9e_05c5_2164_694d));
        assert_eq!(back.full_sha256(), Some([0x5a; 32]));
    }

    #[test]
    fn bad_manifests_are_refused() {
        let with = |f: fn(&mut Manifest)| {
            let mut m = manifest();
            f(&mut m);
            Manifest::parse(&m.to_json())
        };
        assert_eq!(
            with(|m| m.format = "nod-backup/2".into()),
            Err(ManifestError::Format("nod-backup/2".into()))
        );
        assert!(matches!(
            with(|m| m.cluster_id = "12".into()),
            Err(ManifestError::Field {
                field: "cluster_id",
                ..
            })
        ));
        assert!(matches!(
            with(|m| m.cluster_id = "zz".repeat(8)),
            Err(ManifestError::Field {
                field: "cluster_id",
                ..
            })
        ));
        assert!(matches!(
            with(|m| m.revision = 0),
            Err(ManifestError::Field {
                field: "revision",
                ..
            })
        ));
        assert!(matches!(
            with(|m| m.full.object = "../x".into()),
            Err(ManifestError::Field {
                field: "full.object",
                ..
            })
        ));
        assert!(matches!(
            with(|m| m.full.sha256.pop().map(drop).unwrap_or(())),
            Err(ManifestError::Field {
                field: "full.sha256",
                ..
            })
        ));
        assert!(matches!(
            Manifest::parse(b"{\"format\":1}"),
            Err(ManifestError::Parse(_))
        ));
        assert_eq!(
            Manifest::parse(&vec![b' '; MAX_MANIFEST + 1]),
            Err(ManifestError::TooLarge(MAX_MANIFEST + 1))
        );
    }
}
