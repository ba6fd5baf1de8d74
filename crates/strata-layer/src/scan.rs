//! Scans: what a directory tree looks like, entry by entry, without its bytes.
//!
//! A [`Scan`] is the `lstat` of every entry under a root (the root itself excluded), with
//! the metadata a layer can carry (type, permission bits including setuid/setgid/sticky,
//! numeric owner, size, mtime, xattrs, symlink target, device numbers) plus what change
//! detection and hardlink grouping need (`dev`, `ino`, `nlink`). Entries are sorted bytewise by
//! their relative path, so two scans can be merge-joined in one linear pass
//! ([`diff`](crate::diff)). Content digests are *not* computed by [`scan`]: hashing is the
//! expensive part and change detection only needs it for the rare file whose size and mtime
//! are equal but whose other evidence is inconclusive, so it is done on demand
//! ([`Scan::digest_of`]) or for everything at once, in parallel ([`scan_with_digests`]).
//! The walk itself is parallel: the tree is read a level at a time, that level's directories
//! (and a large directory's entries) on the rayon pool.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use strata_types::Digest;

use crate::error::{LayerError, Result};

/// The type of a filesystem entry.
///
/// Shared by scans, layer tar entries ([`RawEntry::kind`](crate::tarread::RawEntry::kind))
/// and strata-diff's reports (as `FileKind`), where it serializes in snake case (`"file"`,
/// `"char_device"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EntryKind {
    /// A regular file (possibly one of several hardlinks to the same inode).
    File,
    /// A directory.
    Dir,
    /// A symbolic link; see [`Entry::link_target`].
    Symlink,
    /// A character device; see [`Entry::rdev`].
    CharDevice,
    /// A block device; see [`Entry::rdev`].
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A unix socket. Snapshots record sockets, but tar cannot carry them: layers omit them.
    Socket,
}

impl EntryKind {
    /// One letter, as `ls -l` shows it (`-`, `d`, `l`, `c`, `b`, `p`, `s`).
    pub fn letter(self) -> char {
        match self {
            EntryKind::File => '-',
            EntryKind::Dir => 'd',
            EntryKind::Symlink => 'l',
            EntryKind::CharDevice => 'c',
            EntryKind::BlockDevice => 'b',
            EntryKind::Fifo => 'p',
            EntryKind::Socket => 's',
        }
    }
}

/// A modification time with nanosecond precision (seconds may be negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub secs: i64,
    /// Nanoseconds within the second (`0..1_000_000_000`).
    pub nanos: u32,
}

/// One entry of a [`Scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the scan root, normalized: no leading `/` or `./`, no trailing `/`.
    pub path: PathBuf,
    /// What kind of entry this is.
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Size in bytes for regular files; 0 for everything else.
    pub size: u64,
    /// Last modification time.
    pub mtime: Timestamp,
    /// Extended attributes, by name (sorted bytewise).
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    /// Target of a symlink, exactly as stored.
    pub link_target: Option<PathBuf>,
    /// Device holding the entry (`st_dev`); with `ino` it identifies hardlinks.
    pub dev: u64,
    /// Inode number (`st_ino`).
    pub ino: u64,
    /// Number of hardlinks to the inode (`st_nlink`).
    pub nlink: u64,
    /// Device number for character and block devices (`st_rdev`), else 0.
    pub rdev: u64,
    /// Content digest of a regular file, when it has been computed.
    pub digest: Option<Digest>,
}

impl Entry {
    /// Reads the metadata of `root/rel` without following a final symlink.
    pub fn from_path(root: &Path, rel: &Path) -> Result<Entry> {
        let abs = root.join(rel);
        let md = fs::symlink_metadata(&abs).map_err(|e| LayerError::io("lstat", &abs, e))?;
        entry_from_metadata(&abs, rel.to_path_buf(), &md)
    }

    /// `(major, minor)` of [`rdev`](Self::rdev).
    pub fn device_numbers(&self) -> (u32, u32) {
        (rustix::fs::major(self.rdev), rustix::fs::minor(self.rdev))
    }
}

fn entry_from_metadata(abs: &Path, rel: PathBuf, md: &fs::Metadata) -> Result<Entry> {
    let ft = md.file_type();
    let kind = if ft.is_file() {
        EntryKind::File
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_char_device() {
        EntryKind::CharDevice
    } else if ft.is_block_device() {
        EntryKind::BlockDevice
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else {
        EntryKind::Socket
    };
    let link_target = if kind == EntryKind::Symlink {
        Some(fs::read_link(abs).map_err(|e| LayerError::io("readlink", abs, e))?)
    } else {
        None
    };
    let xattrs = read_xattrs(abs)?;
    Ok(Entry {
        path: rel,
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: if kind == EntryKind::File { md.size() } else { 0 },
        mtime: Timestamp { secs: md.mtime(), nanos: u32::try_from(md.mtime_nsec()).unwrap_or(0) },
        xattrs,
        link_target,
        dev: md.dev(),
        ino: md.ino(),
        nlink: md.nlink(),
        rdev: if matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
            md.rdev()
        } else {
            0
        },
        digest: None,
    })
}

/// Lists and reads all xattrs of `abs` without following a final symlink. A filesystem
/// without xattr support yields an empty map.
fn read_xattrs(abs: &Path) -> Result<BTreeMap<OsString, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let names = match xattr::list(abs) {
        Ok(n) => n,
        Err(e) if is_unsupported(&e) => return Ok(out),
        Err(e) => return Err(LayerError::io("llistxattr", abs, e)),
    };
    for name in names {
        match xattr::get(abs, &name) {
            Ok(Some(v)) => {
                out.insert(name, v);
            }
            Ok(None) => {}
            Err(e) if is_unsupported(&e) => {}
            Err(e) => return Err(LayerError::io("lgetxattr", abs, e)),
        }
    }
    Ok(out)
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno) if libc_errno == rustix::io::Errno::OPNOTSUPP.raw_os_error()
            || libc_errno == rustix::io::Errno::NODATA.raw_os_error()
    )
}

