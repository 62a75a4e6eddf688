//! Index declarations, and the tuple a document gives an index.
//!
//! An index covers the keys under one prefix and holds, for each of their
//! values that is a JSON object with every declared field of its declared
//! type, a tuple of those fields' values. A value that is not JSON, is too
//! large, lacks a field or has one of another type is skipped: counted,
//! never an error to the writer.

use crate::path::FieldPath;
use crate::value::{FieldType, FieldValue};

/// Fields an index may declare (a composite index's width).
pub const MAX_FIELDS: usize = 4;
/// Indexes a cluster may hold.
pub const MAX_INDEXES: usize = 64;
/// Bytes an index name may take.
pub const MAX_NAME_BYTES: usize = 64;
/// Bytes an index prefix may take.
pub const MAX_PREFIX_BYTES: usize = 4096;
/// Values larger than this are not parsed for indexing (every member
/// parses every indexed put in its apply loop; this bounds what one costs).
pub const MAX_INDEXED_VALUE: usize = 256 << 10;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IndexField {
    pub path: FieldPath,
    pub ty: FieldType,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IndexSpec {
    pub name: String,
    pub prefix: Vec<u8>,
    pub fields: Vec<IndexField>,
    pub unique: bool,
}

/// Why a declaration is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("index name {0:?}: use 1 to 64 of a-z, 0-9 and _, starting with a letter")]
    BadName(String),
    #[error("an index needs a key prefix (1 to {MAX_PREFIX_BYTES} bytes)")]
    BadPrefix,
    #[error("an index declares 1 to {MAX_FIELDS} fields, not {0}")]
    FieldCount(usize),
    #[error("field {0} is declared twice")]
    DuplicateField(String),
}

/// Why a value gives an index no tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Larger than [`MAX_INDEXED_VALUE`].
    TooLarge,
    /// Not JSON (or nested deeper than serde_json's 128 levels).
    NotJson,
    /// The declared field at this position is absent.
    Missing(usize),
    /// The declared field at this position has another type.
    WrongType(usize),
}

impl Skip {
    /// Every reason's metric label (`nod_index_skipped_total{reason}`),
    /// in the order of [`Skip::slot`].
    pub const REASONS: [&'static str; 4] = ["too_large", "not_json", "missing", "wrong_type"];

    /// Where this reason is in [`Skip::REASONS`] (and in counts kept in
    /// that order).
    pub fn slot(&self) -> usize {
        match self {
            Skip::TooLarge => 0,
            Skip::NotJson => 1,
            Skip::Missing(_) => 2,
            Skip::WrongType(_) => 3,
        }
    }

    /// The metric label (`nod_index_skipped_total{reason}`).
    pub fn reason(&self) -> &'static str {
        Self::REASONS[self.slot()]
    }
}

