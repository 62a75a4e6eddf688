//! The layer rules of DESIGN.md ("Dependencies point one way"), checked
//! from the sources and the lock file, as `raft/tests/purity.rs` checks the
//! core's purity:
//!
//! - `node/src/storage/` never imports `crate::api` or `crate::server`;
//! - `node/src/transport/` never imports `crate::server` or `crate::api`;
//! - `nod-proto`, `nod-client` and `nod-backup` never depend, even
//!   indirectly, on the server (`nod`), RocksDB or chitchat;
//! - `nod-operator` and `nod-bench` never depend on `nod` (nor so on
//!   RocksDB or chitchat);
//! - `nod-query` (index encoding, paths, declarations) is pure: no server,
//!   RocksDB, chitchat, async runtime or network stack, even indirectly;
//! - the server (`node/src/`, but for the CLI in `node/src/cli/`) has no
//!   `Result` whose error is a bare `String` and no `Result` of a `Result`:
//!   each module's errors are a typed enum, and a request's own error is a
//!   different type from a failure that stops the node (STYLE.md, "Errors").
//!
//! Dependencies are read from `Cargo.lock`, which lists every package's
//! direct dependencies (a workspace member's dev-dependencies included, so
//! a test-only dependency on `nod` breaks the rule too). The checkers are
//! plain functions, and each is shown failing on a planted input below.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    manifest_dir()
        .parent()
        .expect("node/ lies in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The source without comments and string literals, line structure kept,
/// so that a doc comment naming `crate::server` is no import.
fn code_only(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                    }
                    if last == '*' && n == '/' {
                        break;
                    }
                    last = n;
                }
            }
            '"' => {
                out.push('"');
                while let Some(n) = chars.next() {
                    match n {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        '\n' => out.push('\n'),
                        _ => {}
                    }
                }
                out.push('"');
            }
            _ => out.push(c),
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Where `source` reaches the crate-level modules `banned`: as
/// `crate::m`, inside a `crate::{...}` group, or as `super::super::m` (a
/// file two levels down, as in `storage/x/y.rs`, is the only way `super`
/// leaves the layer's folder; one `super` from `storage/x.rs` stays in
/// `storage`). Returns (line number, module).
fn banned_paths(source: &str, banned: &[&str]) -> Vec<(usize, String)> {
    let code = code_only(source);
    // `crate :: api` is `crate::api`: drop blanks next to a `:`.
    let chars: Vec<char> = code.chars().collect();
    let mut compact = String::with_capacity(code.len());
    for (i, &c) in chars.iter().enumerate() {
        let blank = c == ' ' || c == '\t';
        let next = chars[i + 1..].iter().find(|n| **n != ' ' && **n != '\t');
        if blank && (compact.ends_with(':') || next == Some(&':')) {
            continue;
        }
        compact.push(c);
    }
    let line_of = |at: usize| compact[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    let mut check = |at: usize, rest: &str| {
        for m in banned {
            if rest.starts_with(m) && !rest[m.len()..].starts_with(is_ident) {
                found.push((line_of(at), m.to_string()));
            }
        }
    };
    for prefix in ["crate::", "super::super::"] {
        for (at, _) in compact.match_indices(prefix) {
            let before = compact[..at].chars().next_back();
            if before.is_some_and(is_ident) {
                continue;
            }
            let rest = &compact[at + prefix.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // Top-level names of the group: `crate::{api::etcd, storage}`.
                let mut depth = 0;
                let mut start = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            start = true;
                            continue;
                        }
                        c if c.is_whitespace() => continue,
                        _ => {}
                    }
                    if start && depth == 0 && is_ident(c) {
                        check(at, &group[i..]);
                    }
                    start = false;
                }
            } else {
                check(at, rest);
            }
        }
    }
    found
}

