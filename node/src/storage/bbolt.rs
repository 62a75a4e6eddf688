//! bbolt files, as etcd's snapshots are: writing one whole from sorted
//! buckets, and reading one back. etcd's backend is a bbolt database, and
//! `etcdctl snapshot save` writes it followed by the SHA-256 of its bytes;
//! `etcdctl snapshot status` and `etcdutl snapshot restore` read it. Nod
//! writes its backups in that form (`snapshot.rs` says which buckets), so
//! etcd's tools and etcd itself take them, and reads etcd's.
//!
//! The format (bbolt 1.3, which etcd 3.4 and 3.5 use): pages of 4096
//! bytes, each with a 16-byte header (id, flags, count, overflow pages);
//! pages 0 and 1 are meta pages (magic, version, page size, the root
//! bucket, the freelist page, the high-water page id, the transaction id,
//! an FNV-1a 64 checksum of the fields before it); leaf pages hold
//! (flags, pos, key size, value size) elements, `pos` counted from the
//! element itself, then the keys and values; branch pages hold (pos, key
//! size, child page) elements whose keys are their children's first keys.
//! A bucket is a leaf value flagged 1: its root page and sequence, or, for
//! a small bucket, root 0 and the bucket's leaf page inline. Integers are
//! little-endian. No I/O: bytes in, bytes out. Reading checks every offset
//! and length against the file, follows each page at most once, and bounds
//! the depth, so a damaged or hostile file is an error, never a panic.

pub const PAGE: usize = 4096;
const HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const FREELIST: u16 = 0x10;
const BUCKET_FLAG: u32 = 0x01;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
/// bbolt keeps a bucket inline while its leaf image fits in a quarter page.
const MAX_INLINE: usize = PAGE / 4;
/// Deeper trees than this are not bbolt's (a page holds over a hundred keys).
const MAX_DEPTH: usize = 32;

/// Why bytes are not a bbolt file we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoltError {
    #[error("not a bbolt database: {0}")]
    Invalid(&'static str),
    #[error("bbolt database: both meta pages are invalid")]
    Meta,
    #[error("bbolt database: page {0} is out of the file or malformed")]
    Page(u64),
    #[error("bbolt database: page {0} is reached twice")]
    Cycle(u64),
    #[error("bbolt database: a tree deeper than {MAX_DEPTH} levels")]
    Depth,
    #[error("bbolt database: keys out of order in page {0}")]
    Order(u64),
    #[error("bbolt database: bucket {0:?} not found")]
    NoBucket(String),
}

/// A key and its value in a bucket (`bucket`: the value is a sub-bucket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub bucket: bool,
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn header(id: u64, flags: u16, count: u16, overflow: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(&id.to_le_bytes());
    h[8..10].copy_from_slice(&flags.to_le_bytes());
    h[10..12].copy_from_slice(&count.to_le_bytes());
    h[12..16].copy_from_slice(&overflow.to_le_bytes());
    h
}

