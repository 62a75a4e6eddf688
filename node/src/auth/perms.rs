//! Whether a set of key permissions covers a key or a range, with etcd's
//! conventions: an empty `range_end` is the key alone, `"\0"` is "to the
//! end of the keyspace", and a range is allowed only when the union of
//! the permitted intervals covers all of it. No I/O.

use nod_proto::etcd::authpb::permission::Type as PermType;
use nod_proto::etcd::authpb::Permission;

/// What a request does to a key range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    fn granted_by(self, t: i32) -> bool {
        match PermType::try_from(t) {
            Ok(PermType::Readwrite) => true,
            Ok(PermType::Read) => self == Access::Read,
            Ok(PermType::Write) => self == Access::Write,
            Err(_) => false,
        }
    }
}

/// `[start, end)`; `None` is unbounded.
type Interval<'a> = (&'a [u8], Option<Vec<u8>>);

fn interval<'a>(key: &'a [u8], range_end: &[u8]) -> Interval<'a> {
    if range_end.is_empty() {
        let mut next = key.to_vec();
        next.push(0);
        (key, Some(next))
    } else if range_end == [0] {
        (key, None)
    } else {
        (key, Some(range_end.to_vec()))
    }
}

/// Whether `perms` grant `access` to `[key, range_end)` (etcd's range
/// encoding). An empty or inverted range is covered trivially only if it
/// is a single key that is covered.
pub fn covers<'a>(
    perms: impl IntoIterator<Item = &'a Permission>,
    access: Access,
    key: &[u8],
    range_end: &[u8],
) -> bool {
    let (start, end) = interval(key, range_end);
    if let Some(e) = &end {
        if e.as_slice() <= start {
            // An empty range reads nothing; etcd checks it as the key alone.
            return covers(perms, access, key, &[]);
        }
    }
    let mut granted: Vec<Interval<'_>> = perms
        .into_iter()
        .filter(|p| access.granted_by(p.perm_type))
        .map(|p| interval(&p.key, &p.range_end))
        .filter(|(s, e)| e.as_ref().is_none_or(|e| e.as_slice() > *s))
        .collect();
    granted.sort_by(|a, b| a.0.cmp(b.0));
    // Sweep from the start: `reached` is how far the union covers so far.
    let mut reached: Vec<u8> = start.to_vec();
    for (s, e) in granted {
        if s > reached.as_slice() {
            break;
        }
        match e {
            None => return true,
            Some(e) if e > reached => reached = e,
            Some(_) => {}
        }
        if let Some(end) = &end {
            if reached.as_slice() >= end.as_slice() {
                return true;
            }
        }
    }
    false
}

/// Checks a permission's range as etcd 3.5.8+ does when one is granted:
/// a key, and an end that is empty, `"\0"` or after the key.
pub fn valid_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || range_end > key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(t: PermType, key: &[u8], end: &[u8]) -> Permission {
        Permission {
            perm_type: t as i32,
            key: key.to_vec(),
            range_end: end.to_vec(),
        }
    }

    #[test]
    fn single_keys_prefixes_and_open_ranges() {
        let perms = [
            perm(PermType::Readwrite, b"/a/", b"/a0"),
            perm(PermType::Read, b"/ro", b""),
            perm(PermType::Write, b"/z", &[0]),
        ];
        assert!(covers(&perms, Access::Write, b"/a/x", b""));
        assert!(covers(&perms, Access::Read, b"/a/", b"/a0"));
        assert!(!covers(&perms, Access::Read, b"/a/", b"/a1"));
        assert!(!covers(&perms, Access::Write, b"/b/x", b""));
        assert!(covers(&perms, Access::Read, b"/ro", b""));
        assert!(!covers(&perms, Access::Write, b"/ro", b""));
        assert!(!covers(&perms, Access::Read, b"/ro", b"/ro0"));
        assert!(covers(&perms, Access::Write, b"/zz", &[0]));
        assert!(!covers(&perms, Access::Read, b"/zz", b""));
    }

    #[test]
    fn a_range_needs_the_union_to_cover_it_all() {
        let perms = [
            perm(PermType::Read, b"a", b"c"),
            perm(PermType::Readwrite, b"c", b"e"),
            perm(PermType::Read, b"f", b"g"),
        ];
        assert!(covers(&perms, Access::Read, b"a", b"e"));
        assert!(covers(&perms, Access::Read, b"b", b"d"));
        assert!(!covers(&perms, Access::Read, b"a", b"f"), "gap [e, f)");
        assert!(!covers(&perms, Access::Write, b"b", b"d"));
        assert!(!covers(&perms, Access::Read, b"f", &[0]));
        let all = [perm(PermType::Read, &[0], &[0])];
        assert!(covers(&all, Access::Read, &[0], &[0]));
        assert!(covers(&all, Access::Read, b"anything", b""));
    }

    #[test]
    fn ranges_are_validated() {
        assert!(valid_range(b"a", b""));
        assert!(valid_range(b"a", &[0]));
        assert!(valid_range(b"a", b"b"));
        assert!(!valid_range(b"b", b"a"));
        assert!(!valid_range(b"", b""));
    }
}