/// Every file under `dir` that reaches a banned module, as readable lines.
fn layer_violations(dir: &Path, banned: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for file in rust_files(dir) {
        let source = std::fs::read_to_string(&file).unwrap();
        for (line, module) in banned_paths(&source, banned) {
            out.push(format!(
                "{}:{line} imports crate::{module}",
                file.strip_prefix(workspace()).unwrap_or(&file).display()
            ));
        }
    }
    out
}

/// The top-level type arguments of a generic whose `<` was just passed:
/// `u8, Vec<(u8, u8)>> rest` gives `["u8", "Vec<(u8,u8)>"]`, blanks removed.
fn type_args(after_open: &str) -> Vec<String> {
    let mut args = vec![String::new()];
    let mut depth = 0;
    let mut last = ' ';
    for c in after_open.chars() {
        match c {
            '<' | '(' | '[' => depth += 1,
            // `->` in a function type closes nothing.
            '>' if last == '-' => {}
            '>' | ')' | ']' if depth == 0 => break,
            '>' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                args.push(String::new());
                last = c;
                continue;
            }
            _ => {}
        }
        if !c.is_whitespace() {
            args.last_mut().expect("one at least").push(c);
        }
        last = c;
    }
    args
}

/// The last path segment of a type, without its arguments:
/// `std::result::Result<u8,E>` gives `Result`.
fn type_name(ty: &str) -> &str {
    let path = ty.split('<').next().unwrap_or(ty);
    path.rsplit("::").next().unwrap_or(path)
}

/// Where `source` (comments and strings left out) has a `Result` whose
/// error is a bare `String`, or a `Result` of a `Result`. Returns (line
/// number, what was found).
fn untyped_errors(source: &str) -> Vec<(usize, String)> {
    let code = code_only(source);
    let mut found = Vec::new();
    for (at, _) in code.match_indices("Result") {
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = code[at + "Result".len()..].trim_start();
        let rest = rest.strip_prefix("::").unwrap_or(rest).trim_start();
        let Some(after_open) = rest.strip_prefix('<') else {
            continue;
        };
        let args = type_args(after_open);
        let line = code[..at].matches('\n').count() + 1;
        if args.first().is_some_and(|a| type_name(a) == "Result") {
            found.push((line, format!("Result<{}, ..>", args[0])));
        }
        if args.get(1).is_some_and(|e| type_name(e) == "String") {
            found.push((line, format!("Result<{}, String>", args[0])));
        }
    }
    found
}

/// Each package's direct dependencies, by name, from a `Cargo.lock`.
fn lock_graph(lock: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_deps = false;
    for line in lock.lines().map(str::trim) {
        if line == "[[package]]" {
            current = None;
            in_deps = false;
        } else if let Some(name) = line.strip_prefix("name = ") {
            let name = name.trim_matches('"').to_string();
            graph.entry(name.clone()).or_default();
            current = Some(name);
        } else if line.starts_with("dependencies = [") {
            in_deps = !line.ends_with(']');
        } else if in_deps && line == "]" {
            in_deps = false;
        } else if in_deps {
            let dep = line.trim_matches(|c| c == '"' || c == ',');
            let dep = dep.split(' ').next().unwrap_or(dep).to_string();
            if let Some(pkg) = &current {
                graph.entry(pkg.clone()).or_default().insert(dep);
            }
        }
    }
    graph
}

/// The chain from `root` to each package of `banned` it reaches, if any.
fn banned_dependencies(
    graph: &BTreeMap<String, BTreeSet<String>>,
    root: &str,
    banned: &[&str],
) -> Vec<String> {
    assert!(graph.contains_key(root), "{root} is not in Cargo.lock");
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([root]);
    let mut seen = BTreeSet::from([root]);
    while let Some(p) = queue.pop_front() {
        for d in graph.get(p).into_iter().flatten() {
            if seen.insert(d.as_str()) {
                parent.insert(d.as_str(), p);
                queue.push_back(d.as_str());
            }
        }
    }
    let mut out = Vec::new();
    for b in banned {
        if seen.contains(b) {
            let mut chain = vec![*b];
            while let Some(p) = parent.get(chain.last().unwrap()) {
                chain.push(p);
            }
            chain.reverse();
            out.push(chain.join(" -> "));
        }
    }
    out
}