/// Leaf elements then their keys and values, as bbolt lays them out.
fn leaf_body(items: &[(&[u8], &[u8], bool)]) -> Vec<u8> {
    let n = items.len();
    let data: usize = items.iter().map(|(k, v, _)| k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(n * ELEMENT + data);
    let mut offset = 0usize;
    for (i, (k, v, bucket)) in items.iter().enumerate() {
        let pos = (n - i) * ELEMENT + offset;
        out.extend_from_slice(&u32::from(*bucket).to_le_bytes());
        out.extend_from_slice(&(pos as u32).to_le_bytes());
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        offset += k.len() + v.len();
    }
    for (k, v, _) in items {
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    out
}

fn branch_body(children: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let n = children.len();
    let mut out = Vec::new();
    let mut offset = 0usize;
    for (i, (k, child)) in children.iter().enumerate() {
        let pos = (n - i) * ELEMENT + offset;
        out.extend_from_slice(&(pos as u32).to_le_bytes());
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&child.to_le_bytes());
        offset += k.len();
    }
    for (k, _) in children {
        out.extend_from_slice(k);
    }
    out
}

/// Builds a bbolt file page by page: buckets first (each returns the
/// value its parent stores), then `finish` with the top-level buckets.
/// Keys given to a bucket must be unique, non-empty and in ascending byte
/// order (the caller's are: revisions, ids, names from sorted maps).
pub struct Writer {
    /// Pages 3 and up, in page order (each node's pages contiguous).
    pages: Vec<u8>,
    next: u64,
}

impl Default for Writer {
    fn default() -> Writer {
        Writer::new()
    }
}

impl Writer {
    pub fn new() -> Writer {
        // 0 and 1: meta; 2: an empty freelist (read by every bbolt).
        Writer {
            pages: Vec::new(),
            next: 3,
        }
    }

    fn put_page(&mut self, flags: u16, count: usize, body: &[u8]) -> u64 {
        let pages = (HEADER + body.len()).div_ceil(PAGE);
        let id = self.next;
        self.next += pages as u64;
        let start = self.pages.len();
        self.pages
            .extend_from_slice(&header(id, flags, count as u16, (pages - 1) as u32));
        self.pages.extend_from_slice(body);
        self.pages.resize(start + pages * PAGE, 0);
        id
    }

    /// Writes `items` as a tree of pages; answers its root page.
    fn tree(&mut self, items: &[(&[u8], &[u8], bool)]) -> u64 {
        // Leaves, filled up to a page (a bigger element alone, with overflow).
        let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut start = 0;
        let mut size = HEADER;
        for (i, (k, v, _)) in items.iter().enumerate() {
            let add = ELEMENT + k.len() + v.len();
            // bbolt's count is 16 bits.
            if i > start && (size + add > PAGE || i - start == 0xFFFE) {
                let first = items[start].0.to_vec();
                level.push((
                    first,
                    self.put_page(LEAF, i - start, &leaf_body(&items[start..i])),
                ));
                start = i;
                size = HEADER;
            }
            size += add;
        }
        let first = items.get(start).map(|i| i.0.to_vec()).unwrap_or_default();
        level.push((
            first,
            self.put_page(LEAF, items.len() - start, &leaf_body(&items[start..])),
        ));
        while level.len() > 1 {
            let mut next = Vec::new();
            let mut group: Vec<(Vec<u8>, u64)> = Vec::new();
            let mut size = HEADER;
            for child in level {
                let add = ELEMENT + child.0.len();
                if !group.is_empty() && (size + add > PAGE || group.len() == 0xFFFE) {
                    let first = group[0].0.clone();
                    next.push((
                        first,
                        self.put_page(BRANCH, group.len(), &branch_body(&group)),
                    ));
                    group.clear();
                    size = HEADER;
                }
                size += add;
                group.push(child);
            }
            let first = group[0].0.clone();
            next.push((
                first,
                self.put_page(BRANCH, group.len(), &branch_body(&group)),
            ));
            level = next;
        }
        level[0].1
    }

    /// The value a parent stores for a bucket holding `items` (sorted,
    /// no sub-buckets): inline when small, as bbolt does, else its pages.
    pub fn bucket(&mut self, items: &[(&[u8], &[u8])]) -> Vec<u8> {
        let items: Vec<(&[u8], &[u8], bool)> = items.iter().map(|(k, v)| (*k, *v, false)).collect();
        let image = HEADER
            + items
                .iter()
                .map(|(k, v, _)| ELEMENT + k.len() + v.len())
                .sum::<usize>();
        let mut out = Vec::with_capacity(16 + image.min(MAX_INLINE));
        if image <= MAX_INLINE {
            out.extend_from_slice(&[0u8; 16]);
            out.extend_from_slice(&header(0, LEAF, items.len() as u16, 0));
            out.extend_from_slice(&leaf_body(&items));
        } else {
            let root = self.tree(&items);
            out.extend_from_slice(&root.to_le_bytes());
            out.extend_from_slice(&0u64.to_le_bytes());
        }
        out
    }

    /// The whole file: meta pages, the empty freelist, the pages written,
    /// and a root bucket holding `buckets` (name → `bucket`'s value, in
    /// ascending name order).
    pub fn finish(mut self, buckets: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
        let items: Vec<(&[u8], &[u8], bool)> = buckets
            .iter()
            .map(|(k, v)| (*k, v.as_slice(), true))
            .collect();
        let root = self.tree(&items);
        let high_water = self.next;
        let mut out = Vec::with_capacity(high_water as usize * PAGE);
        let txid: u64 = 2;
        for (id, tx) in [(0u64, txid), (1, txid - 1)] {
            let mut meta = Vec::with_capacity(56);
            meta.extend_from_slice(&MAGIC.to_le_bytes());
            meta.extend_from_slice(&VERSION.to_le_bytes());
            meta.extend_from_slice(&(PAGE as u32).to_le_bytes());
            meta.extend_from_slice(&0u32.to_le_bytes());
            meta.extend_from_slice(&root.to_le_bytes());
            meta.extend_from_slice(&0u64.to_le_bytes());
            meta.extend_from_slice(&2u64.to_le_bytes());
            meta.extend_from_slice(&high_water.to_le_bytes());
            meta.extend_from_slice(&tx.to_le_bytes());
            let sum = fnv1a64(&meta);
            let start = out.len();
            out.extend_from_slice(&header(id, META, 0, 0));
            out.extend_from_slice(&meta);
            out.extend_from_slice(&sum.to_le_bytes());
            out.resize(start + PAGE, 0);
        }
        let start = out.len();
        out.extend_from_slice(&header(2, FREELIST, 0, 0));
        out.resize(start + PAGE, 0);
        out.extend_from_slice(&self.pages);
        debug_assert_eq!(out.len(), high_water as usize * PAGE);
        out
    }
}

/// A bbolt file opened for reading (the bytes stay the caller's).
pub struct File<'a> {
    data: &'a [u8],
    page_size: usize,
    root: u64,
    /// Pages in use (`tx.Size()` is this times the page size).
    pub high_water: u64,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// (root, high water, txid) of a valid meta at `at`.
fn meta_at(data: &[u8], at: usize) -> Option<(u32, u64, u64, u64)> {
    let m = data.get(at + HEADER..at + HEADER + 64)?;
    if u16_at(data, at + 8)? & META == 0 {
        return None;
    }
    let magic = u32_at(m, 0)?;
    let version = u32_at(m, 4)?;
    let page_size = u32_at(m, 8)?;
    let sum = u64_at(m, 56)?;
    if magic != MAGIC || version != VERSION || sum != fnv1a64(&m[..56]) {
        return None;
    }
    Some((page_size, u64_at(m, 16)?, u64_at(m, 40)?, u64_at(m, 48)?))
}

/// A page's kind, element count and bytes (all its overflow pages).
struct Page<'a> {
    flags: u16,
    count: usize,
    bytes: &'a [u8],
}

