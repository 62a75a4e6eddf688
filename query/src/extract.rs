//! The tuples one document gives several indexes, in one pass over its
//! text, keeping only the declared fields.
//!
//! Every member parses every indexed put in its apply loop, so this is on
//! the write path. Parsing the document into a `serde_json::Value` first
//! allocated every key and string of it (about ten allocations for a
//! four-field document) to keep one or two of them. Here the document is
//! walked with serde's visitors: keys are compared where they lie in the
//! text, and only a declared field's string is copied.
//!
//! The walk must accept exactly the documents `serde_json::from_slice::<
//! Value>` accepts and find exactly the values `FieldPath::lookup` finds
//! in them, or an index would hold a document a prefix scan (which
//! evaluates the `Value`) does not match. So it:
//! - drives serde_json's own parser through `deserialize_any` everywhere,
//!   never `IgnoredAny` (which skips numbers without the range checks
//!   that make `1e400` an error, and strings without checking their
//!   UTF-8), and checks for trailing characters as `from_slice` does;
//! - lets a repeated key's last value win, as a `Value` object does
//!   (`{"a":{"b":1},"a":2}` has no `a.b`);
//! - reads numbers as `Value::as_f64` does (`u64`/`i64` converted).
//!
//! `tests::the_walk_agrees_with_the_value_parse` checks all of this
//! against the `Value` route on generated and mutated documents. It holds
//! while serde_json's `arbitrary_precision` and `raw_value` features are
//! off: they make `deserialize_any` hand numbers and raw values over as
//! objects with private keys. Features are unified per build, so a test
//! of this crate alone would not see one that only the server's build
//! turns on; `node`'s `the_json_parser_has_no_private_object_keys` checks
//! the server's build.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::spec::{IndexSpec, Skip, MAX_INDEXED_VALUE};
use crate::value::{FieldType, FieldValue};

/// What a declared path reaches in a document.
#[derive(Clone, Debug, PartialEq)]
enum Leaf {
    Missing,
    Bool(bool),
    Number(f64),
    String(String),
    /// `null`, an array or an object: never an indexed type.
    Other,
}

/// The tuple `value` gives each of `specs` (in their order), or why it
/// gives none: one pass over `value` for all of them.
pub fn tuples(specs: &[&IndexSpec], value: &[u8]) -> Vec<Result<Vec<FieldValue>, Skip>> {
    if value.len() > MAX_INDEXED_VALUE {
        return specs.iter().map(|_| Err(Skip::TooLarge)).collect();
    }
    let segs: Vec<&[String]> = specs
        .iter()
        .flat_map(|s| s.fields.iter().map(|f| f.path.segments()))
        .collect();
    let Some(mut leaves) = walk(&segs, value) else {
        return specs.iter().map(|_| Err(Skip::NotJson)).collect();
    };
    let mut at = 0;
    specs
        .iter()
        .map(|spec| {
            let mine = &mut leaves[at..at + spec.fields.len()];
            at += spec.fields.len();
            spec.fields
                .iter()
                .zip(mine)
                .enumerate()
                .map(|(i, (f, leaf))| {
                    let v = match (f.ty, std::mem::replace(leaf, Leaf::Missing)) {
                        (_, Leaf::Missing) => return Err(Skip::Missing(i)),
                        (FieldType::Bool, Leaf::Bool(b)) => Some(FieldValue::Bool(b)),
                        (FieldType::Number, Leaf::Number(n)) => FieldValue::number(n),
                        (FieldType::String, Leaf::String(s)) => Some(FieldValue::String(s)),
                        _ => None,
                    };
                    v.ok_or(Skip::WrongType(i))
                })
                .collect()
        })
        .collect()
}

/// What each path (its segments) reaches in `value`; `None` if `value`
/// is not JSON.
fn walk(segs: &[&[String]], value: &[u8]) -> Option<Vec<Leaf>> {
    let mut leaves = vec![Leaf::Missing; segs.len()];
    let mut de = serde_json::Deserializer::from_slice(value);
    Node {
        segs,
        at: None,
        depth: 0,
        leaves: &mut leaves,
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(leaves)
}

/// The keys from the top of the document to a value, innermost first.
struct Chain<'a> {
    key: &'a str,
    up: Option<&'a Chain<'a>>,
}