fn workspace_lock() -> BTreeMap<String, BTreeSet<String>> {
    let path = workspace().join("Cargo.lock");
    lock_graph(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
}

const SERVER_SIDE: &[&str] = &["nod", "rocksdb", "librocksdb-sys", "chitchat"];

#[test]
fn storage_never_imports_the_api_or_the_server() {
    let v = layer_violations(&workspace().join("node/src/storage"), &["api", "server"]);
    assert!(
        v.is_empty(),
        "storage sits below the API and the server: take the wire types from nod_proto, \
         and pass what storage needs in as arguments:\n  {}",
        v.join("\n  ")
    );
}

#[test]
fn transport_never_imports_the_server_or_the_api() {
    let v = layer_violations(&workspace().join("node/src/transport"), &["server", "api"]);
    assert!(
        v.is_empty(),
        "the transport sits below the server: what it needs belongs in it or beneath it \
         (nod_proto, crate::command, crate::identity):\n  {}",
        v.join("\n  ")
    );
}

#[test]
fn proto_and_client_never_depend_on_the_server() {
    let graph = workspace_lock();
    for krate in ["nod-proto", "nod-client", "nod-backup"] {
        let v = banned_dependencies(&graph, krate, SERVER_SIDE);
        assert!(
            v.is_empty(),
            "{krate} must build without the server, RocksDB or chitchat, but Cargo.lock has:\n  {}",
            v.join("\n  ")
        );
    }
}

#[test]
fn operator_and_bench_never_depend_on_the_server() {
    let graph = workspace_lock();
    for krate in ["nod-operator", "nod-bench"] {
        let v = banned_dependencies(&graph, krate, SERVER_SIDE);
        assert!(
            v.is_empty(),
            "{krate} talks to a cluster through nod-client / nod-proto only (a real server in \
             a test is the `nod` binary, spawned), but Cargo.lock has:\n  {}",
            v.join("\n  ")
        );
    }
}

#[test]
fn the_query_core_is_pure() {
    let graph = workspace_lock();
    let banned: Vec<&str> = SERVER_SIDE
        .iter()
        .copied()
        .chain(["tokio", "tonic", "hyper", "mio"])
        .collect();
    let v = banned_dependencies(&graph, "nod-query", &banned);
    assert!(
        v.is_empty(),
        "nod-query is deterministic and does no I/O (every member must derive the same index \
         entries); the storage layer and the server build on it, but Cargo.lock has:\n  {}",
        v.join("\n  ")
    );
}

#[test]
fn server_errors_are_typed() {
    let src = workspace().join("node/src");
    let cli = src.join("cli");
    let mut v = Vec::new();
    for file in rust_files(&src) {
        if file.starts_with(&cli) {
            continue;
        }
        let source = std::fs::read_to_string(&file).unwrap();
        for (line, what) in untyped_errors(&source) {
            v.push(format!(
                "{}:{line} has {what}",
                file.strip_prefix(workspace()).unwrap_or(&file).display()
            ));
        }
    }
    assert!(
        v.is_empty(),
        "the server's errors are typed: a thiserror enum per module with useful data in \
         its variants, and a request's own error apart from a failure that stops the node \
         (one enum with named variants, not a Result in a Result):\n  {}",
        v.join("\n  ")
    );
}

// ---- the checkers fail on planted violations ----

#[test]
fn the_error_checker_catches_untyped_and_nested_errors() {
    let planted = [
        "fn f() -> Result<u8, String> {}",
        "pub type Taken = Result<CheckpointInfo, String>;",
        "fn f() -> Result<\n    Vec<(u8, u8)>,\n    std::string::String,\n> {}",
        "let r = Result::<u8, String>::Ok(1);",
        "let r = spawn_blocking(move || -> Result<(), String> { Ok(()) });",
        "fn f() -> Result<Result<u8, E>, Fatal> {}",
        "fn f() -> io::Result<std::result::Result<u8, E>> {}",
        "fn f(g: Box<dyn Fn() -> u8>) -> Result<Result<u8, E>, F> {}",
    ];
    for source in planted {
        let found = untyped_errors(source);
        assert_eq!(found.len(), 1, "{source:?}: {found:?}");
        assert_eq!(found[0].0, 1, "{source:?}: the line of `Result`");
    }
    assert_eq!(untyped_errors("\n\nfn f() -> Result<u8, String>;")[0].0, 3);
    let innocent = [
        "fn f() -> Result<String, E> {}",
        "fn f() -> Result<HashMap<NodeId, String>, StoreError> {}",
        "fn f(peers: HashMap<NodeId, String>) -> Result<(), E> {}",
        "fn f(g: Box<dyn Fn(u8) -> String>) -> Result<u8, E> {}",
        "// Result<u8, String> and Result<Result<u8, E>, F> in a comment",
        r#"let s = "Result<Result<u8, E>, String>";"#,
        "fn f() -> ProposeResult<u8, String> {}",
        "fn f() -> Result<Vec<Result<u8, E>>, E> {}",
    ];
    for source in innocent {
        assert_eq!(untyped_errors(source), vec![], "{source:?}");
    }
}

#[test]
fn the_import_checker_catches_each_form_of_import() {
    let banned = &["api", "server"];
    let planted = [
        ("use crate::api::etcd::mvccpb::KeyValue;", "api"),
        ("use crate::server;", "server"),
        ("use crate::{storage, server::command};", "server"),
        ("use crate::{\n    api::etcd,\n    transport,\n};", "api"),
        ("let id = crate::server::identity::random_id();", "server"),
        ("fn f(m: crate :: api::etcd::Member) {}", "api"),
        ("use super::super::server::node::Node;", "server"),
    ];
    for (source, module) in planted {
        let found = banned_paths(source, banned);
        assert_eq!(found.len(), 1, "{source:?}: {found:?}");
        assert_eq!(found[0].1, module, "{source:?}");
    }
    // Line numbers point at the import.
    assert_eq!(banned_paths("\n\nuse crate::api;", banned)[0].0, 3);
}

#[test]
fn the_import_checker_ignores_what_is_no_import() {
    let banned = &["api", "server"];
    let innocent = [
        "// crate::server owns this; see crate::api",
        "/// Like `crate::server::command`.",
        "/* crate::api */ use crate::storage;",
        r#"let s = "crate::server::x";"#,
        "use crate::apiary::Bees;",
        "use crate::servers;",
        "use nod_proto::etcd::etcdserverpb::Member;",
        "use crate::{storage::api, transport::server};",
        "use super::server::Thing;",
        "use other_crate::server::Thing;",
    ];
    for source in innocent {
        assert_eq!(banned_paths(source, banned), vec![], "{source:?}");
    }
}

#[test]
fn the_dependency_checker_follows_indirect_dependencies() {
    let lock = r#"
[[package]]
name = "nod-client"
version = "0.1.0"
dependencies = [
 "helper",
 "tonic",
]

[[package]]
name = "helper"
version = "1.0.0"
dependencies = [
 "rocksdb 0.25.0 (registry+https://github.com/rust-lang/crates.io-index)",
]

[[package]]
name = "rocksdb"
version = "0.25.0"

[[package]]
name = "tonic"
version = "0.14.0"
dependencies = ["http"]
"#;
    let graph = lock_graph(lock);
    assert_eq!(
        banned_dependencies(&graph, "nod-client", SERVER_SIDE),
        vec!["nod-client -> helper -> rocksdb".to_string()]
    );
    assert_eq!(
        banned_dependencies(&graph, "tonic", SERVER_SIDE),
        Vec::<String>::new()
    );
}

/// This checkout's `node/`: read when the test runs (cargo sets it), not
/// at build time: a test binary reused from a build in another checkout of
/// the same target directory must still read this checkout.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
