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
//! The cache is one small text file per context root, `<store>/strata/v1/hashes-v1/<hex>`
//! where `<hex>` is the SHA-256 of the canonical context path: a header line, then one line
//! per file `dev ino size mtime_ns ctime_ns sha256hex path` (the path last, `\` and newline
//! escaped). It is written atomically (temp file and rename) at the end of a build; a file that
//! does not parse is treated as empty, never as an error. Misses are hashed in parallel.
//!
//! [`SourceWalk`] turns a source tree into one digest over what the step will see: each
//! entry's path below the source, type, mode, owner (when it reaches the result), link target,
//! content digest and the mtime the layer writer would keep (clamped to the build timestamp,
//! so constant under the default timestamp 0), never atime or raw mtimes. Fifos and devices
//! (with their device number) have their own type, and a file that is a hardlink of an
//! earlier entry of the same tree records that entry's path, because the copy keeps the link.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};
use strata_recipe::DockerIgnore;
use strata_store::Store;
use strata_types::Digest;

use crate::error::{BuildError, Result};

const HEADER: &str = "strata-hashes-v1";

/// Entries younger than this (by ctime) are not written to the cache file.
pub(crate) const RACY_NS: i64 = 2_000_000_000;

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
    fn of(md: &fs::Metadata) -> Stamp {
        Stamp {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: md.mtime().saturating_mul(1_000_000_000).saturating_add(md.mtime_nsec()),
            ctime_ns: md.ctime().saturating_mul(1_000_000_000).saturating_add(md.ctime_nsec()),
        }
    }
}

/// The digest cache of one context root (see the module docs).
pub(crate) struct ContextHashes {
    /// Where the cache is saved: the store's context-cache table, under `key`.
    store: Store,
    key: Digest,
    /// The context as given; entries are keyed by paths below it.
    root: PathBuf,
    entries: Mutex<HashMap<PathBuf, (Stamp, [u8; 32])>>,
    dirty: Mutex<bool>,
    /// Entries this build looked up; others are dropped on save when their file is gone.
    seen: Mutex<HashSet<PathBuf>>,
    /// Files hashed (read) by this build, for tests and reports.
    hashed: Mutex<u64>,
}

impl ContextHashes {
    /// The cache of `context` in `store` (empty when missing or unreadable).
    pub fn load(store: &Store, context: &Path) -> ContextHashes {
        let canonical = fs::canonicalize(context).unwrap_or_else(|_| context.to_path_buf());
        let key = Digest::of_bytes(canonical.as_os_str().as_bytes());
        let entries = store.context_cache(&key).and_then(|b| parse(&b)).unwrap_or_default();
        ContextHashes {
            store: store.clone(),
            key,
            root: context.to_path_buf(),
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
            seen: Mutex::new(HashSet::new()),
            hashed: Mutex::new(0),
        }
    }

    /// How many files this cache had to read so far.
    pub fn files_hashed(&self) -> u64 {
        *self.hashed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The SHA-256 of each file's bytes, from the cache when its stamp is unchanged.
    fn digests(&self, files: &[(PathBuf, fs::Metadata)]) -> Result<Vec<[u8; 32]>> {
        let mut out: Vec<Option<[u8; 32]>> = vec![None; files.len()];
        let mut misses = Vec::new();
        let key = |p: &Path| p.strip_prefix(&self.root).unwrap_or(p).to_path_buf();
        {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.extend(files.iter().map(|(p, _)| key(p)));
            for (i, (path, md)) in files.iter().enumerate() {
                match entries.get(&key(path)) {
                    Some((stamp, digest)) if *stamp == Stamp::of(md) => out[i] = Some(*digest),
                    _ => misses.push(i),
                }
            }
        }
        if misses.is_empty() {
            return out.into_iter().map(|d| d.ok_or_else(internal)).collect();
        }
        let hashed: Vec<(usize, [u8; 32])> = misses
            .par_iter()
            .map(|&i| hash_file(&files[i].0).map(|d| (i, d)))
            .collect::<Result<_>>()?;
        let now = now_ns();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut dirty = false;
        for (i, digest) in hashed {
            out[i] = Some(digest);
            let (path, md) = &files[i];
            // Stat again: the stamp kept must describe the bytes hashed.
            let Ok(after) = fs::symlink_metadata(path) else { continue };
            let stamp = Stamp::of(&after);
            if stamp == Stamp::of(md) && now.saturating_sub(stamp.ctime_ns) >= RACY_NS {
                entries.insert(key(path), (stamp, digest));
                dirty = true;
            }
        }
        *self.hashed.lock().unwrap_or_else(|p| p.into_inner()) += misses.len() as u64;
        if dirty {
            *self.dirty.lock().unwrap_or_else(|p| p.into_inner()) = true;
        }
        out.into_iter().map(|d| d.ok_or_else(internal)).collect()
    }

    /// Writes the cache file if anything was added or an entry's file is gone (best effort:
    /// a failure costs a re-hash).
    pub fn save(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let before = entries.len();
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            entries
                .retain(|p, _| seen.contains(p) || fs::symlink_metadata(self.root.join(p)).is_ok());
        }
        let dirty = *self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        if !dirty && entries.len() == before {
            return;
        }
        let mut text = Vec::with_capacity(entries.len() * 120);
        text.extend_from_slice(HEADER.as_bytes());
        text.push(b'\n');
        let mut sorted: Vec<_> = entries.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        for (path, (s, d)) in sorted {
            let _ = write!(
                text,
                "{} {} {} {} {} {} ",
                s.dev,
                s.ino,
                s.size,
                s.mtime_ns,
                s.ctime_ns,
                hex::encode(d)
            );
            for &b in path.as_os_str().as_bytes() {
                match b {
                    b'\\' => text.extend_from_slice(b"\\\\"),
                    b'\n' => text.extend_from_slice(b"\\n"),
                    b => text.push(b),
                }
            }
            text.push(b'\n');
        }
        let _ = self.store.put_context_cache(&self.key, &text);
    }
}