/// Whether path `segs` goes through the value `at` (at `depth`) names:
/// its first `depth` segments are those keys.
fn through(segs: &[String], at: Option<&Chain>, depth: usize) -> bool {
    if segs.len() < depth {
        return false;
    }
    let mut link = at;
    for seg in segs[..depth].iter().rev() {
        match link {
            Some(c) if c.key == seg.as_str() => link = c.up,
            _ => return false,
        }
    }
    true
}

/// One value of the document: `at` names it, `depth` keys down.
/// Allocates nothing but a declared field's string.
struct Node<'a> {
    segs: &'a [&'a [String]],
    at: Option<&'a Chain<'a>>,
    depth: usize,
    leaves: &'a mut [Leaf],
}

impl Node<'_> {
    /// A value no path goes into: parsed and checked, nothing kept.
    fn checked_only() -> Node<'static> {
        Node {
            segs: &[],
            at: None,
            depth: 0,
            leaves: &mut [],
        }
    }

    /// Sets what the paths that end at this value reach.
    fn reach(&mut self, leaf: impl Fn() -> Leaf) {
        if self.at.is_none() {
            return;
        }
        for (p, segs) in self.segs.iter().enumerate() {
            if segs.len() == self.depth && through(segs, self.at, self.depth) {
                self.leaves[p] = leaf();
            }
        }
    }

    /// A value inside this one, under `key` (`None`: an array element,
    /// which no path goes through).
    fn child<'b>(&'b mut self, at: Option<&'b Chain<'b>>) -> Node<'b> {
        Node {
            segs: self.segs,
            at,
            depth: self.depth + 1,
            leaves: &mut *self.leaves,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(mut self, b: bool) -> Result<(), E> {
        self.reach(|| Leaf::Bool(b));
        Ok(())
    }
    fn visit_i64<E: de::Error>(mut self, n: i64) -> Result<(), E> {
        self.reach(|| Leaf::Number(n as f64));
        Ok(())
    }
    fn visit_u64<E: de::Error>(mut self, n: u64) -> Result<(), E> {
        self.reach(|| Leaf::Number(n as f64));
        Ok(())
    }
    fn visit_f64<E: de::Error>(mut self, n: f64) -> Result<(), E> {
        // A `Value` turns a non-finite float into null; serde_json's
        // parser gives none (out of range is an error), but agree anyway.
        if n.is_finite() {
            self.reach(|| Leaf::Number(n));
        } else {
            self.reach(|| Leaf::Other);
        }
        Ok(())
    }
    fn visit_str<E: de::Error>(mut self, s: &str) -> Result<(), E> {
        self.reach(|| Leaf::String(s.to_owned()));
        Ok(())
    }
    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.reach(|| Leaf::Other);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.reach(|| Leaf::Other);
        // No path goes into an array: its elements are only checked.
        while seq.next_element_seed(Node::checked_only())?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.reach(|| Leaf::Other);
        let live = self
            .segs
            .iter()
            .any(|s| s.len() > self.depth && through(s, self.at, self.depth));
        if !live {
            // No path goes through this object: its keys and values are
            // only checked.
            while map.next_key_seed(AnyKey)?.is_some() {
                map.next_value_seed(Node::checked_only())?;
            }
            return Ok(());
        }
        while let Some(key) = map.next_key_seed(Key)? {
            let here = Chain {
                key: &key,
                up: self.at,
            };
            let depth = self.depth + 1;
            // A repeated key's last value wins: what an earlier one gave
            // the paths below it is forgotten.
            for (p, segs) in self.segs.iter().enumerate() {
                if segs.len() > depth && through(segs, Some(&here), depth) {
                    self.leaves[p] = Leaf::Missing;
                }
            }
            map.next_value_seed(self.child(Some(&here)))?;
        }
        Ok(())
    }
}

/// An object's key, borrowed from the text unless it has escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

