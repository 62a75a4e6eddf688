//! `nod dev`, as a new user meets it: it prints the endpoints, etcdctl talks
//! to them, Ctrl-C stops it cleanly, and a second run finds the data again.

mod support;

use std::process::{Child, Command};
use std::time::Duration;

fn start_dev(dir: &std::path::Path, base: u16) -> (Child, Vec<String>) {
    let (child, printed) = support::start_dev(dir, base, "endpoints: ");
    let endpoints = printed["endpoints"]
        .split(',')
        .map(str::to_string)
        .collect();
    (child, endpoints)
}

fn interrupt_and_wait(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "nod dev exited with {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("nod dev did not stop within 15 s of Ctrl-C");
}

fn etcdctl(endpoints: &[String], args: &[&str]) -> String {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .output()
        .expect("etcdctl (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn nod_dev_starts_a_cluster_stops_on_ctrl_c_and_finds_its_data_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nod-data");
    let base = support::dev_base_port();
    let (child, endpoints) = start_dev(&data, base);
    assert_eq!(endpoints.len(), 3);
    assert_eq!(endpoints[0], format!("127.0.0.1:{base}"));
    assert_eq!(etcdctl(&endpoints, &["put", "greeting", "hello"]), "OK\n");
    assert_eq!(etcdctl(&endpoints, &["member", "list"]).lines().count(), 3);
    interrupt_and_wait(child);
    for i in 1..=3 {
        assert!(data
            .join(format!("node-{i}"))
            .join("identity.json")
            .exists());
    }
    let (child, endpoints) = start_dev(&data, base);
    assert_eq!(
        etcdctl(&endpoints, &["get", "greeting"]),
        "greeting\nhello\n"
    );
    interrupt_and_wait(child);
}
