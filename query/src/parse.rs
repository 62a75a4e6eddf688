//! The query language's parser: a lexer with byte offsets, then recursive
//! descent (OR below AND below NOT), with errors that give the line, the
//! column, what was expected and what was found.
//!
//! Hand-written rather than a parser crate: the grammar is about 25
//! productions, and errors this precise need hand-written context with any
//! of them (docs/research/beyond-etcd.md, §2.2).

use std::fmt;

use crate::ast::{CmpOp, Expr, Item, Literal, Operand, Order, Pred, Projection, Query};
use crate::path::FieldPath;

/// Bytes a query's text may take.
pub const MAX_QUERY_BYTES: usize = 64 << 10;
/// How deep NOT and parentheses may nest.
pub const MAX_DEPTH: usize = 64;
/// Literals an IN list may hold.
pub const MAX_IN_ITEMS: usize = 1000;

/// Why a text is not a query. `line` and `column` count from 1, the
/// column in characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ParseError {}

impl ParseError {
    /// The offending line of `text` and a caret under the column, for a
    /// terminal.
    pub fn caret(&self, text: &str) -> String {
        let line = text.lines().nth(self.line.saturating_sub(1)).unwrap_or("");
        format!("{line}\n{}^", " ".repeat(self.column.saturating_sub(1)))
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// A bare word: a keyword (any case) or a field name.
    Word(String),
    /// `"…"`: always a field name (or an alias).
    Quoted(String),
    /// `'…'`.
    Str(String),
    /// A number's text.
    Num(String),
    Sym(&'static str),
    End,
}

struct Token {
    tok: Tok,
    at: usize,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) if crate::ast::is_reserved(w) => w.to_ascii_uppercase(),
        Tok::Word(w) => format!("the name {w}"),
        Tok::Quoted(w) => format!("the name \"{w}\""),
        Tok::Str(s) => format!("the string '{s}'"),
        Tok::Num(n) => format!("the number {n}"),
        Tok::Sym(s) => format!("'{s}'"),
        Tok::End => "the end of the query".into(),
    }
}

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
}

const SYMBOLS: &[&str] = &[
    "<=", ">=", "!=", "<>", "=", "<", ">", "(", ")", ",", ".", "*",
];

impl Lexer<'_> {
    fn error(&self, at: usize, message: String) -> ParseError {
        position(self.text, at, message)
    }

    fn peek_char(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn skip_space(&mut self) {
        loop {
            let rest = &self.text[self.pos..];
            if rest.starts_with("--") {
                self.pos += rest.find('\n').unwrap_or(rest.len());
            } else if let Some(c) = rest.chars().next().filter(|c| c.is_whitespace()) {
                self.pos += c.len_utf8();
            } else {
                return;
            }
        }
    }

    /// The text between `quote`s from the current position (on the
    /// opening quote), a doubled quote standing for one.
    fn quoted(&mut self, quote: char) -> Result<String, ParseError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek_char() else {
                let what = if quote == '\'' {
                    "string"
                } else {
                    "quoted name"
                };
                return Err(self.error(start, format!("this {what} is never closed")));
            };
            self.pos += c.len_utf8();
            if c == quote {
                if self.peek_char() == Some(quote) {
                    self.pos += 1;
                    out.push(quote);
                } else {
                    return Ok(out);
                }
            } else {
                out.push(c);
            }
        }
    }

    fn number(&mut self) -> String {
        let start = self.pos;
        let bytes = self.text.as_bytes();
        let digits = |p: &mut usize| {
            while bytes.get(*p).is_some_and(u8::is_ascii_digit) {
                *p += 1;
            }
        };
        let mut p = self.pos;
        if bytes[p] == b'-' {
            p += 1;
        }
        digits(&mut p);
        if bytes.get(p) == Some(&b'.') && bytes.get(p + 1).is_some_and(u8::is_ascii_digit) {
            p += 1;
            digits(&mut p);
        }
        if matches!(bytes.get(p), Some(b'e' | b'E')) {
            let mut q = p + 1;
            if matches!(bytes.get(q), Some(b'+' | b'-')) {
                q += 1;
            }
            if bytes.get(q).is_some_and(u8::is_ascii_digit) {
                p = q;
                digits(&mut p);
            }
        }
        self.pos = p;
        self.text[start..p].to_string()
    }

    fn next(&mut self) -> Result<Token, ParseError> {
        self.skip_space();
        let at = self.pos;
        let Some(c) = self.peek_char() else {
            return Ok(Token { tok: Tok::End, at });
        };
        let rest = &self.text[self.pos..];
        let tok = if c == '\'' {
            Tok::Str(self.quoted('\'')?)
        } else if c == '"' {
            let name = self.quoted('"')?;
            if name.is_empty() {
                return Err(self.error(at, "a quoted name is empty".into()));
            }
            Tok::Quoted(name)
        } else if c.is_ascii_digit()
            || (c == '-' && rest[1..].starts_with(|d: char| d.is_ascii_digit()))
        {
            Tok::Num(self.number())
        } else if c.is_ascii_alphabetic() || c == '_' {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(rest.len());
            self.pos += len;
            Tok::Word(rest[..len].to_string())
        } else if let Some(s) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            self.pos += s.len();
            Tok::Sym(if *s == "<>" { "!=" } else { s })
        } else {
            return Err(self.error(at, format!("unexpected character {c:?}")));
        };
        Ok(Token { tok, at })
    }
}

