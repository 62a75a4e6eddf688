//! Which chains a destination keeps: a pure function of what is there, the
//! time and the policy, so the rules are table-tested here and the writer
//! only carries them out.

/// What retention needs to know of one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    pub name: String,
    pub full_revision: i64,
    /// Has its manifest: a restore can use it.
    pub complete: bool,
    /// The newest object in it (seconds since the epoch).
    pub last_modified_unix_s: i64,
    /// The chain this writer is appending to right now.
    pub writing: bool,
    /// Taken on request (a NodBackup); kept until its owner deletes it.
    pub pinned: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// Keep at most this many complete chains (the newest).
    pub max_count: Option<usize>,
    /// Delete chains whose newest object is older than this (seconds).
    pub max_age_s: Option<i64>,
}

/// An incomplete chain (no manifest) not being written is a write or a
/// deletion that died half-way; it goes once nothing touched it for this
/// long, so a writer still uploading a large full snapshot keeps its chain.
pub const ABANDONED_AFTER_S: i64 = 3600;

/// The chains to delete, oldest first. Never the newest complete chain,
/// never the one being written, never a pinned one.
pub fn expired(chains: &[ChainState], now_unix_s: i64, policy: Policy) -> Vec<String> {
    let mut sorted: Vec<&ChainState> = chains.iter().collect();
    sorted.sort_by(|a, b| (b.full_revision, &b.name).cmp(&(a.full_revision, &a.name)));
    let newest_complete = sorted.iter().find(|c| c.complete).map(|c| c.name.as_str());
    let mut complete_seen = 0usize;
    let mut out = Vec::new();
    for c in sorted {
        if c.writing || c.pinned || Some(c.name.as_str()) == newest_complete {
            if c.complete && !c.pinned {
                complete_seen += 1;
            }
            continue;
        }
        let age = now_unix_s.saturating_sub(c.last_modified_unix_s);
        let delete = if c.complete {
            complete_seen += 1;
            policy.max_count.is_some_and(|n| complete_seen > n.max(1))
                || policy.max_age_s.is_some_and(|max| age > max)
        } else {
            age > ABANDONED_AFTER_S
        };
        if delete {
            out.push(c.name.clone());
        }
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(rev: i64, age_s: i64) -> ChainState {
        ChainState {
            name: format!("chain-{rev:020}"),
            full_revision: rev,
            complete: true,
            last_modified_unix_s: NOW - age_s,
            writing: false,
            pinned: false,
        }
    }
    const NOW: i64 = 1_000_000;
    const DAY: i64 = 86_400;

    fn names(revs: &[i64]) -> Vec<String> {
        revs.iter().map(|r| format!("chain-{r:020}")).collect()
    }

    #[test]
    fn rules() {
        let five: Vec<_> = (1..=5).map(|i| chain(i * 100, (6 - i) * DAY)).collect();
        let count = |n| Policy {
            max_count: Some(n),
            max_age_s: None,
        };
        let age = |d| Policy {
            max_count: None,
            max_age_s: Some(d * DAY),
        };
        let cases: Vec<(&str, Vec<ChainState>, Policy, Vec<i64>)> = vec![
            (
                "no policy keeps all",
                five.clone(),
                Policy::default(),
                vec![],
            ),
            (
                "count keeps the newest",
                five.clone(),
                count(2),
                vec![100, 200, 300],
            ),
            (
                "count 0 still keeps one",
                five.clone(),
                count(0),
                vec![100, 200, 300, 400],
            ),
            ("age", five.clone(), age(3), vec![100, 200]),
            (
                "age never takes the newest complete",
                vec![chain(1, 9 * DAY), chain(2, 8 * DAY)],
                age(1),
                vec![1],
            ),
            (
                "both",
                five.clone(),
                Policy {
                    max_count: Some(4),
                    max_age_s: Some(4 * DAY),
                },
                vec![100],
            ),
            (
                "the chain being written is kept and counts",
                {
                    let mut v = five.clone();
                    v[4].writing = true;
                    v
                },
                count(2),
                vec![100, 200, 300],
            ),
            (
                "pinned chains are kept and do not count",
                {
                    let mut v = five.clone();
                    v[0].pinned = true;
                    v[3].pinned = true;
                    v
                },
                count(2),
                vec![200],
            ),
            (
                "an incomplete chain goes once abandoned",
                {
                    let mut v = vec![chain(1, 2 * ABANDONED_AFTER_S), chain(2, 10), chain(3, 0)];
                    v[0].complete = false;
                    v[1].complete = false;
                    v
                },
                Policy::default(),
                vec![1],
            ),
            (
                "incomplete newer chains do not shield older complete ones",
                {
                    let mut v = vec![chain(1, DAY), chain(2, DAY), chain(3, 0)];
                    v[2].complete = false;
                    v
                },
                count(1),
                vec![1],
            ),
        ];
        for (what, chains, policy, want) in cases {
            assert_eq!(expired(&chains, NOW, policy), names(&want), "{what}");
        }
    }
}
