//! A Range answer as the server sends it: either a `RangeResponse`, or
//! its key-values already encoded, copied from the server's stored
//! records (each record holds its encoded `mvccpb.KeyValue`).
//!
//! A large answer was held twice at its peak: once as `KeyValue`s, once
//! as the buffer the codec encodes them into (their memory, freed on
//! another thread than the one that allocated it, did not go back to the
//! system while the answer was encoded). Here the store writes each
//! record's bytes into chunks, never building a `KeyValue`; the first
//! chunks are ordinary heap memory, the rest anonymous mappings of their
//! own, and the codec unmaps each mapping once it is copied, so the
//! answer is held about once however large it is.

use std::marker::PhantomData;

use memmap2::MmapMut;
use prost::bytes::BufMut;
use prost::encoding;
use prost::Message as _;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::Status;

use crate::codec::encode_range;
use crate::etcd::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};

/// Bytes held on the heap before the chunks move to mappings: answers
/// under it (nearly all) never map memory.
const HEAP_BYTES: usize = 1 << 20;
/// The size of each mapped chunk (a key-value larger than that gets a
/// chunk of its own size).
const MAPPED_BYTES: usize = 32 << 20;
/// `RangeResponse.kvs`: field 2, length-delimited.
const KVS_TAG: u8 = (2 << 3) | 2;

/// What the KV service's Range method answers.
#[derive(Debug)]
pub enum RangeAnswer {
    Message(RangeResponse),
    Encoded(EncodedRange),
}

impl RangeAnswer {
    /// The length of the `RangeResponse` this encodes as.
    pub fn encoded_len(&self) -> usize {
        match self {
            RangeAnswer::Message(r) => r.encoded_len(),
            RangeAnswer::Encoded(e) => e.encoded_len(),
        }
    }

    /// Writes the answer as prost would encode the `RangeResponse`,
    /// dropping each key-value (or chunk of them) once written.
    pub fn encode(self, buf: &mut impl BufMut) {
        match self {
            RangeAnswer::Message(mut r) => encode_range(&mut r, buf),
            RangeAnswer::Encoded(e) => e.encode(buf),
        }
    }

    /// The encoded answer, in a buffer of its size.
    pub fn encode_to_vec(self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        buf
    }
}

/// A `RangeResponse` whose key-values are already encoded.
#[derive(Debug, Default)]
pub struct EncodedRange {
    pub header: Option<ResponseHeader>,
    pub kvs: EncodedKvs,
    pub more: bool,
    pub count: i64,
}

impl EncodedRange {
    /// The length of the `RangeResponse` this encodes as.
    pub fn encoded_len(&self) -> usize {
        self.header
            .as_ref()
            .map_or(0, |h| encoding::message::encoded_len(1, h))
            + self.kvs.bytes
            + if self.more { 2 } else { 0 }
            + if self.count != 0 {
                encoding::int64::encoded_len(4, &self.count)
            } else {
                0
            }
    }

    /// Writes the answer as prost would encode the `RangeResponse`,
    /// releasing each chunk of key-values once it is written.
    pub fn encode(self, buf: &mut impl BufMut) {
        if let Some(h) = &self.header {
            encoding::message::encode(1, h, buf);
        }
        for chunk in self.kvs.chunks {
            buf.put_slice(chunk.filled());
        }
        if self.more {
            encoding::bool::encode(3, &self.more, buf);
        }
        if self.count != 0 {
            encoding::int64::encode(4, &self.count, buf);
        }
    }
}

/// Encoded `kvs` entries of a `RangeResponse`, in order.
#[derive(Debug)]
pub struct EncodedKvs {
    chunks: Vec<Chunk>,
    bytes: usize,
    len: usize,
    heap_bytes: usize,
    mapped_bytes: usize,
}

impl Default for EncodedKvs {
    fn default() -> Self {
        Self::with_sizes(HEAP_BYTES, MAPPED_BYTES)
    }
}