impl<'a> File<'a> {
    /// Checks the meta pages and picks the current one (the valid one
    /// with the higher transaction id), as bbolt does.
    pub fn open(data: &'a [u8]) -> Result<File<'a>, BoltError> {
        if data.len() < 2 * 512 {
            return Err(BoltError::Invalid("shorter than two pages"));
        }
        let first = meta_at(data, 0);
        let page_size = match first {
            Some((ps, ..)) => ps as usize,
            None => PAGE,
        };
        if !(512..=(1 << 20)).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(BoltError::Invalid("page size"));
        }
        let second = meta_at(data, page_size).filter(|m| m.0 as usize == page_size);
        let (_, root, high_water, _) = match (first, second) {
            (Some(a), Some(b)) => {
                if a.3 >= b.3 {
                    a
                } else {
                    b
                }
            }
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => return Err(BoltError::Meta),
        };
        let pages = (data.len() / page_size) as u64;
        if high_water > pages || high_water < 3 {
            return Err(BoltError::Invalid("its pages run past the end of the file"));
        }
        Ok(File {
            data,
            page_size,
            root,
            high_water,
        })
    }

    /// The page size the current meta page gives.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    fn page(&self, id: u64) -> Result<Page<'a>, BoltError> {
        let bad = || BoltError::Page(id);
        if id < 2 || id >= self.high_water {
            return Err(bad());
        }
        let start = (id as usize).checked_mul(self.page_size).ok_or_else(bad)?;
        let head = self.data.get(start..start + HEADER).ok_or_else(bad)?;
        let overflow = u32_at(head, 12).ok_or_else(bad)? as u64;
        if u64_at(head, 0) != Some(id) || id + overflow >= self.high_water {
            return Err(bad());
        }
        let len = (overflow as usize + 1) * self.page_size;
        Ok(Page {
            flags: u16_at(head, 8).ok_or_else(bad)?,
            count: u16_at(head, 10).ok_or_else(bad)? as usize,
            bytes: self.data.get(start..start + len).ok_or_else(bad)?,
        })
    }

    /// The top-level buckets' names, in order.
    pub fn buckets(&self) -> Result<Vec<Vec<u8>>, BoltError> {
        Ok(self
            .top_level()?
            .into_iter()
            .filter(|i| i.bucket)
            .map(|i| i.key)
            .collect())
    }

    /// The top-level entries, in key order (etcd's are all buckets).
    pub fn top_level(&self) -> Result<Vec<Item>, BoltError> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        self.walk(self.root, 0, &mut seen, &mut |item| {
            out.push(item);
            Ok::<(), BoltError>(())
        })?;
        Ok(out)
    }

    /// Every key and value of the top-level bucket `name`, in key order.
    pub fn bucket(&self, name: &[u8]) -> Result<Vec<Item>, BoltError> {
        let mut out = Vec::new();
        self.for_each(name, &mut |item| {
            out.push(item);
            Ok::<(), BoltError>(())
        })?;
        Ok(out)
    }

    /// Calls `f` with every key and value of the top-level bucket `name`,
    /// in key order, holding one at a time; stops at `f`'s first error.
    pub fn for_each<E: From<BoltError>>(
        &self,
        name: &[u8],
        f: &mut dyn FnMut(Item) -> Result<(), E>,
    ) -> Result<(), E> {
        let value = self
            .top_level()?
            .into_iter()
            .find(|i| i.bucket && i.key == name)
            .map(|i| i.value)
            .ok_or_else(|| BoltError::NoBucket(String::from_utf8_lossy(name).into_owned()))?;
        // Pages seen in the top level are not the bucket's: a fresh set
        // still catches a bucket that loops or shares its pages.
        let mut seen = std::collections::HashSet::new();
        self.walk_bucket(&value, &mut seen, f)
    }

    fn walk_bucket<E: From<BoltError>>(
        &self,
        value: &[u8],
        seen: &mut std::collections::HashSet<u64>,
        f: &mut dyn FnMut(Item) -> Result<(), E>,
    ) -> Result<(), E> {
        let root = u64_at(value, 0).ok_or(BoltError::Invalid("a bucket value"))?;
        if root != 0 {
            return self.walk(root, 0, seen, f);
        }
        // Inline: a leaf page image after the 16-byte bucket header.
        let image = value
            .get(16..)
            .ok_or(BoltError::Invalid("an inline bucket"))?;
        let count = u16_at(image, 10).ok_or(BoltError::Invalid("an inline bucket"))? as usize;
        if u16_at(image, 8) != Some(LEAF) {
            return Err(BoltError::Invalid("an inline bucket").into());
        }
        leaf_items(image, count, 0, f)
    }

    fn walk<E: From<BoltError>>(
        &self,
        id: u64,
        depth: usize,
        seen: &mut std::collections::HashSet<u64>,
        f: &mut dyn FnMut(Item) -> Result<(), E>,
    ) -> Result<(), E> {
        if depth > MAX_DEPTH {
            return Err(BoltError::Depth.into());
        }
        if !seen.insert(id) {
            return Err(BoltError::Cycle(id).into());
        }
        let page = self.page(id)?;
        match page.flags {
            LEAF => leaf_items(page.bytes, page.count, id, f),
            BRANCH => {
                let mut last: Option<&[u8]> = None;
                for i in 0..page.count {
                    let at = HEADER + i * ELEMENT;
                    let bad = || BoltError::Page(id);
                    let pos = u32_at(page.bytes, at).ok_or_else(bad)? as usize;
                    let ksize = u32_at(page.bytes, at + 4).ok_or_else(bad)? as usize;
                    let child = u64_at(page.bytes, at + 8).ok_or_else(bad)?;
                    let key = page.bytes.get(at + pos..at + pos + ksize).ok_or_else(bad)?;
                    if last.is_some_and(|l| l >= key) {
                        return Err(BoltError::Order(id).into());
                    }
                    last = Some(key);
                    self.walk(child, depth + 1, seen, f)?;
                }
                Ok(())
            }
            _ => Err(BoltError::Page(id).into()),
        }
    }
}

