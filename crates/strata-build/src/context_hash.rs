//! Content digests of build-context files, and the stat cache that avoids re-reading them.
//!
//! A COPY from the context (and a RUN that bind-mounts it) is keyed by the content it reads
//! (DESIGN.md decision 6), so every build needs the SHA-256 of every source file. Reading
//! 500 MB on each no-op rebuild would defeat the cache, so digests are remembered per file
//! together with its stat stamp (device, inode, size, mtime ns, ctime ns): while the stamp is
//! unchanged the file is not read again and a rebuild costs a metadata walk. ctime is in the
//! stamp because it cannot be set from user space: a file rewritten with the same size whose
//! mtime was put back still gets a new ctime, so it is hashed again. Entries whose ctime is
//! less than [`RACY_NS`] old are not kept (the file may still be changing within one clock
//! tick, git's "racy clean" problem), so they are re-hashed next time.
//!
//! The cache is one binary file per context root, `<store>/strata/v1/hashes-v1/<hex>` where
//! `<hex>` is the SHA-256 of the canonical context path (the directory name is the table's;
//! the file names its own format in its first bytes). Format v2, loaded with one read and
//! searched in place: the magic `strata-hashes-v2\n`, the record count (u64 LE), then per
//! file, sorted bytewise by path with no duplicates, `dev ino size mtime_ns ctime_ns` (u64/i64
//! LE), the 32-byte SHA-256, the path length (u32 LE) and the path below the context. A
//! lookup is a binary search over byte slices: no per-file allocation or path hashing, which
//! the text format v1 (`dev ino size mtime_ns ctime_ns sha256hex path` lines) cost on every
//! build. A v1 file is still read (and rewritten as v2), so an upgrade hashes nothing again.
//! The file is written atomically (temp file and rename) at the end of a build, only when an
//! entry was added or dropped; a file that does not parse is treated as empty, never as an
//! error. Misses are hashed in parallel.
//!
//! [`SourceWalk`] turns a source tree into one digest over what the step will see: each
//! entry's path below the source, type, mode, owner (when it reaches the result), link target,
//! content digest and the mtime the layer writer would keep (clamped to the build timestamp,
//! so constant under the default timestamp 0), never atime or raw mtimes. Fifos and devices
//! (with their device number) have their own type, and a file that is a hardlink of an
//! earlier entry of the same tree records that entry's path, because the copy keeps the link.
//! The walk reads each directory once (`getdents64`) and stats its entries relative to the
//! directory's descriptor, subdirectories in parallel; the records are put back in walk order
//! (parents first, names in bytewise order), so the digest does not depend on the schedule.

use std::collections::HashMap;
use std::ffi::{CStr, OsStr};
use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use sha2::{Digest as _, Sha256};
use strata_recipe::DockerIgnore;
use strata_store::Store;
use strata_types::{CancelToken, Digest};

use crate::error::{BuildError, Result};

/// The first bytes of a v2 cache file.
const MAGIC_V2: &[u8] = b"strata-hashes-v2\n";
/// The header line of a v1 (text) cache file, still read.
const HEADER_V1: &str = "strata-hashes-v1";
/// Bytes of a v2 record before its path: five u64/i64 stamp fields, the digest, the length.
const FIXED: usize = 5 * 8 + 32 + 4;

/// Entries younger than this (by ctime) are not written to the cache file.
pub(crate) const RACY_NS: i64 = 2_000_000_000;

/// What the walk keeps of one `lstat`.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    dev: u64,
    ino: u64,
    rdev: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
}

impl Meta {
    // The field types of `struct stat` differ by architecture.
    #[allow(clippy::unnecessary_cast)]
    fn of(st: &rustix::fs::Stat) -> Meta {
        Meta {
            mode: st.st_mode as u32,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            nlink: st.st_nlink as u64,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            rdev: st.st_rdev as u64,
            size: st.st_size as u64,
            mtime: st.st_mtime as i64,
            mtime_nsec: st.st_mtime_nsec as i64,
            ctime: st.st_ctime as i64,
            ctime_nsec: st.st_ctime_nsec as i64,
        }
    }

    fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.mode)
    }

    fn is_dir(&self) -> bool {
        self.file_type() == FileType::Directory
    }
}

fn lstat(path: &Path) -> Result<Meta> {
    rustix::fs::lstat(path)
        .map(|st| Meta::of(&st))
        .map_err(|e| BuildError::io("lstat", path, e.into()))
}

/// What identifies an unchanged file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Stamp {
    fn of(md: &Meta) -> Stamp {
        Stamp {
            dev: md.dev,
            ino: md.ino,
            size: md.size,
            mtime_ns: md.mtime.saturating_mul(1_000_000_000).saturating_add(md.mtime_nsec),
            ctime_ns: md.ctime.saturating_mul(1_000_000_000).saturating_add(md.ctime_nsec),
        }
    }
}

