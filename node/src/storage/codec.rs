//! The on-disk encoding of the Raft log's records: entries, hard state and
//! snapshots. Each record is `[version][body][crc32 of version and body]`,
//! little-endian. Decoding checks the checksum first, then every length
//! against what is left and against fixed limits, so a torn write or a
//! flipped bit is reported as corruption instead of read as data.

use nod_raft::{
    ConfChange, ConfChangeKind, ConfState, Entry, EntryPayload, HardState, Index, NodeId, Snapshot,
    SnapshotMetadata, Term,
};

const VERSION: u8 = 1;
/// Largest entry payload or conf-change context accepted from disk.
pub const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
/// Largest snapshot image kept inline.
pub const MAX_SNAPSHOT_DATA: usize = 1024 * 1024 * 1024;
/// Most members a stored configuration may list.
pub const MAX_MEMBERS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {0} bytes, too short to hold a header and checksum")]
    TooShort(usize),
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("record ends early reading {0}")]
    Truncated(&'static str),
    #[error("{what} of {len} exceeds the limit of {limit}")]
    TooLarge {
        what: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
}

fn seal(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

/// Checks version and checksum; returns a reader over the body.
fn open(record: &[u8]) -> Result<Reader<'_>, DecodeError> {
    if record.len() < 5 {
        return Err(DecodeError::TooShort(record.len()));
    }
    let (body, crc) = record.split_at(record.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    if body[0] != VERSION {
        return Err(DecodeError::Version(body[0]));
    }
    Ok(Reader { rest: &body[1..] })
}

/// A tagged opaque record (`[version][tag][payload][crc32]`), for the state
/// machine's column families whose payload is a protobuf message. Decoding
/// checks the checksum and version and returns the tag and payload.
pub fn encode_tagged(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(payload.len() + 6);
    body.push(VERSION);
    body.push(tag);
    body.extend_from_slice(payload);
    seal(body)
}

pub fn decode_tagged(record: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    let mut r = open(record)?;
    let tag = r.u8("tag")?;
    Ok((tag, r.rest))
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self, what: &'static str, limit: usize) -> Result<Vec<u8>, DecodeError> {
        Ok(self.slice(what, limit)?.to_vec())
    }
    /// A length-prefixed run of bytes, where it lies.
    fn slice(&mut self, what: &'static str, limit: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u64(what)?;
        if len > limit as u64 {
            return Err(DecodeError::TooLarge {
                what,
                len,
                limit: limit as u64,
            });
        }
        self.take(len as usize, what)
    }
    fn ids(&mut self, what: &'static str) -> Result<Vec<NodeId>, DecodeError> {
        let n = self.u64(what)?;
        if n > MAX_MEMBERS as u64 {
            return Err(DecodeError::TooLarge {
                what,
                len: n,
                limit: MAX_MEMBERS as u64,
            });
        }
        (0..n).map(|_| self.u64(what).map(NodeId)).collect()
    }
    fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.rest.len()))
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_ids(out: &mut Vec<u8>, ids: impl ExactSizeIterator<Item = NodeId>) {
    out.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.0.to_le_bytes());
    }
}

pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend_from_slice(&e.term.0.to_le_bytes());
    out.extend_from_slice(&e.index.0.to_le_bytes());
    match &e.payload {
        EntryPayload::Empty => out.push(0),
        EntryPayload::Normal(data) => {
            out.push(1);
            put_bytes(&mut out, data);
        }
        EntryPayload::ConfChange(cc) => {
            out.push(2);
            out.push(match cc.kind {
                ConfChangeKind::AddLearner => 0,
                ConfChangeKind::AddVoter => 1,
                ConfChangeKind::PromoteLearner => 2,
                ConfChangeKind::Remove => 3,
            });
            out.extend_from_slice(&cc.node.0.to_le_bytes());
            put_bytes(&mut out, &cc.context);
        }
    }
    seal(out)
}

pub fn decode_entry(record: &[u8]) -> Result<Entry, DecodeError> {
    let (term, index, body) = entry_parts(record)?;
    let payload = match body {
        Body::Empty => EntryPayload::Empty,
        Body::Normal(data) => EntryPayload::Normal(data.to_vec()),
        Body::ConfChange(kind, node, context) => EntryPayload::ConfChange(ConfChange {
            kind,
            node,
            context: context.to_vec(),
        }),
    };
    Ok(Entry {
        term,
        index,
        payload,
    })
}

/// An entry record's term and index, the record checked as `decode_entry`
/// checks it but its payload not copied: what opening the log reads of
/// every entry (copying a long log's payloads out was most of a restart).
pub fn decode_entry_head(record: &[u8]) -> Result<(Term, Index), DecodeError> {
    let (term, index, _) = entry_parts(record)?;
    Ok((term, index))
}

/// `Entry::size` of the entry in `record`, without copying its payload
/// out: what a read bounded by size checks before it decodes.
pub fn entry_size(record: &[u8]) -> Result<u64, DecodeError> {
    let (_, _, body) = entry_parts(record)?;
    let body = match body {
        Body::Empty => 0,
        Body::Normal(data) => data.len(),
        Body::ConfChange(_, _, context) => 9 + context.len(),
    };
    Ok((16 + body) as u64)
}