#[derive(Debug)]
enum Chunk {
    /// Up to `limit` bytes on the heap.
    Heap {
        buf: Vec<u8>,
        limit: usize,
    },
    Mapped {
        map: MmapMut,
        len: usize,
    },
}

impl Chunk {
    fn filled(&self) -> &[u8] {
        match self {
            Chunk::Heap { buf, .. } => buf,
            Chunk::Mapped { map, len } => &map[..*len],
        }
    }

    /// Appends `parts` if they fit; false if they do not.
    fn append(&mut self, parts: &[&[u8]], n: usize) -> bool {
        match self {
            Chunk::Heap { buf, limit } => {
                if buf.len() + n > *limit {
                    return false;
                }
                parts.iter().for_each(|p| buf.extend_from_slice(p));
            }
            Chunk::Mapped { map, len } => {
                if *len + n > map.len() {
                    return false;
                }
                for p in parts {
                    map[*len..*len + p.len()].copy_from_slice(p);
                    *len += p.len();
                }
            }
        }
        true
    }
}

impl EncodedKvs {
    /// Chunks on the heap up to `heap_bytes` in all, then mappings of
    /// `mapped_bytes` each.
    pub fn with_sizes(heap_bytes: usize, mapped_bytes: usize) -> Self {
        EncodedKvs {
            chunks: Vec::new(),
            bytes: 0,
            len: 0,
            heap_bytes,
            mapped_bytes,
        }
    }

    /// Appends one key-value, given as its encoded `mvccpb.KeyValue`.
    pub fn push(&mut self, kv: &[u8]) {
        // The field's tag and the key-value's length (a varint, at most 10 bytes).
        let mut head = [0u8; 11];
        head[0] = KVS_TAG;
        let unused = {
            let mut rest = &mut head[1..];
            encoding::encode_varint(kv.len() as u64, &mut rest);
            rest.len()
        };
        let head = &head[..head.len() - unused];
        let n = head.len() + kv.len();
        let parts = [head, kv];
        let fits = self.chunks.last_mut().is_some_and(|c| c.append(&parts, n));
        if !fits {
            let mut chunk = self.chunk_for(n);
            let added = chunk.append(&parts, n);
            debug_assert!(added, "a new chunk holds what it was made for");
            self.chunks.push(chunk);
        }
        self.bytes += n;
        self.len += 1;
    }

    /// A chunk for at least `n` bytes: on the heap while the answer is
    /// small, else a mapping (the heap if the system refuses one).
    fn chunk_for(&self, n: usize) -> Chunk {
        if self.bytes + n <= self.heap_bytes {
            return Chunk::Heap {
                buf: Vec::new(),
                limit: self.heap_bytes,
            };
        }
        let size = n.max(self.mapped_bytes);
        match MmapMut::map_anon(size) {
            Ok(map) => Chunk::Mapped { map, len: 0 },
            Err(_) => Chunk::Heap {
                buf: Vec::with_capacity(size),
                limit: size,
            },
        }
    }

    /// How many key-values.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many of the chunks are mappings (for the tests).
    pub fn mapped_chunks(&self) -> usize {
        self.chunks
            .iter()
            .filter(|c| matches!(c, Chunk::Mapped { .. }))
            .count()
    }
}

/// The Range method's codec: encodes a `RangeAnswer` into a buffer of its
/// exact size; decodes requests as prost does.
#[derive(Debug, Clone)]
pub struct RangeCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for RangeCodec<T, U> {
    fn default() -> Self {
        RangeCodec(PhantomData)
    }
}

impl Codec for RangeCodec<RangeAnswer, RangeRequest> {
    type Encode = RangeAnswer;
    type Decode = RangeRequest;
    type Encoder = RangeEncoder;
    type Decoder = tonic_prost::ProstDecoder<RangeRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        RangeEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

#[derive(Debug, Clone)]
pub struct RangeEncoder;

impl Encoder for RangeEncoder {
    type Item = RangeAnswer;
    type Error = Status;

