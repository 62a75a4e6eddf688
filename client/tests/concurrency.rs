//! Locks and elections against real members: the holder of a `Mutex` is a
//! separate process (this test binary, re-run as `holder_process`), killed
//! with SIGKILL while it holds the lock; its lease expires and the next
//! waiter gets the lock.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nod_client::concurrency::{Election, ElectionError, Mutex, Session};
use nod_client::Client;
use support::Cluster;

/// The holder process dies with the test, whatever happens.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const ENDPOINTS: &str = "NOD_CLIENT_TEST_HOLDER_ENDPOINTS";

/// Not a test by itself: the holder process of the test below. Locks
/// `lock/` under a 2 s lease, says so on stdout, and holds it forever.
#[tokio::test]
#[ignore = "run by a_dead_holders_lock_passes_to_the_next_waiter"]
async fn holder_process() {
    let Ok(endpoints) = std::env::var(ENDPOINTS) else {
        return;
    };
    let endpoints: Vec<String> = endpoints.split(',').map(String::from).collect();
    let client = Client::connect(&endpoints, Duration::from_secs(5)).unwrap();
    let session = Session::new(&client, 2).await.unwrap();
    let mut m = Mutex::new(&session, "lock");
    m.lock().await.unwrap();
    println!("LOCKED {}", m.revision());
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lock_passes_to_the_next_waiter() {
    let cluster = Cluster::start(3);
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "holder_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENDPOINTS, cluster.endpoints().join(","))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = holder.stdout.take().unwrap();
    let mut holder = KillOnDrop(holder);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The harness prints "test holder_process ... " before it.
            if let Some((_, rev)) = line.split_once("LOCKED ") {
                let _ = tx.send(rev.trim().parse::<i64>().unwrap());
            }
        }
    });
    let holder_revision = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the holder process never locked");

    let client = cluster.client();
    let session = Session::new(&client, 2).await.unwrap();
    let waiter = tokio::spawn(async move {
        let mut m = Mutex::new(&session, "lock");
        m.lock().await.unwrap();
        (Instant::now(), m.revision())
    });
    // While the holder lives (and renews), the waiter waits: more than
    // two TTLs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!waiter.is_finished(), "two holders at once");

    let killed = Instant::now();
    holder.0.kill().unwrap(); // SIGKILL: no unlock, no revoke
    holder.0.wait().unwrap();
    let (locked_at, revision) = tokio::time::timeout(Duration::from_secs(15), waiter)
        .await
        .expect("the lock never passed on")
        .unwrap();
    let waited = locked_at - killed;
    assert!(
        revision > holder_revision,
        "{revision} <= {holder_revision}"
    );
    // The lease (2 s) had to expire first: the lock did not pass early.
    assert!(
        waited >= Duration::from_millis(1000),
        "passed after {waited:?}"
    );
    let mut c = cluster.client();
    let left = c
        .range(nod_proto::etcd::etcdserverpb::RangeRequest {
            key: b"lock/".to_vec(),
            range_end: nod_client::prefix_end(b"lock/"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(left.kvs.len(), 1, "the dead holder's key is still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_hands_over_on_resign_and_observers_see_it() {
    let cluster = Cluster::start(3);
    let client = cluster.client();
    let (s1, s2) = (
        Session::new(&client, 5).await.unwrap(),
        Session::new(&client, 5).await.unwrap(),
    );
    let mut e1 = Election::new(&s1, "elect");
    assert!(matches!(e1.leader().await, Err(ElectionError::NoLeader)));
    e1.campaign("one").await.unwrap();
    let mut seen = e1.observe().await.unwrap();
    assert_eq!(seen.recv().await.unwrap().unwrap().value, b"one");

    let second = tokio::spawn(async move {
        let mut e2 = Election::new(&s2, "elect");
        e2.campaign("two").await.unwrap();
        e2.proclaim("two, again").await.unwrap();
        e2.leader().await.unwrap().value
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "two leaders at once");
    e1.proclaim("one, again").await.unwrap();
    assert_eq!(seen.recv().await.unwrap().unwrap().value, b"one, again");
    e1.resign().await.unwrap();
    assert!(matches!(
        e1.proclaim("x").await,
        Err(ElectionError::NotLeader)
    ));
    assert_eq!(second.await.unwrap(), b"two, again");
    let mut values = Vec::new();
    while let Ok(Some(Some(kv))) = tokio::time::timeout(Duration::from_secs(2), seen.recv()).await {
        values.push(String::from_utf8(kv.value).unwrap());
        if values.last().map(String::as_str) == Some("two, again") {
            break;
        }
    }
    assert_eq!(
        values.last().map(String::as_str),
        Some("two, again"),
        "{values:?}"
    );
}