fn internal() -> BuildError {
    BuildError::io("hash", "context", std::io::Error::other("digest missing"))
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn parse(bytes: &[u8]) -> Option<HashMap<PathBuf, (Stamp, [u8; 32])>> {
    let mut lines = bytes.split(|b| *b == b'\n');
    if lines.next()? != HEADER.as_bytes() {
        return None;
    }
    let mut out = HashMap::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let mut fields = line.splitn(7, |b| *b == b' ');
        let mut num = || -> Option<&[u8]> { fields.next() };
        let text = |f: Option<&[u8]>| std::str::from_utf8(f?).ok().map(str::to_string);
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
        let path = PathBuf::from(std::ffi::OsString::from_vec(path));
        out.insert(path, (Stamp { dev, ino, size, mtime_ns, ctime_ns }, digest));
    }
    Some(out)
}

pub(crate) fn hash_file(path: &Path) -> Result<[u8; 32]> {
    let mut f = fs::File::open(path).map_err(|e| BuildError::io("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BuildError::io("read", path, e)),
        }
    }
    Ok(hasher.finalize().into())
}

/// Regular files and their bytes, as counted for progress events.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FileCount {
    pub files: u64,
    pub bytes: u64,
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
}

struct Record {
    inner: PathBuf,
    md: fs::Metadata,
    link: Option<PathBuf>,
    file: Option<usize>,
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
        let md = fs::symlink_metadata(real).map_err(|e| BuildError::io("lstat", real, e))?;
        let mut records = Vec::new();
        let mut files = Vec::new();
        let is_dir = md.is_dir();
        self.push(real, PathBuf::new(), md, &mut records, &mut files)?;
        if is_dir {
            self.walk(real, rel, Path::new(""), &mut records, &mut files)?;
        }
        let digests = hashes.digests(&files)?;
        count.files += files.len() as u64;
        count.bytes += files.iter().map(|(_, md)| md.size()).sum::<u64>();
        let mut h = Sha256::new();
        h.update(b"source-v1\0");
        // First path of each multiply-linked inode, in walk order (as the copy stages them).
        let mut first_link: HashMap<(u64, u64), &Path> = HashMap::new();
        for r in &records {
            if r.inner.as_os_str().is_empty() && r.md.is_dir() && !self.root_meta {
                continue;
            }
            let ft = r.md.file_type();
            let kind: &[u8] = if ft.is_dir() {
                b"d"
            } else if ft.is_symlink() {
                b"l"
            } else if ft.is_file() {
                b"f"
            } else if ft.is_fifo() {
                b"p"
            } else if ft.is_char_device() {
                b"c"
            } else if ft.is_block_device() {
                b"b"
            } else {
                b"o"
            };
            frame(&mut h, r.inner.as_os_str().as_bytes());
            h.update(kind);
            h.update((r.md.mode() & 0o7777).to_le_bytes());
            if self.owners {
                h.update(r.md.uid().to_le_bytes());
                h.update(r.md.gid().to_le_bytes());
            }
            if let Some(epoch) = self.mtime_clamp {
                h.update(r.md.mtime().clamp(0, epoch.max(0)).to_le_bytes());
            }
            if let Some(l) = &r.link {
                frame(&mut h, l.as_os_str().as_bytes());
            }
            if let Some(i) = r.file {
                h.update(r.md.size().to_le_bytes());
                h.update(digests[i]);
                if r.md.nlink() > 1 {
                    let first = *first_link.entry((r.md.dev(), r.md.ino())).or_insert(&r.inner);
                    if first != r.inner {
                        h.update(b"=");
                        frame(&mut h, first.as_os_str().as_bytes());
                    }
                }
            }
            if ft.is_char_device() || ft.is_block_device() {
                h.update(r.md.rdev().to_le_bytes());
            }
        }
        Ok(Digest::from_sha256(h.finalize().into()))
    }

    fn push(
        &self,
        real: &Path,
        inner: PathBuf,
        md: fs::Metadata,
        records: &mut Vec<Record>,
        files: &mut Vec<(PathBuf, fs::Metadata)>,
    ) -> Result<()> {
        let ft = md.file_type();
        let link = if ft.is_symlink() {
            Some(fs::read_link(real).map_err(|e| BuildError::io("readlink", real, e))?)
        } else {
            None
        };
        let file = if ft.is_file() {
            files.push((real.to_path_buf(), md.clone()));
            Some(files.len() - 1)
        } else {
            None
        };
        records.push(Record { inner, md, link, file });
        Ok(())
    }

    /// Children of `dir` in bytewise name order, skipping what the step would not see (the
    /// same rule as COPY's tree copy: hidden unless a directory that may have inclusions).
    fn walk(
        &self,
        dir: &Path,
        rel: &Path,
        inner: &Path,
        records: &mut Vec<Record>,
        files: &mut Vec<(PathBuf, fs::Metadata)>,
    ) -> Result<()> {
        let mut names: Vec<std::ffi::OsString> = fs::read_dir(dir)
            .map_err(|e| BuildError::io("read dir", dir, e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| BuildError::io("read dir", dir, e))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let real = dir.join(&name);
            let child = rel.join(&name);
            let child_inner = inner.join(&name);
            let md = fs::symlink_metadata(&real).map_err(|e| BuildError::io("lstat", &real, e))?;
            let ignored = self.ignore.is_some_and(|i| i.is_excluded(&child.to_string_lossy()));
            let excluded =
                self.exclude.is_some_and(|x| x.is_excluded(&child_inner.to_string_lossy()));
            if ignored || excluded {
                let may_include = self
                    .ignore
                    .is_some_and(|i| i.dir_may_have_inclusions(&child.to_string_lossy()));
                if !(md.is_dir() && may_include) {
                    continue;
                }
            }
            let is_dir = md.is_dir();
            self.push(&real, child_inner.clone(), md, records, files)?;
            if is_dir {
                self.walk(&real, &child, &child_inner, records, files)?;
            }
        }
        Ok(())
    }
}

