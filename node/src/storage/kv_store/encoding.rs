//! The stored form of the state machine: revision keys and checksummed
//! records (see the layout in `kv_store.rs`). Decoding validates what it
//! reads, whichever backend it came from. No I/O.

use prost::Message as _;

use super::super::backend::{Batch, Keyspace};
use super::super::codec;
use super::{KeyValue, RecordError, StoreError};

pub(super) const KEY_APPLIED: &[u8] = b"applied";
pub(super) const KEY_COMPACTED: &[u8] = b"compacted";
pub(super) const KEY_ALARMS: &[u8] = b"alarms";

pub(super) const TAG_PUT: u8 = 1;
pub(super) const TAG_TOMBSTONE: u8 = 2;
pub(super) const TAG_MEMBER: u8 = 3;
pub(super) const TAG_META: u8 = 4;
pub(super) const TAG_REMOVED: u8 = 5;
pub(super) const TAG_ALARMS: u8 = 8;

/// A point in the store's history: `main` is the cluster revision of a write
/// transaction, `sub` orders the changes inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub(super) fn key(self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        k[8..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        k
    }

    pub(super) fn from_key(k: &[u8]) -> Option<Revision> {
        if k.len() != 16 {
            return None;
        }
        let main = u64::from_be_bytes(k[..8].try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(k[8..].try_into().ok()?) as i64;
        (main > 0 && sub >= 0).then_some(Revision { main, sub })
    }
}

pub(super) fn encode_kv(kv: &KeyValue, tombstone: bool) -> Vec<u8> {
    codec::encode_tagged(
        if tombstone { TAG_TOMBSTONE } else { TAG_PUT },
        &kv.encode_to_vec(),
    )
}

pub(super) fn decode_kv(v: &[u8]) -> Result<(bool, KeyValue), RecordError> {
    let (tag, body) = codec::decode_tagged(v)?;
    let tombstone = match tag {
        TAG_PUT => false,
        TAG_TOMBSTONE => true,
        t => return Err(RecordError::Tag(t)),
    };
    let kv = KeyValue::decode(body)?;
    if kv.key.is_empty() {
        return Err(RecordError::NoKey);
    }
    Ok((tombstone, kv))
}

/// Adds the applied index and term to `batch`.
pub(super) fn put_applied(batch: &mut Batch, (index, term): (u64, u64)) {
    batch.put(Keyspace::Meta, KEY_APPLIED, encode_pair(index, term));
}

pub(super) fn encode_pair(a: u64, b: u64) -> Vec<u8> {
    let mut body = a.to_le_bytes().to_vec();
    body.extend_from_slice(&b.to_le_bytes());
    codec::encode_tagged(TAG_META, &body)
}

pub(super) fn decode_pair(v: &[u8]) -> Result<(u64, u64), StoreError> {
    let corrupt = |cause| StoreError::Corrupt {
        what: "meta record",
        cause,
    };
    let (tag, body) = codec::decode_tagged(v).map_err(|e| corrupt(e.into()))?;
    if tag != TAG_META {
        return Err(corrupt(RecordError::Tag(tag)));
    }
    if body.len() != 16 {
        return Err(corrupt(RecordError::Length(body.len())));
    }
    Ok((
        u64::from_le_bytes(body[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(body[8..].try_into().expect("8 bytes")),
    ))
}

pub(super) fn be_i64(k: &[u8]) -> Option<i64> {
    Some(u64::from_be_bytes(k.try_into().ok()?) as i64)
}
