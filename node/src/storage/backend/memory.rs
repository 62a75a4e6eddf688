//! The state machine's keyspaces in memory: one `BTreeMap` per keyspace,
//! for the simulator, which runs many state machines per process and
//! thousands of seeds per minute. No I/O; deterministic (ordered maps
//! only, so nothing depends on hashing or on the machine). `Clone` copies
//! the whole state; [`MemoryBackend::to_bytes`] and
//! [`MemoryBackend::from_bytes`] carry it through a Raft snapshot.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Bound;

use super::{Backend, BackendError, Batch, BatchOp, Entry, Keyspace};
use crate::storage::codec;

/// The tag of a serialized image (`codec::encode_tagged`).
const TAG_IMAGE: u8 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryBackend {
    /// Indexed by `slot(keyspace)`.
    keyspaces: [BTreeMap<Vec<u8>, Vec<u8>>; 6],
    /// Key and value bytes held, kept as batches are written.
    bytes: u64,
}

fn slot(keyspace: Keyspace) -> usize {
    match keyspace {
        Keyspace::Rev => 0,
        Keyspace::Lease => 1,
        Keyspace::Member => 2,
        Keyspace::Meta => 3,
        Keyspace::Auth => 4,
        Keyspace::Secondary => 5,
    }
}

impl MemoryBackend {
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    /// Every keyspace, as one checksummed record: for each keyspace in
    /// `Keyspace::ALL` order, its entry count (u64 LE), then each entry as
    /// key length (u32 LE), key, value length (u32 LE), value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.bytes as usize + 64);
        for keyspace in Keyspace::ALL {
            let map = &self.keyspaces[slot(keyspace)];
            body.extend_from_slice(&(map.len() as u64).to_le_bytes());
            for (k, v) in map {
                body.extend_from_slice(&(k.len() as u32).to_le_bytes());
                body.extend_from_slice(k);
                body.extend_from_slice(&(v.len() as u32).to_le_bytes());
                body.extend_from_slice(v);
            }
        }
        codec::encode_tagged(TAG_IMAGE, &body)
    }

    /// Reads back what `to_bytes` wrote, checking the checksum, every
    /// length against what is left, key order, and that nothing trails.
    pub fn from_bytes(bytes: &[u8]) -> Result<MemoryBackend, BackendError> {
        let bad = |what: &str| BackendError(format!("corrupt memory image: {what}"));
        let (tag, mut rest) = codec::decode_tagged(bytes).map_err(|e| bad(&e.to_string()))?;
        if tag != TAG_IMAGE {
            return Err(bad(&format!("tag {tag}")));
        }
        fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if rest.len() < n {
                return None;
            }
            let (head, tail) = rest.split_at(n);
            *rest = tail;
            Some(head)
        }
        fn len32(rest: &mut &[u8]) -> Option<usize> {
            Some(u32::from_le_bytes(take(rest, 4)?.try_into().ok()?) as usize)
        }
        let mut backend = MemoryBackend::default();
        for keyspace in Keyspace::ALL {
            let count = take(&mut rest, 8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .ok_or_else(|| bad("truncated count"))?;
            let map = &mut backend.keyspaces[slot(keyspace)];
            for _ in 0..count {
                let k = len32(&mut rest)
                    .and_then(|n| take(&mut rest, n))
                    .ok_or_else(|| bad("truncated key"))?;
                let v = len32(&mut rest)
                    .and_then(|n| take(&mut rest, n))
                    .ok_or_else(|| bad("truncated value"))?;
                if map
                    .last_key_value()
                    .is_some_and(|(last, _)| last.as_slice() >= k)
                {
                    return Err(bad("keys out of order"));
                }
                backend.bytes += (k.len() + v.len()) as u64;
                map.insert(k.to_vec(), v.to_vec());
            }
        }
        if !rest.is_empty() {
            return Err(bad(&format!("{} trailing bytes", rest.len())));
        }
        Ok(backend)
    }
}

impl Backend for MemoryBackend {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Cow<'_, [u8]>>, BackendError> {
        Ok(self.keyspaces[slot(keyspace)]
            .get(key)
            .map(|v| Cow::Borrowed(v.as_slice())))
    }

    fn scan_from<'a>(
        &'a self,
        keyspace: Keyspace,
        from: &[u8],
    ) -> impl Iterator<Item = Result<Entry<'a>, BackendError>> + 'a {
        self.keyspaces[slot(keyspace)]
            .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
            .map(|(k, v)| Ok((Cow::Borrowed(k.as_slice()), Cow::Borrowed(v.as_slice()))))
    }

    fn scan_rev<'a>(
        &'a self,
        keyspace: Keyspace,
        before: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<Entry<'a>, BackendError>> + 'a {
        let upper = match before {
            Some(b) => Bound::Excluded(b),
            None => Bound::Unbounded,
        };
        self.keyspaces[slot(keyspace)]
            .range::<[u8], _>((Bound::Unbounded, upper))
            .rev()
            .map(|(k, v)| Ok((Cow::Borrowed(k.as_slice()), Cow::Borrowed(v.as_slice()))))
    }

    fn write(&mut self, batch: Batch) -> Result<(), BackendError> {
        for op in batch.into_ops() {
            match op {
                BatchOp::Put {
                    keyspace,
                    key,
                    value,
                } => {
                    let key_len = key.len() as u64;
                    self.bytes += key_len + value.len() as u64;
                    let map = &mut self.keyspaces[slot(keyspace)];
                    if let Some(old) = map.insert(key.into_vec(), value) {
                        self.bytes -= key_len + old.len() as u64;
                    }
                }
                BatchOp::Delete { keyspace, key } => {
                    if let Some(old) = self.keyspaces[slot(keyspace)].remove(key.as_slice()) {
                        self.bytes -= (key.len() + old.len()) as u64;
                    }
                }
                BatchOp::DeleteRange { keyspace, from, to } => {
                    let map = &mut self.keyspaces[slot(keyspace)];
                    // Split off [from, ..), then put back [to, ..).
                    let mut tail = map.split_off(from.as_slice());
                    let mut kept = tail.split_off(to.as_slice());
                    for (k, v) in &tail {
                        self.bytes -= (k.len() + v.len()) as u64;
                    }
                    map.append(&mut kept);
                }
            }
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.bytes
    }
}
