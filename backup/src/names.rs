//! Where things live in a destination (a directory or a bucket prefix):
//!
//! ```text
//! <cluster id %016x>/
//!   chain-<full revision %020d>-<yyyymmddThhmmssZ>/
//!     full.db.zst                          the full snapshot (etcd's file), zstd
//!     seg-<first %020d>-<last %020d>.nseg  zero or more, consecutive
//!     manifest.json                        written after full.db.zst
//! ```
//!
//! Revisions are zero-padded to 20 digits, so names sort as revisions do.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

pub const FULL: &str = "full.db.zst";
pub const MANIFEST: &str = "manifest.json";

/// The folder of a cluster's chains.
pub fn cluster_dir(cluster_id: u64) -> String {
    format!("{cluster_id:016x}")
}

pub fn parse_cluster_dir(name: &str) -> Option<u64> {
    if name.len() != 16 {
        return None;
    }
    u64::from_str_radix(name, 16).ok()
}

/// A chain's folder name: its full snapshot's revision and when it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChainName {
    pub revision: i64,
    pub created_unix_s: i64,
}

impl ChainName {
    pub fn format(&self) -> String {
        format!(
            "chain-{:020}-{}",
            self.revision,
            utc_stamp(self.created_unix_s)
        )
    }

    pub fn parse(name: &str) -> Option<ChainName> {
        let rest = name.strip_prefix("chain-")?;
        let (rev, stamp) = rest.split_once('-')?;
        Some(ChainName {
            revision: parse_revision(rev)?,
            created_unix_s: parse_utc_stamp(stamp)?,
        })
    }
}

/// A segment's file name: the revisions it covers, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentName {
    pub first: i64,
    pub last: i64,
}

impl SegmentName {
    pub fn format(&self) -> String {
        format!("seg-{:020}-{:020}.nseg", self.first, self.last)
    }

    pub fn parse(name: &str) -> Option<SegmentName> {
        let rest = name.strip_prefix("seg-")?.strip_suffix(".nseg")?;
        let (first, last) = rest.split_once('-')?;
        let (first, last) = (parse_revision(first)?, parse_revision(last)?);
        (first <= last).then_some(SegmentName { first, last })
    }
}

fn parse_revision(s: &str) -> Option<i64> {
    if s.len() != 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse()
        .ok()
        .filter(|r: &i64| (0..=crate::segment::MAX_REVISION).contains(r))
}

/// `yyyymmddThhmmssZ` in UTC.
pub fn utc_stamp(unix_s: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(unix_s).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

pub fn parse_utc_stamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let date = Date::from_calendar_date(
        i32::try_from(digits(0..4)?).ok()?,
        Month::try_from(u8::try_from(digits(4..6)?).ok()?).ok()?,
        u8::try_from(digits(6..8)?).ok()?,
    )
    .ok()?;
    let time = Time::from_hms(
        u8::try_from(digits(9..11)?).ok()?,
        u8::try_from(digits(11..13)?).ok()?,
        u8::try_from(digits(13..15)?).ok()?,
    )
    .ok()?;
    Some(
        PrimitiveDateTime::new(date, time)
            .assume_utc()
            .unix_timestamp(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_revision() {
        let a = ChainName {
            revision: 9,
            created_unix_s: 1_796_515_200, // 2026-12-06T00:00:00Z
        };
        assert_eq!(a.format(), "chain-00000000000000000009-20261206T000000Z");
        assert_eq!(ChainName::parse(&a.format()), Some(a));
        let b = ChainName {
            revision: 10,
            created_unix_s: 0,
        };
        assert!(a.format() < b.format());
        assert_eq!(ChainName::parse(&b.format()), Some(b));

        let s = SegmentName {
            first: 99_999,
            last: 100_000,
        };
        assert_eq!(
            s.format(),
            "seg-00000000000000099999-00000000000000100000.nseg"
        );
        assert_eq!(SegmentName::parse(&s.format()), Some(s));
        let later = SegmentName {
            first: 100_001,
            last: 100_001,
        };
        assert!(s.format() < later.format());

        assert_eq!(
            parse_cluster_dir(&cluster_dir(0xdead_beef_0000_0001)),
            Some(0xdead_beef_0000_0001)
        );
    }

    #[test]
    fn strangers_are_not_names() {
        for bad in [
            "chain-9-20261206T000000Z",
            "chain-00000000000000000009-20261306T000000Z",
            "chain-00000000000000000009-20261206T250000Z",
            "chain-00000000000000000009",
            "chain--0000000000000000009-20261206T000000Z",
            "chain-0000000000000000000x-20261206T000000Z",
        ] {
            assert_eq!(ChainName::parse(bad), None, "{bad}");
        }
        for bad in [
            "seg-00000000000000000002-00000000000000000001.nseg",
            "seg-00000000000000000002-00000000000000000003",
            "seg-2-3.nseg",
            "seg-+0000000000000000002-00000000000000000003.nseg",
            "manifest.json",
        ] {
            assert_eq!(SegmentName::parse(bad), None, "{bad}");
        }
        assert_eq!(parse_cluster_dir("xyz"), None);
    }
}
