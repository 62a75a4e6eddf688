//! Golden transcripts of the core's behaviour. Each file in `testdata/` is a
//! script of commands, each followed by `----` and the output it must
//! produce. Regenerate after an intended change with
//! `NOD_REWRITE=1 cargo test -p nod-raft --test transcripts` and review the
//! diff like code.
//!
//! Commands: `cluster voters=N [pre-vote=false] [check-quorum=false] [lease-reads]`,
//! `add-node ID`, `campaign ID`, `tick ID N`, `tick-all N`, `stabilize`,
//! `process-ready ID`, `deliver`, `propose ID DATA`, `conf-change ID KIND NODE`
//! (KIND: add-learner, add-voter, promote, remove), `read-index ID CTX`,
//! `transfer-leader ID TARGET`, `isolate ID`, `partition A,B C,D`, `heal`, `drop [FROM TO]`,
//! `crash ID`, `restart ID`, `compact ID INDEX`, `status ID`.

mod support;

use std::fmt::Write;

use nod_raft::{
    ConfChange, ConfChangeKind, Config, Index, NodeId, ReadOnlyOption, Snapshot, SnapshotMetadata,
    Storage, StorageWrite,
};
use support::{ids, Cluster};

fn tweak_default(_: &mut Config) {}
fn tweak_no_pre_vote(c: &mut Config) {
    c.pre_vote = false;
}
fn tweak_no_check_quorum(c: &mut Config) {
    c.check_quorum = false;
}
fn tweak_plain(c: &mut Config) {
    c.pre_vote = false;
    c.check_quorum = false;
}
fn tweak_lease(c: &mut Config) {
    c.read_only = ReadOnlyOption::LeaseBased;
}

fn arg_id(args: &[&str], i: usize) -> u64 {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("argument {i} of {args:?} must be a node id"))
}

