//! What a query means for one row: predicates, projections and the sort
//! order, over a key's attributes and its value read as JSON.
//!
//! Comparisons are typed. A string never equals a number, and `a != v`
//! holds only when `a` has `v`'s type and another value (write `NOT a = v`
//! for "anything but v"). A field that is absent, or any field of a value
//! that is not JSON or is larger than `spec::MAX_INDEXED_VALUE` (which no
//! index holds, so every plan agrees), is *missing*: it fails every
//! predicate but `IS MISSING`. JSON `null` equals `NULL` and is ordered by nothing else.
//! Arrays and objects compare with nothing (v1). The key's attributes
//! compare as etcd defines them: `KEY` and `VALUE` as byte strings with
//! string literals, the revisions, `VERSION` and `LEASE` as numbers.

use std::cmp::Ordering;

use serde_json::Value;

use crate::ast::{CmpOp, Expr, Literal, Operand, Pred};

/// One key at the query's revision, with its value parsed once.
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// The value as JSON, if it is JSON.
    pub doc: Option<&'a Value>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// What an operand reads from a row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cell<'a> {
    Missing,
    Json(&'a Value),
    Int(i64),
    Bytes(&'a [u8]),
}

impl<'a> Row<'a> {
    pub fn cell(&self, operand: &Operand) -> Cell<'a> {
        match operand {
            Operand::Key => Cell::Bytes(self.key),
            Operand::Value => Cell::Bytes(self.value),
            Operand::ModRevision => Cell::Int(self.mod_revision),
            Operand::CreateRevision => Cell::Int(self.create_revision),
            Operand::Version => Cell::Int(self.version),
            Operand::Lease => Cell::Int(self.lease),
            Operand::Field(path) => match self.doc.and_then(|d| path.lookup(d)) {
                Some(v) => Cell::Json(v),
                None => Cell::Missing,
            },
        }
    }

    /// Whether the row satisfies `expr`.
    pub fn matches(&self, expr: &Expr) -> bool {
        match expr {
            Expr::Or(items) => items.iter().any(|e| self.matches(e)),
            Expr::And(items) => items.iter().all(|e| self.matches(e)),
            Expr::Not(e) => !self.matches(e),
            Expr::Pred(p) => self.holds(p),
        }
    }

    fn holds(&self, p: &Pred) -> bool {
        match p {
            Pred::Cmp(o, op, lit) => compare(self.cell(o), lit).is_some_and(|ord| match op {
                CmpOp::Eq => ord == Ordering::Equal,
                CmpOp::Ne => ord != Ordering::Equal,
                CmpOp::Lt => ord == Ordering::Less,
                CmpOp::Le => ord != Ordering::Greater,
                CmpOp::Gt => ord == Ordering::Greater,
                CmpOp::Ge => ord != Ordering::Less,
            }),
            Pred::In {
                operand,
                negated,
                list,
            } => {
                let cell = self.cell(operand);
                if cell == Cell::Missing {
                    return false;
                }
                let found = list
                    .iter()
                    .any(|l| compare(cell, l) == Some(Ordering::Equal));
                // NOT IN: of the list's type(s), and none of its values.
                if *negated {
                    !found && list.iter().any(|l| compare(cell, l).is_some())
                } else {
                    found
                }
            }
            Pred::Between {
                operand,
                negated,
                low,
                high,
            } => {
                let cell = self.cell(operand);
                match (compare(cell, low), compare(cell, high)) {
                    (Some(lo), Some(hi)) => {
                        let inside = lo != Ordering::Less && hi != Ordering::Greater;
                        inside != *negated
                    }
                    _ => false,
                }
            }
            Pred::StartsWith(o, prefix) => match self.cell(o) {
                Cell::Bytes(b) => b.starts_with(prefix.as_bytes()),
                Cell::Json(Value::String(s)) => s.as_bytes().starts_with(prefix.as_bytes()),
                _ => false,
            },
            Pred::Missing { operand, negated } => (self.cell(operand) == Cell::Missing) != *negated,
        }
    }
}

/// How `cell` compares with `lit`, if they have one type.
pub fn compare(cell: Cell<'_>, lit: &Literal) -> Option<Ordering> {
    match (cell, lit) {
        (Cell::Json(Value::Number(n)), Literal::Number(l)) => n.as_f64()?.partial_cmp(l),
        (Cell::Json(Value::String(s)), Literal::String(l)) => Some(s.as_bytes().cmp(l.as_bytes())),
        (Cell::Json(Value::Bool(b)), Literal::Bool(l)) => Some(b.cmp(l)),
        (Cell::Json(Value::Null), Literal::Null) => Some(Ordering::Equal),
        (Cell::Int(i), Literal::Number(l)) => (i as f64).partial_cmp(l),
        (Cell::Bytes(b), Literal::String(l)) => Some(b.cmp(l.as_bytes())),
        _ => None,
    }
}

/// The rank of a cell's type in the sort order: missing first, then null,
/// booleans, numbers, strings (and the key's byte strings), and arrays and
/// objects last.
fn rank(cell: &Cell<'_>) -> u8 {
    match cell {
        Cell::Missing => 0,
        Cell::Json(Value::Null) => 1,
        Cell::Json(Value::Bool(_)) => 2,
        Cell::Json(Value::Number(_)) | Cell::Int(_) => 3,
        Cell::Json(Value::String(_)) | Cell::Bytes(_) => 4,
        Cell::Json(Value::Array(_)) => 5,
        Cell::Json(Value::Object(_)) => 6,
    }
}

fn number(cell: &Cell<'_>) -> f64 {
    match cell {
        Cell::Int(i) => *i as f64,
        Cell::Json(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        _ => 0.0,
    }
}

/// The sort order of two cells of one operand (`ORDER BY`); rows that tie
/// on every ordering are then ordered by key.
pub fn sort_cmp(a: &Cell<'_>, b: &Cell<'_>) -> Ordering {
    rank(a).cmp(&rank(b)).then_with(|| match (a, b) {
        (Cell::Json(Value::Bool(x)), Cell::Json(Value::Bool(y))) => x.cmp(y),
        (x, y) if rank(x) == 3 => {
            let (x, y) = (number(x), number(y));
            // -0.0 and 0.0 tie, as they are equal in predicates.
            if x == y {
                Ordering::Equal
            } else {
                x.total_cmp(&y)
            }
        }
        (x, y) if rank(x) == 4 => bytes(x).cmp(bytes(y)),
        // Arrays and objects: by their JSON text, so the order is total.
        (Cell::Json(x), Cell::Json(y)) => x.to_string().cmp(&y.to_string()),
        _ => Ordering::Equal,
    })
}

fn bytes<'a>(cell: &Cell<'a>) -> &'a [u8] {
    match cell {
        Cell::Bytes(b) => b,
        Cell::Json(Value::String(s)) => s.as_bytes(),
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;

    fn row<'a>(key: &'a str, value: &'a str, doc: Option<&'a Value>) -> Row<'a> {
        Row {
            key: key.as_bytes(),
            value: value.as_bytes(),
            doc,
            create_revision: 3,
            mod_revision: 9,
            version: 2,
            lease: 0,
        }
    }

    fn holds(text: &str, value: &str) -> bool {
        let q = parse(&format!("SELECT * FROM '/u/' WHERE {text}")).unwrap();
        let doc: Option<Value> = serde_json::from_str(value).ok();
        row("/u/a", value, doc.as_ref()).matches(q.filter.as_ref().unwrap())
    }

    #[test]
    fn comparisons_are_typed_and_missing_fails_all_but_is_missing() {
        let doc =
            r#"{"city": "Oslo", "age": 31, "ok": true, "n": null, "tags": [1], "o": {"x": 1}}"#;
        let table = [
            ("city = 'Oslo'", true),
            ("city != 'Bergen'", true),
            ("city != 1", false),
            ("city = 1", false),
            ("NOT city = 1", true),
            ("age > 30 AND age <= 31", true),
            ("age = '31'", false),
            ("age IN (1, 31)", true),
            ("age NOT IN (1, 2)", true),
            ("age NOT IN ('a')", false),
            ("age BETWEEN 31 AND 40", true),
            ("age NOT BETWEEN 0 AND 30", true),
            ("age BETWEEN 'a' AND 40", false),
            ("ok = TRUE AND ok > FALSE", true),
            ("n = NULL", true),
            ("n IS NOT MISSING AND n != NULL", false),
            (
                "gone = 1 OR gone != 1 OR gone < 1 OR gone IN (1) OR gone NOT IN (1)",
                false,
            ),
            ("gone IS MISSING AND NOT gone = 1", true),
            ("tags = 1 OR tags IS MISSING OR o = 1", false),
            ("o.x = 1 AND \"o\".\"x\" >= 1", true),
            ("city STARTS WITH 'Os' AND NOT city STARTS WITH 'os'", true),
            (
                "KEY = '/u/a' AND KEY STARTS WITH '/u/' AND KEY > '/u/'",
                true,
            ),
            ("MOD_REVISION = 9 AND CREATE_REVISION > 3", false),
            (
                "MOD_REVISION = 9 AND CREATE_REVISION = 3 AND VERSION = 2 AND LEASE = 0",
                true,
            ),
            ("MOD_REVISION = '9'", false),
            ("age = 31.0 AND age = 3.1e1", true),
        ];
        for (text, want) in table {
            assert_eq!(holds(text, doc), want, "{text}");
        }
        // A value that is not JSON: every field is missing.
        assert!(holds("city IS MISSING AND VALUE = 'plain'", "plain"));
        assert!(!holds("city != 'x'", "plain"));
    }

    #[test]
    fn the_sort_order_is_total_across_types() {
        let values: Vec<Value> = [
            "null", "false", "true", "-1", "0", "-0.0", "2.5", "\"\"", "\"a\"", "[1]", "{}",
        ]
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
        let mut cells: Vec<Cell> = values.iter().map(Cell::Json).collect();
        cells.insert(0, Cell::Missing);
        for (i, a) in cells.iter().enumerate() {
            for (j, b) in cells.iter().enumerate() {
                let want = if (i, j) == (5, 6) || (i, j) == (6, 5) {
                    Ordering::Equal // 0 and -0.0
                } else {
                    i.cmp(&j)
                };
                assert_eq!(sort_cmp(a, b), want, "{a:?} vs {b:?}");
            }
        }
        assert_eq!(
            sort_cmp(&Cell::Int(3), &Cell::Json(&Value::from(2.5))),
            Ordering::Greater
        );
        assert_eq!(
            sort_cmp(&Cell::Bytes(b"b"), &Cell::Json(&Value::from("a"))),
            Ordering::Greater
        );
    }
}
