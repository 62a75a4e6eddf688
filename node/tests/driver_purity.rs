//! The driver (`node/src/driver/`) must stay free of I/O, so the server and
//! the simulation run the same code: no async runtime, no network or disk
//! crate, no clock, no threads, no global randomness, and none of the
//! server's I/O edges (the transport, RocksDB checkpoints). Time comes in
//! from the adapter; effects go out through the platform traits.

use std::path::{Path, PathBuf};

const FORBIDDEN: &[&str] = &[
    "tokio",
    "tonic",
    "rocksdb",
    "chitchat",
    "std::time::Instant",
    "Instant::",
    "SystemTime",
    "std::thread",
    "std::fs",
    "std::net",
    "std::env",
    "std::process",
    "RandomState",
    "transport::peer",
    "crate::api",
    "crate::server::",
    "checkpoint::create",
    "checkpoint::install",
    "crate::server::driver",
];

/// The lines of `source` that use a forbidden name (comments excluded).
fn violations(source: &str) -> Vec<(usize, &'static str)> {
    let mut found = Vec::new();
    for (n, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for name in FORBIDDEN {
            if code.contains(name) {
                found.push((n + 1, *name));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_driver_does_no_io() {
    let dir = manifest_dir().join("src/driver");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    assert!(files.len() >= 5, "the driver's files were found in {dir:?}");
    let mut report = Vec::new();
    for f in &files {
        let source = std::fs::read_to_string(f).unwrap();
        for (line, name) in violations(&source) {
            report.push(format!("{}:{line} uses {name}", f.display()));
        }
    }
    assert!(
        report.is_empty(),
        "I/O in the driver:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_check_catches_a_planted_use() {
    let planted =
        "use std::collections::BTreeMap;\nlet t = std::time::Instant::now(); // a clock\n";
    assert_eq!(
        violations(planted),
        vec![(2, "std::time::Instant"), (2, "Instant::")]
    );
    assert!(violations("// tokio in a comment is fine\n").is_empty());
}

#[test]
fn no_driver_file_is_over_600_lines() {
    let dir = manifest_dir().join("src/driver");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    for f in files {
        let lines = std::fs::read_to_string(&f).unwrap().lines().count();
        assert!(lines <= 600, "{} has {lines} lines", f.display());
    }
}

/// This checkout's `node/`: read when the test runs (cargo sets it), not
/// at build time: a test binary reused from a build in another checkout of
/// the same target directory must still read this checkout.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
