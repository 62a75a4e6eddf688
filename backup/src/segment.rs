//! A segment file (`.nseg`): the changes of consecutive revisions after a
//! chain's full snapshot, compressed, checked and chained to what came
//! before it.
//!
//! ```text
//! "NODSEG\0\x01"                      magic, 8 bytes
//! u32 LE n, SegmentHeader (n bytes)   protobuf, n <= MAX_HEADER
//! zstd frame (content checksum on)    of length-delimited RevisionBatch
//! u64 LE body length, u32 LE CRC-32C  of the uncompressed body
//! "NODSEGEND"                         9 bytes
//! ```
//!
//! A truncated file loses its trailer; a flipped byte breaks the zstd
//! checksum, the CRC or the header; a missing or swapped segment breaks
//! `prev_sha256` or the revision sequence ([`Sequence`]). Every length read
//! from a file is checked against a limit before anything is allocated.

use std::io::Read;

use nod_proto::etcd::mvccpb::event::EventType;
use nod_proto::nodbackuppb::{RevisionBatch, SegmentHeader};
use prost::Message;
use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"NODSEG\0\x01";
pub const END: &[u8; 9] = b"NODSEGEND";
/// The largest header a reader accepts.
pub const MAX_HEADER: usize = 64 << 10;
/// The largest uncompressed body a reader accepts (one revision that
/// deletes a million keys is some 50 MB).
pub const MAX_BODY: u64 = 1 << 30;
/// Revisions above this are refused (no store gets near it), so adding
/// one to a revision from a file never overflows.
pub const MAX_REVISION: i64 = 1 << 62;
const TRAILER: usize = 8 + 4 + END.len();
const ZSTD_LEVEL: i32 = 3;

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("not a Nod backup segment (no NODSEG magic)")]
    Magic,
    #[error("segment is truncated ({0})")]
    Truncated(&'static str),
    #[error("segment header is {0} bytes, more than the {MAX_HEADER} allowed")]
    HeaderTooLarge(u64),
    #[error("segment body is {0} bytes uncompressed, more than the {MAX_BODY} allowed")]
    BodyTooLarge(u64),
    #[error("segment header does not decode: {0}")]
    Header(String),
    #[error("segment body does not decompress: {0}")]
    Compression(String),
    #[error("segment body is {got} bytes, its trailer says {want}")]
    BodyLength { want: u64, got: u64 },
    #[error("segment body fails its CRC-32C (want {want:08x}, got {got:08x})")]
    Crc { want: u32, got: u32 },
    #[error("segment batch {index} does not decode: {cause}")]
    Batch { index: usize, cause: String },
    #[error("segment covers revisions {first}..={last} but holds {got}")]
    Revisions { first: i64, last: i64, got: String },
    #[error("revision {revision}: {what}")]
    Invalid { revision: i64, what: String },
    #[error("a segment needs at least one revision")]
    Empty,
}

/// A decoded, checked segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub header: SegmentHeader,
    pub batches: Vec<RevisionBatch>,
    /// SHA-256 of the whole file: the next segment's `prev_sha256`.
    pub sha256: Sha256Digest,
}