fn run_command(cluster: &mut Option<Cluster>, line: &str) -> String {
    let args: Vec<&str> = line.split_whitespace().collect();
    if args[0] == "cluster" {
        let mut n = 3;
        let (mut pre_vote, mut check_quorum, mut lease) = (true, true, false);
        for a in &args[1..] {
            match *a {
                "pre-vote=false" => pre_vote = false,
                "check-quorum=false" => check_quorum = false,
                "lease-reads" => lease = true,
                other => {
                    n = other
                        .trim_start_matches("voters=")
                        .parse()
                        .expect("voters=N")
                }
            }
        }
        let tweak: fn(&mut Config) = match (pre_vote, check_quorum, lease) {
            (_, _, true) => tweak_lease,
            (true, true, _) => tweak_default,
            (false, true, _) => tweak_no_pre_vote,
            (true, false, _) => tweak_no_check_quorum,
            (false, false, _) => tweak_plain,
        };
        *cluster = Some(Cluster::new(n, tweak));
        return "ok".into();
    }
    let c = cluster.as_mut().expect("first command must be `cluster`");
    c.transcript = Some(String::new());
    let mut out = String::new();
    match args[0] {
        "add-node" => c.add_empty_node(NodeId(arg_id(&args, 1))),
        "campaign" => c.node(arg_id(&args, 1)).campaign(),
        "tick" => {
            let n: u64 = args[2].parse().expect("tick ID N");
            for _ in 0..n {
                c.node(arg_id(&args, 1)).tick();
            }
        }
        "tick-all" => c.tick_all(args[1].parse().expect("tick-all N")),
        "stabilize" => c.stabilize(),
        "process-ready" => {
            c.process_ready(NodeId(arg_id(&args, 1)));
        }
        "deliver" => {
            c.deliver();
        }
        "propose" => {
            let r = c
                .node(arg_id(&args, 1))
                .propose(args[2].as_bytes().to_vec());
            match r {
                Ok(p) => writeln!(out, "proposed index={} term={}", p.index, p.term),
                Err(e) => writeln!(out, "error: {e}"),
            }
            .expect("string");
        }
        "conf-change" => {
            let kind = match args[2] {
                "add-learner" => ConfChangeKind::AddLearner,
                "add-voter" => ConfChangeKind::AddVoter,
                "promote" => ConfChangeKind::PromoteLearner,
                "remove" => ConfChangeKind::Remove,
                other => panic!("unknown conf change kind {other}"),
            };
            let change = ConfChange {
                kind,
                node: NodeId(arg_id(&args, 3)),
                context: vec![],
            };
            match c.node(arg_id(&args, 1)).propose_conf_change(change) {
                Ok(p) => writeln!(out, "proposed index={} term={}", p.index, p.term),
                Err(e) => writeln!(out, "error: {e}"),
            }
            .expect("string");
        }
        "read-index" => {
            if let Err(e) = c
                .node(arg_id(&args, 1))
                .request_read(args[2].as_bytes().to_vec())
            {
                writeln!(out, "error: {e}").expect("string");
            }
        }
        "transfer-leader" => {
            let target = NodeId(arg_id(&args, 2));
            if let Err(e) = c.node(arg_id(&args, 1)).transfer_leader(target) {
                writeln!(out, "error: {e}").expect("string");
            }
        }
        "isolate" => c.isolate(arg_id(&args, 1)),
        "partition" => {
            let group =
                |s: &str| -> Vec<u64> { s.split(',').map(|x| x.parse().expect("id")).collect() };
            c.partition(&group(args[1]), &group(args[2]));
        }
        "heal" => c.heal(),
        "drop" => {
            // `drop` loses every message in flight; `drop A B` only those from A to B.
            let before = c.inflight.len();
            if args.len() == 3 {
                let (from, to) = (NodeId(arg_id(&args, 1)), NodeId(arg_id(&args, 2)));
                c.inflight.retain(|m| !(m.from == from && m.to == to));
            } else {
                c.inflight.clear();
            }
            writeln!(out, "dropped {} messages", before - c.inflight.len()).expect("string");
        }
        "crash" => c.crash(arg_id(&args, 1)),
        "restart" => c.restart(arg_id(&args, 1)),
        "compact" => {
            let id = arg_id(&args, 1);
            let index = Index(args[2].parse().expect("compact ID INDEX"));
            let raw = c.node(id);
            let term = raw.storage().term(index).expect("index in log");
            let conf_state = raw.conf_state().clone();
            let snap = Snapshot {
                metadata: SnapshotMetadata {
                    index,
                    term,
                    conf_state,
                },
                data: vec![],
            };
            raw.storage_mut().compact(snap).expect("compaction");
        }
        "status" => {
            let s = c.node(arg_id(&args, 1)).status();
            writeln!(
                out,
                "{}: {} term={} leader={} commit={} applied={} last={} voters={:?} learners={:?}",
                s.id,
                s.role,
                s.term,
                s.leader,
                s.commit,
                s.applied,
                s.last_index,
                ids(&s.conf_state.voters),
                ids(&s.conf_state.learners)
            )
            .expect("string");
            for p in &s.peers {
                writeln!(
                    out,
                    "  peer {}: match={} next={} {:?}",
                    p.id, p.matched, p.next, p.state
                )
                .expect("string");
            }
        }
        other => panic!("unknown command {other:?}"),
    }
    let said = c.transcript.take().unwrap_or_default();
    let mut all = said + &out;
    if all.is_empty() {
        all = "ok\n".into();
    }
    all.trim_end().to_string()
}

fn run_file(path: &std::path::Path) -> (String, String) {
    let text = std::fs::read_to_string(path).expect("readable testdata");
    let mut rewritten = String::new();
    let mut cluster = None;
    let mut lines = text.lines().peekable();
    let mut failures = String::new();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            rewritten.push_str(line);
            rewritten.push('\n');
            continue;
        }
        let command = line.trim();
        assert_eq!(
            lines.next(),
            Some("----"),
            "{}: `{command}` must be followed by ----",
            path.display()
        );
        let mut expected = Vec::new();
        while let Some(l) = lines.peek() {
            if l.trim().is_empty() {
                break;
            }
            expected.push(lines.next().expect("peeked"));
        }
        let actual = run_command(&mut cluster, command);
        if actual != expected.join("\n") {
            writeln!(
                failures,
                "{}: `{command}`\n--- expected\n{}\n--- actual\n{actual}\n",
                path.display(),
                expected.join("\n")
            )
            .expect("string");
        }
        writeln!(rewritten, "{command}\n----\n{actual}").expect("string");
    }
    (rewritten, failures)
}

#[test]
fn golden_transcripts() {
    let dir = manifest_dir().join("tests/testdata");
    let rewrite = std::env::var("NOD_REWRITE").is_ok_and(|v| v == "1");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata folder")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no transcripts found in {}",
        dir.display()
    );
    let mut failures = String::new();
    for path in files {
        let (rewritten, failed) = run_file(&path);
        if rewrite {
            std::fs::write(&path, rewritten).expect("write testdata");
        } else {
            failures.push_str(&failed);
        }
    }
    assert!(
        failures.is_empty(),
        "{failures}transcripts differ; if the change is intended, run NOD_REWRITE=1 cargo test -p nod-raft --test transcripts and review the diff"
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
