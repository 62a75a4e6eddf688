//! The gRPC codec of every generated client and server: prost's, but an
//! answer's buffer is reserved at its exact encoded size first. A Range
//! answer's key-values are encoded and dropped one at a time
//! (`encode_range`, called by `range::RangeCodec`, the KV server's Range).
//!
//! tonic-prost's codec lets prost write into a buffer that doubles as it
//! fills, so a 1 GiB Range answer was held three times at its peak: the
//! key-values, the half-full buffer and the one it was copied into (a
//! member's peak RSS for one 1 GiB range was 0.8× etcd 3.6's). Reserving
//! `encoded_len()` makes one allocation of the right size; encoding a
//! `RangeResponse`'s `kvs` one by one (the same bytes as prost's, field by
//! field in tag order) frees each value as its bytes are written, so the
//! answer is about once in memory. Decoding is prost's, unchanged.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::Status;

use crate::etcd::etcdserverpb::RangeResponse;

/// The codec named in `build.rs` (`codec_path`).
#[derive(Debug, Clone)]
pub struct ExactCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ExactCodec<T, U> {
    fn default() -> Self {
        ExactCodec(PhantomData)
    }
}

impl<T, U> Codec for ExactCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ExactEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ExactEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

#[derive(Debug, Clone)]
pub struct ExactEncoder<T>(PhantomData<T>);

impl<T: Message + 'static> Encoder for ExactEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        // Range answers go through `range::RangeCodec`, which drops their
        // key-values as it writes them (`encode_range`).
        // Cannot fail: the buffer grows as needed.
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding an answer: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// `r` as prost encodes it, its key-values taken out and each dropped
/// once written.
pub fn encode_range(r: &mut RangeResponse, buf: &mut impl prost::bytes::BufMut) {
    use prost::encoding;
    if let Some(h) = &r.header {
        encoding::message::encode(1, h, buf);
    }
    for kv in std::mem::take(&mut r.kvs) {
        encoding::message::encode(2, &kv, buf);
    }
    if r.more {
        encoding::bool::encode(3, &r.more, buf);
    }
    if r.count != 0 {
        encoding::int64::encode(4, &r.count, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::etcdserverpb::ResponseHeader;
    use crate::etcd::mvccpb::KeyValue;

    /// The same bytes as prost's, for answers with and without each field.
    #[test]
    fn a_range_answer_encodes_as_prost_does() {
        let kv = |i: i64| KeyValue {
            key: format!("k{i}").into_bytes(),
            value: vec![i as u8; (i as usize * 37) % 300],
            create_revision: i,
            mod_revision: i * 2,
            version: i % 3,
            lease: -i,
        };
        let header = ResponseHeader {
            cluster_id: 7,
            member_id: 9,
            revision: 1 << 40,
            raft_term: 3,
        };
        let cases = [
            RangeResponse::default(),
            RangeResponse {
                header: Some(header),
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
                kvs: (0..50).map(kv).collect(),
                more: false,
                count: 50,
            },
            RangeResponse {
                header: None,
                kvs: (0..3).map(kv).collect(),
                more: true,
                count: 1 << 33,
            },
        ];
        for case in cases {
            let want = case.encode_to_vec();
            let mut got = Vec::new();
            let mut r = case.clone();
            encode_range(&mut r, &mut got);
            assert_eq!(got, want, "{case:?}");
            assert!(r.kvs.is_empty(), "the key-values were taken");
            assert_eq!(RangeResponse::decode(got.as_slice()).unwrap(), case);
        }
    }
}