/// Checks one revision's batch: what a restore writes as that revision's
/// records, so anything it could not write faithfully is refused here.
pub fn check_batch(b: &RevisionBatch) -> Result<(), SegmentError> {
    let invalid = |what: String| SegmentError::Invalid {
        revision: b.revision,
        what,
    };
    if !(1..=MAX_REVISION).contains(&b.revision) {
        return Err(invalid(format!("revision must be in 1..={MAX_REVISION}")));
    }
    if b.events.is_empty() {
        return Err(invalid("no events".into()));
    }
    // One key may change twice in a revision (a put and a delete in two
    // nested transactions, which etcd allows): both events are kept.
    for (i, e) in b.events.iter().enumerate() {
        let Some(kv) = e.kv.as_ref() else {
            return Err(invalid(format!("event {i} has no key-value")));
        };
        if kv.key.is_empty() {
            return Err(invalid(format!("event {i} has an empty key")));
        }
        if kv.mod_revision != b.revision {
            return Err(invalid(format!(
                "event {i} has mod_revision {}",
                kv.mod_revision
            )));
        }
        match EventType::try_from(e.r#type) {
            Ok(EventType::Put) => {
                if kv.create_revision < 1 || kv.create_revision > b.revision || kv.version < 1 {
                    return Err(invalid(format!(
                        "event {i} is a put with create_revision {} and version {}",
                        kv.create_revision, kv.version
                    )));
                }
                if kv.lease < 0 {
                    return Err(invalid(format!("event {i} has lease {}", kv.lease)));
                }
            }
            Ok(EventType::Delete) => {}
            Err(_) => return Err(invalid(format!("event {i} has type {}", e.r#type))),
        }
    }
    for l in &b.leases {
        if l.id <= 0 || l.granted_ttl <= 0 {
            return Err(invalid(format!(
                "lease {} has granted TTL {}",
                l.id, l.granted_ttl
            )));
        }
    }
    Ok(())
}

/// The batches must be the revisions `first..=last`, each once, in order.
fn check_revisions(first: i64, last: i64, batches: &[RevisionBatch]) -> Result<(), SegmentError> {
    let dense = batches
        .iter()
        .enumerate()
        .all(|(i, b)| i64::try_from(i).is_ok_and(|i| first.checked_add(i) == Some(b.revision)));
    let count_ok = i64::try_from(batches.len())
        .ok()
        .and_then(|n| first.checked_add(n - 1))
        == Some(last);
    if dense && count_ok {
        return Ok(());
    }
    let got = match (batches.first(), batches.last()) {
        (Some(a), Some(b)) => format!(
            "{} batches from revision {} to {}",
            batches.len(),
            a.revision,
            b.revision
        ),
        _ => "no batches".into(),
    };
    Err(SegmentError::Revisions { first, last, got })
}

/// What a segment's header says besides its revisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentMeta {
    pub cluster_id: u64,
    /// SHA-256 of the object it follows.
    pub prev_sha256: Sha256Digest,
    pub created_unix_ms: i64,
    /// The auth revision read before cutting it (0: unknown).
    pub auth_revision: u64,
}

/// Writes a segment of `batches` (consecutive revisions, each checked by
/// [`check_batch`]).
pub fn encode(
    meta: SegmentMeta,
    batches: &[RevisionBatch],
) -> Result<(Vec<u8>, Sha256Digest), SegmentError> {
    let SegmentMeta {
        cluster_id,
        prev_sha256,
        created_unix_ms,
        auth_revision,
    } = meta;
    let (first, last) = match (batches.first(), batches.last()) {
        (Some(a), Some(b)) => (a.revision, b.revision),
        _ => return Err(SegmentError::Empty),
    };
    check_revisions(first, last, batches)?;
    for b in batches {
        check_batch(b)?;
    }
    let header = SegmentHeader {
        cluster_id,
        first_revision: first,
        last_revision: last,
        prev_sha256: prev_sha256.to_vec(),
        created_unix_ms,
        nod_version: env!("CARGO_PKG_VERSION").to_string(),
        auth_revision,
    };
    let mut body = Vec::new();
    for b in batches {
        b.encode_length_delimited(&mut body)
            .expect("a Vec grows as needed");
    }
    let body_len = body.len() as u64;
    if body_len > MAX_BODY {
        return Err(SegmentError::BodyTooLarge(body_len));
    }
    let crc = crc32c::crc32c(&body);
    let mut enc = zstd::bulk::Compressor::new(ZSTD_LEVEL)
        .map_err(|e| SegmentError::Compression(e.to_string()))?;
    enc.include_checksum(true)
        .map_err(|e| SegmentError::Compression(e.to_string()))?;
    let compressed = enc
        .compress(&body)
        .map_err(|e| SegmentError::Compression(e.to_string()))?;
    let head = header.encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + head.len() + compressed.len() + TRAILER);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&compressed);
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(END);
    let sha = Sha256::digest(&out).into();
    Ok((out, sha))
}