/// A loaded v2 cache file: its bytes and the offset of each record, in path order.
#[derive(Debug, Default)]
struct Table {
    bytes: Vec<u8>,
    records: Vec<usize>,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Table {
    /// Checks a v2 file: every record complete, paths strictly increasing, nothing after.
    fn parse(bytes: Vec<u8>) -> Option<Table> {
        let body = bytes.strip_prefix(MAGIC_V2)?;
        let count = usize::try_from(u64_at(body.get(..8)?, 0)).ok()?;
        let mut at = MAGIC_V2.len() + 8;
        // Each record is at least FIXED bytes: a count beyond that is a lie, not an allocation.
        let mut records = Vec::with_capacity(count.min((bytes.len() - at) / FIXED));
        let mut last: Option<&[u8]> = None;
        for _ in 0..count {
            let len_at = at.checked_add(FIXED - 4)?;
            let len = bytes.get(len_at..len_at + 4)?;
            let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
            let path = bytes.get(at + FIXED..(at + FIXED).checked_add(len)?)?;
            if last.is_some_and(|l| l >= path) {
                return None;
            }
            last = Some(path);
            records.push(at);
            at += FIXED + len;
        }
        if at != bytes.len() {
            return None;
        }
        Some(Table { bytes, records })
    }

    fn path(&self, i: usize) -> &[u8] {
        let at = self.records[i];
        let len = u32::from_le_bytes([
            self.bytes[at + FIXED - 4],
            self.bytes[at + FIXED - 3],
            self.bytes[at + FIXED - 2],
            self.bytes[at + FIXED - 1],
        ]) as usize;
        &self.bytes[at + FIXED..at + FIXED + len]
    }

    fn entry(&self, i: usize) -> (Stamp, [u8; 32]) {
        let (b, at) = (&self.bytes, self.records[i]);
        let stamp = Stamp {
            dev: u64_at(b, at),
            ino: u64_at(b, at + 8),
            size: u64_at(b, at + 16),
            mtime_ns: u64_at(b, at + 24) as i64,
            ctime_ns: u64_at(b, at + 32) as i64,
        };
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[at + 40..at + 72]);
        (stamp, digest)
    }

    /// Where the entries below the directory `key` (its paths `key/...`, every path when
    /// `key` is empty) lie: a [`Below`] to look its children up in, in name order.
    fn below(&self, key: &[u8]) -> Below {
        if key.is_empty() {
            return Below { start: 0, end: self.records.len(), prefix: 0 };
        }
        // From `key/` up to `key0` ('0' is the byte after '/'): exactly the paths below.
        let mut bound = Vec::with_capacity(key.len() + 1);
        bound.extend_from_slice(key);
        bound.push(b'/');
        let start = self.records.partition_point(|&at| self.path_at(at) < bound.as_slice());
        bound[key.len()] = b'0';
        let end = start
            + self.records[start..].partition_point(|&at| self.path_at(at) < bound.as_slice());
        Below { start, end, prefix: key.len() + 1 }
    }

    /// [`Table::below`] for the subdirectory `name` of the directory of `parent` (as it
    /// was before any lookup), searched in the parent's range by names only.
    fn below_child(&self, parent: Below, name: &[u8]) -> Below {
        let range = &self.records[parent.start..parent.end];
        let suffix = |at: usize| &self.path_at(at)[parent.prefix..];
        // Below `name/`, up to `name0` ('0' is the byte after '/').
        let before = |at: usize, end: u8| {
            let s = suffix(at);
            let n = name.len().min(s.len());
            match s[..n].cmp(name) {
                std::cmp::Ordering::Equal if s.len() > n => s[n] < end,
                std::cmp::Ordering::Equal => true,
                o => o.is_lt(),
            }
        };
        let start = parent.start + range.partition_point(|&at| before(at, b'/'));
        let end = parent.start + range.partition_point(|&at| before(at, b'0'));
        Below { start, end, prefix: parent.prefix + name.len() + 1 }
    }

    /// The record of the child `name` of the directory of `below`, searched from where the
    /// last lookup ended: the walk asks for names in increasing order, and the paths below
    /// one directory sort as their names do (the shared prefix is not compared again).
    fn find_child(&self, below: &mut Below, name: &[u8]) -> Option<usize> {
        let range = &self.records[below.start..below.end];
        match range.binary_search_by(|&at| self.path_at(at)[below.prefix..].cmp(name)) {
            Ok(k) => {
                below.start += k + 1;
                Some(below.start - 1)
            }
            Err(k) => {
                below.start += k;
                None
            }
        }
    }

    /// The path of the record at byte offset `at`.
    fn path_at(&self, at: usize) -> &[u8] {
        let len = u32::from_le_bytes(
            self.bytes[at + FIXED - 4..at + FIXED].try_into().unwrap_or_default(),
        ) as usize;
        &self.bytes[at + FIXED..at + FIXED + len]
    }

    fn find(&self, path: &[u8]) -> Option<usize> {
        self.records.binary_search_by(|&at| self.path_at(at).cmp(path)).ok()
    }
}

/// The table's records below one directory, `start..end`, each path starting with the
/// directory's `prefix` bytes (its key and a `/`).
#[derive(Debug, Clone, Copy)]
struct Below {
    start: usize,
    end: usize,
    prefix: usize,
}

/// A v2 file of `entries`, which must be sorted by path without duplicates. Sized exactly
/// beforehand: the table of a large context is kept for the whole build, and a guess that
/// grows by doubling holds up to twice its bytes.
fn encode<'a>(
    count: usize,
    entries: impl Iterator<Item = (&'a [u8], Stamp, [u8; 32])> + Clone,
) -> Vec<u8> {
    let records: usize = entries.clone().map(|(path, _, _)| FIXED + path.len()).sum();
    let mut out = Vec::with_capacity(MAGIC_V2.len() + 8 + records);
    out.extend_from_slice(MAGIC_V2);
    out.extend_from_slice(&(count as u64).to_le_bytes());
    for (path, s, d) in entries {
        out.extend_from_slice(&s.dev.to_le_bytes());
        out.extend_from_slice(&s.ino.to_le_bytes());
        out.extend_from_slice(&s.size.to_le_bytes());
        out.extend_from_slice(&s.mtime_ns.to_le_bytes());
        out.extend_from_slice(&s.ctime_ns.to_le_bytes());
        out.extend_from_slice(&d);
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
    }
    out
}

