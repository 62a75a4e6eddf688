//! Paths to fields of JSON documents: `city`, `address.city`,
//! `"first name"`, `meta."a.b"`.
//!
//! A segment is a plain name (a letter or `_`, then letters, digits, `_`
//! or `-`) or a double-quoted one (any text; `""` is a quote inside).
//! Paths walk objects only: an array, like any value of the wrong type,
//! means the field is absent for an index (v1). A JSON object with the
//! same name twice gives its last value (serde_json's reading).

use std::fmt;

/// Segments a path may have.
pub const MAX_SEGMENTS: usize = 16;
/// Bytes a path's text may take.
pub const MAX_PATH_BYTES: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath {
    segments: Vec<String>,
}

/// Why a path's text is not a path; `column` counts characters from 1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("field path {path:?}, column {column}: {message}")]
pub struct PathError {
    pub path: String,
    pub column: usize,
    pub message: String,
}

fn plain_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn plain_rest(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

impl FieldPath {
    /// A path of the given segments (each non-empty).
    pub fn new(segments: Vec<String>) -> Result<FieldPath, PathError> {
        let path = FieldPath { segments };
        let text = path.to_string();
        let fail = |message: &str| PathError {
            path: text.clone(),
            column: 1,
            message: message.into(),
        };
        if path.segments.is_empty() {
            return Err(fail("a path has at least one segment"));
        }
        if path.segments.len() > MAX_SEGMENTS {
            return Err(fail(&format!("more than {MAX_SEGMENTS} segments")));
        }
        if path.segments.iter().any(String::is_empty) {
            return Err(fail("a segment is empty"));
        }
        if text.len() > MAX_PATH_BYTES {
            return Err(fail(&format!("longer than {MAX_PATH_BYTES} bytes")));
        }
        Ok(path)
    }

    pub fn parse(text: &str) -> Result<FieldPath, PathError> {
        let fail = |column: usize, message: String| PathError {
            path: text.to_string(),
            column,
            message,
        };
        if text.len() > MAX_PATH_BYTES {
            return Err(fail(1, format!("longer than {MAX_PATH_BYTES} bytes")));
        }
        let chars: Vec<char> = text.chars().collect();
        let mut segments = Vec::new();
        let mut i = 0;
        loop {
            let start = i;
            match chars.get(i) {
                None => {
                    return Err(fail(
                        i + 1,
                        "expected a field name or a \"quoted\" one".into(),
                    ))
                }
                Some('"') => {
                    i += 1;
                    let mut seg = String::new();
                    loop {
                        match chars.get(i) {
                            None => {
                                return Err(fail(start + 1, "this quote is never closed".into()))
                            }
                            Some('"') if chars.get(i + 1) == Some(&'"') => {
                                seg.push('"');
                                i += 2;
                            }
                            Some('"') => {
                                i += 1;
                                break;
                            }
                            Some(&c) => {
                                seg.push(c);
                                i += 1;
                            }
                        }
                    }
                    if seg.is_empty() {
                        return Err(fail(start + 1, "a quoted segment is empty".into()));
                    }
                    segments.push(seg);
                }
                Some(&c) if plain_start(c) => {
                    while chars.get(i).is_some_and(|&c| plain_rest(c)) {
                        i += 1;
                    }
                    segments.push(chars[start..i].iter().collect());
                }
                Some(&c) => {
                    return Err(fail(
                        i + 1,
                        format!(
                            "a field name starts with a letter or '_' (or is \"quoted\"), not {c:?}"
                        ),
                    ))
                }
            }
            if segments.len() > MAX_SEGMENTS {
                return Err(fail(
                    start + 1,
                    format!("more than {MAX_SEGMENTS} segments"),
                ));
            }
            match chars.get(i) {
                None => return Ok(FieldPath { segments }),
                Some('.') => i += 1,
                Some(&c) => {
                    return Err(fail(
                        i + 1,
                        format!("expected '.' or the end of the path, found {c:?}"),
                    ))
                }
            }
        }
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The value at this path in `doc`, if every segment names a member of
    /// an object.
    pub fn lookup<'a>(&self, doc: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
        let mut at = doc;
        for seg in &self.segments {
            at = at.as_object()?.get(seg)?;
        }
        Some(at)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            let mut chars = seg.chars();
            let plain = chars.next().is_some_and(plain_start) && chars.all(plain_rest);
            if plain {
                f.write_str(seg)?;
            } else {
                write!(f, "\"{}\"", seg.replace('"', "\"\""))?;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for FieldPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<FieldPath, PathError> {
        FieldPath::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<String> {
        FieldPath::parse(p).unwrap().segments().to_vec()
    }

    #[test]
    fn plain_and_quoted_segments() {
        assert_eq!(segs("city"), ["city"]);
        assert_eq!(segs("address.zip_code"), ["address", "zip_code"]);
        assert_eq!(segs("_a-b.c1"), ["_a-b", "c1"]);
        assert_eq!(segs(r#""first name""#), ["first name"]);
        assert_eq!(
            segs(r#"meta."a.b"."say ""hi""""#),
            ["meta", "a.b", r#"say "hi""#]
        );
        assert_eq!(segs(r#""é""#), ["é"]);
    }

    #[test]
    fn errors_name_the_column() {
        let col = |p: &str| FieldPath::parse(p).unwrap_err().column;
        assert_eq!(col(""), 1);
        assert_eq!(col("a."), 3);
        assert_eq!(col("a..b"), 3);
        assert_eq!(col("1a"), 1);
        assert_eq!(col("a b"), 2);
        assert_eq!(col(r#"a."b"#), 3);
        assert_eq!(col(r#"a."""#), 3);
        assert_eq!(col(r#""é"x"#), 4, "columns count characters, not bytes");
        let deep = vec!["a"; MAX_SEGMENTS + 1].join(".");
        assert!(FieldPath::parse(&deep).is_err());
        assert!(FieldPath::parse(&"a".repeat(MAX_PATH_BYTES + 1)).is_err());
        let e = FieldPath::parse("a b").unwrap_err().to_string();
        assert_eq!(
            e,
            r#"field path "a b", column 2: expected '.' or the end of the path, found ' '"#
        );
    }

    #[test]
    fn printing_quotes_only_what_needs_it_and_parses_back() {
        for p in [
            "city",
            "a.b",
            r#""first name".x"#,
            r#""a""b".c"#,
            r#""1st""#,
            r#"x."a.b""#,
        ] {
            let parsed = FieldPath::parse(p).unwrap();
            assert_eq!(parsed.to_string(), p);
            assert_eq!(FieldPath::parse(&parsed.to_string()).unwrap(), parsed);
        }
        assert!(FieldPath::new(vec![]).is_err());
        assert!(FieldPath::new(vec!["".into()]).is_err());
    }

    #[test]
    fn lookup_walks_objects_only() {
        let doc: serde_json::Value =
            serde_json::from_str(r#"{"a": {"b": 1, "c.d": 2}, "l": [{"b": 3}], "a2": 5}"#).unwrap();
        let get = |p: &str| FieldPath::parse(p).unwrap().lookup(&doc).cloned();
        assert_eq!(get("a.b"), Some(1.into()));
        assert_eq!(get(r#"a."c.d""#), Some(2.into()));
        assert_eq!(get("a.c"), None);
        assert_eq!(get("l.b"), None, "arrays are not walked");
        assert_eq!(get("a2.x"), None);
        let dup: serde_json::Value = serde_json::from_str(r#"{"k": 1, "k": 2}"#).unwrap();
        assert_eq!(FieldPath::parse("k").unwrap().lookup(&dup), Some(&2.into()));
    }
}