/// An object's key that no path needs: checked (its escapes and UTF-8)
/// by serde_json's parser as a `Value`'s keys are, not kept.
struct AnyKey;

impl<'de> DeserializeSeed<'de> for AnyKey {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for AnyKey {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::IndexField;
    use crate::FieldPath;
    use proptest::prelude::*;

    /// The route this module replaces: parse into a `Value`, then look
    /// each field up.
    fn by_value(spec: &IndexSpec, value: &[u8]) -> Result<Vec<FieldValue>, Skip> {
        if value.len() > MAX_INDEXED_VALUE {
            return Err(Skip::TooLarge);
        }
        let doc: serde_json::Value = serde_json::from_slice(value).map_err(|_| Skip::NotJson)?;
        spec.fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let v = f.path.lookup(&doc).ok_or(Skip::Missing(i))?;
                FieldValue::from_json(v, f.ty).ok_or(Skip::WrongType(i))
            })
            .collect()
    }

    fn spec(fields: &[(&str, FieldType)]) -> IndexSpec {
        IndexSpec {
            name: "t".into(),
            prefix: b"/t/".to_vec(),
            fields: fields
                .iter()
                .map(|(p, ty)| IndexField {
                    path: FieldPath::parse(p).unwrap(),
                    ty: *ty,
                })
                .collect(),
            unique: false,
        }
    }

    fn specs() -> Vec<IndexSpec> {
        use FieldType::*;
        vec![
            spec(&[("a", String)]),
            spec(&[("a", Number), ("b", Bool)]),
            spec(&[("a.b", Number)]),
            spec(&[("a.b.c", String), ("b", String)]),
            spec(&[("\"é\"", String)]),
            spec(&[("b", Number), ("a", Bool), ("a.b", String), ("c", Number)]),
            spec(&[("a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a", Number)]),
            spec(&[("\"$serde_json::private::RawValue\"", String)]),
        ]
    }

    fn check(text: &[u8]) {
        let all = specs();
        let refs: Vec<&IndexSpec> = all.iter().collect();
        let got = tuples(&refs, text);
        for (s, g) in all.iter().zip(&got) {
            assert_eq!(
                *g,
                by_value(s, text),
                "{:?} for {}",
                s.fields,
                String::from_utf8_lossy(text)
            );
        }
        // One index at a time gives the same as all at once.
        for (s, g) in all.iter().zip(&got) {
            assert_eq!(tuples(&[s], text), vec![g.clone()]);
        }
    }

    #[test]
    fn the_cases_the_value_parse_decides_are_decided_alike() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let cases: Vec<Vec<u8>> = [
            r#"{"a":"x","b":true}"#,
            r#"{"a":1,"b":false}"#,
            r#"{"a":{"b":2}}"#,
            r#"{"a":{"b":2},"a":3}"#,
            r#"{"a":3,"a":{"b":2}}"#,
            r#"{"a":{"b":{"c":"deep"}},"b":"y"}"#,
            r#"{"a":{"b":{"c":"deep"}},"a":{"b":{}}}"#,
            r#"{"a":"x","a":5}"#,
            r#"{"\u00e9":"accent"}"#,
            r#"{"é":"plain"}"#,
            r#"{"a":"x\ny\u0041"}"#,
            r#"{"a":1e400}"#,
            r#"{"z":1e400,"a":"x"}"#,
            r#"{"z":{"y":1e400},"a":"x"}"#,
            r#"{"z":{"y":"\ud800"},"a":"x"}"#,
            r#"{"a":-0.0,"b":true}"#,
            r#"{"a":-0.0e5,"b":true}"#,
            r#"{"a":1e-400,"b":true}"#,
            r#"{"a":9223372036854775808,"b":true}"#,
            r#"{"a":18446744073709551615,"b":true}"#,
            r#"{"a":"\ud83d\ude00"}"#,
            r#"{"a":"😀 é \u00e9"}"#,
            " \n{ \"a\" :\t\"x\" , \"b\" : true }\r\n",
            r#"{"$serde_json::private::RawValue":"{\"a\":\"x\"}"}"#,
            r#"{"$serde_json::private::Number":"1"}"#,
            r#"{"a":18446744073709551616,"b":true}"#,
            r#"{"a":-9223372036854775809,"b":true}"#,
            r#"{"a":null}"#,
            r#"{"a":[1,2]}"#,
            r#"{"a":"x"} "#,
            r#"{"a":"x"} x"#,
            r#"{"a":"x",}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"z":"\ud800","a":"x"}"#,
            r#"[{"a":"x"}]"#,
            r#""a""#,
            "",
            "{",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .chain([
            b"{\"a\":\"\xff\"}".to_vec(),
            b"{\"z\":\"\xc3\x28\",\"a\":\"x\"}".to_vec(),
            format!(r#"{{"z":{deep},"a":"x"}}"#).into_bytes(),
            // Along a path, at the parser's depth limit and past it.
            format!("{}1{}", r#"{"a":"#.repeat(127), "}".repeat(127)).into_bytes(),
            format!("{}1{}", r#"{"a":"#.repeat(128), "}".repeat(128)).into_bytes(),
            format!("{}1{}", r#"{"a":"#.repeat(16), "}".repeat(16)).into_bytes(),
            vec![b' '; MAX_INDEXED_VALUE + 1],
        ])
        .collect();
        for c in &cases {
            check(c);
        }
        // And the walk finds what it should, not only what the other
        // route finds.
        let s = spec(&[("a.b", FieldType::Number)]);
        assert_eq!(
            tuples(&[&s], br#"{"a":{"b":2},"a":{"b":7}}"#),
            vec![Ok(vec![FieldValue::Number(7.0)])]
        );
        assert_eq!(
            tuples(&[&s], br#"{"a":{"b":2},"a":3}"#),
            vec![Err(Skip::Missing(0))]
        );
        assert_eq!(
            tuples(&[&s], br#"{"a":{"b":1e400}}"#),
            vec![Err(Skip::NotJson)]
        );
    }

    /// JSON text from a small grammar over the keys the specs use, with
    /// repeated keys, escapes, numbers at the edges and bad bytes.
    fn json(depth: u32) -> BoxedStrategy<String> {
        let key = prop_oneof![
            Just("a"),
            Just("b"),
            Just("c"),
            Just("é"),
            Just("\\u00e9"),
            Just("\\u0061"),
            Just("z"),
            Just("$serde_json::private::RawValue"),
        ]
        .prop_map(|k| format!("\"{k}\""));
        let space = prop_oneof![Just(""), Just(" "), Just("\n\t ")];
        let leaf = prop_oneof![
            Just("true".to_string()),
            Just("false".to_string()),
            Just("null".to_string()),
            Just("1e400".to_string()),
            Just("-0".to_string()),
            Just("18446744073709551616".to_string()),
            Just("18446744073709551615".to_string()),
            Just("9223372036854775808".to_string()),
            Just("1e-400".to_string()),
            Just("-0.0e5".to_string()),
            Just(r#""\ud83d\ude00 \u00e9 é""#.to_string()),
            Just(r#""\ud800""#.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| format!("{n:e}")),
            "[a-z\\\\\"n ]{0,6}".prop_map(|s| format!("\"{s}\"")),
        ];
        if depth == 0 {
            return leaf.boxed();
        }
        let inner = json(depth - 1);
        prop_oneof![
            2 => leaf,
            1 => prop::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(","))),
            3 => prop::collection::vec((key, space, inner), 0..5).prop_map(|kv| {
                let fields: Vec<String> = kv
                    .into_iter()
                    .map(|(k, w, v)| format!("{w}{k}{w}:{w}{v}{w}"))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
        .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn the_walk_agrees_with_the_value_parse(
            text in json(3),
            cut in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            mutate in 0u8..4,
        ) {
            let mut bytes = text.into_bytes();
            // Most cases whole; some with a byte replaced or the text cut.
            match mutate {
                0 if !bytes.is_empty() => {
                    let i = cut.index(bytes.len());
                    bytes[i] = byte;
                }
                1 => bytes.truncate(cut.index(bytes.len() + 1)),
                _ => {}
            }
            check(&bytes);
        }
    }
}