/// A v1 text file as a table (`None` when it does not parse).
fn upgrade_v1(bytes: &[u8]) -> Option<Table> {
    let mut lines = bytes.split(|b| *b == b'\n');
    if lines.next()? != HEADER_V1.as_bytes() {
        return None;
    }
    let mut out = std::collections::BTreeMap::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let mut fields = line.splitn(7, |b| *b == b' ');
        let mut num = || -> Option<&[u8]> { fields.next() };
        fn text(f: Option<&[u8]>) -> Option<&str> {
            std::str::from_utf8(f?).ok()
        }
        let dev = text(num())?.parse().ok()?;
        let ino = text(num())?.parse().ok()?;
        let size = text(num())?.parse().ok()?;
        let mtime_ns = text(num())?.parse().ok()?;
        let ctime_ns = text(num())?.parse().ok()?;
        let digest: [u8; 32] = hex::decode(text(num())?).ok()?.try_into().ok()?;
        let raw = num()?;
        let mut path = Vec::with_capacity(raw.len());
        let mut it = raw.iter();
        while let Some(&b) = it.next() {
            if b == b'\\' {
                match it.next()? {
                    b'n' => path.push(b'\n'),
                    b'\\' => path.push(b'\\'),
                    _ => return None,
                }
            } else {
                path.push(b);
            }
        }
        out.insert(path, (Stamp { dev, ino, size, mtime_ns, ctime_ns }, digest));
    }
    let bytes = encode(out.len(), out.iter().map(|(p, (s, d))| (p.as_slice(), *s, *d)));
    Table::parse(bytes)
}

/// Names read from a directory: the NUL-terminated bytes, and each name's (start, length).
type Names = (Vec<u8>, Vec<(usize, usize)>);

/// The digest cache of one context root (see the module docs).
pub(crate) struct ContextHashes {
    /// Where the cache is saved: the store's context-cache table, under `key`.
    store: Store,
    key: Digest,
    /// The context as given; entries are keyed by paths below it.
    root: PathBuf,
    /// The entries loaded, read-only during the build.
    table: Table,
    /// Per loaded entry: whether this build looked it up (others are dropped on save when
    /// their file is gone).
    seen: Vec<AtomicBool>,
    /// Per loaded entry: whether its file was found with another stamp. Such an entry can
    /// never hit again and is dropped on save; kept, it would make a file hashed too young
    /// to be remembered look changed once more at the next build.
    stale: Vec<AtomicBool>,
    /// Entries this build hashed and may keep: one table per walk that hashed any, newest
    /// last (a path in a later one supersedes it in an earlier one). Tables in the file's
    /// format, not a map: 200,000 entries take ~30 MB so, ~55 MB as a map of owned paths,
    /// and they stay while the build writes its layers.
    added: Mutex<Vec<Table>>,
    /// Whether the loaded file must be rewritten even without changes (it was v1).
    upgraded: bool,
    /// Files hashed (read) by this build, for tests and reports.
    hashed: AtomicU64,
}

impl ContextHashes {
    /// The cache of `context` in `store` (empty when missing or unreadable).
    pub fn load(store: &Store, context: &Path) -> ContextHashes {
        let canonical = fs::canonicalize(context).unwrap_or_else(|_| context.to_path_buf());
        let key = Digest::of_bytes(canonical.as_os_str().as_bytes());
        let (table, upgraded) = match store.context_cache(&key) {
            Some(b) if b.starts_with(MAGIC_V2) => (Table::parse(b).unwrap_or_default(), false),
            Some(b) => match upgrade_v1(&b) {
                Some(t) => (t, true),
                None => (Table::default(), false),
            },
            None => (Table::default(), false),
        };
        ContextHashes::with_table(store, key, context.to_path_buf(), table, upgraded)
    }

    fn with_table(
        store: &Store,
        key: Digest,
        root: PathBuf,
        table: Table,
        upgraded: bool,
    ) -> ContextHashes {
        let seen = (0..table.records.len()).map(|_| AtomicBool::new(false)).collect();
        let stale = (0..table.records.len()).map(|_| AtomicBool::new(false)).collect();
        ContextHashes {
            store: store.clone(),
            key,
            root,
            table,
            seen,
            stale,
            added: Mutex::new(Vec::new()),
            upgraded,
            hashed: AtomicU64::new(0),
        }
    }

    /// How many files this cache had to read so far.
    pub fn files_hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    /// The cached digest of a file with metadata `md` when its stamp is unchanged; `found`
    /// is its entry in the loaded table, if any. Otherwise (`Err`) its cache key (below the
    /// root), built by `key` only then.
    fn lookup(
        &self,
        found: Option<usize>,
        key: impl FnOnce() -> Vec<u8>,
        md: &Meta,
    ) -> std::result::Result<[u8; 32], Vec<u8>> {
        let stamp = Stamp::of(md);
        if let Some(i) = found {
            self.seen[i].store(true, Ordering::Relaxed);
            let (s, d) = self.table.entry(i);
            if s == stamp {
                return Ok(d);
            }
            self.stale[i].store(true, Ordering::Relaxed);
        }
        // A file an earlier step of this build hashed.
        let key = key();
        let added = self.added.lock().unwrap_or_else(|p| p.into_inner());
        match added.iter().rev().find_map(|t| t.find(&key).map(|j| t.entry(j))) {
            Some((s, d)) if s == stamp => Ok(d),
            _ => Err(key),
        }
    }

