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

/// A key-value record's checked envelope: whether it is a deletion, and
/// the encoded key-value.
fn record_body(v: &[u8]) -> Result<(bool, &[u8]), RecordError> {
    let (tag, body) = codec::decode_tagged(v)?;
    match tag {
        TAG_PUT => Ok((false, body)),
        TAG_TOMBSTONE => Ok((true, body)),
        t => Err(RecordError::Tag(t)),
    }
}

pub(super) fn decode_kv(v: &[u8]) -> Result<(bool, KeyValue), RecordError> {
    let (tombstone, body) = record_body(v)?;
    let kv = KeyValue::decode(body)?;
    if kv.key.is_empty() {
        return Err(RecordError::NoKey);
    }
    Ok((tombstone, kv))
}

/// A stored record's key-value less its value: what opening the store
/// needs to rebuild the key index. The value's field is skipped where it
/// lies, not copied out (in a large store values are nearly all its bytes).
/// Field numbers are `mvccpb::KeyValue`'s.
///
/// `prost::Message` by hand, not derived: a derived message skips an
/// unknown field whatever its wire type, so the index would accept a
/// record whose field 5 `decode_kv` refuses; here field 5 must be
/// length-delimited, as `KeyValue`'s value is.
#[derive(Clone, PartialEq, Default, Debug)]
pub(super) struct KeyHead {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl prost::Message for KeyHead {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        use prost::encoding::{bytes, int64};
        if !self.key.is_empty() {
            bytes::encode(1, &self.key, buf);
        }
        for (tag, v) in self.numbers() {
            if v != 0 {
                int64::encode(tag, &v, buf);
            }
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        use prost::encoding::{bytes, check_wire_type, int64, skip_field, WireType};
        match tag {
            1 => bytes::merge(wire_type, &mut self.key, buf, ctx),
            2 => int64::merge(wire_type, &mut self.create_revision, buf, ctx),
            3 => int64::merge(wire_type, &mut self.mod_revision, buf, ctx),
            4 => int64::merge(wire_type, &mut self.version, buf, ctx),
            5 => {
                check_wire_type(WireType::LengthDelimited, wire_type)?;
                skip_field(wire_type, tag, buf, ctx)
            }
            6 => int64::merge(wire_type, &mut self.lease, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        use prost::encoding::{bytes, int64};
        let key = if self.key.is_empty() {
            0
        } else {
            bytes::encoded_len(1, &self.key)
        };
        key + self
            .numbers()
            .into_iter()
            .filter(|&(_, v)| v != 0)
            .map(|(tag, v)| int64::encoded_len(tag, &v))
            .sum::<usize>()
    }

    fn clear(&mut self) {
        *self = KeyHead::default();
    }
}

impl KeyHead {
    /// The integer fields with their tags.
    fn numbers(&self) -> [(u32, i64); 4] {
        [
            (2, self.create_revision),
            (3, self.mod_revision),
            (4, self.version),
            (6, self.lease),
        ]
    }
}

/// A stored record's encoded key-value, checked as `decode_kv` checks it
/// (the value's field is skipped, not copied): what a Range answer sends
/// as it is stored.
pub(super) fn checked_kv(v: &[u8]) -> Result<&[u8], RecordError> {
    let (_, body) = record_body(v)?;
    if KeyHead::decode(body)?.key.is_empty() {
        return Err(RecordError::NoKey);
    }
    Ok(body)
}

/// `decode_kv` for the index: the record's key-value with an empty value.
pub(super) fn decode_head(v: &[u8]) -> Result<(bool, KeyValue), RecordError> {
    let (tombstone, body) = record_body(v)?;
    let h = KeyHead::decode(body)?;
    if h.key.is_empty() {
        return Err(RecordError::NoKey);
    }
    let kv = KeyValue {
        key: h.key,
        create_revision: h.create_revision,
        mod_revision: h.mod_revision,
        version: h.version,
        value: Vec::new(),
        lease: h.lease,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_the_record_less_its_value_and_refuses_what_the_record_refuses() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            value: vec![7; 10_000],
            lease: 42,
        };
        for tombstone in [false, true] {
            let stored = encode_kv(&kv, tombstone);
            let (t, head) = decode_head(&stored).unwrap();
            assert_eq!(t, tombstone);
            assert_eq!(
                head,
                KeyValue {
                    value: Vec::new(),
                    ..kv.clone()
                }
            );
            assert_eq!(decode_kv(&stored).unwrap(), (tombstone, kv.clone()));
        }
        let stored = encode_kv(&kv, false);
        // Field 5 (the value) as a varint: KeyValue refuses the wire type.
        let mut odd_value = KeyValue {
            value: Vec::new(),
            ..kv.clone()
        }
        .encode_to_vec();
        prost::encoding::int64::encode(5, &7, &mut odd_value);
        for bad in [
            stored[..stored.len() - 1].to_vec(),
            encode_kv(&KeyValue::default(), false),
            codec::encode_tagged(TAG_META, &kv.encode_to_vec()),
            codec::encode_tagged(TAG_PUT, &odd_value),
        ] {
            assert!(decode_head(&bad).is_err(), "{bad:?}");
            assert!(decode_kv(&bad).is_err());
        }
        // Fields it does not know are skipped, as KeyValue does.
        let mut extra = kv.encode_to_vec();
        prost::encoding::int64::encode(9, &1, &mut extra);
        let extra = codec::encode_tagged(TAG_PUT, &extra);
        assert_eq!(decode_head(&extra).unwrap().1.lease, 42);
        assert_eq!(decode_kv(&extra).unwrap().1, kv);
        // Its own encoding round-trips.
        let head = KeyHead {
            key: b"k".to_vec(),
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            lease: -1,
        };
        let bytes = head.encode_to_vec();
        assert_eq!(bytes.len(), head.encoded_len());
        assert_eq!(KeyHead::decode(&bytes[..]).unwrap(), head);
    }
}
