//! The values an index holds: a JSON field's boolean, number or string.
//!
//! Their order is the order of their encoding (`codec`): by type first
//! (booleans, then numbers, then strings; an index field has one type, so
//! this only matters for a mixed tuple comparison), then false before
//! true, numbers by value (`-0.0` equals `0.0`), strings by their UTF-8
//! bytes (which is the order of their code points).

use std::cmp::Ordering;
use std::fmt;

/// The type an index field declares; a document whose field has another
/// type is not indexed (counted as skipped, never an error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldType {
    Bool,
    Number,
    String,
}

impl FieldType {
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Bool => "bool",
            FieldType::Number => "number",
            FieldType::String => "string",
        }
    }

    /// The type named `s` (`bool`, `number` or `string`, any case).
    pub fn parse(s: &str) -> Option<FieldType> {
        match s.to_ascii_lowercase().as_str() {
            "bool" | "boolean" => Some(FieldType::Bool),
            "number" => Some(FieldType::Number),
            "string" => Some(FieldType::String),
            _ => None,
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One indexed value. A number is never NaN (JSON has none, and
/// [`FieldValue::number`] refuses it), so the order is total.
#[derive(Clone, Debug)]
pub enum FieldValue {
    Bool(bool),
    Number(f64),
    String(String),
}

impl FieldValue {
    /// A number value; `None` for NaN. `-0.0` becomes `0.0`, so equal
    /// numbers have one encoding.
    pub fn number(n: f64) -> Option<FieldValue> {
        if n.is_nan() {
            None
        } else if n == 0.0 {
            Some(FieldValue::Number(0.0))
        } else {
            Some(FieldValue::Number(n))
        }
    }

    pub fn field_type(&self) -> FieldType {
        match self {
            FieldValue::Bool(_) => FieldType::Bool,
            FieldValue::Number(_) => FieldType::Number,
            FieldValue::String(_) => FieldType::String,
        }
    }

    /// The value of `json` if it has type `ty`.
    pub fn from_json(json: &serde_json::Value, ty: FieldType) -> Option<FieldValue> {
        match (ty, json) {
            (FieldType::Bool, serde_json::Value::Bool(b)) => Some(FieldValue::Bool(*b)),
            (FieldType::Number, serde_json::Value::Number(n)) => {
                n.as_f64().and_then(FieldValue::number)
            }
            (FieldType::String, serde_json::Value::String(s)) => {
                Some(FieldValue::String(s.clone()))
            }
            _ => None,
        }
    }
}

impl PartialEq for FieldValue {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for FieldValue {}

impl PartialOrd for FieldValue {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FieldValue {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (FieldValue::Bool(a), FieldValue::Bool(b)) => a.cmp(b),
            // Not NaN (the constructor refuses it), so total; -0.0 == 0.0.
            (FieldValue::Number(a), FieldValue::Number(b)) => {
                a.partial_cmp(b).unwrap_or(Ordering::Equal)
            }
            (FieldValue::String(a), FieldValue::String(b)) => a.as_bytes().cmp(b.as_bytes()),
            (a, b) => a.field_type().cmp(&b.field_type()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_refuse_nan_and_fold_negative_zero() {
        assert!(FieldValue::number(f64::NAN).is_none());
        let FieldValue::Number(z) = FieldValue::number(-0.0).unwrap() else {
            panic!("a number")
        };
        assert!(z.is_sign_positive());
        assert_eq!(
            FieldValue::number(-0.0).unwrap(),
            FieldValue::number(0.0).unwrap()
        );
    }

    #[test]
    fn json_values_are_taken_only_with_the_declared_type() {
        let doc: serde_json::Value =
            serde_json::from_str(r#"{"a": 3, "b": "3", "c": true, "d": null, "e": [1]}"#).unwrap();
        let get = |k: &str, t| FieldValue::from_json(&doc[k], t);
        assert_eq!(get("a", FieldType::Number), FieldValue::number(3.0));
        assert_eq!(get("a", FieldType::String), None);
        assert_eq!(
            get("b", FieldType::String),
            Some(FieldValue::String("3".into()))
        );
        assert_eq!(get("b", FieldType::Number), None);
        assert_eq!(get("c", FieldType::Bool), Some(FieldValue::Bool(true)));
        assert_eq!(get("d", FieldType::Bool), None);
        assert_eq!(get("e", FieldType::Number), None);
    }

    #[test]
    fn strings_order_by_bytes_and_types_do_not_mix() {
        let s = |x: &str| FieldValue::String(x.into());
        assert!(s("Z") < s("a"));
        assert!(s("a") < s("a\0"));
        assert!(s("é") > s("z"), "UTF-8 bytes: é is 0xC3 0xA9");
        assert!(FieldValue::Bool(true) < FieldValue::number(-1e300).unwrap());
        assert!(FieldValue::number(1e300).unwrap() < s(""));
        assert_eq!(FieldType::parse("Number"), Some(FieldType::Number));
        assert_eq!(FieldType::parse("int"), None);
    }
}
