//! What each member's binary can apply, as it published it with its
//! attributes (`MemberAttributes.features`), and the features the cluster
//! has enabled. A command that needs a feature applies only once it is
//! enabled, and it is enabled by one entry (`Command.enable_feature`) that
//! the leader proposes when its member table shows every member has
//! published it: every member applies that entry alike, whatever its own
//! table shows (an older binary ignores what members publish, so the
//! tables of members upgraded at different times differ). Enabled is for
//! good: downgrading below a feature the cluster uses is not supported.
//!
//! Stored in `meta`: under `features/` ++ member id (8 bytes BE) a tagged
//! `MemberAttributes` holding the id and the features only, written in
//! the batch of the attributes entry and removed with the member; under
//! `feature-on/` ++ name, one empty tagged record per enabled feature.
//! No I/O but the backend's.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;

use super::super::codec;
use super::encoding::TAG_MEMBER;
use super::{backend, Applied, Backend, KvError, KvStore, Outcome, RecordError, StoreError};
use crate::command::{MemberAttributes, FEATURES, MAX_FEATURES, MAX_FEATURE_BYTES};
use crate::storage::backend::Keyspace;

const KEY_FEATURES: &[u8] = b"features/";
const KEY_ENABLED: &[u8] = b"feature-on/";
const TAG_FEATURES: u8 = 10;

/// Each member's published features.
pub(super) type Features = BTreeMap<u64, BTreeSet<String>>;

pub(super) fn features_key(id: u64) -> Vec<u8> {
    let mut k = KEY_FEATURES.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn corrupt(cause: impl Into<RecordError>) -> StoreError {
    StoreError::Corrupt {
        what: "member features",
        cause: cause.into(),
    }
}

impl<B: Backend> KvStore<B> {
    pub(super) fn load_features(&self) -> Result<Features, StoreError> {
        let mut out = Features::new();
        for item in self.backend.scan_from(Keyspace::Meta, KEY_FEATURES) {
            let (k, v) = item.map_err(backend("scanning member features"))?;
            if !k.starts_with(KEY_FEATURES) {
                break;
            }
            let (tag, body) = codec::decode_tagged(&v).map_err(corrupt)?;
            if tag != TAG_FEATURES {
                return Err(corrupt(RecordError::Tag(tag)));
            }
            let m = MemberAttributes::decode(body).map_err(corrupt)?;
            if k[KEY_FEATURES.len()..] != m.id.to_be_bytes()
                || m.features.len() > MAX_FEATURES
                || m.features.iter().any(|f| f.len() > MAX_FEATURE_BYTES)
            {
                return Err(StoreError::CorruptKey {
                    keyspace: Keyspace::Meta.name(),
                    key: k.to_vec(),
                });
            }
            out.insert(m.id, m.features.into_iter().collect());
        }
        Ok(out)
    }

    pub(super) fn load_enabled(&self) -> Result<BTreeSet<String>, StoreError> {
        let mut out = BTreeSet::new();
        for item in self.backend.scan_from(Keyspace::Meta, KEY_ENABLED) {
            let (k, v) = item.map_err(backend("scanning enabled features"))?;
            if !k.starts_with(KEY_ENABLED) {
                break;
            }
            let (tag, _) = codec::decode_tagged(&v).map_err(corrupt)?;
            let name = std::str::from_utf8(&k[KEY_ENABLED.len()..]).ok();
            match name {
                Some(n) if tag == TAG_FEATURES && n.len() <= MAX_FEATURE_BYTES => {
                    out.insert(n.to_string());
                }
                _ => {
                    return Err(StoreError::CorruptKey {
                        keyspace: Keyspace::Meta.name(),
                        key: k.to_vec(),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Whether the cluster has enabled `feature`.
    pub fn feature_enabled(&self, feature: &str) -> bool {
        self.enabled.contains(feature)
    }

    /// Enables `feature` for good (applied at `applied`); a feature this
    /// binary does not know is refused, changing nothing else.
    pub fn apply_enable_feature(
        &mut self,
        feature: &str,
        applied: (u64, u64),
    ) -> Result<Outcome<()>, StoreError> {
        if !FEATURES.contains(&feature) {
            return self.refuse(
                KvError::Invalid(format!("unknown feature {feature:?}")),
                applied,
            );
        }
        let mut key = KEY_ENABLED.to_vec();
        key.extend_from_slice(feature.as_bytes());
        let st = self.stage();
        self.commit(st, applied, |b| {
            b.put(
                Keyspace::Meta,
                &key,
                codec::encode_tagged(TAG_FEATURES, &[]),
            )
        })?;
        self.enabled.insert(feature.to_string());
        Ok(Outcome::Applied(Applied::default()))
    }

    /// The features member `id` has published (none if it has not).
    pub fn features_of(&self, id: u64) -> Vec<String> {
        self.features
            .get(&id)
            .map(|f| f.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// A member that has not published `feature`, if any: while there is
    /// one, the leader does not enable it.
    pub fn lacking(&self, feature: &str) -> Option<u64> {
        self.members
            .keys()
            .copied()
            .find(|id| self.features.get(id).is_none_or(|f| !f.contains(feature)))
    }

    /// Applies the attributes a member published of itself (its name,
    /// client URLs and features); an unknown member's change nothing but
    /// the applied index. Answers whether the member was known.
    pub fn apply_member_attributes(
        &mut self,
        m: &MemberAttributes,
        applied: (u64, u64),
    ) -> Result<bool, StoreError> {
        let Some(mut member) = self.members.get(&m.id).cloned() else {
            self.apply_noop(applied)?;
            return Ok(false);
        };
        member.name = m.name.clone();
        member.client_ur_ls = m.client_urls.clone();
        let features: BTreeSet<String> = m.features.iter().cloned().collect();
        let record = codec::encode_tagged(TAG_MEMBER, &member.encode_to_vec());
        let stored = MemberAttributes {
            id: m.id,
            features: features.iter().cloned().collect(),
            ..Default::default()
        };
        let frecord = codec::encode_tagged(TAG_FEATURES, &stored.encode_to_vec());
        let st = self.stage();
        self.commit(st, applied, |b| {
            b.put(Keyspace::Member, &m.id.to_be_bytes(), record);
            b.put(Keyspace::Meta, &features_key(m.id), frecord);
        })?;
        self.members.insert(m.id, member);
        self.features.insert(m.id, features);
        Ok(true)
    }
}
