//! etcdctl's txn syntax: the text `etcdctl txn` (and `nod txn`) reads,
//! turned into a `TxnRequest`. Pure: no I/O; the caller reads the text.
//!
//! Three sections separated by a blank line: compares, the operations to run
//! when every compare holds, and those to run otherwise. For example:
//!
//! ```text
//! value("k") = "v"
//! mod("k") > "3"
//!
//! put k "new value"
//!
//! get k
//! ```
//!
//! A compare is `target("key") op "value"` with target `value` (`val`, `v`),
//! `version` (`ver`), `create` (`c`), `mod` (`m`) or `lease` (hex id) and op
//! `=` (`==`), `!=`, `>` or `<`. An operation is `put key value`,
//! `get key [end]` or `del key [end]`. Words may be double-quoted, with `\`
//! escaping the next character.

use nod_proto::etcd::etcdserverpb::{
    compare, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};

/// Why a txn text does not parse. The messages are what `nod txn` prints.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxnSyntaxError {
    #[error("a txn has three sections: compares, success ops, failure ops")]
    TooManySections,
    /// A backslash at the very end of a quoted word.
    #[error("unterminated escape")]
    UnterminatedEscape,
    /// The line holding a quote that is never closed.
    #[error("unterminated quote in {0:?}")]
    UnterminatedQuote(String),
    /// A compare line without `(` … `)` in that order.
    #[error("bad compare {0:?}")]
    BadCompare(String),
    #[error("compare without a key")]
    CompareWithoutKey,
    /// A compare line with other than an operator and a value after `)`.
    #[error("bad compare {0:?}: want target(key) op value")]
    CompareShape(String),
    #[error("unknown compare operator {0:?}")]
    UnknownOperator(String),
    #[error("unknown compare target {0:?}")]
    UnknownTarget(String),
    /// The value of a `version`, `create` or `mod` compare.
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("{0:?} is not a hex lease id")]
    NotAHexLeaseId(String),
    /// `put`, `get` or `del` without a key.
    #[error("{0} needs a key")]
    MissingKey(&'static str),
    #[error("put needs a value")]
    MissingValue,
    #[error("unknown operation {0:?}: use put, get or del")]
    UnknownOperation(String),
}

/// Parses a whole txn: compares, blank line, success ops, blank line,
/// failure ops. Missing sections are empty.
pub fn parse_txn(input: &str) -> Result<TxnRequest, TxnSyntaxError> {
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in input.lines() {
        if line.trim().is_empty() {
            sections.push(Vec::new());
        } else {
            sections.last_mut().expect("non-empty").push(line.trim());
        }
    }
    if sections.len() > 3 {
        return Err(TxnSyntaxError::TooManySections);
    }
    sections.resize(3, Vec::new());
    Ok(TxnRequest {
        compare: sections[0]
            .iter()
            .map(|l| parse_compare(l))
            .collect::<Result<_, _>>()?,
        success: sections[1]
            .iter()
            .map(|l| parse_op(l))
            .collect::<Result<_, _>>()?,
        failure: sections[2]
            .iter()
            .map(|l| parse_op(l))
            .collect::<Result<_, _>>()?,
    })
}

/// One compare: `value("k") = "v"`, `version("k") > "3"`, `mod(...)`,
/// `create(...)`, `lease(...)`.
pub fn parse_compare(line: &str) -> Result<Compare, TxnSyntaxError> {
    let bad = || TxnSyntaxError::BadCompare(line.to_string());
    let open = line.find('(').ok_or_else(bad)?;
    let close = line.rfind(')').ok_or_else(bad)?;
    if close < open {
        return Err(bad());
    }
    let target = line[..open].trim();
    let key = words(&line[open + 1..close])?
        .into_iter()
        .next()
        .ok_or(TxnSyntaxError::CompareWithoutKey)?;
    let rest = words(&line[close + 1..])?;
    let [op, value] = rest.as_slice() else {
        return Err(TxnSyntaxError::CompareShape(line.to_string()));
    };
    use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match op.as_str() {
        "=" | "==" => R::Equal,
        "!=" => R::NotEqual,
        ">" => R::Greater,
        "<" => R::Less,
        _ => return Err(TxnSyntaxError::UnknownOperator(op.clone())),
    };
    let num = || {
        value
            .parse::<i64>()
            .map_err(|_| TxnSyntaxError::NotANumber(value.clone()))
    };
    let (t, u) = match target {
        "value" | "val" | "v" => (T::Value, U::Value(value.clone().into_bytes())),
        "version" | "ver" => (T::Version, U::Version(num()?)),
        "create" | "c" => (T::Create, U::CreateRevision(num()?)),
        "mod" | "m" => (T::Mod, U::ModRevision(num()?)),
        "lease" => (
            T::Lease,
            U::Lease(
                i64::from_str_radix(value, 16)
                    .map_err(|_| TxnSyntaxError::NotAHexLeaseId(value.clone()))?,
            ),
        ),
        _ => return Err(TxnSyntaxError::UnknownTarget(target.to_string())),
    };
    Ok(Compare {
        result: result as i32,
        target: t as i32,
        key: key.into_bytes(),
        range_end: Vec::new(),
        target_union: Some(u),
    })
}

