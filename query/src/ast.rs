//! A parsed query, and its canonical text (`Display`), which parses back
//! to the same query.

use std::fmt;

use crate::path::FieldPath;

/// `[EXPLAIN] SELECT … FROM '<prefix>' [WHERE …] [ORDER BY …] [LIMIT n]
/// [AT REVISION n] [SERIALIZABLE]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub explain: bool,
    pub projection: Projection,
    /// The key prefix the query ranges over.
    pub from: String,
    pub filter: Option<Expr>,
    pub order: Vec<Order>,
    pub limit: Option<u64>,
    pub at_revision: Option<i64>,
    pub serializable: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Projection {
    /// `*`: each row's key and value.
    All,
    /// `COUNT(*)`.
    Count,
    Items(Vec<Item>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub operand: Operand,
    pub alias: Option<String>,
}

/// What a predicate, a projection or an ordering reads from a row: one of
/// the key's own attributes (etcd's `KeyValue` fields) or a field of its
/// JSON value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Operand {
    Key,
    Value,
    ModRevision,
    CreateRevision,
    Version,
    Lease,
    Field(FieldPath),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    String(String),
    Number(f64),
    Bool(bool),
    Null,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// Two or more alternatives.
    Or(Vec<Expr>),
    /// Two or more conjuncts.
    And(Vec<Expr>),
    Not(Box<Expr>),
    Pred(Pred),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Pred {
    Cmp(Operand, CmpOp, Literal),
    In {
        operand: Operand,
        negated: bool,
        list: Vec<Literal>,
    },
    Between {
        operand: Operand,
        negated: bool,
        low: Literal,
        high: Literal,
    },
    StartsWith(Operand, String),
    Missing {
        operand: Operand,
        negated: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Order {
    pub operand: Operand,
    pub desc: bool,
}

/// Words the language reserves (any case): a JSON field with one of these
/// names is written quoted, `"key"`.
pub const RESERVED: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "ORDER",
    "BY",
    "LIMIT",
    "AT",
    "REVISION",
    "SERIALIZABLE",
    "EXPLAIN",
    "COUNT",
    "AS",
    "AND",
    "OR",
    "NOT",
    "IN",
    "BETWEEN",
    "STARTS",
    "WITH",
    "IS",
    "MISSING",
    "ASC",
    "DESC",
    "TRUE",
    "FALSE",
    "NULL",
    "KEY",
    "VALUE",
    "MOD_REVISION",
    "CREATE_REVISION",
    "VERSION",
    "LEASE",
];

pub fn is_reserved(word: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(word))
}

fn plain_segment(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !is_reserved(s)
}

fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    write!(f, "'{}'", s.replace('\'', "''"))
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Key => f.write_str("KEY"),
            Operand::Value => f.write_str("VALUE"),
            Operand::ModRevision => f.write_str("MOD_REVISION"),
            Operand::CreateRevision => f.write_str("CREATE_REVISION"),
            Operand::Version => f.write_str("VERSION"),
            Operand::Lease => f.write_str("LEASE"),
            Operand::Field(p) => {
                for (i, seg) in p.segments().iter().enumerate() {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if plain_segment(seg) {
                        f.write_str(seg)?;
                    } else {
                        write!(f, "\"{}\"", seg.replace('"', "\"\""))?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::String(s) => write_string(f, s),
            // Rust prints the shortest text that reads back as the same
            // f64, and never an exponent (so no 'e' for the lexer to
            // take apart).
            Literal::Number(n) => write!(f, "{n}"),
            Literal::Bool(true) => f.write_str("TRUE"),
            Literal::Bool(false) => f.write_str("FALSE"),
            Literal::Null => f.write_str("NULL"),
        }
    }
}

fn write_child(f: &mut fmt::Formatter<'_>, e: &Expr, parens: bool) -> fmt::Result {
    if parens {
        write!(f, "({e})")
    } else {
        write!(f, "{e}")
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Or(items) => {
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" OR ")?;
                    }
                    write_child(f, e, matches!(e, Expr::Or(_)))?;
                }
                Ok(())
            }
            Expr::And(items) => {
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" AND ")?;
                    }
                    write_child(f, e, matches!(e, Expr::Or(_) | Expr::And(_)))?;
                }
                Ok(())
            }
            Expr::Not(e) => {
                f.write_str("NOT ")?;
                write_child(f, e, matches!(**e, Expr::Or(_) | Expr::And(_)))
            }
            Expr::Pred(p) => write!(f, "{p}"),
        }
    }
}

impl fmt::Display for Pred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not = |negated: bool| if negated { "NOT " } else { "" };
        match self {
            Pred::Cmp(o, op, l) => write!(f, "{o} {} {l}", op.symbol()),
            Pred::In {
                operand,
                negated,
                list,
            } => {
                write!(f, "{operand} {}IN (", not(*negated))?;
                for (i, l) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{l}")?;
                }
                f.write_str(")")
            }
            Pred::Between {
                operand,
                negated,
                low,
                high,
            } => write!(f, "{operand} {}BETWEEN {low} AND {high}", not(*negated)),
            Pred::StartsWith(o, s) => {
                write!(f, "{o} STARTS WITH ")?;
                write_string(f, s)
            }
            Pred::Missing { operand, negated } => {
                write!(f, "{operand} IS {}MISSING", not(*negated))
            }
        }
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.explain {
            f.write_str("EXPLAIN ")?;
        }
        f.write_str("SELECT ")?;
        match &self.projection {
            Projection::All => f.write_str("*")?,
            Projection::Count => f.write_str("COUNT(*)")?,
            Projection::Items(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", item.operand)?;
                    if let Some(a) = &item.alias {
                        if plain_segment(a) {
                            write!(f, " AS {a}")?;
                        } else {
                            write!(f, " AS \"{}\"", a.replace('"', "\"\""))?;
                        }
                    }
                }
            }
        }
        f.write_str(" FROM ")?;
        write_string(f, &self.from)?;
        if let Some(e) = &self.filter {
            write!(f, " WHERE {e}")?;
        }
        for (i, o) in self.order.iter().enumerate() {
            f.write_str(if i == 0 { " ORDER BY " } else { ", " })?;
            write!(f, "{}", o.operand)?;
            if o.desc {
                f.write_str(" DESC")?;
            }
        }
        if let Some(n) = self.limit {
            write!(f, " LIMIT {n}")?;
        }
        if let Some(r) = self.at_revision {
            write!(f, " AT REVISION {r}")?;
        }
        if self.serializable {
            f.write_str(" SERIALIZABLE")?;
        }
        Ok(())
    }
}
