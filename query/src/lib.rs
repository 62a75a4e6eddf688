//! The pure part of Nod's secondary indexes and queries: the typed values
//! an index holds ([`value`]), their order-preserving encoding into index
//! entry keys ([`codec`]), paths to fields of JSON documents ([`path`]),
//! index declarations ([`spec`]) with the tuple each document gives them,
//! read in one pass over its text ([`extract`]), and the query language:
//! its syntax tree ([`ast`]) and parser ([`parse`]), what a query means
//! for one row ([`eval`]), how to find its rows ([`plan`]) and finding
//! them ([`exec`]).
//!
//! No I/O: the storage layer writes and reads the entries, the server
//! serves the queries. Everything here is deterministic, because every
//! member must derive byte-identical index entries from the same value
//! (the entries are part of the replicated state, written in the apply
//! batch of the keys they index).

pub mod ast;
pub mod codec;
pub mod eval;
pub mod exec;
pub mod extract;
pub mod parse;
pub mod path;
pub mod plan;
pub mod spec;
pub mod value;

pub use ast::Query;
pub use codec::{DecodeError, EntryKey};
pub use parse::{parse, ParseError};
pub use path::{FieldPath, PathError};
pub use spec::{IndexField, IndexSpec, Skip, SpecError};
pub use value::{FieldType, FieldValue};