/// One operation: `put key value`, `get key [end]`, `del key [end]`.
pub fn parse_op(line: &str) -> Result<RequestOp, TxnSyntaxError> {
    let w = words(line)?;
    let arg = |i: usize| w.get(i).map(|s| s.clone().into_bytes());
    use request_op::Request as R;
    let request = match w.first().map(String::as_str) {
        Some("put") => R::RequestPut(PutRequest {
            key: arg(1).ok_or(TxnSyntaxError::MissingKey("put"))?,
            value: arg(2).ok_or(TxnSyntaxError::MissingValue)?,
            ..Default::default()
        }),
        Some("get") => R::RequestRange(RangeRequest {
            key: arg(1).ok_or(TxnSyntaxError::MissingKey("get"))?,
            range_end: arg(2).unwrap_or_default(),
            ..Default::default()
        }),
        Some("del") => R::RequestDeleteRange(DeleteRangeRequest {
            key: arg(1).ok_or(TxnSyntaxError::MissingKey("del"))?,
            range_end: arg(2).unwrap_or_default(),
            ..Default::default()
        }),
        _ => return Err(TxnSyntaxError::UnknownOperation(line.to_string())),
    };
    Ok(RequestOp {
        request: Some(request),
    })
}

/// Splits a line into words, honouring double quotes (with `\` escapes).
fn words(line: &str) -> Result<Vec<String>, TxnSyntaxError> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut w = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => w.push(chars.next().ok_or(TxnSyntaxError::UnterminatedEscape)?),
                    Some('"') => break,
                    Some(ch) => w.push(ch),
                    None => return Err(TxnSyntaxError::UnterminatedQuote(line.to_string())),
                }
            }
        } else {
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                w.push(ch);
                chars.next();
            }
        }
        out.push(w);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    use request_op::Request;

    fn cmp(result: R, target: T, key: &str, union: U) -> Compare {
        Compare {
            result: result as i32,
            target: target as i32,
            key: key.as_bytes().to_vec(),
            range_end: Vec::new(),
            target_union: Some(union),
        }
    }

    fn put(key: &str, value: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            })),
        }
    }

    fn get(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: key.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn del(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn valid_compares_parse() {
        let table = [
            (
                r#"value("k") = "v 1""#,
                cmp(R::Equal, T::Value, "k", U::Value(b"v 1".to_vec())),
            ),
            (
                r#"val("k") == "v""#,
                cmp(R::Equal, T::Value, "k", U::Value(b"v".to_vec())),
            ),
            (
                r#"v("k") != "v""#,
                cmp(R::NotEqual, T::Value, "k", U::Value(b"v".to_vec())),
            ),
            (
                r#"version("k") > "3""#,
                cmp(R::Greater, T::Version, "k", U::Version(3)),
            ),
            (
                r#"ver("k") < "0""#,
                cmp(R::Less, T::Version, "k", U::Version(0)),
            ),
            (
                r#"create("k") = "7""#,
                cmp(R::Equal, T::Create, "k", U::CreateRevision(7)),
            ),
            (
                r#"c("k") > "-1""#,
                cmp(R::Greater, T::Create, "k", U::CreateRevision(-1)),
            ),
            (
                r#"mod("k") < "12""#,
                cmp(R::Less, T::Mod, "k", U::ModRevision(12)),
            ),
            (
                r#"m("a b") = "1""#,
                cmp(R::Equal, T::Mod, "a b", U::ModRevision(1)),
            ),
            (
                r#"lease("k") = "1f""#,
                cmp(R::Equal, T::Lease, "k", U::Lease(0x1f)),
            ),
            // Unquoted words and spaces around the parts are fine.
            (
                r#"  mod( k )  >  5 "#,
                cmp(R::Greater, T::Mod, "k", U::ModRevision(5)),
            ),
            (
                r#"value("q\"uote") = "\\""#,
                cmp(R::Equal, T::Value, "q\"uote", U::Value(b"\\".to_vec())),
            ),
        ];
        for (line, want) in table {
            assert_eq!(parse_compare(line), Ok(want), "{line}");
        }
    }

    #[test]
    fn valid_operations_parse() {
        let table = [
            ("put k v", put("k", "v")),
            (r#"put "a key" "a value""#, put("a key", "a value")),
            ("get k", get("k", "")),
            ("get a z", get("a", "z")),
            ("del k", del("k", "")),
            ("del a z", del("a", "z")),
        ];
        for (line, want) in table {
            assert_eq!(parse_op(line), Ok(want), "{line}");
        }
    }

    #[test]
    fn valid_txns_parse() {
        let t = parse_txn(
            "value(\"k\") = \"v 1\"\nmod(\"k\") > \"3\"\n\nput k \"new value\"\n\nget k\n",
        )
        .unwrap();
        assert_eq!(
            t.compare,
            vec![
                cmp(R::Equal, T::Value, "k", U::Value(b"v 1".to_vec())),
                cmp(R::Greater, T::Mod, "k", U::ModRevision(3)),
            ]
        );
        assert_eq!(t.success, vec![put("k", "new value")]);
        assert_eq!(t.failure, vec![get("k", "")]);

        // Missing sections are empty; an empty text is an empty txn.
        let only_compares = parse_txn("version(\"k\") = \"1\"\n").unwrap();
        assert_eq!(only_compares.compare.len(), 1);
        assert!(only_compares.success.is_empty() && only_compares.failure.is_empty());
        assert_eq!(parse_txn(""), Ok(TxnRequest::default()));
        let no_compares = parse_txn("\nput a 1\nput b 2\n").unwrap();
        assert!(no_compares.compare.is_empty());
        assert_eq!(no_compares.success, vec![put("a", "1"), put("b", "2")]);
        // A line of spaces separates sections too.
        let spaced = parse_txn("\n   \ndel k\n").unwrap();
        assert_eq!(spaced.failure, vec![del("k", "")]);
    }

    #[test]
    fn each_error_says_what_is_wrong() {
        use TxnSyntaxError as E;
        let table: [(&str, E, &str); 17] = [
            (
                "put a 1\n\n\n\n",
                E::TooManySections,
                "a txn has three sections: compares, success ops, failure ops",
            ),
            (
                "\nput k \"v\\",
                E::UnterminatedEscape,
                "unterminated escape",
            ),
            (
                "\nput k \"v",
                E::UnterminatedQuote("put k \"v".into()),
                r#"unterminated quote in "put k \"v""#,
            ),
            (
                "value \"k\" = \"v\"",
                E::BadCompare("value \"k\" = \"v\"".into()),
                r#"bad compare "value \"k\" = \"v\"""#,
            ),
            (
                "value(\"k\" = \"v\"",
                E::BadCompare("value(\"k\" = \"v\"".into()),
                r#"bad compare "value(\"k\" = \"v\"""#,
            ),
            // A `)` before the `(`: refused, not a panic on the slice.
            (
                ") value(",
                E::BadCompare(") value(".into()),
                r#"bad compare ") value(""#,
            ),
            (
                "value() = \"v\"",
                E::CompareWithoutKey,
                "compare without a key",
            ),
            (
                "value(\"k\") = ",
                E::CompareShape("value(\"k\") =".into()),
                r#"bad compare "value(\"k\") =": want target(key) op value"#,
            ),
            (
                "value(\"k\") ~ \"v\"",
                E::UnknownOperator("~".into()),
                r#"unknown compare operator "~""#,
            ),
            (
                "size(\"k\") = \"1\"",
                E::UnknownTarget("size".into()),
                r#"unknown compare target "size""#,
            ),
            (
                "version(\"k\") = \"one\"",
                E::NotANumber("one".into()),
                r#""one" is not a number"#,
            ),
            (
                "lease(\"k\") = \"xyz\"",
                E::NotAHexLeaseId("xyz".into()),
                r#""xyz" is not a hex lease id"#,
            ),
            ("\nput", E::MissingKey("put"), "put needs a key"),
            ("\nget", E::MissingKey("get"), "get needs a key"),
            ("\n\ndel", E::MissingKey("del"), "del needs a key"),
            ("\nput k", E::MissingValue, "put needs a value"),
            (
                "\n\nfrobnicate k",
                E::UnknownOperation("frobnicate k".into()),
                r#"unknown operation "frobnicate k": use put, get or del"#,
            ),
        ];
        for (input, want, message) in table {
            let got = parse_txn(input).unwrap_err();
            assert_eq!(got, want, "{input:?}");
            assert_eq!(got.to_string(), message, "{input:?}");
        }
    }
}