/// An entry's payload where it lies in its record.
enum Body<'a> {
    Empty,
    Normal(&'a [u8]),
    ConfChange(ConfChangeKind, NodeId, &'a [u8]),
}

fn entry_parts(record: &[u8]) -> Result<(Term, Index, Body<'_>), DecodeError> {
    let mut r = open(record)?;
    let term = Term(r.u64("term")?);
    let index = Index(r.u64("index")?);
    let body = match r.u8("entry kind")? {
        0 => Body::Empty,
        1 => Body::Normal(r.slice("entry data", MAX_PAYLOAD)?),
        2 => {
            let kind = match r.u8("conf change kind")? {
                0 => ConfChangeKind::AddLearner,
                1 => ConfChangeKind::AddVoter,
                2 => ConfChangeKind::PromoteLearner,
                3 => ConfChangeKind::Remove,
                _ => return Err(DecodeError::Invalid("conf change kind")),
            };
            let node = NodeId(r.u64("conf change node")?);
            Body::ConfChange(kind, node, r.slice("conf change context", MAX_PAYLOAD)?)
        }
        _ => return Err(DecodeError::Invalid("entry kind")),
    };
    r.finish()?;
    Ok((term, index, body))
}

pub fn encode_hard_state(hs: &HardState) -> Vec<u8> {
    let mut out = vec![VERSION];
    for v in [hs.term.0, hs.vote.0, hs.commit.0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    seal(out)
}

pub fn decode_hard_state(record: &[u8]) -> Result<HardState, DecodeError> {
    let mut r = open(record)?;
    let hs = HardState {
        term: Term(r.u64("term")?),
        vote: NodeId(r.u64("vote")?),
        commit: Index(r.u64("commit")?),
    };
    r.finish()?;
    Ok(hs)
}

pub fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend_from_slice(&s.metadata.index.0.to_le_bytes());
    out.extend_from_slice(&s.metadata.term.0.to_le_bytes());
    put_ids(&mut out, s.metadata.conf_state.voters.iter().copied());
    put_ids(&mut out, s.metadata.conf_state.learners.iter().copied());
    put_bytes(&mut out, &s.data);
    seal(out)
}

pub fn decode_snapshot(record: &[u8]) -> Result<Snapshot, DecodeError> {
    let mut r = open(record)?;
    let index = Index(r.u64("snapshot index")?);
    let term = Term(r.u64("snapshot term")?);
    let voters = r.ids("voters")?;
    let learners = r.ids("learners")?;
    let data = r.bytes("snapshot data", MAX_SNAPSHOT_DATA)?;
    r.finish()?;
    let conf_state = ConfState {
        voters: voters.into_iter().collect(),
        learners: learners.into_iter().collect(),
    };
    if conf_state
        .voters
        .iter()
        .any(|v| conf_state.learners.contains(v))
        || conf_state.members().any(NodeId::is_none)
    {
        return Err(DecodeError::Invalid("snapshot configuration"));
    }
    Ok(Snapshot {
        metadata: SnapshotMetadata {
            index,
            term,
            conf_state,
        },
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Entry> {
        vec![
            Entry {
                term: Term(1),
                index: Index(2),
                payload: EntryPayload::Empty,
            },
            Entry {
                term: Term(3),
                index: Index(4),
                payload: EntryPayload::Normal(b"hello".to_vec()),
            },
            Entry {
                term: Term(5),
                index: Index(6),
                payload: EntryPayload::ConfChange(ConfChange {
                    kind: ConfChangeKind::PromoteLearner,
                    node: NodeId(9),
                    context: b"ctx".to_vec(),
                }),
            },
        ]
    }

    #[test]
    fn records_round_trip() {
        for e in samples() {
            assert_eq!(decode_entry(&encode_entry(&e)).unwrap(), e);
            assert_eq!(
                decode_entry_head(&encode_entry(&e)).unwrap(),
                (e.term, e.index)
            );
            assert_eq!(entry_size(&encode_entry(&e)).unwrap(), e.size());
        }
        let hs = HardState {
            term: Term(7),
            vote: NodeId(2),
            commit: Index(40),
        };
        assert_eq!(decode_hard_state(&encode_hard_state(&hs)).unwrap(), hs);
        let snap = Snapshot {
            metadata: SnapshotMetadata {
                index: Index(10),
                term: Term(3),
                conf_state: ConfState {
                    voters: [NodeId(1), NodeId(2)].into_iter().collect(),
                    learners: [NodeId(5)].into_iter().collect(),
                },
            },
            data: vec![1, 2, 3],
        };
        assert_eq!(decode_snapshot(&encode_snapshot(&snap)).unwrap(), snap);
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_detected() {
        for e in samples() {
            let good = encode_entry(&e);
            for i in 0..good.len() {
                for bit in 0..8 {
                    let mut bad = good.clone();
                    bad[i] ^= 1 << bit;
                    assert!(
                        decode_entry(&bad).is_err() && decode_entry_head(&bad).is_err(),
                        "flip of bit {bit} in byte {i} went unnoticed"
                    );
                }
            }
            for len in 0..good.len() {
                assert!(
                    decode_entry(&good[..len]).is_err() && decode_entry_head(&good[..len]).is_err(),
                    "truncation to {len} bytes went unnoticed"
                );
            }
        }
    }

    #[test]
    fn lengths_are_checked_before_allocating() {
        // A well-formed checksum over a body that claims a huge payload.
        let mut body = vec![VERSION];
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
        body.push(1);
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        let record = seal(body);
        assert!(matches!(
            decode_entry(&record),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_entry_head(&record),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut body = vec![VERSION];
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&(MAX_MEMBERS as u64 + 1).to_le_bytes());
        assert!(matches!(
            decode_snapshot(&seal(body)),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