    fn encode(&mut self, item: RangeAnswer, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::mvccpb::KeyValue;

    fn kv(i: i64, size: usize) -> KeyValue {
        KeyValue {
            key: format!("k{i:05}").into_bytes(),
            value: (0..size).map(|b| (b as i64 * 31 + i) as u8).collect(),
            create_revision: i,
            mod_revision: i * 2,
            version: i % 3,
            lease: -i,
        }
    }

    fn encoded(r: &RangeResponse, kvs: EncodedKvs) -> EncodedRange {
        let mut kvs = kvs;
        for kv in &r.kvs {
            kvs.push(&kv.encode_to_vec());
        }
        EncodedRange {
            header: r.header,
            kvs,
            more: r.more,
            count: r.count,
        }
    }

    /// The bytes prost writes for the same answer, whatever the chunking:
    /// all on the heap, heap then mappings, a key-value larger than a
    /// mapping, and empty values.
    #[test]
    fn an_encoded_answer_is_prosts_encoding() {
        let header = ResponseHeader {
            cluster_id: 7,
            member_id: 9,
            revision: 1 << 40,
            raft_term: 3,
        };
        let answers = [
            RangeResponse::default(),
            RangeResponse {
                header: Some(header),
                count: 0,
                ..Default::default()
            },
            RangeResponse {
                header: Some(ResponseHeader::default()),
                kvs: vec![KeyValue::default()],
                more: true,
                count: -1,
            },
            RangeResponse {
                header: Some(header),
                kvs: (0..200).map(|i| kv(i, (i as usize * 37) % 300)).collect(),
                more: false,
                count: 200,
            },
            RangeResponse {
                header: None,
                kvs: vec![kv(1, 10), kv(2, 5000), kv(3, 0), kv(4, 200)],
                more: true,
                count: 1 << 33,
            },
        ];
        let sizes = [(HEAP_BYTES, MAPPED_BYTES), (0, 4096), (512, 1024), (1, 1)];
        for r in &answers {
            let want = r.encode_to_vec();
            for (heap, mapped) in sizes {
                let e = encoded(r, EncodedKvs::with_sizes(heap, mapped));
                assert_eq!(e.kvs.len(), r.kvs.len());
                assert_eq!(e.encoded_len(), want.len(), "{heap}/{mapped}");
                let mut got = Vec::new();
                e.encode(&mut got);
                assert_eq!(got, want, "{heap}/{mapped}: {r:?}");
                assert_eq!(RangeResponse::decode(got.as_slice()).unwrap(), *r);
            }
        }
    }

    /// Past the heap's share, key-values go to mappings of the given
    /// size, each filled with as many whole key-values as it holds.
    #[test]
    fn a_large_answer_is_held_in_mappings() {
        // Key-values of one encoded size.
        let same = |i: i64| KeyValue {
            create_revision: 1000 + i,
            mod_revision: 2000 + i,
            version: 1,
            lease: 0,
            ..kv(i, 280)
        };
        let r = RangeResponse {
            kvs: (0..1000).map(same).collect(),
            count: 1000,
            ..Default::default()
        };
        let each = 1 + 2 + same(0).encoded_len();
        assert!(r.kvs.iter().all(|kv| 3 + kv.encoded_len() == each));
        let e = encoded(&r, EncodedKvs::with_sizes(4096, 16384));
        let on_heap = 4096 / each;
        let per_map = 16384 / each;
        assert_eq!(e.kvs.mapped_chunks(), (1000 - on_heap).div_ceil(per_map));
        assert_eq!(e.kvs.chunks.len(), 1 + e.kvs.mapped_chunks());
        let small = encoded(
            &RangeResponse {
                kvs: (0..10).map(|i| kv(i, 280)).collect(),
                ..Default::default()
            },
            EncodedKvs::default(),
        );
        assert_eq!(small.kvs.mapped_chunks(), 0, "a small answer maps nothing");
    }
}
