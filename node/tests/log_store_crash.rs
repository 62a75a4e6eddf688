//! Crash recovery: a child process appends entries in synced batches and
//! prints each batch's last index once `write` returned; the test kills it
//! with SIGKILL mid-stream, reopens the store and checks that every
//! acknowledged entry is there, intact. The child is this same test binary,
//! re-run with `NOD_CRASH_CHILD` set.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nod::storage::LogStore;
use nod_raft::{Entry, EntryPayload, Index, LogWrite, Storage, StorageWrite, Term};

fn payload(i: u64) -> Vec<u8> {
    format!("entry-{i}-").repeat(8).into_bytes()
}

/// The child: append forever, acknowledging each synced batch on stdout.
fn child(dir: &str) -> ! {
    let mut store = LogStore::open(std::path::Path::new(dir)).expect("child opens the store");
    let mut next = store.last_index().unwrap().next();
    loop {
        let entries: Vec<Entry> = (0..8)
            .map(|k| {
                let i = next.0 + k;
                Entry {
                    index: Index(i),
                    term: Term(1),
                    payload: EntryPayload::Normal(payload(i)),
                }
            })
            .collect();
        let last = entries.last().unwrap().index;
        store
            .write(&LogWrite {
                entries,
                sync: true,
                ..Default::default()
            })
            .expect("write");
        println!("{}", last.0);
        next = last.next();
    }
}

#[test]
fn every_acknowledged_entry_survives_kill_9() {
    if let Ok(dir) = std::env::var("NOD_CRASH_CHILD") {
        child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    for round in 0..3 {
        let mut proc = Command::new(&exe)
            .args([
                "--exact",
                "every_acknowledged_entry_survives_kill_9",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NOD_CRASH_CHILD", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(proc.stdout.take().unwrap()).lines();
        let mut acked = 0u64;
        let started = Instant::now();
        // Let it write a while (bounded), then kill it in the middle of the stream.
        while started.elapsed() < Duration::from_millis(300 + 200 * round) {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Ok(i) = l.trim().parse::<u64>() {
                        acked = i;
                    }
                }
                _ => break,
            }
        }
        proc.kill().unwrap(); // SIGKILL
        proc.wait().unwrap();
        assert!(acked > 0, "round {round}: the child acknowledged writes");

        let store = LogStore::open(dir.path()).expect("reopen after kill -9");
        let last = store.last_index().unwrap();
        assert!(
            last.0 >= acked,
            "round {round}: acknowledged up to {acked}, found only {last}"
        );
        let entries = store.entries(Index(1), Index(acked + 1), u64::MAX).unwrap();
        assert_eq!(entries.len() as u64, acked);
        for e in entries {
            assert_eq!(
                e.payload,
                EntryPayload::Normal(payload(e.index.0)),
                "entry {} intact",
                e.index
            );
        }
    }
}