    /// Keeps what one walk hashed (paths below the root, each once) for the rest of the
    /// build and for [`ContextHashes::save`].
    fn add(&self, mut entries: Vec<(Vec<u8>, Stamp, [u8; 32])>) {
        if entries.is_empty() {
            return;
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        let bytes = encode(entries.len(), entries.iter().map(|(p, s, d)| (p.as_slice(), *s, *d)));
        drop(entries);
        if let Some(table) = Table::parse(bytes) {
            self.added.lock().unwrap_or_else(|p| p.into_inner()).push(table);
        }
    }

    /// Hashes the regular files of `missed` (records below `real`, whose cache key is
    /// below `key`) the cache had no answer for, in parallel; keeps each stamp that still
    /// describes the bytes read and is old enough. Returns the context paths of the files
    /// the cache knew with another digest (what changed).
    fn hash_misses(
        &self,
        real: &Path,
        key: &[u8],
        missed: &mut [&mut Record],
        cancel: Option<&CancelToken>,
    ) -> Result<Vec<String>> {
        if missed.is_empty() {
            return Ok(Vec::new());
        }
        // Not `join` for the root itself: `file` + "" is `file/`, which is no file.
        let real_of = |r: &Record| match r.inner.is_empty() {
            true => real.to_path_buf(),
            false => real.join(OsStr::from_bytes(&r.inner)),
        };
        let digests: Vec<[u8; 32]> =
            missed.par_iter().map(|r| hash_file(&real_of(r), cancel)).collect::<Result<_>>()?;
        self.hashed.fetch_add(missed.len() as u64, Ordering::Relaxed);
        let now = now_ns();
        let (mut keep, mut changes) = (Vec::with_capacity(missed.len()), Vec::new());
        for (r, digest) in missed.iter_mut().zip(digests) {
            r.digest = Some(digest);
            let key = if r.inner.is_empty() { key.to_vec() } else { join(key, &r.inner) };
            if self.table.find(&key).is_some_and(|j| self.table.entry(j).1 != digest) {
                changes.push(String::from_utf8_lossy(&key).into_owned());
            }
            // Stat again: the stamp kept must describe the bytes hashed.
            let Ok(after) = rustix::fs::lstat(real_of(r)) else { continue };
            let stamp = Stamp::of(&Meta::of(&after));
            if stamp == Stamp::of(&r.md) && now.saturating_sub(stamp.ctime_ns) >= RACY_NS {
                keep.push((key, stamp, digest));
            }
        }
        self.add(keep);
        Ok(changes)
    }

    /// Writes the cache file if anything was added or an entry's file is gone (best effort:
    /// a failure costs a re-hash).
    pub fn save(&self) {
        let added = self.added.lock().unwrap_or_else(|p| p.into_inner());
        // Each path once, from the newest table that has it (a stable sort keeps that first).
        let mut fresh: Vec<(&[u8], Stamp, [u8; 32])> = Vec::new();
        for t in added.iter().rev() {
            fresh.extend((0..t.records.len()).map(|i| (t.path(i), t.entry(i).0, t.entry(i).1)));
        }
        fresh.sort_by(|a, b| a.0.cmp(b.0));
        fresh.dedup_by(|later, first| later.0 == first.0);
        let mut kept = Vec::with_capacity(self.table.records.len() + fresh.len());
        let mut dropped = false;
        for i in 0..self.table.records.len() {
            let path = self.table.path(i);
            if fresh.binary_search_by(|e| e.0.cmp(path)).is_ok() {
                continue;
            }
            if self.stale[i].load(Ordering::Relaxed) {
                dropped = true;
                continue;
            }
            if self.seen[i].load(Ordering::Relaxed)
                || fs::symlink_metadata(self.root.join(OsStr::from_bytes(path))).is_ok()
            {
                let (s, d) = self.table.entry(i);
                kept.push((path, s, d));
            } else {
                dropped = true;
            }
        }
        if fresh.is_empty() && !dropped && !self.upgraded {
            return;
        }
        kept.extend(fresh);
        kept.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let bytes = encode(kept.len(), kept.into_iter());
        let _ = self.store.put_context_cache(&self.key, &bytes);
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The SHA-256 of the file at `path`; stops with [`BuildError::Cancelled`] between 256 KiB
/// reads once `cancel` is cancelled.
pub(crate) fn hash_file(path: &Path, cancel: Option<&CancelToken>) -> Result<[u8; 32]> {
    let mut f = fs::File::open(path).map_err(|e| BuildError::io("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if cancel.is_some_and(CancelToken::is_cancelled) {
            return Err(BuildError::Cancelled);
        }
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BuildError::io("read", path, e)),
        }
    }
    Ok(hasher.finalize().into())
}

/// Regular files and their bytes, as counted for progress events, and the files whose
/// content differs from what the cache knew of them (to explain a miss).
#[derive(Debug, Default, Clone)]
pub(crate) struct FileCount {
    pub files: u64,
    pub bytes: u64,
    /// The first [`FileCount::CHANGES_KEPT`] files re-read with other content than the
    /// cache had for them (context paths, in walk order). Files the cache did not know are
    /// not listed: a file too young to be cached last time looks new without being so.
    pub changed: Vec<String>,
    /// How many there were in all.
    pub changed_total: u64,
}

impl FileCount {
    /// How many changed paths [`FileCount::changed`] keeps.
    pub const CHANGES_KEPT: usize = 5;
}

/// How to digest one source tree.
pub(crate) struct SourceWalk<'a> {
    /// `.dockerignore` (context-relative paths); `None` sees everything.
    pub ignore: Option<&'a DockerIgnore>,
    /// `--exclude` patterns (paths below the source root).
    pub exclude: Option<&'a DockerIgnore>,
    /// Whether owners reach the result (bind mounts) or are reset (COPY from the context).
    pub owners: bool,
    /// `Some(epoch)`: entry mtimes clamped to it reach the layer (COPY); `None`: left out.
    pub mtime_clamp: Option<i64>,
    /// Whether the source root's own metadata matters (a bind mount's root; not a COPY'd
    /// directory, whose destination is created like any missing parent).
    pub root_meta: bool,
    /// The build's Ctrl-C: looked at per directory walked and per chunk of a file hashed.
    pub cancel: Option<&'a CancelToken>,
}