/// Reads and checks a segment file: framing, header, checksums, every
/// batch. Whether it follows the previous one is [`Sequence`]'s part.
pub fn decode(bytes: &[u8]) -> Result<Segment, SegmentError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(if MAGIC.starts_with(bytes) {
            SegmentError::Truncated("in the magic")
        } else {
            SegmentError::Magic
        });
    }
    let rest = &bytes[MAGIC.len()..];
    let Some((len, rest)) = rest.split_first_chunk::<4>() else {
        return Err(SegmentError::Truncated("in the header length"));
    };
    let head_len = u64::from(u32::from_le_bytes(*len));
    if head_len > MAX_HEADER as u64 {
        return Err(SegmentError::HeaderTooLarge(head_len));
    }
    let head_len = head_len as usize;
    if rest.len() < head_len + TRAILER {
        return Err(SegmentError::Truncated("before the trailer"));
    }
    let header = SegmentHeader::decode(&rest[..head_len])
        .map_err(|e| SegmentError::Header(e.to_string()))?;
    let rest = &rest[head_len..];
    let (compressed, trailer) = rest.split_at(rest.len() - TRAILER);
    if &trailer[12..] != END {
        return Err(SegmentError::Truncated("no NODSEGEND trailer"));
    }
    let want_len = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
    let want_crc = u32::from_le_bytes(trailer[8..12].try_into().expect("4 bytes"));
    if want_len > MAX_BODY {
        return Err(SegmentError::BodyTooLarge(want_len));
    }
    if header.prev_sha256.len() != 32 {
        return Err(SegmentError::Header(format!(
            "prev_sha256 is {} bytes",
            header.prev_sha256.len()
        )));
    }
    let mut body = Vec::with_capacity(want_len.min(16 << 20) as usize);
    // Streamed, so a length the trailer lies about allocates nothing.
    let mut dec = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| SegmentError::Compression(e.to_string()))?
        .single_frame();
    (&mut dec)
        .take(want_len + 1)
        .read_to_end(&mut body)
        .map_err(|e| SegmentError::Compression(e.to_string()))?;
    if body.len() as u64 != want_len {
        return Err(SegmentError::BodyLength {
            want: want_len,
            got: body.len() as u64,
        });
    }
    if !dec.finish().is_empty() {
        return Err(SegmentError::Compression(
            "bytes after the zstd frame".into(),
        ));
    }
    let crc = crc32c::crc32c(&body);
    if crc != want_crc {
        return Err(SegmentError::Crc {
            want: want_crc,
            got: crc,
        });
    }
    let mut batches = Vec::new();
    let mut buf = body.as_slice();
    while !buf.is_empty() {
        let index = batches.len();
        let b =
            RevisionBatch::decode_length_delimited(&mut buf).map_err(|e| SegmentError::Batch {
                index,
                cause: e.to_string(),
            })?;
        check_batch(&b)?;
        batches.push(b);
    }
    check_revisions(header.first_revision, header.last_revision, &batches)?;
    Ok(Segment {
        header,
        batches,
        sha256: Sha256::digest(bytes).into(),
    })
}

/// Where a chain stands as its segments are read in order: the next
/// segment must start at `next_revision` and name `prev_sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub cluster_id: u64,
    pub next_revision: i64,
    pub prev_sha256: Sha256Digest,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SequenceError {
    #[error("segment is from cluster {got:016x}, the chain from {want:016x}")]
    Cluster { want: u64, got: u64 },
    #[error("segment starts at revision {got}, the chain needs {want} next (a segment is missing or repeated)")]
    Gap { want: i64, got: i64 },
    #[error("segment does not follow the one before it (prev_sha256 differs: a segment was replaced or reordered)")]
    Link,
}

impl Sequence {
    /// The start of a chain whose full snapshot is at `full_revision`, with
    /// the full file's own SHA-256.
    pub fn new(cluster_id: u64, full_revision: i64, full_sha256: Sha256Digest) -> Sequence {
        Sequence {
            cluster_id,
            next_revision: full_revision + 1,
            prev_sha256: full_sha256,
        }
    }

