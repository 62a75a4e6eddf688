//! Index entry keys, encoded so that byte order is value order.
//!
//! An entry is `u32 BE index id ‖ tuple ‖ esc(key) ‖ u64 BE main ‖ u64 BE
//! sub`: one per put record of an indexed key (the revision tells which
//! change of the key it indexes; the key index says whether that change is
//! the one visible at a revision). The tuple holds the index's fields in
//! declared order, each tagged with its type:
//!
//! | type | encoding |
//! |---|---|
//! | bool | `0x01` (false) or `0x02` (true) |
//! | number | `0x10` ‖ the f64's bits, big-endian, with the sign bit flipped if positive and every bit flipped if negative |
//! | string | `0x20` ‖ esc(UTF-8 bytes) |
//!
//! `esc` writes `0x00` as `0x00 0xFF` and ends with `0x00 0x01`
//! (the memcomparable scheme of FoundationDB's tuple layer): a string
//! sorts before every longer string it begins, and a field's encoding ends
//! where it ends, so all entries of one tuple are contiguous and sorted by
//! key, then revision. `-0.0` is written as `0.0`, NaN never; a decoder
//! refuses both, and any other byte string that no encoder writes, so a
//! decoded entry encodes back to the same bytes.

use crate::value::FieldValue;

const TAG_FALSE: u8 = 0x01;
const TAG_TRUE: u8 = 0x02;
const TAG_NUMBER: u8 = 0x10;
/// A string value's tag; `TAG_STRING ‖ esc_body(p)` starts the encoding
/// of every string that starts with `p`.
pub const TAG_STRING: u8 = 0x20;

/// Why bytes read back are not an index entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("index entry ends early: {0}")]
    Truncated(&'static str),
    #[error("index entry has an unknown type tag {0:#04x}")]
    UnknownTag(u8),
    #[error("index entry has a bad escape 0x00 {0:#04x}")]
    BadEscape(u8),
    #[error("index entry holds a number no encoder writes (NaN or -0)")]
    BadNumber,
    #[error("index entry holds a string that is not UTF-8")]
    NotUtf8,
    #[error("index entry has {0} bytes after its revision")]
    Trailing(usize),
}

/// Appends `bytes`, escaped and terminated.
pub fn esc(bytes: &[u8], out: &mut Vec<u8>) {
    esc_body(bytes, out);
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Appends `bytes` escaped, without the terminator: what the escaped
/// form of every byte string that starts with `bytes` starts with.
pub fn esc_body(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len() + 2);
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
}

/// Reads one escaped byte string off the front of `input`; returns it and
/// the rest.
pub fn unesc(input: &[u8]) -> Result<(Vec<u8>, &[u8]), DecodeError> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let Some(&b) = input.get(i) else {
            return Err(DecodeError::Truncated("an escaped string has no end"));
        };
        if b != 0 {
            out.push(b);
            i += 1;
            continue;
        }
        match input.get(i + 1) {
            Some(0xFF) => {
                out.push(0);
                i += 2;
            }
            Some(0x01) => return Ok((out, &input[i + 2..])),
            Some(&other) => return Err(DecodeError::BadEscape(other)),
            None => return Err(DecodeError::Truncated("an escape is cut")),
        }
    }
}

fn number_bits(n: f64) -> u64 {
    let n = if n == 0.0 { 0.0 } else { n };
    let bits = n.to_bits();
    if bits >> 63 == 0 {
        bits ^ (1 << 63)
    } else {
        !bits
    }
}

fn number_from_bits(enc: u64) -> f64 {
    let bits = if enc >> 63 == 1 {
        enc ^ (1 << 63)
    } else {
        !enc
    };
    f64::from_bits(bits)
}

/// Appends one value's encoding.
pub fn encode_value(v: &FieldValue, out: &mut Vec<u8>) {
    match v {
        FieldValue::Bool(false) => out.push(TAG_FALSE),
        FieldValue::Bool(true) => out.push(TAG_TRUE),
        FieldValue::Number(n) => {
            out.push(TAG_NUMBER);
            out.extend_from_slice(&number_bits(*n).to_be_bytes());
        }
        FieldValue::String(s) => {
            out.push(TAG_STRING);
            esc(s.as_bytes(), out);
        }
    }
}

/// Reads one value off the front of `input`; returns it and the rest.
pub fn decode_value(input: &[u8]) -> Result<(FieldValue, &[u8]), DecodeError> {
    let (&tag, rest) = input
        .split_first()
        .ok_or(DecodeError::Truncated("a value is missing"))?;
    match tag {
        TAG_FALSE => Ok((FieldValue::Bool(false), rest)),
        TAG_TRUE => Ok((FieldValue::Bool(true), rest)),
        TAG_NUMBER => {
            let (bytes, rest) = split(rest, "a number is cut")?;
            let n = number_from_bits(u64::from_be_bytes(bytes));
            if n.is_nan() || (n == 0.0 && n.is_sign_negative()) {
                return Err(DecodeError::BadNumber);
            }
            Ok((FieldValue::Number(n), rest))
        }
        TAG_STRING => {
            let (bytes, rest) = unesc(rest)?;
            let s = String::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?;
            Ok((FieldValue::String(s), rest))
        }
        other => Err(DecodeError::UnknownTag(other)),
    }
}

fn split<'a>(input: &'a [u8], what: &'static str) -> Result<([u8; 8], &'a [u8]), DecodeError> {
    if input.len() < 8 {
        return Err(DecodeError::Truncated(what));
    }
    let (head, rest) = input.split_at(8);
    let mut b = [0u8; 8];
    b.copy_from_slice(head);
    Ok((b, rest))
}

/// Every entry of index `id` starts with this.
pub fn index_prefix(id: u32) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