fn position(text: &str, at: usize, message: String) -> ParseError {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    ParseError {
        line,
        column: before[line_start..].chars().count() + 1,
        message,
    }
}

/// Parses one query.
pub fn parse(text: &str) -> Result<Query, ParseError> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(ParseError {
            line: 1,
            column: 1,
            message: format!(
                "a query is at most {MAX_QUERY_BYTES} bytes, this one {}",
                text.len()
            ),
        });
    }
    let mut lexer = Lexer { text, pos: 0 };
    let mut tokens = Vec::new();
    loop {
        let t = lexer.next()?;
        let end = t.tok == Tok::End;
        tokens.push(t);
        if end {
            break;
        }
    }
    let mut p = Parser {
        text,
        tokens,
        i: 0,
        depth: 0,
    };
    let q = p.query()?;
    p.expect_end("after the query")?;
    Ok(q)
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.tokens[self.i].tok
    }

    fn peek_at(&self, n: usize) -> &Tok {
        let last = self.tokens.len() - 1;
        &self.tokens[(self.i + n).min(last)].tok
    }

    fn bump(&mut self) -> Tok {
        let t = self.tokens[self.i].tok.clone();
        if self.i + 1 < self.tokens.len() {
            self.i += 1;
        }
        t
    }

    fn error_here(&self, message: String) -> ParseError {
        position(self.text, self.tokens[self.i].at, message)
    }

    fn expected(&self, what: &str) -> ParseError {
        self.error_here(format!("expected {what}, found {}", describe(self.peek())))
    }

    fn is_kw(&self, kw: &str) -> bool {
        self.is_kw_at(0, kw)
    }

    fn is_kw_at(&self, n: usize, kw: &str) -> bool {
        matches!(self.peek_at(n), Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect_kw(&mut self, kw: &str, context: &str) -> Result<(), ParseError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.expected(&format!("{kw} {context}")))
        }
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Tok::Sym(x) if *x == s) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, s: &str, context: &str) -> Result<(), ParseError> {
        if self.eat_sym(s) {
            Ok(())
        } else {
            Err(self.expected(&format!("'{s}' {context}")))
        }
    }

    fn expect_end(&mut self, context: &str) -> Result<(), ParseError> {
        if *self.peek() == Tok::End {
            Ok(())
        } else {
            Err(self.expected(&format!("the end of the query {context}")))
        }
    }

    fn query(&mut self) -> Result<Query, ParseError> {
        let explain = self.eat_kw("EXPLAIN");
        self.expect_kw("SELECT", "to start the query")?;
        let projection = self.projection()?;
        self.expect_kw("FROM", "after the selected columns")?;
        let Tok::Str(from) = self.peek().clone() else {
            return Err(self.expected("a key prefix in single quotes after FROM"));
        };
        self.bump();
        let filter = if self.eat_kw("WHERE") {
            Some(self.or()?)
        } else {
            None
        };
        let mut order = Vec::new();
        if self.eat_kw("ORDER") {
            self.expect_kw("BY", "after ORDER")?;
            loop {
                let operand = self.operand("after ORDER BY")?;
                let desc = if self.eat_kw("DESC") {
                    true
                } else {
                    self.eat_kw("ASC");
                    false
                };
                order.push(Order { operand, desc });
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        let limit = if self.eat_kw("LIMIT") {
            Some(self.integer("after LIMIT")?)
        } else {
            None
        };
        let at_revision = if self.eat_kw("AT") {
            self.expect_kw("REVISION", "after AT")?;
            let at = self.i;
            let r = self.integer("after AT REVISION")?;
            match i64::try_from(r) {
                Ok(r) if r > 0 => Some(r),
                _ => {
                    return Err(position(
                        self.text,
                        self.tokens[at].at,
                        format!("a revision is from 1 to {}, not {r}", i64::MAX),
                    ))
                }
            }
        } else {
            None
        };
        let serializable = self.eat_kw("SERIALIZABLE");
        Ok(Query {
            explain,
            projection,
            from,
            filter,
            order,
            limit,
            at_revision,
            serializable,
        })
    }

    fn integer(&mut self, context: &str) -> Result<u64, ParseError> {
        match self.peek().clone() {
            Tok::Num(n) => match n.parse::<u64>() {
                Ok(v) => {
                    self.bump();
                    Ok(v)
                }
                Err(_) => Err(self.error_here(format!(
                    "expected a whole number from 0 to {} {context}, found {n}",
                    u64::MAX
                ))),
            },
            _ => Err(self.expected(&format!("a whole number {context}"))),
        }
    }

    fn projection(&mut self) -> Result<Projection, ParseError> {
        if self.eat_sym("*") {
            return Ok(Projection::All);
        }
        if self.is_kw("COUNT") && matches!(self.peek_at(1), Tok::Sym("(")) {
            self.bump();
            self.bump();
            self.expect_sym("*", "in COUNT(*)")?;
            self.expect_sym(")", "to close COUNT(*")?;
            return Ok(Projection::Count);
        }
        let mut items = Vec::new();
        loop {
            let operand = self.operand("after SELECT (or '*', or COUNT(*))")?;
            let alias = if self.eat_kw("AS") {
                match self.peek().clone() {
                    Tok::Word(w) if !crate::ast::is_reserved(&w) => {
                        self.bump();
                        Some(w)
                    }
                    Tok::Quoted(w) => {
                        self.bump();
                        Some(w)
                    }
                    _ => return Err(self.expected("a name after AS")),
                }
            } else {
                None
            };
            items.push(Item { operand, alias });
            if !self.eat_sym(",") {
                return Ok(Projection::Items(items));
            }
        }
    }

    fn operand(&mut self, context: &str) -> Result<Operand, ParseError> {
        let pseudo = [
            ("KEY", Operand::Key),
            ("VALUE", Operand::Value),
            ("MOD_REVISION", Operand::ModRevision),
            ("CREATE_REVISION", Operand::CreateRevision),
            ("VERSION", Operand::Version),
            ("LEASE", Operand::Lease),
        ];
        for (kw, op) in pseudo {
            if self.eat_kw(kw) {
                return Ok(op);
            }
        }
        let start = self.i;
        let mut segments = Vec::new();
        loop {
            match self.peek().clone() {
                Tok::Word(w) if segments.is_empty() && crate::ast::is_reserved(&w) => {
                    return Err(self.expected(&format!(
                        "a field {context} (a field named {w} is written \"{w}\")"
                    )));
                }
                Tok::Word(w) | Tok::Quoted(w) => {
                    self.bump();
                    segments.push(w);
                }
                _ if segments.is_empty() => {
                    return Err(self.expected(&format!("a field {context}")));
                }
                _ => return Err(self.expected("a field name after '.'")),
            }
            if !self.eat_sym(".") {
                break;
            }
        }
        FieldPath::new(segments)
            .map(Operand::Field)
            .map_err(|e| position(self.text, self.tokens[start].at, e.message))
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        self.chain("OR", Self::and, Expr::Or)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        self.chain("AND", Self::not, Expr::And)
    }

    /// `item {kw item}`: the item alone, or all of them joined by `join`.
    fn chain(
        &mut self,
        kw: &str,
        item: fn(&mut Self) -> Result<Expr, ParseError>,
        join: fn(Vec<Expr>) -> Expr,
    ) -> Result<Expr, ParseError> {
        let first = item(self)?;
        if !self.is_kw(kw) {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.eat_kw(kw) {
            items.push(item(self)?);
        }
        Ok(join(items))
    }

    fn not(&mut self) -> Result<Expr, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_here(format!(
                "NOT and parentheses nest more than {MAX_DEPTH} deep"
            )));
        }
        let e = if self.eat_kw("NOT") {
            Expr::Not(Box::new(self.not()?))
        } else if self.eat_sym("(") {
            let e = self.or()?;
            self.expect_sym(")", "to close '('")?;
            e
        } else {
            Expr::Pred(self.pred()?)
        };
        self.depth -= 1;
        Ok(e)
    }

    fn pred(&mut self) -> Result<Pred, ParseError> {
        let operand = self.operand("in the condition")?;
        let ops = [
            ("=", CmpOp::Eq),
            ("!=", CmpOp::Ne),
            ("<=", CmpOp::Le),
            (">=", CmpOp::Ge),
            ("<", CmpOp::Lt),
            (">", CmpOp::Gt),
        ];
        for (sym, op) in ops {
            if self.eat_sym(sym) {
                let lit = self.literal(&format!("after '{sym}'"))?;
                return Ok(Pred::Cmp(operand, op, lit));
            }
        }
        if self.eat_kw("IS") {
            let negated = self.eat_kw("NOT");
            self.expect_kw("MISSING", if negated { "after IS NOT" } else { "after IS" })?;
            return Ok(Pred::Missing { operand, negated });
        }
        if self.eat_kw("STARTS") {
            self.expect_kw("WITH", "after STARTS")?;
            let Tok::Str(s) = self.peek().clone() else {
                return Err(self.expected("a string after STARTS WITH"));
            };
            self.bump();
            return Ok(Pred::StartsWith(operand, s));
        }
        let negated = self.is_kw("NOT") && (self.is_kw_at(1, "IN") || self.is_kw_at(1, "BETWEEN"));
        if negated {
            self.bump();
        }
        if self.eat_kw("IN") {
            self.expect_sym("(", "after IN")?;
            let mut list = Vec::new();
            loop {
                if list.len() == MAX_IN_ITEMS {
                    return Err(
                        self.error_here(format!("an IN list holds at most {MAX_IN_ITEMS} values"))
                    );
                }
                list.push(self.literal("in the IN list")?);
                if !self.eat_sym(",") {
                    break;
                }
            }
            self.expect_sym(")", "to close the IN list")?;
            return Ok(Pred::In {
                operand,
                negated,
                list,
            });
        }
        if self.eat_kw("BETWEEN") {
            let low = self.literal("after BETWEEN")?;
            self.expect_kw("AND", "between the bounds of BETWEEN")?;
            let high = self.literal("after BETWEEN … AND")?;
            return Ok(Pred::Between {
                operand,
                negated,
                low,
                high,
            });
        }
        Err(self.expected(&format!(
            "a comparison (=, !=, <, <=, >, >=, IN, BETWEEN, STARTS WITH, IS MISSING) after {operand}"
        )))
    }

    fn literal(&mut self, context: &str) -> Result<Literal, ParseError> {
        let lit = match self.peek().clone() {
            Tok::Str(s) => Literal::String(s),
            Tok::Num(n) => {
                let v: f64 = n
                    .parse()
                    .map_err(|_| self.error_here(format!("{n} is not a number")))?;
                if !v.is_finite() {
                    return Err(self
                        .error_here(format!("{n} is out of range (a number is a 64-bit float)")));
                }
                Literal::Number(v)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("TRUE") => Literal::Bool(true),
            Tok::Word(w) if w.eq_ignore_ascii_case("FALSE") => Literal::Bool(false),
            Tok::Word(w) if w.eq_ignore_ascii_case("NULL") => Literal::Null,
            _ => {
                return Err(
                    self.expected(&format!("a number, string, TRUE, FALSE or NULL {context}"))
                )
            }
        };
        self.bump();
        Ok(lit)
    }
}
