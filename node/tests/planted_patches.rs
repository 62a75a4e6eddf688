//! The planted bugs (`node/tests/planted/*.patch`, run by `scripts/planted`
//! under `NOD_PLANTED=1`) must still apply to the tree: a change that moves
//! the code they plant into fails here, in the default suite, instead of
//! silently leaving the planted set unrun.

use std::process::Command;

#[test]
fn every_planted_patch_applies_to_the_tree() {
    let root = manifest_dir().join("..");
    let dir = manifest_dir().join("tests/planted");
    let mut patches: Vec<_> = std::fs::read_dir(&dir)
        .expect("node/tests/planted exists")
        .map(|e| e.expect("a readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "patch"))
        .collect();
    patches.sort();
    assert!(patches.len() >= 7, "the planted set shrank: {patches:?}");
    let mut failed = Vec::new();
    for patch in &patches {
        let out = Command::new("git")
            .args(["apply", "--check", "-p1"])
            .arg(patch)
            .current_dir(&root)
            .output()
            .expect("git runs (scripts/setup installs it)");
        if !out.status.success() {
            failed.push(format!(
                "{}: {}",
                patch.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "planted patches that no longer apply:\n{}",
        failed.join("\n")
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