/// Every entry of index `id` whose tuple starts with `values` starts with
/// this (a tuple's encoding is self-delimiting).
pub fn tuple_prefix(id: u32, values: &[FieldValue]) -> Vec<u8> {
    let mut out = index_prefix(id);
    for v in values {
        encode_value(v, &mut out);
    }
    out
}

/// The least byte string greater than every string that starts with
/// `prefix`; `None` if there is none (`prefix` is all `0xFF`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// One decoded index entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryKey {
    pub index: u32,
    pub values: Vec<FieldValue>,
    pub key: Vec<u8>,
    pub main: u64,
    pub sub: u64,
}

impl EntryKey {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = tuple_prefix(self.index, &self.values);
        esc(&self.key, &mut out);
        out.extend_from_slice(&self.main.to_be_bytes());
        out.extend_from_slice(&self.sub.to_be_bytes());
        out
    }

    /// Decodes an entry of an index of `arity` fields (the tuple does not
    /// say where it ends and the key begins; the index's declaration does).
    pub fn decode(bytes: &[u8], arity: usize) -> Result<EntryKey, DecodeError> {
        if bytes.len() < 4 {
            return Err(DecodeError::Truncated("the index id is cut"));
        }
        let (id, mut rest) = bytes.split_at(4);
        let index = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
        let mut values = Vec::with_capacity(arity.min(crate::spec::MAX_FIELDS));
        for _ in 0..arity {
            let (v, r) = decode_value(rest)?;
            values.push(v);
            rest = r;
        }
        let (key, rest) = unesc(rest)?;
        let (main, rest) = split(rest, "the revision is cut")?;
        let (sub, rest) = split(rest, "the revision is cut")?;
        if !rest.is_empty() {
            return Err(DecodeError::Trailing(rest.len()));
        }
        Ok(EntryKey {
            index,
            values,
            key,
            main: u64::from_be_bytes(main),
            sub: u64::from_be_bytes(sub),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(n: f64) -> FieldValue {
        FieldValue::number(n).unwrap()
    }

    fn enc(v: &FieldValue) -> Vec<u8> {
        let mut out = Vec::new();
        encode_value(v, &mut out);
        out
    }

    #[test]
    fn numbers_at_the_edges_encode_in_order() {
        let ordered = [
            f64::NEG_INFINITY,
            f64::MIN,
            -1e300,
            -2.0,
            -1.0,
            -f64::MIN_POSITIVE,
            -5e-324,
            0.0,
            5e-324,
            f64::MIN_POSITIVE,
            1.0,
            9007199254740992.0,
            9007199254740993.0,
            1e300,
            f64::MAX,
            f64::INFINITY,
        ];
        for w in ordered.windows(2) {
            let (a, b) = (num(w[0]), num(w[1]));
            let want = w[0].partial_cmp(&w[1]).unwrap();
            assert_eq!(enc(&a).cmp(&enc(&b)), want, "{} vs {}", w[0], w[1]);
            assert_eq!(a.cmp(&b), want);
        }
        assert_eq!(enc(&num(-0.0)), enc(&num(0.0)));
        // The number 0 is 0x10 0x80 0x00 ...: the sign bit flipped.
        assert_eq!(enc(&num(0.0)), [0x10, 0x80, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn escaping_keeps_prefixes_first_and_zero_bytes_apart() {
        let e = |b: &[u8]| {
            let mut out = Vec::new();
            esc(b, &mut out);
            out
        };
        assert_eq!(e(b"a\0b"), b"a\0\xffb\0\x01");
        assert!(e(b"a") < e(b"a\0"));
        assert!(e(b"a\0") < e(b"a\x01"));
        assert!(e(b"a") < e(b"ab"));
        assert!(e(b"") < e(b"\0"));
        let (back, rest) = unesc(b"a\0\xffb\0\x01xyz").unwrap();
        assert_eq!((back.as_slice(), rest), (&b"a\0b"[..], &b"xyz"[..]));
    }

    #[test]
    fn malformed_entries_are_refused_not_panicked_on() {
        let good = EntryKey {
            index: 7,
            values: vec![FieldValue::String("Oslo".into()), num(31.0)],
            key: b"/users/a".to_vec(),
            main: 42,
            sub: 1,
        }
        .encode();
        assert_eq!(EntryKey::decode(&good, 2).unwrap().encode(), good);
        // Every truncation fails cleanly.
        for n in 0..good.len() {
            assert!(EntryKey::decode(&good[..n], 2).is_err(), "cut at {n}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            EntryKey::decode(&trailing, 2),
            Err(DecodeError::Trailing(1))
        );
        let mut tag = good.clone();
        tag[4] = 0x30;
        assert_eq!(
            EntryKey::decode(&tag, 2),
            Err(DecodeError::UnknownTag(0x30))
        );
        let mut escape = good.clone();
        escape[6] = 0x00; // "O\0lo": an escape 0x00 0x6C
        assert_eq!(
            EntryKey::decode(&escape, 2),
            Err(DecodeError::BadEscape(b'l'))
        );
        let nan = [
            &[TAG_NUMBER][..],
            &(f64::NAN.to_bits() ^ (1 << 63)).to_be_bytes(),
        ]
        .concat();
        assert_eq!(decode_value(&nan).unwrap_err(), DecodeError::BadNumber);
        let neg_zero = [&[TAG_NUMBER][..], &(!(-0.0f64).to_bits()).to_be_bytes()].concat();
        assert_eq!(decode_value(&neg_zero).unwrap_err(), DecodeError::BadNumber);
        let bad_utf8 = [TAG_STRING, 0xC3, 0x28, 0x00, 0x01];
        assert_eq!(decode_value(&bad_utf8).unwrap_err(), DecodeError::NotUtf8);
    }

    #[test]
    fn prefix_end_carries_past_ff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