/// The items of a leaf (a page, or an inline bucket's image).
fn leaf_items<E: From<BoltError>>(
    bytes: &[u8],
    count: usize,
    id: u64,
    f: &mut dyn FnMut(Item) -> Result<(), E>,
) -> Result<(), E> {
    let bad = || BoltError::Page(id);
    let mut last: Option<Vec<u8>> = None;
    for i in 0..count {
        let at = HEADER + i * ELEMENT;
        let flags = u32_at(bytes, at).ok_or_else(bad)?;
        let pos = u32_at(bytes, at + 4).ok_or_else(bad)? as usize;
        let ksize = u32_at(bytes, at + 8).ok_or_else(bad)? as usize;
        let vsize = u32_at(bytes, at + 12).ok_or_else(bad)? as usize;
        let k0 = at.checked_add(pos).ok_or_else(bad)?;
        let key = bytes.get(k0..k0 + ksize).ok_or_else(bad)?;
        let value = bytes.get(k0 + ksize..k0 + ksize + vsize).ok_or_else(bad)?;
        if key.is_empty() || last.as_deref().is_some_and(|l| l >= key) {
            return Err(BoltError::Order(id).into());
        }
        last = Some(key.to_vec());
        f(Item {
            key: key.to_vec(),
            value: value.to_vec(),
            bucket: flags & BUCKET_FLAG != 0,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize, value_len: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|i| (format!("k{i:08}").into_bytes(), vec![i as u8; value_len]))
            .collect()
    }

    fn refs(v: &[(Vec<u8>, Vec<u8>)]) -> Vec<(&[u8], &[u8])> {
        v.iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect()
    }

    #[test]
    fn small_large_and_oversized_buckets_read_back_whole() {
        let small = items(3, 10);
        let many = items(5000, 40);
        let big = vec![(b"big".to_vec(), vec![7u8; 3 * PAGE + 5])];
        let mut w = Writer::new();
        let buckets = vec![
            (&b"big"[..], w.bucket(&refs(&big))),
            (&b"empty"[..], w.bucket(&[])),
            (&b"many"[..], w.bucket(&refs(&many))),
            (&b"small"[..], w.bucket(&refs(&small))),
        ];
        let file = w.finish(&buckets);
        assert_eq!(file.len() % PAGE, 0);
        let f = File::open(&file).unwrap();
        assert_eq!(f.high_water as usize * PAGE, file.len());
        assert_eq!(
            f.buckets().unwrap(),
            vec![
                b"big".to_vec(),
                b"empty".to_vec(),
                b"many".to_vec(),
                b"small".to_vec()
            ]
        );
        for (name, want) in [(&b"small"[..], &small), (b"many", &many), (b"big", &big)] {
            let got: Vec<(Vec<u8>, Vec<u8>)> = f
                .bucket(name)
                .unwrap()
                .into_iter()
                .map(|i| (i.key, i.value))
                .collect();
            assert_eq!(&got, want, "{}", String::from_utf8_lossy(name));
        }
        assert!(f.bucket(b"empty").unwrap().is_empty());
        assert!(matches!(f.bucket(b"nope"), Err(BoltError::NoBucket(_))));
    }

    #[test]
    fn meta_pages_carry_bbolts_checksum_and_the_newer_one_wins() {
        let mut w = Writer::new();
        let v = w.bucket(&[(b"a", b"1")]);
        let file = w.finish(&[(b"b", v)]);
        for at in [0, PAGE] {
            let m = &file[at + HEADER..at + HEADER + 64];
            assert_eq!(u32_at(m, 0), Some(MAGIC));
            assert_eq!(u64_at(m, 56), Some(fnv1a64(&m[..56])));
        }
        // A damaged first meta: the second one still opens the file.
        let mut damaged = file.clone();
        damaged[HEADER + 20] ^= 1;
        assert_eq!(File::open(&damaged).unwrap().bucket(b"b").unwrap().len(), 1);
        damaged[PAGE + HEADER + 20] ^= 1;
        assert!(matches!(File::open(&damaged), Err(BoltError::Meta)));
    }

    #[test]
    fn damaged_files_are_errors_never_panics() {
        let many = items(300, 30);
        let mut w = Writer::new();
        let v = w.bucket(&refs(&many));
        let file = w.finish(&[(b"k", v)]);
        assert!(File::open(&file[..PAGE]).is_err());
        assert!(File::open(&file[..file.len() - PAGE]).is_err(), "truncated");
        // Flip every 7th byte past the metas, one at a time: reading may
        // fail or (for data bytes) succeed, but it never panics.
        for at in (2 * PAGE..file.len()).step_by(7) {
            let mut bad = file.clone();
            bad[at] ^= 0xff;
            if let Ok(f) = File::open(&bad) {
                let _ = f.buckets();
                let _ = f.bucket(b"k");
            }
        }
        // A branch that points at itself is a cycle, not a hang.
        let f = File::open(&file).unwrap();
        let leaf = f.root as usize * PAGE + HEADER;
        let pos = u32_at(&file, leaf + 4).unwrap() as usize;
        let ksize = u32_at(&file, leaf + 8).unwrap() as usize;
        let k_root = u64_at(&file, leaf + pos + ksize).unwrap() as usize;
        assert_eq!(u16_at(&file, k_root * PAGE + 8), Some(BRANCH));
        let mut looped = file.clone();
        let at = k_root * PAGE + HEADER + 8;
        looped[at..at + 8].copy_from_slice(&(k_root as u64).to_le_bytes());
        let f = File::open(&looped).unwrap();
        assert!(matches!(f.bucket(b"k"), Err(BoltError::Cycle(_))));
    }
}
