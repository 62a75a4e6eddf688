//! TLS end to end, with real processes and Debian's etcdctl 3.4: client
//! certificates required and checked (no certificate, another CA's, an
//! expired one and plain TCP are all refused), a certificate rotated on
//! disk served without a restart (and a broken one ignored), peers over
//! mutual TLS with a required common name (Raft, forwarding to the leader,
//! joining and snapshot streams all on it; a member with the wrong
//! certificate never joins), `nod dev --tls` working as it prints, and a
//! client certificate's common name as its user once auth is on, and
//! `--tls-min-version`/`--tls-max-version`/`--cipher-suites` enforced in
//! the handshake (checked with OpenSSL's client), the metrics port over
//! TLS when asked, `nod --insecure-skip-tls-verify`, the gossip key
//! rotated under a running cluster, and an empty node rejoining by itself
//! (gossip, peer TLS) with auth on.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nod::tls::pki::{Ca, Usage, Written};
use support::{eventually, Member};

fn loopback() -> Vec<String> {
    vec!["127.0.0.1".into(), "localhost".into()]
}

/// etcdctl over TLS with short timeouts (a refused handshake must fail fast).
fn etcdctl_tls(endpoint: &str, tls: &[String], args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(["--dial-timeout=2s", "--command-timeout=4s"])
        .args(tls)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("etcdctl (./scripts/setup installs Debian's etcd-client)")
}

fn flags(ca: &Path, id: Option<&Written>) -> Vec<String> {
    let mut f = vec![format!("--cacert={}", ca.display())];
    if let Some(w) = id {
        f.push(format!("--cert={}", w.cert.display()));
        f.push(format!("--key={}", w.key.display()));
    }
    f
}