/// One entry of the walked tree.
struct Record {
    /// Its path below the source root.
    inner: Vec<u8>,
    md: Meta,
    link: Option<Vec<u8>>,
    /// Regular files: the content digest, `None` until a miss (a file the cache had no
    /// answer for) is hashed; where to read it and its cache key follow from `inner`.
    digest: Option<[u8; 32]>,
}

/// What the walk found in one directory: its entries in name order, and the same for each
/// subdirectory, by the index of the subdirectory's own record.
struct Listing {
    records: Vec<Record>,
    subdirs: Vec<(usize, Listing)>,
}

impl Listing {
    /// Calls `f` on each record in walk order (each directory followed by what is below it).
    fn each<'a>(&'a self, f: &mut impl FnMut(&'a Record)) {
        let mut subdirs = self.subdirs.iter().peekable();
        for (i, r) in self.records.iter().enumerate() {
            f(r);
            if let Some((_, below)) = subdirs.next_if(|(j, _)| *j == i) {
                below.each(f);
            }
        }
    }

    /// [`Listing::each`], mutably.
    fn each_mut<'a>(&'a mut self, f: &mut impl FnMut(&'a mut Record)) {
        let mut subdirs = self.subdirs.iter_mut().peekable();
        for (i, r) in self.records.iter_mut().enumerate() {
            f(r);
            if let Some((_, below)) = subdirs.next_if(|(j, _)| *j == i) {
                below.each_mut(f);
            }
        }
    }
}

/// A walked source: its root's record and, for a directory, what is below it. Read in
/// place, in walk order: not copied into one list (20,000 records of ~180 bytes, moved
/// and paged in once more on every build).
struct Tree {
    root: Record,
    below: Option<Listing>,
}

impl Tree {
    fn each<'a>(&'a self, f: &mut impl FnMut(&'a Record)) {
        f(&self.root);
        if let Some(below) = &self.below {
            below.each(f);
        }
    }

    fn each_mut<'a>(&'a mut self, f: &mut impl FnMut(&'a mut Record)) {
        f(&mut self.root);
        if let Some(below) = &mut self.below {
            below.each_mut(f);
        }
    }
}

/// `a/b`, or `b` when `a` is empty (as `Path::join` on relative paths).
fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len() + 1 + b.len());
    out.extend_from_slice(a);
    if !a.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(b);
    out
}

/// The names in the directory open as `fd` (`.` and `..` left out), NUL-terminated, in
/// bytewise order.
fn read_names(fd: &OwnedFd, real: &Path) -> Result<Names> {
    let mut buf = Vec::with_capacity(32 * 1024);
    let mut raw = rustix::fs::RawDir::new(fd.as_fd(), buf.spare_capacity_mut());
    let mut arena = Vec::new();
    let mut names = Vec::new();
    while let Some(entry) = raw.next() {
        let entry = entry.map_err(|e| BuildError::io("read dir", real, e.into()))?;
        let name = entry.file_name().to_bytes_with_nul();
        if name == b".\0" || name == b"..\0" {
            continue;
        }
        names.push((arena.len(), name.len()));
        arena.extend_from_slice(name);
    }
    // With the NUL, which sorts before every byte a name may hold: still bytewise order.
    names.sort_unstable_by(|a, b| arena[a.0..a.0 + a.1].cmp(&arena[b.0..b.0 + b.1]));
    Ok((arena, names))
}

/// One walk: its settings and the cache it looks files up in.
struct Walker<'w, 'a> {
    walk: &'w SourceWalk<'a>,
    hashes: &'w ContextHashes,
}

impl Walker<'_, '_> {
    /// The record of an entry with metadata `md`: its link target read by `readlink`, its
    /// digest looked up in the table (`find`: its entry there) or among the files this
    /// build hashed (under `key`, which is only built then).
    fn record(
        &self,
        md: Meta,
        inner: Vec<u8>,
        find: impl FnOnce() -> Option<usize>,
        key: impl FnOnce() -> Vec<u8>,
        real: impl Fn() -> PathBuf,
        readlink: impl FnOnce() -> rustix::io::Result<std::ffi::CString>,
    ) -> Result<Record> {
        let (mut link, mut digest) = (None, None);
        match md.file_type() {
            FileType::Symlink => {
                let target =
                    readlink().map_err(|e| BuildError::io("readlink", real(), e.into()))?;
                link = Some(target.into_bytes());
            }
            FileType::RegularFile => digest = self.hashes.lookup(find(), key, &md).ok(),
            _ => {}
        }
        Ok(Record { inner, md, link, digest })
    }

    /// Whether the step does not see the child `name` of the directory at `rel` (context
    /// path) / `inner` (below the source): the same rule as COPY's tree copy, hidden unless
    /// a directory that may have inclusions.
    fn hidden(&self, rel: &Path, inner: &[u8], name: &[u8], md: &Meta) -> bool {
        let ignore = self.walk.ignore.filter(|i| !i.is_empty());
        if ignore.is_none() && self.walk.exclude.is_none() {
            return false;
        }
        let child = rel.join(OsStr::from_bytes(name));
        let child_inner = join(inner, name);
        let child_inner = Path::new(OsStr::from_bytes(&child_inner));
        let ignored = ignore.is_some_and(|i| i.is_excluded(&child.to_string_lossy()));
        let excluded =
            self.walk.exclude.is_some_and(|x| x.is_excluded(&child_inner.to_string_lossy()));
        if ignored || excluded {
            let may_include = self
                .walk
                .ignore
                .is_some_and(|i| i.dir_may_have_inclusions(&child.to_string_lossy()));
            return !(md.is_dir() && may_include);
        }
        false
    }