/// The metadata of every entry under a root directory, sorted bytewise by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    root: PathBuf,
    entries: Vec<Entry>,
}

impl Scan {
    /// Builds a scan from entries (sorted here) that describe files under `root`.
    pub fn from_entries(root: impl Into<PathBuf>, mut entries: Vec<Entry>) -> Scan {
        entries.par_sort_unstable_by(|a, b| path_cmp(&a.path, &b.path));
        Scan { root: root.into(), entries }
    }

    /// The directory this scan was taken of (bytes are read from here on demand).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// All entries, sorted bytewise by path.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Consumes the scan, returning its entries.
    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }

    /// Looks an entry up by its relative path (binary search).
    pub fn get(&self, path: &Path) -> Option<&Entry> {
        self.entries.binary_search_by(|e| path_cmp(&e.path, path)).ok().map(|i| &self.entries[i])
    }

    /// The content digest of the regular file at `path`: the cached one if
    /// [`compute_digests`](Self::compute_digests) ran, else computed now by reading the file.
    pub fn digest_of(&self, path: &Path) -> Result<Digest> {
        if let Some(d) = self.get(path).and_then(|e| e.digest) {
            return Ok(d);
        }
        hash_file(&self.root.join(path))
    }

    /// Computes and caches the digest of every regular file, in parallel.
    pub fn compute_digests(&mut self) -> Result<()> {
        let root = &self.root;
        self.entries
            .par_iter_mut()
            .filter(|e| e.kind == EntryKind::File && e.digest.is_none())
            .try_for_each(|e| {
                e.digest = Some(hash_file(&root.join(&e.path))?);
                Ok(())
            })
    }
}

/// Compares two relative paths by their bytes (not component-wise like `Path::cmp`).
pub(crate) fn path_cmp(a: &Path, b: &Path) -> std::cmp::Ordering {
    a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes())
}

/// sha256 of a file's bytes.
pub fn hash_file(path: &Path) -> Result<Digest> {
    let mut f = fs::File::open(path).map_err(|e| LayerError::io("open", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LayerError::io("read", path, e)),
        };
        h.update(&buf[..n]);
    }
    Ok(Digest::from_sha256(h.finalize().into()))
}

/// Snapshots every entry under `dir` (not `dir` itself), without content digests.
///
/// Directories are read and entries `lstat`ed in parallel; symlinks are never followed;
/// mount points are descended like any directory.
pub fn scan(dir: &Path) -> Result<Scan> {
    let entries = walk(dir, |e| e)?;
    Ok(Scan::from_entries(dir, entries))
}

/// Like [`scan`], then computes every regular file's digest in parallel.
pub fn scan_with_digests(dir: &Path) -> Result<Scan> {
    let mut s = scan(dir)?;
    s.compute_digests()?;
    Ok(s)
}

/// Every entry under `root` (not `root` itself), each made a `T` by `wrap`, in no particular
/// order.
///
/// The tree is read a level at a time: the directories of one level are read in parallel,
/// and a large directory's entries are `lstat`ed in parallel too. Each directory's entries
/// are appended to one list, so an entry is moved once on its way there: a recursive walk
/// that flattens each subtree's list into its parent's moves an entry once per level and
/// leaves the pool threads' heaps fragmented, which at 200,000 files cost tens of MB.
pub(crate) fn walk<T: Send>(root: &Path, wrap: impl Fn(Entry) -> T + Sync) -> Result<Vec<T>> {
    let mut all = Vec::new();
    let mut level = vec![PathBuf::new()];
    while !level.is_empty() {
        let read: Vec<(Vec<T>, Vec<PathBuf>)> = level
            .par_iter()
            .map(|rel| read_dir_entries(root, rel, &wrap))
            .collect::<Result<_>>()?;
        level = Vec::new();
        for (entries, dirs) in read {
            all.extend(entries);
            level.extend(dirs);
        }
    }
    Ok(all)
}

/// The entries of directory `root/rel` (wrapped) and the relative paths of its
/// subdirectories.
fn read_dir_entries<T: Send>(
    root: &Path,
    rel: &Path,
    wrap: &(impl Fn(Entry) -> T + Sync),
) -> Result<(Vec<T>, Vec<PathBuf>)> {
    /// Above this many names a directory's entries are `lstat`ed on the pool.
    const PARALLEL_NAMES: usize = 256;
    let abs = root.join(rel);
    let mut names = Vec::new();
    for de in fs::read_dir(&abs).map_err(|e| LayerError::io("readdir", &abs, e))? {
        let de = de.map_err(|e| LayerError::io("readdir", &abs, e))?;
        names.push(de.file_name());
    }
    let stat = |name: &OsString| -> Result<Entry> {
        let child_rel = rel.join(name);
        let child_abs = root.join(&child_rel);
        let md =
            fs::symlink_metadata(&child_abs).map_err(|e| LayerError::io("lstat", &child_abs, e))?;
        entry_from_metadata(&child_abs, child_rel, &md)
    };
    let entries: Vec<Entry> = if names.len() > PARALLEL_NAMES {
        names.par_iter().map(stat).collect::<Result<_>>()?
    } else {
        names.iter().map(stat).collect::<Result<_>>()?
    };
    let dirs = entries.iter().filter(|e| e.kind == EntryKind::Dir).map(|e| e.path.clone());
    let dirs = dirs.collect();
    Ok((entries.into_iter().map(wrap).collect(), dirs))
}