fn good_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_NAME_BYTES
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl IndexSpec {
    /// Refuses a declaration no member may store.
    pub fn check(&self) -> Result<(), SpecError> {
        if !good_name(&self.name) {
            return Err(SpecError::BadName(self.name.clone()));
        }
        if self.prefix.is_empty() || self.prefix.len() > MAX_PREFIX_BYTES {
            return Err(SpecError::BadPrefix);
        }
        if self.fields.is_empty() || self.fields.len() > MAX_FIELDS {
            return Err(SpecError::FieldCount(self.fields.len()));
        }
        for (i, f) in self.fields.iter().enumerate() {
            if self.fields[..i].iter().any(|g| g.path == f.path) {
                return Err(SpecError::DuplicateField(f.path.to_string()));
            }
        }
        Ok(())
    }

    /// Whether `key` is under this index's prefix.
    pub fn covers(&self, key: &[u8]) -> bool {
        key.starts_with(&self.prefix)
    }

    /// The tuple `value` gives this index, or why it gives none (for
    /// several indexes over one value, [`crate::extract::tuples`] reads it
    /// once).
    pub fn tuple(&self, value: &[u8]) -> Result<Vec<FieldValue>, Skip> {
        crate::extract::tuples(&[self], value)
            .pop()
            .unwrap_or(Err(Skip::NotJson))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(p: &str, ty: FieldType) -> IndexField {
        IndexField {
            path: FieldPath::parse(p).unwrap(),
            ty,
        }
    }

    fn users() -> IndexSpec {
        IndexSpec {
            name: "users_city_age".into(),
            prefix: b"/users/".to_vec(),
            fields: vec![
                field("city", FieldType::String),
                field("age", FieldType::Number),
            ],
            unique: false,
        }
    }

    #[test]
    fn declarations_are_checked() {
        assert_eq!(users().check(), Ok(()));
        for bad in ["", "Users", "1x", "a-b", "a b", &"a".repeat(65)] {
            let s = IndexSpec {
                name: bad.into(),
                ..users()
            };
            assert_eq!(s.check(), Err(SpecError::BadName(bad.into())));
        }
        let s = IndexSpec {
            name: "a".repeat(64),
            ..users()
        };
        assert_eq!(s.check(), Ok(()));
        let s = IndexSpec {
            prefix: vec![],
            ..users()
        };
        assert_eq!(s.check(), Err(SpecError::BadPrefix));
        let s = IndexSpec {
            fields: vec![],
            ..users()
        };
        assert_eq!(s.check(), Err(SpecError::FieldCount(0)));
        let five = ["a", "b", "c", "d", "e"].map(|p| field(p, FieldType::Bool));
        let s = IndexSpec {
            fields: five.to_vec(),
            ..users()
        };
        assert_eq!(s.check(), Err(SpecError::FieldCount(5)));
        let s = IndexSpec {
            fields: vec![field("a", FieldType::Bool), field("a", FieldType::Number)],
            ..users()
        };
        assert_eq!(s.check(), Err(SpecError::DuplicateField("a".into())));
    }

    #[test]
    fn documents_give_tuples_or_say_why_not() {
        let s = users();
        assert_eq!(
            s.tuple(br#"{"city": "Oslo", "age": 31, "x": [1]}"#),
            Ok(vec![
                FieldValue::String("Oslo".into()),
                FieldValue::number(31.0).unwrap()
            ])
        );
        assert_eq!(s.tuple(b"not json"), Err(Skip::NotJson));
        assert_eq!(s.tuple(br#"{"city": "Oslo"}"#), Err(Skip::Missing(1)));
        assert_eq!(
            s.tuple(br#"{"city": 1, "age": 2}"#),
            Err(Skip::WrongType(0))
        );
        assert_eq!(
            s.tuple(br#"{"city": "x", "age": "2"}"#),
            Err(Skip::WrongType(1))
        );
        assert_eq!(s.tuple(br#"["Oslo", 31]"#), Err(Skip::Missing(0)));
        let big = format!(
            r#"{{"city": "{}", "age": 1}}"#,
            "x".repeat(MAX_INDEXED_VALUE)
        );
        assert_eq!(s.tuple(big.as_bytes()), Err(Skip::TooLarge));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(s.tuple(deep.as_bytes()), Err(Skip::NotJson));
        assert_eq!(Skip::WrongType(0).reason(), "wrong_type");
        assert!(s.covers(b"/users/a") && !s.covers(b"/user"));
    }

    #[test]
    fn numbers_parse_exactly_on_every_member() {
        // serde_json's default float parser may land one ULP off; with
        // float_roundtrip every text gives the nearest double, the same on
        // every build. This literal came out one ULP low without it
        // (LaunchDarkly's rust-server-sdk#184).
        let s = IndexSpec {
            fields: vec![field("n", FieldType::Number)],
            ..users()
        };
        for text in [
            "130.65331632653061",
            "0.1",
            "2.2250738585072014e-308",
            "1e300",
        ] {
            let want: f64 = text.parse().unwrap();
            let got = s.tuple(format!(r#"{{"n": {text}}}"#).as_bytes()).unwrap();
            assert_eq!(got, vec![FieldValue::number(want).unwrap()], "{text}");
            let FieldValue::Number(n) = got[0] else {
                panic!("a number")
            };
            assert_eq!(n.to_bits(), want.to_bits(), "{text}");
        }
    }
}