    /// Walks the directory open as `fd` (at `real`; `rel` in the context, `inner` below the
    /// source root, `key` in the cache), its subdirectories in parallel.
    fn dir(
        &self,
        fd: OwnedFd,
        real: &Path,
        rel: &Path,
        inner: &[u8],
        key: &[u8],
        below_dir: Below,
    ) -> Result<Listing> {
        if self.walk.cancel.is_some_and(CancelToken::is_cancelled) {
            return Err(BuildError::Cancelled);
        }
        let (arena, names) = read_names(&fd, real)?;
        let mut records = Vec::with_capacity(names.len());
        let mut subdirs = Vec::new();
        let table = &self.hashes.table;
        let mut below = below_dir;
        for &(at, len) in &names {
            let cname = CStr::from_bytes_with_nul(&arena[at..at + len])
                .map_err(|e| BuildError::io("read dir", real, std::io::Error::other(e)))?;
            let name = cname.to_bytes();
            let child_real = || real.join(OsStr::from_bytes(name));
            let st = rustix::fs::statat(&fd, cname, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| BuildError::io("lstat", child_real(), e.into()))?;
            let md = Meta::of(&st);
            if self.hidden(rel, inner, name, &md) {
                continue;
            }
            if md.is_dir() {
                subdirs.push((records.len(), cname));
            }
            let readlink = || rustix::fs::readlinkat(&fd, cname, Vec::new());
            let find = || table.find_child(&mut below, name);
            let child_key = || join(key, name);
            let record = self.record(md, join(inner, name), find, child_key, child_real, readlink);
            records.push(record?);
        }
        let subdirs = subdirs
            .into_par_iter()
            .map(|(i, cname)| {
                let child_key = join(key, cname.to_bytes());
                let name = OsStr::from_bytes(cname.to_bytes());
                let child_real = real.join(name);
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let child_fd = rustix::fs::openat(&fd, cname, flags, Mode::empty())
                    .map_err(|e| BuildError::io("read dir", &child_real, e.into()))?;
                let below = self.dir(
                    child_fd,
                    &child_real,
                    &rel.join(name),
                    &records[i].inner,
                    &child_key,
                    table.below_child(below_dir, cname.to_bytes()),
                )?;
                Ok((i, below))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Listing { records, subdirs })
    }
}

impl SourceWalk<'_> {
    /// The digest of the tree at `real` (context-relative path `rel`, for `.dockerignore`).
    /// The regular files walked are added to `count`.
    pub fn digest(
        &self,
        hashes: &ContextHashes,
        real: &Path,
        rel: &Path,
        count: &mut FileCount,
    ) -> Result<Digest> {
        let (tree, changes) = self.records(hashes, real, rel)?;
        count.changed_total += changes.len() as u64;
        let room = FileCount::CHANGES_KEPT.saturating_sub(count.changed.len());
        count.changed.extend(changes.into_iter().take(room));
        let mut h = Sha256::new();
        h.update(b"source-v1\0");
        // First path of each multiply-linked inode, in walk order (as the copy stages them).
        let mut first_link: HashMap<(u64, u64), &[u8]> = HashMap::new();
        let mut missing = false;
        tree.each(&mut |r| {
            let ft = r.md.file_type();
            if ft == FileType::RegularFile {
                count.files += 1;
                count.bytes += r.md.size;
            }
            if r.inner.is_empty() && r.md.is_dir() && !self.root_meta {
                return;
            }
            let kind: &[u8] = match ft {
                FileType::Directory => b"d",
                FileType::Symlink => b"l",
                FileType::RegularFile => b"f",
                FileType::Fifo => b"p",
                FileType::CharacterDevice => b"c",
                FileType::BlockDevice => b"b",
                _ => b"o",
            };
            frame(&mut h, &r.inner);
            h.update(kind);
            h.update((r.md.mode & 0o7777).to_le_bytes());
            if self.owners {
                h.update(r.md.uid.to_le_bytes());
                h.update(r.md.gid.to_le_bytes());
            }
            if let Some(epoch) = self.mtime_clamp {
                h.update(r.md.mtime.clamp(0, epoch.max(0)).to_le_bytes());
            }
            if let Some(l) = &r.link {
                frame(&mut h, l);
            }
            if ft == FileType::RegularFile {
                h.update(r.md.size.to_le_bytes());
                missing |= r.digest.is_none();
                h.update(r.digest.unwrap_or_default());
                if r.md.nlink > 1 {
                    let first = *first_link.entry((r.md.dev, r.md.ino)).or_insert(&r.inner);
                    if first != r.inner.as_slice() {
                        h.update(b"=");
                        frame(&mut h, first);
                    }
                }
            }
            if matches!(ft, FileType::CharacterDevice | FileType::BlockDevice) {
                h.update(r.md.rdev.to_le_bytes());
            }
        });
        if missing {
            return Err(internal());
        }
        Ok(Digest::from_sha256(h.finalize().into()))
    }