/// A certificate from `ca`, written as `<name>.pem` and `<name>-key.pem` in `dir`.
fn issue(ca: &Ca, cn: &str, sans: &[String], usage: Usage, dir: &Path, name: &str) -> Written {
    ca.issue(cn, sans, usage).unwrap().write(dir, name).unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_checked_and_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let ca = Ca::new("ca one").unwrap();
    let ca_file = ca.write(&pki, "ca").unwrap();
    let other = Ca::new("ca two").unwrap();
    let other_file = other.write(&pki, "other-ca").unwrap();
    let server = issue(&ca, "server", &loopback(), Usage::Server, &pki, "server");
    let client = issue(&ca, "root", &[], Usage::Client, &pki, "client");
    let foreign = issue(&other, "root", &[], Usage::Client, &pki, "foreign");
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue_between(
            "root",
            &[],
            Usage::Client,
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        )
        .unwrap()
        .write(&pki, "expired")
        .unwrap();

    let mut m = Member::new(dir.path(), "n1");
    m.client_scheme = "https";
    let cert_flags = [
        format!("--cert-file={}", server.cert.display()),
        format!("--key-file={}", server.key.display()),
        format!("--trusted-ca-file={}", ca_file.display()),
        "--client-cert-auth".to_string(),
    ];
    let extra: Vec<&str> = cert_flags.iter().map(String::as_str).collect();
    m.start(&format!("n1={}", m.peer_url()), "new", &extra);
    let url = m.client_url();

    let good = flags(&ca_file, Some(&client));
    eventually("a write over TLS", Duration::from_secs(20), || async {
        etcdctl_tls(&url, &good, &["put", "k", "v1"])
            .status
            .success()
            .then_some(())
    })
    .await;
    let got = etcdctl_tls(&url, &good, &["get", "k", "--print-value-only"]);
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "v1\n",
        "{}",
        text(&got)
    );

    // Refused: no client certificate, another CA's, an expired one, plain
    // TCP, and a server certificate checked against the wrong CA. Each
    // tries a write; none may land.
    let plain = format!("http://{}", m.endpoint());
    let refused: [(&str, &str, Vec<String>); 5] = [
        ("no client certificate", &url, flags(&ca_file, None)),
        (
            "another CA's certificate",
            &url,
            flags(&ca_file, Some(&foreign)),
        ),
        (
            "an expired certificate",
            &url,
            flags(&ca_file, Some(&expired)),
        ),
        ("plain TCP", &plain, Vec::new()),
        (
            "the wrong CA for the server",
            &url,
            flags(&other_file, Some(&client)),
        ),
    ];
    for (what, endpoint, tls) in &refused {
        let out = etcdctl_tls(endpoint, tls, &["put", "k", "intruder"]);
        assert!(!out.status.success(), "{what}: accepted: {}", text(&out));
    }
    let got = etcdctl_tls(&url, &good, &["get", "k", "--print-value-only"]);
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "v1\n",
        "{}",
        text(&got)
    );
    assert!(
        m.logs().contains("refused a connection"),
        "refusals are logged"
    );

    // The JSON gateway on the same port, over HTTP/1.1 and HTTP/2: served
    // with the client certificate, refused at the handshake without one.
    let curl = |http: &str, id: Option<&Written>| {
        let mut c = Command::new("curl");
        c.args(["-s", "--max-time", "5", http, "--cacert"])
            .arg(&ca_file)
            .args(["-X", "POST", "-d", r#"{"key":"aw=="}"#]);
        if let Some(w) = id {
            c.arg("--cert").arg(&w.cert).arg("--key").arg(&w.key);
        }
        c.arg(format!("{url}/v3/kv/range")).output().unwrap()
    };
    for http in ["--http1.1", "--http2"] {
        let out = curl(http, Some(&client));
        let body = String::from_utf8_lossy(&out.stdout);
        // "k" is "aw==" and "v1" is "djE=" in base64.
        assert!(
            out.status.success() && body.contains(r#""value":"djE=""#),
            "gateway over TLS ({http}): {}",
            text(&out)
        );
        let out = curl(http, None);
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "gateway without a client certificate ({http}): {}",
            text(&out)
        );
    }

    // Nod's own CLI, with the same flags.
    let nod = |tls: &[String], args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_nod"))
            .arg(format!("--endpoints={url}"))
            .arg("--command-timeout=4")
            .args(tls)
            .args(args)
            .output()
            .unwrap()
    };
    let out = nod(&good, &["get", "k"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "k\nv1\n");
    let out = nod(&flags(&ca_file, None), &["put", "k", "intruder"]);
    assert!(
        !out.status.success(),
        "nod without a certificate: {}",
        text(&out)
    );
    let out = nod(
        &[format!("--cacert={}", pki.join("missing.pem").display())],
        &["get", "k"],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("missing.pem"), "{}", text(&out));

    // Rotation without a restart: the server certificate, now from the
    // other CA, is written over the old files; new connections get it.
    let rotated = other.issue("server", &loopback(), Usage::Server).unwrap();
    rotated.write(&pki, "server").unwrap();
    let after = flags(&other_file, Some(&client));
    eventually(
        "the rotated certificate served",
        Duration::from_secs(10),
        || async {
            etcdctl_tls(&url, &after, &["put", "k", "v2"])
                .status
                .success()
                .then_some(())
        },
    )
    .await;
    let out = etcdctl_tls(&url, &good, &["get", "k"]);
    assert!(
        !out.status.success(),
        "the old server certificate is gone: {}",
        text(&out)
    );
    assert!(
        m.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "no restart"
    );

    // A broken file keeps the certificate that works, and says why.
    nod::tls::pki::write_file(&server.cert, b"not a certificate", 0o644).unwrap();
    let out = etcdctl_tls(&url, &after, &["get", "k", "--print-value-only"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "v2\n",
        "{}",
        text(&out)
    );
    assert!(m.logs().contains("do not load"), "the bad file is logged");
}

/// A member of a cluster whose peers use mutual TLS.
fn tls_member(root: &Path, name: &str) -> Member {
    let mut m = Member::new(root, name);
    m.peer_scheme = "https";
    m
}

fn peer_flags(ca: &Path, id: &Written) -> Vec<String> {
    vec![
        format!("--peer-cert-file={}", id.cert.display()),
        format!("--peer-key-file={}", id.key.display()),
        format!("--peer-trusted-ca-file={}", ca.display()),
        "--peer-client-cert-auth".into(),
        "--peer-cert-allowed-cn=member".into(),
        "--snapshot-count=50".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_talk_over_mutual_tls_and_a_wrong_certificate_never_joins() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let ca = Ca::new("peer ca").unwrap();
    let ca_file = ca.write(&pki, "ca").unwrap();
    let member_cert = issue(&ca, "member", &loopback(), Usage::Peer, &pki, "member");
    let mut members: Vec<Member> = (1..=3)
        .map(|i| tls_member(dir.path(), &format!("n{i}")))
        .collect();
    let initial = support::initial_cluster(&members);
    let pf = peer_flags(&ca_file, &member_cert);
    let extra: Vec<&str> = pf.iter().map(String::as_str).collect();
    for m in &mut members {
        m.start(&initial, "new", &extra);
    }
    let eps: Vec<String> = members.iter().map(|m| m.endpoint()).collect();
    let leader = support::leader(&eps).await;

    // Writes through a follower reach the leader over the peer port.
    let follower = {
        let mut found = None;
        for ep in &eps {
            let mut c =
                nod_client::Client::connect(std::slice::from_ref(ep), Duration::from_secs(2))
                    .unwrap();
            if c.status().await.unwrap().header.unwrap().member_id != leader {
                found = Some(ep.clone());
                break;
            }
        }
        found.unwrap()
    };
    for i in 0..120 {
        support::etcdctl_ok(&follower, &["put", &format!("key{i:03}"), "x"]);
    }
    for ep in &eps {
        let n = support::etcdctl_ok(
            ep,
            &["get", "key", "--prefix", "--consistency=s", "-w", "json"],
        );
        let v: serde_json::Value = serde_json::from_str(&n).unwrap();
        assert_eq!(v["count"], 120, "{ep}: {n}");
    }

    // A member with the right certificate joins and catches up from a
    // snapshot streamed over peer TLS (the log was compacted at 50).
    let mut n4 = tls_member(dir.path(), "n4");
    support::etcdctl_ok(
        &eps[0],
        &[
            "member",
            "add",
            "n4",
            &format!("--peer-urls={}", n4.peer_url()),
        ],
    );
    let mut initial4 = initial.clone();
    initial4.push_str(&format!(",n4={}", n4.peer_url()));
    n4.start(&initial4, "existing", &extra);
    let n4_ep = n4.endpoint();
    eventually(
        "n4 caught up over peer TLS",
        Duration::from_secs(30),
        || async {
            let out = support::etcdctl(
                &n4_ep,
                &["get", "key", "--prefix", "--consistency=s", "-w", "json"],
                None,
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["count"] == 120).then_some(())
        },
    )
    .await;
    assert!(
        n4.logs().contains("installed a snapshot"),
        "n4 caught up from a snapshot"
    );

    // Intruders: a certificate from another CA, and one from the right CA
    // with another common name. They are added (an operator's mistake)
    // but never join, and the members say why.
    let other = Ca::new("other ca").unwrap();
    let other_ca = other.write(&pki, "other-ca").unwrap();
    let cases = [
        (
            "n5",
            issue(&other, "member", &loopback(), Usage::Peer, &pki, "n5"),
            other_ca.clone(),
        ),
        (
            "n6",
            issue(&ca, "intruder", &loopback(), Usage::Peer, &pki, "n6"),
            ca_file.clone(),
        ),
    ];
    for (name, cert, trust) in cases {
        let mut m = tls_member(dir.path(), name);
        let peer_url = m.peer_url();
        support::etcdctl_ok(
            &eps[0],
            &[
                "member",
                "add",
                name,
                "--learner",
                &format!("--peer-urls={peer_url}"),
            ],
        );
        let f = peer_flags(&trust, &cert);
        let extra: Vec<&str> = f.iter().map(String::as_str).collect();
        m.start(
            &format!("{initial},{name}={}", m.peer_url()),
            "existing",
            &extra,
        );
        let status = eventually("the intruder gives up", Duration::from_secs(30), || {
            let s = m.child.as_mut().unwrap().try_wait().unwrap();
            async move { s }
        })
        .await;
        m.child = None;
        assert!(!status.success(), "{name} must fail to join");
        assert!(m.logs().contains("cannot join"), "{name}: {}", m.logs());
        let out = support::etcdctl_ok(&eps[0], &["member", "list"]);
        let line = out
            .lines()
            .find(|l| l.contains(&peer_url))
            .unwrap()
            .to_string();
        assert!(line.contains("unstarted"), "{name} never started: {line}");
    }
    let logs: String = members.iter().map(Member::logs).collect();
    assert!(
        logs.contains("common name"),
        "a wrong common name is logged"
    );
    assert!(logs.contains("refused a connection"));
}

#[test]
fn nod_dev_tls_prints_what_etcdctl_needs() {
    let dir = tempfile::tempdir().unwrap();
    let base = support::dev_base_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nod"))
        .args([
            "dev",
            "--tls",
            "--base-port",
            &base.to_string(),
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _guard = Kill(child);
    let mut printed = std::collections::HashMap::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some((k, v)) = line.split_once(": ") {
            printed.insert(k.to_string(), v.to_string());
        }
        if line.starts_with("key: ") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let endpoints = &printed["endpoints"];
    assert!(
        endpoints
            .split(',')
            .all(|e| e.starts_with("https://127.0.0.1:")),
        "{endpoints}"
    );
    let paths: Vec<PathBuf> = ["cacert", "cert", "key"]
        .iter()
        .map(|k| PathBuf::from(&printed[*k]))
        .collect();
    assert!(paths.iter().all(|p| p.exists()), "{paths:?}");
    let tls = vec![
        format!("--cacert={}", paths[0].display()),
        format!("--cert={}", paths[1].display()),
        format!("--key={}", paths[2].display()),
    ];
    let out = etcdctl_tls(endpoints, &tls, &["put", "a", "b"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    let out = etcdctl_tls(endpoints, &tls, &["get", "a", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "b\n");
    let out = etcdctl_tls(endpoints, &tls[..1], &["get", "a"]);
    assert!(!out.status.success(), "a client certificate is required");
}

fn write_key(dir: &Path, name: &str, byte: u8) -> PathBuf {
    use base64::Engine as _;
    let p = dir.join(name);
    let key = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    std::fs::write(&p, format!("{key}\n")).unwrap();
    p
}

async fn voters(m: &Member) -> Option<usize> {
    let mut c = m.client();
    let r = tokio::time::timeout(Duration::from_secs(3), c.member_list())
        .await
        .ok()?
        .ok()?;
    Some(r.members.iter().filter(|m| !m.is_learner).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_gossip_forms_a_cluster_and_a_node_with_another_key_is_invisible() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_key(dir.path(), "gossip.key", 7);
    let wrong = write_key(dir.path(), "wrong.key", 9);
    let mut ms: Vec<Member> = (1..=4)
        .map(|i| Member::new(dir.path(), &format!("n{i}")))
        .collect();
    let seeds: Vec<String> = ms[..3].iter().map(|m| m.gossip_addr()).collect();
    let key_flag = format!("--gossip-key-file={}", key.display());
    for m in &mut ms[..3] {
        m.start_gossip(&seeds, &["--bootstrap-expect", "3", &key_flag]);
    }
    eventually(
        "three voters over sealed gossip",
        Duration::from_secs(40),
        || async { (voters(&ms[0]).await? == 3).then_some(()) },
    )
    .await;
    // The fourth has another key: its datagrams never open, so no member
    // sees it and it sees no one (it would otherwise join as a learner).
    let wrong_flag = format!("--gossip-key-file={}", wrong.display());
    ms[3].start_gossip(&seeds, &[&wrong_flag]);
    let first = &ms[0];
    eventually(
        "the wrong key's datagrams counted",
        Duration::from_secs(20),
        || async {
            let dropped: f64 = ms[..3]
                .iter()
                .map(|m| m.metric("nod_gossip_packets_dropped_total{reason=\"unknown_key\"}"))
                .sum();
            (dropped > 0.0).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut c = first.client();
    let members = c.member_list().await.unwrap().members;
    assert_eq!(
        members.len(),
        3,
        "the node with the wrong key joined: {members:?}"
    );
    assert!(ms[3]
        .http_get("/readyz")
        .is_none_or(|(code, _)| code != 200));
}

/// The gossip key rotated without downtime, as the flag's help says: every
/// member restarted in turn with the new key second (the old one still
/// seals), then first, then alone. The cluster keeps three voters and
/// answers throughout, and a new node that knows only the new key is seen
/// and joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gossip_key_rotates_under_a_running_cluster() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let b64 = |byte: u8| base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    let (old, new) = (b64(3), b64(4));
    let key_file = |name: &str, lines: &[&str]| {
        let p = dir.path().join(name);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        format!("--gossip-key-file={}", p.display())
    };
    let stages = [
        key_file("k0", &[&old]),
        key_file("k1", &[&old, &new]),
        key_file("k2", &[&new, &old]),
        key_file("k3", &[&new]),
    ];
    let mut ms: Vec<Member> = (1..=4)
        .map(|i| Member::new(dir.path(), &format!("n{i}")))
        .collect();
    let seeds: Vec<String> = ms[..3].iter().map(|m| m.gossip_addr()).collect();
    for m in &mut ms[..3] {
        m.start_gossip(&seeds, &["--bootstrap-expect", "3", &stages[0]]);
    }
    eventually("three voters", Duration::from_secs(40), || async {
        (voters(&ms[0]).await? == 3).then_some(())
    })
    .await;
    for stage in &stages[1..] {
        for i in 0..3 {
            ms[i].terminate();
            ms[i].start_gossip(&seeds, &[stage]);
            let (a, b) = (&ms[(i + 1) % 3], &ms[i]);
            eventually(
                &format!("{} back, three voters, under {stage}", b.name),
                Duration::from_secs(30),
                || async {
                    // The restarted member hears both others by gossip.
                    let heard = b.metric("nod_gossip_nodes{state=\"alive\"}") >= 2.0;
                    (heard && voters(a).await? == 3 && voters(b).await? == 3).then_some(())
                },
            )
            .await;
        }
    }
    // Only the new key now: a node with it alone is heard and joins.
    ms[3].start_gossip(&seeds, &[&stages[3]]);
    eventually("the new node joins", Duration::from_secs(60), || async {
        let mut c = ms[0].client();
        let members = tokio::time::timeout(Duration::from_secs(3), c.member_list())
            .await
            .ok()?
            .ok()?
            .members;
        members.iter().any(|m| m.name == "n4").then_some(())
    })
    .await;
    let dropped: f64 = ms[..3]
        .iter()
        .map(|m| m.metric("nod_gossip_packets_dropped_total{reason=\"unknown_key\"}"))
        .sum();
    assert_eq!(dropped, 0.0, "a rotation step dropped datagrams");
}

/// With `--client-cert-auth` and auth on, a client certificate's common
/// name is its user (etcd's rule): no password, no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificates_common_name_is_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let ca = Ca::new("ca").unwrap();
    let ca_file = ca.write(&pki, "ca").unwrap();
    let server = issue(&ca, "server", &loopback(), Usage::Server, &pki, "server");
    let root = issue(&ca, "root", &[], Usage::Client, &pki, "root");
    let alice = issue(&ca, "alice", &[], Usage::Client, &pki, "alice");
    let mallory = issue(&ca, "mallory", &[], Usage::Client, &pki, "mallory");
    let mut m = Member::new(dir.path(), "n1");
    m.client_scheme = "https";
    let cert_flags = [
        format!("--cert-file={}", server.cert.display()),
        format!("--key-file={}", server.key.display()),
        format!("--trusted-ca-file={}", ca_file.display()),
        "--client-cert-auth".to_string(),
        "--bcrypt-cost=4".to_string(),
    ];
    let extra: Vec<&str> = cert_flags.iter().map(String::as_str).collect();
    m.start(&format!("n1={}", m.peer_url()), "new", &extra);
    let url = m.client_url();
    let as_root = flags(&ca_file, Some(&root));
    eventually("a write over TLS", Duration::from_secs(20), || async {
        etcdctl_tls(&url, &as_root, &["put", "k", "v"])
            .status
            .success()
            .then_some(())
    })
    .await;
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "alice:alicepw"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "--prefix",
            "app",
            "readwrite",
            "/a/",
        ],
        &["user", "grant-role", "alice", "app"],
        &["auth", "enable"],
    ] {
        let out = etcdctl_tls(&url, &as_root, args);
        assert!(out.status.success(), "etcdctl {args:?}: {}", text(&out));
    }
    let as_alice = flags(&ca_file, Some(&alice));
    let out = etcdctl_tls(&url, &as_alice, &["put", "/a/x", "1"]);
    assert!(out.status.success(), "alice by certificate: {}", text(&out));
    for (who, tls, key) in [
        ("alice", &as_alice, "/b/x"),
        (
            "mallory (no such user)",
            &flags(&ca_file, Some(&mallory)),
            "/a/x",
        ),
    ] {
        let out = etcdctl_tls(&url, tls, &["put", key, "1"]);
        assert!(
            !out.status.success() && text(&out).contains("etcdserver: permission denied"),
            "{who} writing {key}: {}",
            text(&out)
        );
    }
    let out = etcdctl_tls(&url, &as_root, &["put", "/b/x", "1"]);
    assert!(out.status.success(), "root by certificate: {}", text(&out));
    // A token wins over the certificate: alice's certificate with root's login.
    let out = etcdctl_tls(
        &url,
        &as_alice,
        &["--user", "root:rootpw", "put", "/c", "1"],
    );
    assert!(out.status.success(), "root's token: {}", text(&out));
}

/// Whether OpenSSL's client completes a handshake with `addr` when held
/// to `args` (a protocol version or TLS 1.2 cipher list).
fn openssl_handshake(addr: &str, ca: &Path, args: &[&str]) -> bool {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-CAfile"])
        .arg(ca)
        .args(["-verify_return_error", "-brief"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("openssl (Debian's openssl package)");
    let text = text(&out);
    out.status.success() && text.contains("CONNECTION ESTABLISHED")
}

/// `--tls-min-version`, `--tls-max-version` and `--cipher-suites` are what
/// the handshake allows, checked with OpenSSL's client (not Nod's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_versions_and_cipher_suites_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let ca = Ca::new("ca").unwrap();
    let ca_file = ca.write(&pki, "ca").unwrap();
    let server = issue(&ca, "server", &loopback(), Usage::Server, &pki, "server");
    let start = |name: &str, tls: &[&str]| {
        let mut m = Member::new(dir.path(), name);
        m.client_scheme = "https";
        let mut extra = vec![
            format!("--cert-file={}", server.cert.display()),
            format!("--key-file={}", server.key.display()),
        ];
        extra.extend(tls.iter().map(|s| s.to_string()));
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        m.start(&format!("{name}={}", m.peer_url()), "new", &extra);
        m
    };
    let only13 = start("v13", &["--tls-min-version=TLS1.3"]);
    let only12 = start(
        "v12",
        &[
            "--tls-max-version=TLS1.2",
            "--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ],
    );
    let (a13, a12) = (only13.endpoint(), only12.endpoint());
    eventually(
        "both members serve TLS",
        Duration::from_secs(20),
        || async {
            (openssl_handshake(&a13, &ca_file, &["-tls1_3"])
                && openssl_handshake(&a12, &ca_file, &["-tls1_2"]))
            .then_some(())
        },
    )
    .await;
    assert!(
        !openssl_handshake(&a13, &ca_file, &["-tls1_2"]),
        "TLS 1.2 refused under --tls-min-version=TLS1.3"
    );
    assert!(
        !openssl_handshake(&a12, &ca_file, &["-tls1_3"]),
        "TLS 1.3 refused under --tls-max-version=TLS1.2"
    );
    assert!(
        openssl_handshake(
            &a12,
            &ca_file,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]
        ),
        "the allowed suite"
    );
    assert!(
        !openssl_handshake(
            &a12,
            &ca_file,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"]
        ),
        "a suite not in --cipher-suites is refused"
    );
}

/// `--listen-metrics-urls https://` serves metrics and health with the
/// client port's certificate (no client certificate asked) and nothing in
/// clear; `nod --insecure-skip-tls-verify` reaches a server whose CA it
/// was not given, which it refuses without the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_tls_and_skipping_verification() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let ca = Ca::new("metrics ca").unwrap();
    let ca_file = ca.write(&pki, "ca").unwrap();
    let server = issue(&ca, "server", &loopback(), Usage::Server, &pki, "server");
    let mut m = Member::new(dir.path(), "n1");
    m.client_scheme = "https";
    m.metrics_scheme = "https";
    let cert_flags = [
        format!("--cert-file={}", server.cert.display()),
        format!("--key-file={}", server.key.display()),
    ];
    let extra: Vec<&str> = cert_flags.iter().map(String::as_str).collect();
    m.start(&format!("n1={}", m.peer_url()), "new", &extra);
    let metrics = format!("https://127.0.0.1:{}", m.metrics_port);
    let curl = |url: &str, ca: Option<&Path>| {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "3"]);
        if let Some(ca) = ca {
            c.arg("--cacert").arg(ca);
        }
        let out = c
            .arg(url)
            .output()
            .expect("curl (scripts/setup installs it)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let body = eventually("metrics over TLS", Duration::from_secs(20), || async {
        let (ok, body) = curl(&format!("{metrics}/metrics"), Some(&ca_file));
        (ok && body.ends_with("\n200")).then_some(body)
    })
    .await;
    assert!(body.contains("nod_"), "{body}");
    let (ok, health) = curl(&format!("{metrics}/healthz"), Some(&ca_file));
    assert!(ok && health.ends_with("\n200"), "{health}");
    // Plain HTTP on that port gets no metrics.
    let (_, plain) = curl(
        &format!("http://127.0.0.1:{}/metrics", m.metrics_port),
        None,
    );
    assert!(!plain.contains("nod_"), "metrics in clear: {plain}");

    let nod = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_nod"))
            .args(["--endpoints", &m.client_url(), "--command-timeout", "3"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // The server's CA is not the system's: refused without the flag.
    let refused = nod(&["put", "k", "v"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    let put = nod(&["--insecure-skip-tls-verify", "put", "k", "v"]);
    assert!(put.status.success(), "{}", text(&put));
    let got = nod(&["--cacert", &ca_file.display().to_string(), "get", "k"]);
    assert!(text(&got).contains('v'), "{}", text(&got));
}

/// With peer mutual TLS and auth on, nodes still join by themselves: a
/// member that lost its volume starts empty, removes its stale self and
/// adds itself through the peer port (a call there that no member
/// forwarded is a node's own and acts as root; only holders of a peer
/// certificate reach it), and autopilot promotes it. The same removal on
/// the client port without a login is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_node_rejoins_by_itself_with_peer_tls_and_auth_on() {
    use support::secure::{Secure, PASSWORD, USER};
    let dir = tempfile::tempdir().unwrap();
    let sec = Secure::create(&dir.path().join("pki"), &[]);
    let mut ms: Vec<Member> = (1..=3)
        .map(|i| {
            let mut m = Member::new(dir.path(), &format!("n{i}"));
            m.client_scheme = "https";
            m.peer_scheme = "https";
            m
        })
        .collect();
    let seeds: Vec<String> = ms.iter().map(|m| m.gossip_addr()).collect();
    let mut flags = sec.server_flags();
    flags.extend(["--bootstrap-expect", "3", "--promote-stabilize", "1000"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    for m in &mut ms {
        m.start_gossip(&seeds, &flags);
    }
    let eps: Vec<String> = ms.iter().map(|m| m.endpoint()).collect();
    // Member list and status need no login.
    let anonymous = sec.client(&eps, Duration::from_secs(5), None);
    let n3 = |old: Option<u64>| {
        let mut c = anonymous.clone();
        async move {
            let members = c.member_list().await.ok()?.members;
            let voters = members.iter().filter(|m| !m.is_learner).count();
            let n3 = members.iter().find(|m| m.name == "n3")?;
            (members.len() == 3 && voters == 3 && Some(n3.id) != old && !n3.client_ur_ls.is_empty())
                .then_some(n3.id)
        }
    };
    let old = eventually("three voters", Duration::from_secs(40), || n3(None)).await;
    sec.enable_auth(&eps[0], &[(b"k", b"l")]).await;

    // On the client port the caller without a login is its certificate's
    // common name, no user of the cluster.
    let e = anonymous.clone().member_remove(old).await.unwrap_err();
    assert_eq!(e.to_string(), "etcdserver: user name not found");

    ms[2].kill();
    std::fs::remove_dir_all(&ms[2].data_dir).unwrap();
    ms[2].start_gossip(&seeds, &flags);
    let new = eventually(
        "n3 back, empty, as a new voter",
        Duration::from_secs(60),
        || n3(Some(old)),
    )
    .await;
    assert_ne!(new, old);
    assert!(
        ms[2].logs().contains("removing the stale member"),
        "it removed its stale self"
    );
    // It serves the user's writes and reads with the rest.
    let mut user = sec.client(
        &[ms[2].endpoint()],
        Duration::from_secs(5),
        Some((USER, PASSWORD)),
    );
    eventually("a write through n3", Duration::from_secs(20), || {
        let mut u = user.clone();
        async move {
            u.put(nod_proto::etcd::etcdserverpb::PutRequest {
                key: b"k1".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .ok()
        }
    })
    .await;
    let got = user.get("k1").await.unwrap().map(|kv| kv.value);
    assert_eq!(got, Some(b"v".to_vec()));

    // Leaving is a node's own call too: n3, restarted with
    // --leave-on-shutdown, removes itself on SIGTERM and exits 0.
    ms[2].terminate();
    let mut leave = flags.clone();
    leave.push("--leave-on-shutdown");
    ms[2].start_gossip(&seeds, &leave);
    eventually("n3 serving again", Duration::from_secs(30), || {
        let mut c = sec.client(&[ms[2].endpoint()], Duration::from_secs(2), None);
        async move { c.status().await.ok().filter(|s| s.leader != 0) }
    })
    .await;
    let status = ms[2].terminate();
    assert!(status.success(), "{status:?}\n{}", ms[2].logs());
    let members = eventually("n3 gone from the members", Duration::from_secs(20), || {
        let mut c = sec.client(&eps[..2], Duration::from_secs(2), None);
        async move {
            let ms = c.member_list().await.ok()?.members;
            (ms.len() == 2).then_some(ms)
        }
    })
    .await;
    assert!(members.iter().all(|m| m.name != "n3"), "{members:?}");
}
