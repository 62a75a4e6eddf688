//! The property every index scan relies on: the byte order of encoded
//! entries is the order of (tuple, key, revision), and every entry decodes
//! back to what was encoded.

use nod_query::codec::{decode_value, encode_value, tuple_prefix, EntryKey};
use nod_query::FieldValue;
use proptest::prelude::*;

fn value() -> impl Strategy<Value = FieldValue> {
    prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        // Every bit pattern but NaN: subnormals, infinities, -0.
        any::<u64>().prop_filter_map("not NaN", |b| FieldValue::number(f64::from_bits(b))),
        // Small integers and halves, so equal numbers come up often.
        (-20i32..20).prop_map(|n| FieldValue::number(f64::from(n) / 2.0).unwrap()),
        // Strings with zero bytes, prefixes of each other, and non-ASCII.
        "[a\\x00\\x01b\u{e9}\u{ff}\u{1F600}]{0,6}".prop_map(FieldValue::String),
    ]
}

fn entry(arity: usize) -> impl Strategy<Value = EntryKey> {
    (
        0u32..3,
        proptest::collection::vec(value(), arity),
        proptest::collection::vec(
            prop_oneof![Just(0u8), Just(1), Just(0xFF), any::<u8>()],
            0..6,
        ),
        0u64..4,
        0u64..3,
    )
        .prop_map(|(index, values, key, main, sub)| EntryKey {
            index,
            values,
            key,
            main,
            sub,
        })
}

fn model_cmp(a: &EntryKey, b: &EntryKey) -> std::cmp::Ordering {
    (a.index, &a.values, &a.key, a.main, a.sub).cmp(&(b.index, &b.values, &b.key, b.main, b.sub))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn two_entries_order_like_their_fields(a in entry(2), b in entry(2)) {
        prop_assert_eq!(a.encode().cmp(&b.encode()), model_cmp(&a, &b));
    }

    #[test]
    fn entries_decode_to_what_was_encoded(e in entry(3)) {
        let bytes = e.encode();
        let back = EntryKey::decode(&bytes, 3).unwrap();
        prop_assert_eq!(back.encode(), bytes);
        prop_assert_eq!(back, e);
    }

    #[test]
    fn a_tuple_prefix_holds_exactly_its_tuples_entries(a in entry(2), b in entry(2)) {
        // Scanning tuple_prefix(id, [v]) finds an entry iff its first
        // value is v: no value's encoding is a prefix of another's.
        let p = tuple_prefix(a.index, &a.values[..1]);
        let inside = b.encode().starts_with(&p);
        prop_assert_eq!(inside, b.index == a.index && b.values[0] == a.values[0]);
    }

    #[test]
    fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..40), arity in 0usize..5) {
        if let Ok(e) = EntryKey::decode(&bytes, arity) {
            prop_assert_eq!(e.encode(), bytes.clone());
        }
        if let Ok((v, rest)) = decode_value(&bytes) {
            let mut again = Vec::new();
            encode_value(&v, &mut again);
            again.extend_from_slice(rest);
            prop_assert_eq!(again, bytes);
        }
    }
}