    /// Every entry the step sees, in walk order, with the digest of every regular file.
    /// Also the files whose digest the cache had for another stamp and that now differs
    /// (context paths): what changed since the cache last saw them.
    fn records(
        &self,
        hashes: &ContextHashes,
        real: &Path,
        rel: &Path,
    ) -> Result<(Tree, Vec<String>)> {
        let walker = Walker { walk: self, hashes };
        let md = lstat(real)?;
        let key = real.strip_prefix(&hashes.root).unwrap_or(real).as_os_str().as_bytes();
        let readlink = || rustix::fs::readlink(real, Vec::new());
        let find = || hashes.table.find(key);
        let real_path = || real.to_path_buf();
        let root = walker.record(md, Vec::new(), find, || key.to_vec(), real_path, readlink)?;
        let mut tree = Tree { root, below: None };
        if md.is_dir() {
            let fd = rustix::fs::open(
                real,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| BuildError::io("read dir", real, e.into()))?;
            let below = hashes.table.below(key);
            tree.below = Some(walker.dir(fd, real, rel, b"", key, below)?);
        }
        let mut missed: Vec<&mut Record> = Vec::new();
        tree.each_mut(&mut |r| {
            if r.digest.is_none() && r.md.file_type() == FileType::RegularFile {
                missed.push(r);
            }
        });
        let changes = hashes.hash_misses(real, key, &mut missed, self.cancel)?;
        drop(missed);
        Ok((tree, changes))
    }
}

fn internal() -> BuildError {
    BuildError::io("hash", "context", std::io::Error::other("digest missing"))
}