    /// Takes `segment` as the next one, or says why it cannot be.
    pub fn accept(&mut self, segment: &Segment) -> Result<(), SequenceError> {
        let h = &segment.header;
        if h.cluster_id != self.cluster_id {
            return Err(SequenceError::Cluster {
                want: self.cluster_id,
                got: h.cluster_id,
            });
        }
        if h.first_revision != self.next_revision {
            return Err(SequenceError::Gap {
                want: self.next_revision,
                got: h.first_revision,
            });
        }
        if h.prev_sha256 != self.prev_sha256 {
            return Err(SequenceError::Link);
        }
        self.next_revision = h.last_revision + 1;
        self.prev_sha256 = segment.sha256;
        Ok(())
    }

    /// The last revision the chain reaches so far.
    pub fn reached(&self) -> i64 {
        self.next_revision - 1
    }
}

/// A put event as the watch reports it (for the tests' batches).
#[cfg(test)]
pub(crate) fn put_event(kv: nod_proto::etcd::mvccpb::KeyValue) -> nod_proto::etcd::mvccpb::Event {
    nod_proto::etcd::mvccpb::Event {
        r#type: EventType::Put as i32,
        kv: Some(kv),
        prev_kv: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nod_proto::etcd::mvccpb::{Event, KeyValue};
    use nod_proto::nodbackuppb::LeaseSeen;
    use proptest::prelude::*;

    fn put(key: &str, rev: i64, created: i64, version: i64, lease: i64) -> Event {
        put_event(KeyValue {
            key: key.as_bytes().to_vec(),
            create_revision: created,
            mod_revision: rev,
            version,
            value: format!("value of {key} at {rev}").into_bytes(),
            lease,
        })
    }

    fn delete(key: &str, rev: i64) -> Event {
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec(),
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn batches(from: i64, n: i64) -> Vec<RevisionBatch> {
        (from..from + n)
            .map(|rev| RevisionBatch {
                revision: rev,
                events: if rev % 5 == 0 {
                    vec![delete(&format!("k{}", rev - 1), rev)]
                } else {
                    vec![
                        put(
                            &format!("k{rev}"),
                            rev,
                            rev,
                            1,
                            if rev % 3 == 0 { 7 } else { 0 },
                        ),
                        put("shared", rev, from, rev - from + 1, 0),
                    ]
                },
                leases: if rev % 3 == 0 {
                    vec![LeaseSeen {
                        id: 7,
                        granted_ttl: 60,
                    }]
                } else {
                    vec![]
                },
            })
            .collect()
    }

    const FULL_SHA: Sha256Digest = [0xab; 32];

    fn meta(cluster_id: u64, prev_sha256: Sha256Digest, created_unix_ms: i64) -> SegmentMeta {
        SegmentMeta {
            cluster_id,
            prev_sha256,
            created_unix_ms,
            auth_revision: 3,
        }
    }

    #[test]
    fn round_trip_and_chain() {
        let a = batches(11, 40);
        let b = batches(51, 25);
        let (bytes_a, sha_a) = encode(meta(9, FULL_SHA, 1_000), &a).unwrap();
        let (bytes_b, sha_b) = encode(meta(9, sha_a, 2_000), &b).unwrap();
        let seg_a = decode(&bytes_a).unwrap();
        let seg_b = decode(&bytes_b).unwrap();
        assert_eq!(seg_a.batches, a);
        assert_eq!(seg_b.batches, b);
        assert_eq!(
            (seg_a.header.first_revision, seg_a.header.last_revision),
            (11, 50)
        );
        assert_eq!(seg_a.header.created_unix_ms, 1_000);
        assert_eq!(seg_a.header.auth_revision, 3);
        assert_eq!(seg_a.sha256, sha_a);
        assert_eq!(seg_b.sha256, sha_b);

        let mut seq = Sequence::new(9, 10, FULL_SHA);
        seq.accept(&seg_a).unwrap();
        assert_eq!(seq.reached(), 50);
        seq.accept(&seg_b).unwrap();
        assert_eq!(seq.reached(), 75);

        // Out of order, repeated, skipped, swapped, or from elsewhere.
        let mut seq = Sequence::new(9, 10, FULL_SHA);
        assert_eq!(
            seq.accept(&seg_b),
            Err(SequenceError::Gap { want: 11, got: 51 })
        );
        seq.accept(&seg_a).unwrap();
        assert_eq!(
            seq.accept(&seg_a),
            Err(SequenceError::Gap { want: 51, got: 11 })
        );
        let mut other_full = Sequence::new(9, 10, [0xcd; 32]);
        assert_eq!(other_full.accept(&seg_a), Err(SequenceError::Link));
        let (forged, _) = encode(meta(9, [0; 32], 2_000), &b).unwrap();
        assert_eq!(
            seq.accept(&decode(&forged).unwrap()),
            Err(SequenceError::Link)
        );
        let mut elsewhere = Sequence::new(8, 10, FULL_SHA);
        assert_eq!(
            elsewhere.accept(&seg_a),
            Err(SequenceError::Cluster { want: 8, got: 9 })
        );
        // A refused segment leaves the sequence where it was.
        assert_eq!(seq.reached(), 50);
    }

    #[test]
    fn every_truncation_is_refused() {
        let (bytes, _) = encode(meta(1, FULL_SHA, 0), &batches(1, 30)).unwrap();
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "a prefix of {len} of {} bytes decoded",
                bytes.len()
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let (bytes, _) = encode(meta(1, FULL_SHA, 0), &batches(1, 30)).unwrap();
        let original = decode(&bytes).unwrap();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = bytes.clone();
                bad[i] ^= bit;
                match decode(&bad) {
                    Err(_) => {}
                    // A flip the format cannot see must not change what the
                    // segment says: a header varint that still decodes to a
                    // valid header, a zstd frame-header bit that decodes to
                    // the same body. The file's SHA-256 differs, so the
                    // next segment's link refuses it in a chain anyway.
                    Ok(seg) => {
                        assert_ne!(seg.sha256, original.sha256);
                        assert_eq!(
                            seg.batches, original.batches,
                            "byte {i} flipped changed the changes"
                        );
                        let h = &seg.header;
                        assert_eq!(
                            (h.first_revision, h.last_revision),
                            (
                                original.header.first_revision,
                                original.header.last_revision
                            ),
                            "byte {i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn lengths_from_the_file_are_bounded() {
        let (mut bytes, _) = encode(meta(1, FULL_SHA, 0), &batches(1, 3)).unwrap();
        bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(&bytes),
            Err(SegmentError::HeaderTooLarge(u32::MAX.into()))
        );

        let (mut bytes, _) = encode(meta(1, FULL_SHA, 0), &batches(1, 3)).unwrap();
        let n = bytes.len();
        bytes[n - TRAILER..n - TRAILER + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode(&bytes), Err(SegmentError::BodyTooLarge(u64::MAX)));

        // A zstd bomb: a small frame that inflates past what the trailer
        // says stops at the trailer's length + 1 byte.
        let zeros = vec![0u8; 8 << 20];
        let bomb = zstd::bulk::compress(&zeros, 3).unwrap();
        let head = SegmentHeader {
            cluster_id: 1,
            first_revision: 1,
            last_revision: 1,
            prev_sha256: FULL_SHA.to_vec(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&(head.len() as u32).to_le_bytes());
        f.extend_from_slice(&head);
        f.extend_from_slice(&bomb);
        f.extend_from_slice(&10u64.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(END);
        assert_eq!(
            decode(&f),
            Err(SegmentError::BodyLength { want: 10, got: 11 })
        );
    }

    #[test]
    fn bad_batches_are_refused_on_both_sides() {
        assert_eq!(encode(meta(1, FULL_SHA, 0), &[]), Err(SegmentError::Empty));
        let mut gap = batches(1, 4);
        gap.remove(2);
        assert!(matches!(
            encode(meta(1, FULL_SHA, 0), &gap),
            Err(SegmentError::Revisions { .. })
        ));
        // A key changed twice in one revision is kept as it happened.
        let mut twice = batches(1, 2);
        twice[1].events.push(delete("k2", 2));
        let (bytes, _) = encode(meta(1, FULL_SHA, 0), &twice).unwrap();
        assert_eq!(decode(&bytes).unwrap().batches, twice);
        let mut too_far = batches(MAX_REVISION, 1);
        too_far[0].revision = MAX_REVISION + 1;
        for kv in too_far[0].events.iter_mut().filter_map(|e| e.kv.as_mut()) {
            kv.mod_revision = MAX_REVISION + 1;
        }
        assert!(matches!(
            encode(meta(1, FULL_SHA, 0), &too_far),
            Err(SegmentError::Invalid { .. })
        ));
        let mut wrong_rev = batches(1, 2);
        wrong_rev[0].events[0].kv.as_mut().unwrap().mod_revision = 2;
        assert!(matches!(
            encode(meta(1, FULL_SHA, 0), &wrong_rev),
            Err(SegmentError::Invalid { revision: 1, .. })
        ));
        let mut empty = batches(1, 2);
        empty[1].events.clear();
        assert!(matches!(
            encode(meta(1, FULL_SHA, 0), &empty),
            Err(SegmentError::Invalid { .. })
        ));
        let mut bad_type = batches(1, 2);
        bad_type[0].events[0].r#type = 9;
        assert!(matches!(
            encode(meta(1, FULL_SHA, 0), &bad_type),
            Err(SegmentError::Invalid { .. })
        ));

        // A writer that skips the checks (a forged file) is caught on read.
        let good = batches(1, 3);
        let (bytes, _) = encode(meta(1, FULL_SHA, 0), &good).unwrap();
        let seg = decode(&bytes).unwrap();
        let mut body = Vec::new();
        for b in &gap {
            b.encode_length_delimited(&mut body).unwrap();
        }
        let forged = reframe(&seg.header, &body);
        assert!(matches!(
            decode(&forged),
            Err(SegmentError::Revisions { .. })
        ));
    }

    /// A segment with this header and body, framed correctly.
    fn reframe(header: &SegmentHeader, body: &[u8]) -> Vec<u8> {
        let head = header.encode_to_vec();
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&(head.len() as u32).to_le_bytes());
        f.extend_from_slice(&head);
        f.extend_from_slice(&zstd::bulk::compress(body, 3).unwrap());
        f.extend_from_slice(&(body.len() as u64).to_le_bytes());
        f.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        f.extend_from_slice(END);
        f
    }

    proptest! {
        #[test]
        fn random_batches_round_trip(
            first in 1i64..1_000_000,
            revisions in proptest::collection::vec(
                proptest::collection::btree_map("[a-z]{1,6}", (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40), 0i64..4), 1..6),
                1..20,
            ),
        ) {
            let batches: Vec<RevisionBatch> = revisions
                .into_iter()
                .enumerate()
                .map(|(i, keys)| {
                    let rev = first + i as i64;
                    RevisionBatch {
                        revision: rev,
                        events: keys
                            .into_iter()
                            .map(|(k, (is_put, value, lease))| if is_put {
                                put_event(KeyValue { key: k.into_bytes(), create_revision: first, mod_revision: rev, version: 1 + i as i64, value, lease })
                            } else {
                                delete(&k, rev)
                            })
                            .collect(),
                        leases: vec![],
                    }
                })
                .collect();
            let (bytes, sha) = encode(meta(42, FULL_SHA, 5), &batches).unwrap();
            let seg = decode(&bytes).unwrap();
            prop_assert_eq!(seg.sha256, sha);
            prop_assert_eq!(seg.header.first_revision, first);
            prop_assert_eq!(seg.header.last_revision, first + seg.batches.len() as i64 - 1);
            prop_assert_eq!(seg.batches, batches);
        }
    }
}