/// Length-prefixed, so `a` + `bc` and `ab` + `c` differ.
fn frame(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_file_round_trips_and_rejects_garbage() {
        let mut m = HashMap::new();
        let stamp = Stamp { dev: 1, ino: 2, size: 3, mtime_ns: 4, ctime_ns: -5 };
        m.insert(PathBuf::from("a b\\c\nd"), (stamp, [7u8; 32]));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path().join("store")).unwrap();
        let key = Digest::of_bytes(b"x");
        let h = ContextHashes {
            store: store.clone(),
            key,
            root: PathBuf::new(),
            entries: Mutex::new(m.clone()),
            dirty: Mutex::new(true),
            seen: Mutex::new(m.keys().cloned().collect()),
            hashed: Mutex::new(0),
        };
        h.save();
        let back = parse(&store.context_cache(&key).unwrap()).unwrap();
        assert_eq!(back, m);
        assert!(parse(b"strata-hashes-v1\n1 2 3\n").is_none());
        assert!(parse(b"garbage").is_none());
    }

    #[test]
    fn save_drops_entries_whose_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("kept"), "x").unwrap();
        let stamp = Stamp { dev: 1, ino: 2, size: 3, mtime_ns: 4, ctime_ns: 5 };
        let mut m = HashMap::new();
        m.insert(PathBuf::from("kept"), (stamp, [1u8; 32]));
        m.insert(PathBuf::from("gone"), (stamp, [2u8; 32]));
        let store = Store::init(dir.path().join("store")).unwrap();
        let key = Digest::of_bytes(b"cache");
        let h = ContextHashes {
            store: store.clone(),
            key,
            root: dir.path().to_path_buf(),
            entries: Mutex::new(m),
            dirty: Mutex::new(false),
            seen: Mutex::new(HashSet::new()),
            hashed: Mutex::new(0),
        };
        h.save();
        let back = parse(&store.context_cache(&key).unwrap()).unwrap();
        assert_eq!(back.keys().collect::<Vec<_>>(), [&PathBuf::from("kept")]);
    }
}