/// Length-prefixed, so `a` + `bc` and `ab` + `c` differ.
fn frame(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn stamp(n: u64) -> Stamp {
        Stamp { dev: 1, ino: n, size: 3, mtime_ns: 4, ctime_ns: -5 }
    }

    fn table_of(entries: &[(&[u8], Stamp, [u8; 32])]) -> Table {
        Table::parse(encode(entries.len(), entries.iter().copied())).unwrap()
    }

    /// The path of the cache file of `key` below `dir` (the store's layout is its own).
    fn cache_file(dir: &Path, key: &Digest) -> PathBuf {
        walkdir::WalkDir::new(dir)
            .into_iter()
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().as_bytes() == key.hex().as_bytes())
            .unwrap()
            .into_path()
    }

    #[test]
    fn cache_file_round_trips_and_rejects_garbage() {
        let weird: &[u8] = b"a b\\c\nd\xff";
        let entries: &[(&[u8], Stamp, [u8; 32])] =
            &[(b"a", stamp(1), [1; 32]), (weird, stamp(2), [7; 32]), (b"z/y", stamp(3), [9; 32])];
        let bytes = encode(entries.len(), entries.iter().copied());
        let t = Table::parse(bytes.clone()).unwrap();
        for (i, (p, s, d)) in entries.iter().enumerate() {
            assert_eq!(t.find(p), Some(i));
            assert_eq!(t.path(i), *p);
            assert_eq!(t.entry(i), (*s, *d));
        }
        assert_eq!(t.find(b"b"), None);
        assert_eq!(t.find(b""), None);
        // Truncated anywhere, extended, or out of order: not a table.
        for n in 0..bytes.len() {
            assert!(Table::parse(bytes[..n].to_vec()).is_none(), "truncated at {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Table::parse(longer).is_none());
        let unsorted: &[(&[u8], Stamp, [u8; 32])] =
            &[(b"b", stamp(1), [1; 32]), (b"a", stamp(2), [2; 32])];
        assert!(Table::parse(encode(2, unsorted.iter().copied())).is_none());
        let twice: &[(&[u8], Stamp, [u8; 32])] =
            &[(b"a", stamp(1), [1; 32]), (b"a", stamp(2), [2; 32])];
        assert!(Table::parse(encode(2, twice.iter().copied())).is_none());
        let mut huge = MAGIC_V2.to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(Table::parse(huge).is_none());
        assert!(Table::parse(b"garbage".to_vec()).is_none());
    }

    #[test]
    fn children_are_found_below_their_directory_in_name_order() {
        let paths: &[&[u8]] = &[b"a", b"a!", b"a/b", b"a/b/c", b"a/c", b"a0", b"b", b"b/a"];
        let entries: Vec<(&[u8], Stamp, [u8; 32])> =
            paths.iter().enumerate().map(|(i, p)| (*p, stamp(i as u64), [i as u8; 32])).collect();
        let t = table_of(&entries);
        let find_all = |dir: &[u8], names: &[&[u8]]| -> Vec<Option<usize>> {
            let mut below = t.below(dir);
            names.iter().map(|n| t.find_child(&mut below, n)).collect()
        };
        // Names asked in increasing order, missing ones among them.
        assert_eq!(
            find_all(b"", &[b"a", b"a!", b"a.", b"a0", b"b"]),
            [Some(0), Some(1), None, Some(5), Some(6)]
        );
        assert_eq!(
            find_all(b"a", &[b"a", b"b", b"bb", b"c", b"d"]),
            [None, Some(2), None, Some(4), None]
        );
        assert_eq!(find_all(b"a/b", &[b"c"]), [Some(3)]);
        // A subdirectory's range found in its parent's, by name, is the one from its key.
        for (dir, name) in [(&b""[..], &b"a"[..]), (b"", b"b"), (b"", b"c"), (b"a", b"b")] {
            let key = join(dir, name);
            let (want, got) = (t.below(&key), t.below_child(t.below(dir), name));
            assert_eq!((got.start, got.end, got.prefix), (want.start, want.end, want.prefix));
        }
        let mut in_a = t.below_child(t.below(b""), b"a");
        assert_eq!(t.find_child(&mut in_a, b"c"), Some(4));
        assert_eq!(find_all(b"b", &[b"a", b"b"]), [Some(7), None]);
        // Not a directory of the table, or a prefix of one that is not its parent.
        assert_eq!(find_all(b"c", &[b"a"]), [None]);
        assert_eq!(find_all(b"a/", &[b"b"]), [None]);
        assert_eq!(find_all(b"a!", &[b"b"]), [None]);
    }

    #[test]
    fn a_v1_file_is_read_and_rewritten_as_v2() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path().join("store")).unwrap();
        let ctx = dir.path().join("ctx");
        fs::create_dir(&ctx).unwrap();
        let canonical = fs::canonicalize(&ctx).unwrap();
        let key = Digest::of_bytes(canonical.as_os_str().as_bytes());
        let hex7 = hex::encode([7u8; 32]);
        let v1 = format!("strata-hashes-v1\n1 2 3 4 -5 {hex7} a b\\\\c\\nd\n9 8 7 6 5 {hex7} x\n");
        store.put_context_cache(&key, v1.as_bytes()).unwrap();
        let h = ContextHashes::load(&store, &ctx);
        let s = Stamp { dev: 1, ino: 2, size: 3, mtime_ns: 4, ctime_ns: -5 };
        assert_eq!(h.table.find(b"a b\\c\nd").map(|i| h.table.entry(i)), Some((s, [7; 32])));
        assert_eq!(h.table.records.len(), 2);
        // Seen entries are kept, the unseen one whose file is gone is dropped; v2 on disk.
        h.seen[h.table.find(b"a b\\c\nd").unwrap()].store(true, Ordering::Relaxed);
        h.save();
        let back = Table::parse(store.context_cache(&key).unwrap()).unwrap();
        assert_eq!(back.records.len(), 1);
        assert_eq!(back.entry(0), (s, [7; 32]));
        assert!(upgrade_v1(b"strata-hashes-v1\n1 2 3\n").is_none());
        assert!(upgrade_v1(b"garbage").is_none());
    }

    #[test]
    fn a_file_hashed_again_later_in_a_build_supersedes_its_earlier_entry() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), "x").unwrap();
        fs::write(dir.path().join("g"), "y").unwrap();
        let store = Store::init(dir.path().join("store")).unwrap();
        let key = Digest::of_bytes(b"cache");
        let table = table_of(&[(b"f", stamp(1), [9; 32])]);
        let h = ContextHashes::with_table(&store, key, dir.path().to_path_buf(), table, false);
        let md = lstat(&dir.path().join("f")).unwrap();
        let s = Stamp::of(&md);
        h.add(vec![(b"g".to_vec(), stamp(3), [3; 32]), (b"f".to_vec(), s, [1; 32])]);
        h.add(vec![(b"f".to_vec(), s, [2; 32])]);
        assert_eq!(h.lookup(None, || b"f".to_vec(), &md), Ok([2; 32]));
        h.save();
        let back = Table::parse(store.context_cache(&key).unwrap()).unwrap();
        assert_eq!(back.records.len(), 2);
        assert_eq!((back.path(0), back.entry(0)), (&b"f"[..], (s, [2; 32])));
        assert_eq!((back.path(1), back.entry(1)), (&b"g"[..], (stamp(3), [3; 32])));
    }

    #[test]
    fn save_drops_entries_whose_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("kept"), "x").unwrap();
        let store = Store::init(dir.path().join("store")).unwrap();
        let key = Digest::of_bytes(b"cache");
        let table = table_of(&[(b"gone", stamp(1), [2; 32]), (b"kept", stamp(2), [1; 32])]);
        let h = ContextHashes::with_table(&store, key, dir.path().to_path_buf(), table, false);
        h.save();
        let back = Table::parse(store.context_cache(&key).unwrap()).unwrap();
        assert_eq!(back.records.len(), 1);
        assert_eq!(back.path(0), b"kept");
    }

    #[test]
    fn an_unchanged_cache_is_not_rewritten_and_a_change_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        fs::create_dir_all(ctx.join("sub/deeper")).unwrap();
        fs::write(ctx.join("sub/a"), "alpha").unwrap();
        fs::write(ctx.join("sub/deeper/b"), "beta").unwrap();
        fs::write(ctx.join("top"), "top").unwrap();
        let store = Store::init(dir.path().join("store")).unwrap();
        let walk = SourceWalk {
            ignore: None,
            exclude: None,
            owners: false,
            mtime_clamp: Some(0),
            root_meta: false,
            cancel: None,
        };
        let digest = |h: &ContextHashes| {
            walk.digest(h, &ctx, Path::new(""), &mut FileCount::default()).unwrap()
        };
        let h = ContextHashes::load(&store, &ctx);
        let first = digest(&h);
        assert_eq!(h.files_hashed(), 3);
        // Entries younger than RACY_NS are not kept; keep these as if they were old.
        h.add(
            ["sub/a", "sub/deeper/b", "top"]
                .iter()
                .map(|path| {
                    let md = lstat(&ctx.join(path)).unwrap();
                    let digest = hash_file(&ctx.join(path), None).unwrap();
                    (path.as_bytes().to_vec(), Stamp::of(&md), digest)
                })
                .collect(),
        );
        h.save();
        let canonical = fs::canonicalize(&ctx).unwrap();
        let key = Digest::of_bytes(canonical.as_os_str().as_bytes());
        let file = cache_file(dir.path(), &key);
        let ino = fs::metadata(&file).unwrap().ino();

        let again = ContextHashes::load(&store, &ctx);
        assert_eq!(digest(&again), first);
        assert_eq!(again.files_hashed(), 0);
        again.save();
        assert_eq!(fs::metadata(&file).unwrap().ino(), ino, "an unchanged cache was rewritten");

        // A changed file is read again and changes the digest.
        fs::write(ctx.join("sub/deeper/b"), "BETA!").unwrap();
        let changed = ContextHashes::load(&store, &ctx);
        assert_ne!(digest(&changed), first);
        assert_eq!(changed.files_hashed(), 1);
    }
}
