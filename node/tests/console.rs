//! The web console in a real browser: `nod dev` serves it, headless
//! Chromium (Debian's `chromium`, driven by `playwright-core` from npm;
//! scripts/setup installs both) loads it and does what a user does:
//! sees the leader and three healthy members, writes through the API and
//! watches the chart move, pages through keys, watches a prefix, runs a
//! query and its EXPLAIN, is refused writes without a login, and once
//! authentication is on logs in as a user who may only read (a write is
//! refused) and as root (a write lands in the store). The steps are in
//! tests/console/console.cjs. Screenshots go to $NOD_CONSOLE_SCREENSHOTS
//! when set (docs/images), else a temporary folder.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `nod dev`; its endpoints and its console's URL.
fn start_dev(dir: &Path, base: u16) -> (Dev, Vec<String>, String) {
    let (child, printed) = support::start_dev(dir, base, "console: ");
    let endpoints = printed["endpoints"]
        .split(',')
        .map(str::to_string)
        .collect();
    (Dev(child), endpoints, printed["console"].clone())
}

fn npm_modules() -> PathBuf {
    let home = std::env::var("HOME").expect("HOME");
    Path::new(&home).join(".cache/nod/npm/node_modules")
}

#[test]
fn the_console_in_a_browser() {
    let modules = npm_modules();
    assert!(
        modules.join("playwright-core").is_dir() && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Chromium and playwright-core: run scripts/setup"
    );
    let dir = tempfile::tempdir().unwrap();
    let shots = match std::env::var_os("NOD_CONSOLE_SCREENSHOTS") {
        Some(d) => PathBuf::from(d),
        None => dir.path().join("shots"),
    };
    std::fs::create_dir_all(&shots).unwrap();
    let (dev, endpoints, console) = start_dev(&dir.path().join("data"), support::dev_base_port());
    assert!(console.starts_with("http://127.0.0.1:") && console.ends_with("/ui"));

    // The page as a browser gets it, held to its own origin (the browser
    // steps below bypass the policy: playwright evaluates strings).
    let addr = &console["http://".len()..console.len() - "/ui".len()];
    let (code, page) = support::http_get(addr, "/ui").expect("GET /ui");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("<title>Nod console</title>"), "{page}");
    assert!(
        page.to_lowercase()
            .contains("content-security-policy: default-src 'self'"),
        "{page}"
    );

    let script = manifest_dir().join("tests/console/console.cjs");
    let out = Command::new("node")
        .arg(&script)
        .arg(&console)
        .arg(&endpoints[0])
        .arg(&shots)
        .env("NODE_PATH", &modules)
        .output()
        .expect("node (scripts/setup installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && stdout
                .lines()
                .last()
                .is_some_and(|l| l.starts_with("console: ok")),
        "the browser steps failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("{}", stdout.trim());
    for shot in [
        "console-cluster.png",
        "console-keys.png",
        "console-query.png",
    ] {
        let bytes = std::fs::read(shots.join(shot)).unwrap_or_else(|e| panic!("{shot}: {e}"));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
            "{shot}"
        );
    }
    drop(dev);
}

/// This checkout's `node/`: read when the test runs (cargo sets it), not
/// at build time: a test binary reused from a build in another checkout of
/// the same target directory must still read this checkout.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
