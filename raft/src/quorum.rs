//! Majority arithmetic, pure and tiny: the highest value a majority has
//! reached (commit index, confirmed read round) and the result of a vote.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::NodeId;

/// The largest value `v` such that a majority of `voters` have a value ≥ `v`
/// (missing voters count as 0). An empty voter set commits nothing.
pub fn majority_value(voters: &BTreeSet<NodeId>, value_of: impl Fn(NodeId) -> u64) -> u64 {
    if voters.is_empty() {
        return 0;
    }
    let mut values: Vec<u64> = voters.iter().map(|&id| value_of(id)).collect();
    values.sort_unstable_by(|a, b| b.cmp(a));
    values[voters.len() / 2]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Won,
    Lost,
    Pending,
}

/// Tallies `votes` (voter → granted) over `voters`; votes from non-voters are ignored.
pub fn vote_result(voters: &BTreeSet<NodeId>, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    let need = voters.len() / 2 + 1;
    let (mut yes, mut no) = (0, 0);
    for id in voters {
        match votes.get(id) {
            Some(true) => yes += 1,
            Some(false) => no += 1,
            None => {}
        }
    }
    if yes >= need {
        VoteResult::Won
    } else if voters.len() - no < need {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: u64) -> BTreeSet<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    #[test]
    fn majority_value_table() {
        let cases: &[(&[u64], u64)] = &[
            (&[5], 5),
            (&[5, 1], 1),
            (&[5, 3, 1], 3),
            (&[1, 3, 5, 7], 3),
            (&[2, 2, 9, 9, 9], 9),
            (&[0, 0, 0], 0),
        ];
        for (values, want) in cases {
            let voters = ids(values.len() as u64);
            let got = majority_value(&voters, |id| values[(id.0 - 1) as usize]);
            assert_eq!(got, *want, "values {values:?}");
        }
        assert_eq!(majority_value(&BTreeSet::new(), |_| 7), 0);
    }

    #[test]
    fn vote_result_table() {
        type Case<'a> = (u64, &'a [(u64, bool)], VoteResult);
        let cases: &[Case] = &[
            (1, &[(1, true)], VoteResult::Won),
            (3, &[(1, true)], VoteResult::Pending),
            (3, &[(1, true), (2, true)], VoteResult::Won),
            (3, &[(1, true), (2, false), (3, false)], VoteResult::Lost),
            (4, &[(1, true), (2, true)], VoteResult::Pending),
            (4, &[(1, true), (2, false), (3, false)], VoteResult::Lost),
            (5, &[(1, true), (9, true), (8, true)], VoteResult::Pending),
        ];
        for (n, votes, want) in cases {
            let votes: BTreeMap<_, _> = votes.iter().map(|&(id, g)| (NodeId(id), g)).collect();
            assert_eq!(
                vote_result(&ids(*n), &votes),
                *want,
                "{n} voters, votes {votes:?}"
            );
        }
    }

    /// The naive definition: the largest candidate value that at least a majority reach.
    fn naive_majority(values: &[u64]) -> u64 {
        let need = values.len() / 2 + 1;
        let mut best = 0;
        for &candidate in values {
            if values.iter().filter(|&&v| v >= candidate).count() >= need {
                best = best.max(candidate);
            }
        }
        best
    }

    proptest! {
        #[test]
        fn majority_value_matches_naive(values in prop::collection::vec(0u64..20, 1..9)) {
            let voters = ids(values.len() as u64);
            let got = majority_value(&voters, |id| values[(id.0 - 1) as usize]);
            prop_assert_eq!(got, naive_majority(&values));
        }

        #[test]
        fn vote_result_matches_naive(n in 1u64..8, raw in prop::collection::vec(prop::option::of(any::<bool>()), 8)) {
            let voters = ids(n);
            let votes: BTreeMap<NodeId, bool> = raw.iter().enumerate()
                .filter_map(|(i, v)| v.map(|g| (NodeId(i as u64 + 1), g))).collect();
            let yes = voters.iter().filter(|id| votes.get(id) == Some(&true)).count() as u64;
            let undecided = voters.iter().filter(|id| !votes.contains_key(id)).count() as u64;
            let want = if 2 * yes > n { VoteResult::Won }
                else if 2 * (yes + undecided) > n { VoteResult::Pending }
                else { VoteResult::Lost };
            prop_assert_eq!(vote_result(&voters, &votes), want);
        }
    }
}
