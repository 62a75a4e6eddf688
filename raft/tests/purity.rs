//! The consensus core must stay a pure state machine: no async runtime, no
//! network or disk crate, no clock, no threads, no global RNG. This test makes
//! that a build failure rather than a review comment.

use std::path::Path;

const ALLOWED_DEPENDENCIES: &[&str] = &["thiserror"];
const FORBIDDEN_IN_SOURCE: &[&str] = &[
    "std::time",
    "Instant::",
    "SystemTime",
    "std::thread",
    "thread_rng",
    "rand::",
    "tokio",
    "tonic",
    "rocksdb",
    "std::fs",
    "std::net",
    "std::env",
    "std::process",
];

#[test]
fn the_core_depends_only_on_allowed_crates() {
    let manifest = std::fs::read_to_string(manifest_dir().join("Cargo.toml")).unwrap();
    let mut section = String::new();
    let mut found = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section == "[dependencies]" && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', '.']).next().unwrap().trim().to_string();
            found.push(name);
        }
        assert!(
            !(section.starts_with("[target") && section.contains("dependencies")),
            "platform-specific dependencies are not allowed in the core: {section}"
        );
    }
    for dep in &found {
        assert!(
            ALLOWED_DEPENDENCIES.contains(&dep.as_str()),
            "the core may not depend on {dep}"
        );
    }
    assert!(!found.is_empty(), "the manifest was parsed");
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
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
fn the_core_source_uses_no_clock_thread_rng_or_io() {
    let mut files = Vec::new();
    rust_files(&manifest_dir().join("src"), &mut files);
    assert!(files.len() > 5, "sources found");
    let mut bad = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for pat in FORBIDDEN_IN_SOURCE {
                if code.contains(pat) {
                    bad.push(format!("{}:{}: {pat}", f.display(), n + 1));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "the core must stay pure:\n{}",
        bad.join("\n")
    );
}

/// This package's folder. Read at run time (cargo test sets it), not baked in
/// at build time: a test binary reused from a build in another checkout of
/// the same target directory must still read this checkout.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
