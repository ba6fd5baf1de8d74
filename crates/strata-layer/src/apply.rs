//! Applying a layer to a directory, safely.
//!
//! [`apply`] reads a layer (zstd, gzip or plain tar, detected by magic bytes) and applies it as
//! an OCI changeset (`layer.md` § Applying Changesets): entries replace what is at their path
//! (two directories merge, anything else is removed and recreated), `.wh.NAME` removes `NAME`
//! from lower layers, `.wh..wh..opq` hides every lower child of its directory but none of the
//! entries this same layer adds, wherever in the archive the marker appears (`layer.md`
//! § Whiteouts, § Opaque Whiteout). Hardlinks, symlinks, devices, fifos, modes (setuid/setgid
//! applied after chown), numeric owners, `SCHILY.xattr.*` xattrs and mtimes are restored;
//! directory metadata is applied last so that creating children does not disturb it.
//!
//! Safety does not rely on the tar crate's `unpack`. Every name is split into components: a
//! `..` component or an absolute name is refused (we do not silently strip a leading `/`, as
//! GNU tar does: a layer containing one is malformed). The parent directories are then
//! resolved here, one component at a time, holding a directory file descriptor and opening
//! each next component with `O_NOFOLLOW | O_DIRECTORY` relative to it. A symlink met on the way
//! (from a lower layer or created earlier in this archive) is followed *inside* the target
//! directory, as if it were the root filesystem: an absolute target restarts at the root, and
//! a `..` that would climb above the root is refused as an escape. The final component is
//! never followed: it is created, replaced or removed with `*at` calls on the parent's
//! descriptor. Hardlink targets are resolved the same way and must exist inside the root.
//! Device nodes are refused unless [`ApplyOptions::privileged`]. Nothing is ever written
//! outside the target directory; a refused entry stops the apply with an error naming it
//! (entries before it have been applied).

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::sync::{mpsc, Arc};

use rustix::process::{Gid, Uid};
use sha2::Digest as _;

use strata_store::Store;
use strata_types::Digest;

use crate::error::{LayerError, Result, UnsafeReason};
use crate::tarread::{RawEntry, TarReader};
use crate::writer::{OPAQUE_WHITEOUT, WHITEOUT_PREFIX};

/// How [`apply`] treats privileged operations.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyOptions {
    /// Restore owners, create device nodes and set non-`user.*` xattrs. Defaults to whether
    /// the process runs as root. When false, owners are left as they are (counted in
    /// [`ApplyReport::ownership_skipped`]), device nodes are refused, and xattrs outside
    /// `user.*` are skipped (counted in [`ApplyReport::xattrs_skipped`]).
    pub privileged: bool,
    /// Record whiteouts the way overlayfs does instead of applying them (see
    /// [`ApplyOptions::overlay_whiteouts`]).
    pub overlay_whiteouts: bool,
    /// Give every entry this owner (uid, gid) instead of the archive's (`ADD --chown`).
    pub owner: Option<(u32, u32)>,
    /// Skip character and block devices (counted in [`ApplyReport::devices_skipped`])
    /// instead of creating them (or refusing them, unprivileged): what an image's `/dev`
    /// holds means nothing outside a container and is dangerous on a host.
    pub skip_devices: bool,
    /// Clear setuid and setgid bits (for a tree a caller other than root will own).
    pub strip_setid: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            privileged: rustix::process::geteuid().is_root(),
            overlay_whiteouts: false,
            owner: None,
            skip_devices: false,
            strip_setid: false,
        }
    }
}

impl ApplyOptions {
    /// Options for an unprivileged apply, whoever runs it.
    pub fn unprivileged() -> Self {
        ApplyOptions { privileged: false, ..ApplyOptions::default() }
    }

    /// The same options unpacking a layer as an overlay snapshot ([`crate::overlay`]): a
    /// `.wh.NAME` entry becomes a character device 0/0 named `NAME` (when nothing of this
    /// layer is there), `.wh..wh..opq` marks its directory `trusted.overlay.opaque=y`, and
    /// nothing below is removed. Meant for an empty directory; needs root (`mknod`).
    pub fn overlay_whiteouts(self) -> Self {
        ApplyOptions { overlay_whiteouts: true, ..self }
    }

    /// The same options for writing a tree onto a host (`export dir:`): device nodes are
    /// skipped unless `devices`, and setuid/setgid bits cleared unless the caller is root.
    pub fn host_tree(self, devices: bool) -> Self {
        let root = rustix::process::geteuid().is_root();
        ApplyOptions { skip_devices: !devices, strip_setid: !root, ..self }
    }

    /// The same options giving every entry (the archive root `./` included) `owner`.
    pub fn owner(self, uid: u32, gid: u32) -> Self {
        ApplyOptions { owner: Some((uid, gid)), ..self }
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyReport {
    /// Entries created or updated (files, directories, links, nodes).
    pub entries: u64,
    /// Whiteouts that removed something.
    pub whiteouts: u64,
    /// Opaque markers processed.
    pub opaque_dirs: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Entries whose owner was not restored (unprivileged apply, owner differs from ours).
    pub ownership_skipped: u64,
    /// Xattrs not set (unprivileged namespace, or unsupported by the filesystem).
    pub xattrs_skipped: u64,
    /// Device nodes not created ([`ApplyOptions::skip_devices`]).
    pub devices_skipped: u64,
    /// sha256 of the uncompressed tar stream (the layer's diffID), to check against the
    /// image config.
    pub diff_id: Option<Digest>,
    /// The paths the layer's `.wh.NAME` entries name (relative, as written in the archive),
    /// whether or not something was there to remove: what the layer deletes from the layers
    /// below it, which [`crate::squash`] needs to know.
    pub whiteout_paths: Vec<PathBuf>,
    /// The directories the layer's `.wh..wh..opq` markers make opaque (relative, as written).
    pub opaque_paths: Vec<PathBuf>,
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Wraps `layer` in the decompressor its first bytes call for (zstd, gzip, or none).
pub fn decompress<'a, R: Read + 'a>(layer: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(1 << 20, layer);
    let head = loop {
        match r.fill_buf() {
            Ok(b) => break b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    if head.starts_with(&ZSTD_MAGIC) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else if head.starts_with(&GZIP_MAGIC) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else {
        Ok(Box::new(r))
    }
}

/// Applies the layer blob `digest` from `store` onto `dir`, verifying the blob's bytes as they
/// are read. A blob whose bytes do not hash to its name fails with
/// [`StoreError::CorruptBlob`](strata_store::StoreError::CorruptBlob) (as
/// [`LayerError::Store`]), whatever its decoding tripped over first (a zstd or tar error
/// mid-stream, an entry refused): store damage, not a bad layer.
pub fn apply_blob(
    store: &Store,
    digest: &Digest,
    dir: &Path,
    opts: &ApplyOptions,
) -> Result<ApplyReport> {
    let r = store.open_blob_verified(digest)?;
    apply(r, dir, opts).map_err(|e| blame_stored_blob(store, digest, e))
}

/// `e`, a failure to decode the stored blob `digest`, or the blob's damage when its bytes do
/// not hash to its name (the damage explains the failure).
fn blame_stored_blob(store: &Store, digest: &Digest, e: LayerError) -> LayerError {
    if let LayerError::Io { .. } | LayerError::Store(_) = e {
        return e; // the host's file system, or the store already named the fault
    }
    match store.verify_blob(digest) {
        Err(damage @ strata_store::StoreError::DigestMismatch { .. }) => LayerError::Store(damage),
        _ => e,
    }
}

/// Applies the layer read from `layer` (compression auto-detected) on top of `dir`.
///
/// Decompression runs on a second thread, handing 1 MiB chunks both to the caller's thread,
/// which parses and writes, and to a third that hashes the tar (for
/// [`ApplyReport::diff_id`]), so neither decompression nor hashing waits for the other.
pub fn apply<R: Read + Send>(layer: R, dir: &Path, opts: &ApplyOptions) -> Result<ApplyReport> {
    let root =
        rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| LayerError::io("open", dir, e.into()))?;
    let mut ap = Applier {
        root: Rc::new(root),
        dir: dir.to_path_buf(),
        opts: opts.clone(),
        euid: rustix::process::geteuid().as_raw(),
        egid: rustix::process::getegid().as_raw(),
        created: HashSet::new(),
        dirs: Vec::new(),
        chain: DirChain::default(),
        opaque_dirs: Vec::new(),
        report: ApplyReport::default(),
        buf: vec![0u8; CHUNK],
    };
    let (tx, rx) = mpsc::sync_channel::<io::Result<Chunk>>(4);
    let (hash_tx, hash_rx) = mpsc::sync_channel::<Chunk>(4);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    let hash_free = free_tx.clone();
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || produce(layer, &tx, &hash_tx, &free_rx));
        let hasher = scope.spawn(move || {
            let mut hasher = sha2::Sha256::new();
            for chunk in hash_rx {
                hasher.update(&chunk[..]);
                recycle(chunk, &hash_free);
            }
            Digest::from_sha256(hasher.finalize().into())
        });
        let mut tar =
            TarReader::new(ChunkReader { rx, free: free_tx, cur: Arc::default(), pos: 0 });
        let mut index = 0u64;
        let mut run = || -> Result<()> {
            while let Some(entry) =
                tar.next_entry().map_err(|e| LayerError::ReadArchive { index, source: e })?
            {
                ap.entry(&entry, &mut tar, index)?;
                index += 1;
            }
            ap.finish_dirs()?;
            ap.mark_opaque_dirs()?;
            // Read to the end so the diffID covers the end-of-archive padding too.
            io::copy(&mut tar, &mut io::sink())
                .and_then(|_| io::copy(tar.inner_mut(), &mut io::sink()))
                .map_err(|e| LayerError::ReadArchive { index, source: e })?;
            Ok(())
        };
        let result = run();
        drop(tar); // stops the producer if we gave up early
        let complete = producer.join().unwrap_or(false);
        let digest = hasher.join().ok();
        let diff_id = digest.filter(|_| complete);
        result?;
        ap.report.diff_id = diff_id;
        Ok(ap.report)
    })
}

const CHUNK: usize = 1 << 20;

/// A decompressed piece of the tar, shared by the parser and the hasher.
type Chunk = Arc<Vec<u8>>;

/// Hands `chunk`'s buffer back to the producer if this was its last user.
fn recycle(chunk: Chunk, free: &mpsc::Sender<Vec<u8>>) {
    if let Ok(buf) = Arc::try_unwrap(chunk) {
        let _ = free.send(buf);
    }
}

/// Decompresses `layer` into chunks sent to `tx` (the parser) and `hash` (the hasher);
/// returns whether it read to the end (`false`: it stopped early, after sending an error or
/// because the parser went away).
fn produce<R: Read>(
    layer: R,
    tx: &mpsc::SyncSender<io::Result<Chunk>>,
    hash: &mpsc::SyncSender<Chunk>,
    free: &mpsc::Receiver<Vec<u8>>,
) -> bool {
    let mut r = match decompress(layer) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Err(e));
            return false;
        }
    };
    loop {
        let mut buf = free.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        let mut n = 0;
        while n < CHUNK {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return false;
                }
            }
        }
        if n == 0 {
            return true;
        }
        buf.truncate(n);
        let chunk = Arc::new(buf);
        if hash.send(Arc::clone(&chunk)).is_err() || tx.send(Ok(chunk)).is_err() {
            return false;
        }
    }
}

/// The consumer end of [`produce`]'s queue, as a reader; returns buffers for reuse.
struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Chunk>>,
    free: mpsc::Sender<Vec<u8>>,
    cur: Chunk,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    recycle(std::mem::replace(&mut self.cur, chunk), &self.free);
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Metadata of one archive entry, PAX overrides applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

struct Applier {
    root: Rc<OwnedFd>,
    dir: PathBuf,
    opts: ApplyOptions,
    euid: u32,
    egid: u32,
    /// Real paths (relative to root) created by this layer, and all their ancestors.
    created: HashSet<PathBuf>,
    /// Directories whose metadata is applied at the end.
    dirs: Vec<(PathBuf, Meta)>,
    /// The directories of the last entry's parent, open. Cleared on any removal.
    chain: DirChain,
    /// Directories to mark opaque at the end (overlay whiteouts).
    opaque_dirs: Vec<PathBuf>,
    report: ApplyReport,
    buf: Vec<u8>,
}

/// Open directories along the last path walked below the root, each a real directory (no
/// symlink) named by the matching component, so the next path opens only what differs: tar
/// entries arrive sorted, so consecutive paths share most of their ancestors.
#[derive(Default)]
struct DirChain {
    names: Vec<OsString>,
    /// `fds[i]` is `names[..=i]`, opened `O_PATH`.
    fds: Vec<Rc<OwnedFd>>,
}

impl DirChain {
    /// Keeps the longest prefix shared with `comps`; returns its length.
    fn keep_prefix<S: AsRef<OsStr>>(&mut self, comps: &[S]) -> usize {
        let shared =
            self.names.iter().zip(comps).take_while(|(a, b)| a.as_os_str() == b.as_ref()).count();
        self.names.truncate(shared);
        self.fds.truncate(shared);
        shared
    }

    /// The deepest open directory, or `root` when the chain is empty.
    fn last_or<'a>(&'a self, root: &'a Rc<OwnedFd>) -> &'a OwnedFd {
        self.fds.last().unwrap_or(root)
    }

    /// Opens `name` in the deepest directory as a real directory (no symlink followed) and
    /// appends it.
    fn open(&mut self, root: &Rc<OwnedFd>, name: &OsStr) -> std::result::Result<(), Errno> {
        let fd = open_dir_nofollow(self.last_or(root), name)?;
        self.names.push(name.to_os_string());
        self.fds.push(Rc::new(fd));
        Ok(())
    }

    fn clear(&mut self) {
        self.names.clear();
        self.fds.clear();
    }
}

fn refuse(name: &[u8], reason: UnsafeReason) -> LayerError {
    LayerError::Unsafe { path: PathBuf::from(OsStr::from_bytes(name)), reason }
}

/// The path policy of every archive strata reads, for readers that do not apply (strata-diff's
/// layer reader): `name` (and, for a hardlink, its `link` target) must be relative and free of
/// `..`; the refusal names the entry as [`apply`] names it.
pub fn check_entry_name(name: &[u8], hardlink_target: Option<&[u8]>) -> Result<()> {
    components(name)?;
    if let Some(target) = hardlink_target {
        if !matches!(components(target), Ok(c) if !c.is_empty()) {
            return Err(refuse(
                name,
                UnsafeReason::HardlinkOutside { target: PathBuf::from(OsStr::from_bytes(target)) },
            ));
        }
    }
    Ok(())
}

/// Splits an archive name into normal components, refusing `..` and absolute names.
fn components(name: &[u8]) -> Result<Vec<OsString>> {
    if name.first() == Some(&b'/') {
        return Err(refuse(name, UnsafeReason::Absolute));
    }
    let mut out = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(refuse(name, UnsafeReason::DotDot)),
            c => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Ok(out)
}

fn io_err(op: &'static str, path: &Path, e: Errno) -> LayerError {
    LayerError::io(op, path, e.into())
}

fn stat_type(fd: &OwnedFd, name: &OsStr) -> std::result::Result<Option<FileType>, Errno> {
    match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn open_dir_nofollow(fd: &OwnedFd, name: &OsStr) -> std::result::Result<OwnedFd, Errno> {
    rustix::fs::openat(
        fd,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn timestamps(secs: i64) -> Timestamps {
    let t = Timespec { tv_sec: secs, tv_nsec: 0 };
    Timestamps { last_access: t, last_modification: t }
}

/// Removes `name` in `dirfd` and, for a directory, everything below it; never follows symlinks.
fn remove_at(dirfd: &OwnedFd, name: &OsStr, path: &Path) -> Result<()> {
    match stat_type(dirfd, name).map_err(|e| io_err("lstat", path, e))? {
        None => return Ok(()),
        Some(FileType::Directory) => {
            let fd = rustix::fs::openat(
                dirfd,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err("open", path, e))?;
            for child in list_dir(&fd, path)? {
                remove_at(&fd, &child, &path.join(&child))?;
            }
            rustix::fs::unlinkat(dirfd, name, AtFlags::REMOVEDIR)
                .map_err(|e| io_err("rmdir", path, e))?;
        }
        Some(_) => {
            rustix::fs::unlinkat(dirfd, name, AtFlags::empty())
                .map_err(|e| io_err("unlink", path, e))?;
        }
    }
    Ok(())
}

fn list_dir(fd: &OwnedFd, path: &Path) -> Result<Vec<OsString>> {
    let mut d = rustix::fs::Dir::read_from(fd).map_err(|e| io_err("readdir", path, e))?;
    let mut out = Vec::new();
    while let Some(de) = d.read() {
        let de = de.map_err(|e| io_err("readdir", path, e))?;
        let n = de.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsString::from_vec(n.to_vec()));
        }
    }
    Ok(out)
}

impl Applier {
    fn entry<R: Read>(
        &mut self,
        entry: &RawEntry,
        data: &mut TarReader<R>,
        index: u64,
    ) -> Result<()> {
        let raw = entry.name.clone();
        let etype = entry.typeflag;
        let comps = components(&raw)?;
        let mut meta = Meta::from(entry);
        if self.opts.strip_setid {
            meta.mode &= !0o6000;
        }
        if self.opts.skip_devices && matches!(etype, b'3' | b'4') {
            self.report.devices_skipped += 1;
            return Ok(());
        }
        let Some((name, parent)) = comps.split_last() else {
            // The archive root (`./`): only its directory metadata matters.
            if etype == b'5' {
                self.dirs.push((PathBuf::new(), meta));
            }
            return Ok(());
        };
        let nb = name.as_bytes();
        if let Some(victim) = nb.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if nb == OPAQUE_WHITEOUT.as_bytes() {
                self.report.opaque_paths.push(parent.iter().collect());
                return self.opaque(parent, &raw);
            }
            if victim.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                // Other `.wh..wh.*` names are AUFS bookkeeping (e.g. `.wh..wh.plnk`): ignored.
                return Ok(());
            }
            if victim.is_empty() || victim == b"." || victim == b".." {
                return Err(refuse(&raw, UnsafeReason::BadWhiteout));
            }
            let victim = OsStr::from_bytes(victim);
            self.report.whiteout_paths.push(parent.iter().collect::<PathBuf>().join(victim));
            return self.whiteout(parent, victim, &raw);
        }

        let (pfd, preal) = self.parent(parent, true, &raw)?;
        let real = preal.join(name);
        let existing = stat_type(&pfd, name).map_err(|e| io_err("lstat", &self.abs(&real), e))?;
        let is_dir = etype == b'5';
        if let Some(t) = existing {
            if !(is_dir && t == FileType::Directory) {
                remove_at(&pfd, name, &self.abs(&real))?;
                self.chain.clear();
            }
        }
        match etype {
            b'5' => {
                if existing != Some(FileType::Directory) {
                    rustix::fs::mkdirat(&*pfd, name.as_os_str(), Mode::from_raw_mode(0o700))
                        .map_err(|e| io_err("mkdir", &self.abs(&real), e))?;
                }
                self.dirs.push((real.clone(), meta));
            }
            b'0' | b'7' => {
                let fd = rustix::fs::openat(
                    &*pfd,
                    name.as_os_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| io_err("create", &self.abs(&real), e))?;
                let mut f = File::from(fd);
                let abs = self.abs(&real);
                loop {
                    let n = match data.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(LayerError::ReadArchive { index, source: e }),
                    };
                    f.write_all(&self.buf[..n]).map_err(|e| LayerError::io("write", &abs, e))?;
                    self.report.bytes += n as u64;
                }
                self.fd_meta(&f, &meta, &abs)?;
            }
            b'2' => {
                let target = entry.link.clone();
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &*pfd, name.as_os_str())
                    .map_err(|e| io_err("symlink", &self.abs(&real), e))?;
                self.at_meta(&pfd, name, &real, &meta, true)?;
            }
            b'1' => {
                let target = entry.link.clone();
                let outside = || {
                    refuse(
                        &raw,
                        UnsafeReason::HardlinkOutside {
                            target: PathBuf::from(OsStr::from_bytes(&target)),
                        },
                    )
                };
                let tcomps = match components(&target) {
                    Ok(c) => c,
                    Err(LayerError::Unsafe { .. }) => return Err(outside()),
                    Err(e) => return Err(e),
                };
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(outside());
                };
                let Some((tfd, _)) = self.resolve(tparent, false, &raw)? else {
                    return Err(outside());
                };
                match stat_type(&tfd, tname) {
                    Ok(Some(t)) if t != FileType::Directory => {}
                    _ => return Err(outside()),
                }
                rustix::fs::linkat(
                    &*tfd,
                    tname.as_os_str(),
                    &*pfd,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| io_err("link", &self.abs(&real), e))?;
            }
            b'3' | b'4' | b'6' => {
                let (ft, dev) = match etype {
                    b'6' => (FileType::Fifo, 0),
                    _ => {
                        if !self.opts.privileged {
                            return Err(refuse(&raw, UnsafeReason::DeviceNotPrivileged));
                        }
                        let (major, minor) = entry.dev;
                        let ft = if etype == b'3' {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (ft, rustix::fs::makedev(major, minor))
                    }
                };
                rustix::fs::mknodat(&*pfd, name.as_os_str(), ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| io_err("mknod", &self.abs(&real), e))?;
                self.at_meta(&pfd, name, &real, &meta, false)?;
            }
            b'S' => {
                return Err(LayerError::Unsupported {
                    path: PathBuf::from(OsStr::from_bytes(&raw)),
                    what: "GNU sparse file",
                })
            }
            _ => {
                return Err(LayerError::Unsupported {
                    path: PathBuf::from(OsStr::from_bytes(&raw)),
                    what: "tar entry type",
                })
            }
        }
        self.report.entries += 1;
        self.mark_created(&real);
        Ok(())
    }

    fn abs(&self, real: &Path) -> PathBuf {
        self.dir.join(real)
    }

    fn mark_created(&mut self, real: &Path) {
        let mut p = Some(real);
        while let Some(q) = p {
            if q.as_os_str().is_empty() || !self.created.insert(q.to_path_buf()) {
                break;
            }
            p = q.parent();
        }
    }

    /// Resolves the parent directory of an entry. Fast path: from the open directories of
    /// the previous entry's parent ([`DirChain`]), opening (or creating, 0755) only the
    /// components that differ, each as a real directory without following symlinks; a
    /// component that is a symlink or not a directory sends the whole path through
    /// [`Self::resolve`], which follows symlinks inside the root.
    fn parent(
        &mut self,
        comps: &[OsString],
        create: bool,
        raw: &[u8],
    ) -> Result<(Rc<OwnedFd>, PathBuf)> {
        let shared = self.chain.keep_prefix(comps);
        let mut plain = true;
        for c in &comps[shared..] {
            match self.chain.open(&self.root, c) {
                Ok(()) => {}
                Err(Errno::NOENT) if create => {
                    let here: PathBuf = self.chain.names.iter().chain([c]).collect();
                    let base = self.chain.last_or(&self.root);
                    rustix::fs::mkdirat(base, c.as_os_str(), Mode::from_raw_mode(0o755))
                        .map_err(|e| io_err("mkdir", &self.abs(&here), e))?;
                    self.mark_created(&here);
                    self.chain
                        .open(&self.root, c)
                        .map_err(|e| io_err("open", &self.abs(&here), e))?;
                }
                Err(_) => {
                    plain = false;
                    break;
                }
            }
        }
        if plain {
            let fd = Rc::clone(self.chain.fds.last().unwrap_or(&self.root));
            return Ok((fd, self.chain.names.iter().collect()));
        }
        self.resolve(comps, create, raw)?.ok_or_else(|| {
            LayerError::io(
                "resolve",
                self.abs(&comps.iter().collect::<PathBuf>()),
                Errno::NOENT.into(),
            )
        })
    }

    /// Resolves `comps` as a directory inside the root, following symlinks as if the root were
    /// `/`. Missing directories are created (mode 0755) when `create`, else `Ok(None)`.
    fn resolve(
        &mut self,
        comps: &[OsString],
        create: bool,
        raw: &[u8],
    ) -> Result<Option<(Rc<OwnedFd>, PathBuf)>> {
        let mut fds: Vec<Rc<OwnedFd>> = vec![Rc::clone(&self.root)];
        let mut names: Vec<OsString> = Vec::new();
        let mut queue: VecDeque<OsString> = comps.iter().cloned().collect();
        let mut hops = 0;
        let mut last_link = PathBuf::new();
        while let Some(c) = queue.pop_front() {
            if c.is_empty() || c == "." {
                continue;
            }
            if c == ".." {
                if names.pop().is_none() {
                    return Err(refuse(raw, UnsafeReason::SymlinkEscape { symlink: last_link }));
                }
                fds.pop();
                continue;
            }
            let cur = Rc::clone(fds.last().unwrap_or(&self.root));
            let here: PathBuf = names.iter().chain(std::iter::once(&c)).collect();
            match stat_type(&cur, &c).map_err(|e| io_err("lstat", &self.abs(&here), e))? {
                None if create => {
                    rustix::fs::mkdirat(&*cur, c.as_os_str(), Mode::from_raw_mode(0o755))
                        .map_err(|e| io_err("mkdir", &self.abs(&here), e))?;
                    self.mark_created(&here);
                    let fd = open_dir_nofollow(&cur, &c)
                        .map_err(|e| io_err("open", &self.abs(&here), e))?;
                    fds.push(Rc::new(fd));
                    names.push(c);
                }
                None => return Ok(None),
                Some(FileType::Directory) => {
                    let fd = open_dir_nofollow(&cur, &c)
                        .map_err(|e| io_err("open", &self.abs(&here), e))?;
                    fds.push(Rc::new(fd));
                    names.push(c);
                }
                Some(FileType::Symlink) => {
                    hops += 1;
                    if hops > 40 {
                        return Err(refuse(raw, UnsafeReason::SymlinkLoop));
                    }
                    let target = rustix::fs::readlinkat(&*cur, c.as_os_str(), Vec::new())
                        .map_err(|e| io_err("readlink", &self.abs(&here), e))?;
                    let t = target.as_bytes();
                    last_link = here;
                    if t.first() == Some(&b'/') {
                        names.clear();
                        fds.truncate(1);
                    }
                    for part in t.split(|&b| b == b'/').rev() {
                        if !part.is_empty() {
                            queue.push_front(OsString::from_vec(part.to_vec()));
                        }
                    }
                }
                Some(_) => {
                    return Err(refuse(raw, UnsafeReason::ParentNotDirectory { component: here }))
                }
            }
        }
        let fd = fds.pop().unwrap_or_else(|| Rc::clone(&self.root));
        Ok(Some((fd, names.into_iter().collect())))
    }

    fn whiteout(&mut self, parent: &[OsString], victim: &OsStr, raw: &[u8]) -> Result<()> {
        if self.opts.overlay_whiteouts {
            let (pfd, preal) = self.parent(parent, true, raw)?;
            let real = preal.join(victim);
            if stat_type(&pfd, victim).map_err(|e| io_err("lstat", &self.abs(&real), e))?.is_none()
            {
                rustix::fs::mknodat(&*pfd, victim, FileType::CharacterDevice, Mode::empty(), 0)
                    .map_err(|e| io_err("mknod", &self.abs(&real), e))?;
                self.report.whiteouts += 1;
            }
            return Ok(());
        }
        let Some((pfd, preal)) = self.resolve(parent, false, raw)? else {
            return Ok(());
        };
        let real = preal.join(victim);
        // `layer.md` § Whiteouts: only resources of lower layers are removed.
        if self.created.contains(&real) {
            return Ok(());
        }
        if stat_type(&pfd, victim).map_err(|e| io_err("lstat", &self.abs(&real), e))?.is_some() {
            remove_at(&pfd, victim, &self.abs(&real))?;
            self.report.whiteouts += 1;
            self.chain.clear();
        }
        Ok(())
    }

    fn opaque(&mut self, dir: &[OsString], raw: &[u8]) -> Result<()> {
        if self.opts.overlay_whiteouts {
            // Marked once every entry and directory's metadata is in place (the directory's
            // own entry replaces its xattrs).
            let (_, real) = self.parent(dir, true, raw)?;
            self.opaque_dirs.push(real);
            self.report.opaque_dirs += 1;
            return Ok(());
        }
        let Some((_, real)) = self.resolve(dir, false, raw)? else {
            return Ok(());
        };
        let fd = self.open_real(&real, OFlags::RDONLY)?;
        self.clear_lower(&fd, &real)?;
        self.report.opaque_dirs += 1;
        self.chain.clear();
        Ok(())
    }

    /// Removes every child of `real` that this layer did not create (`layer.md` § Opaque Whiteout).
    fn clear_lower(&self, fd: &OwnedFd, real: &Path) -> Result<()> {
        for child in list_dir(fd, &self.abs(real))? {
            let creal = real.join(&child);
            if !self.created.contains(&creal) {
                remove_at(fd, &child, &self.abs(&creal))?;
            } else if stat_type(fd, &child).map_err(|e| io_err("lstat", &self.abs(&creal), e))?
                == Some(FileType::Directory)
            {
                let cfd = rustix::fs::openat(
                    fd,
                    child.as_os_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_err("open", &self.abs(&creal), e))?;
                self.clear_lower(&cfd, &creal)?;
            }
        }
        Ok(())
    }

    /// Opens a real (symlink-free) path below the root, or the root itself, without following
    /// any symlink; see [`Self::open_real_in`].
    fn open_real(&self, real: &Path, flags: OFlags) -> Result<OwnedFd> {
        self.open_real_in(&mut DirChain::default(), real, flags)
    }

    /// Opens a real (symlink-free) path below the root without following any symlink,
    /// reusing (and leaving in `chain`) the open directories it shares with the previous
    /// path: paths in sorted order open little more than themselves.
    fn open_real_in(&self, chain: &mut DirChain, real: &Path, flags: OFlags) -> Result<OwnedFd> {
        let comps: Vec<&OsStr> = real.iter().collect();
        let (last, parents) = match comps.split_last() {
            Some((last, parents)) => (*last, parents),
            None => (OsStr::new("."), &[][..]),
        };
        let shared = chain.keep_prefix(parents);
        for c in &parents[shared..] {
            chain.open(&self.root, c).map_err(|e| io_err("open", &self.abs(real), e))?;
        }
        rustix::fs::openat(
            chain.last_or(&self.root),
            last,
            flags | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open", &self.abs(real), e))
    }

    fn chown_ids(&mut self, meta: &Meta) -> Option<(Uid, Gid)> {
        let (uid, gid) = self.opts.owner.unwrap_or((meta.uid, meta.gid));
        if self.opts.privileged {
            Some((Uid::from_raw_unchecked(uid), Gid::from_raw_unchecked(gid)))
        } else {
            if uid != self.euid || gid != self.egid {
                self.report.ownership_skipped += 1;
            }
            None
        }
    }

    fn xattr_allowed(&mut self, name: &OsStr) -> bool {
        if self.opts.privileged || name.as_bytes().starts_with(b"user.") {
            true
        } else {
            self.report.xattrs_skipped += 1;
            false
        }
    }

    fn xattr_result(&mut self, r: io::Result<()>, abs: &Path) -> Result<()> {
        match r {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(c) if c == Errno::OPNOTSUPP.raw_os_error() || c == Errno::PERM.raw_os_error()) =>
            {
                self.report.xattrs_skipped += 1;
                Ok(())
            }
            Err(e) => Err(LayerError::io("setxattr", abs, e)),
        }
    }

    /// Owner, then mode (so setuid/setgid survive chown), then xattrs, then mtime, by fd.
    fn fd_meta(&mut self, file: &File, meta: &Meta, abs: &Path) -> Result<()> {
        let fd = file.as_fd();
        if let Some((u, g)) = self.chown_ids(meta) {
            rustix::fs::fchown(fd, Some(u), Some(g)).map_err(|e| io_err("chown", abs, e))?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
            .map_err(|e| io_err("chmod", abs, e))?;
        for (k, v) in &meta.xattrs {
            if self.xattr_allowed(k) {
                let r = xattr::FileExt::set_xattr(file, k, v);
                self.xattr_result(r, abs)?;
            }
        }
        rustix::fs::futimens(fd, &timestamps(meta.mtime)).map_err(|e| io_err("utimens", abs, e))
    }

    /// Metadata for entries that cannot be opened (symlinks, nodes), by name in the parent.
    fn at_meta(
        &mut self,
        pfd: &OwnedFd,
        name: &OsStr,
        real: &Path,
        meta: &Meta,
        symlink: bool,
    ) -> Result<()> {
        let abs = self.abs(real);
        if let Some((u, g)) = self.chown_ids(meta) {
            rustix::fs::chownat(pfd, name, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_err("chown", &abs, e))?;
        }
        if !symlink {
            rustix::fs::chmodat(pfd, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(|e| io_err("chmod", &abs, e))?;
        }
        for (k, v) in &meta.xattrs {
            if self.xattr_allowed(k) {
                // The path's directories are real (resolved without symlinks); lsetxattr does
                // not follow the final component.
                let r = xattr::set(&abs, k, v);
                self.xattr_result(r, &abs)?;
            }
        }
        rustix::fs::utimensat(pfd, name, &timestamps(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err("utimens", &abs, e))
    }

    /// Sets the overlay opaque xattr on the directories [`Self::opaque`] recorded.
    fn mark_opaque_dirs(&mut self) -> Result<()> {
        for real in std::mem::take(&mut self.opaque_dirs) {
            let fd = self.open_real(&real, OFlags::RDONLY)?;
            rustix::fs::fsetxattr(
                &fd,
                crate::overlay::OPAQUE_XATTR,
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| io_err("setxattr", &self.abs(&real), e))?;
        }
        Ok(())
    }

    /// Applies directory metadata, deepest first, once all entries exist.
    fn finish_dirs(&mut self) -> Result<()> {
        let mut dirs = std::mem::take(&mut self.dirs);
        // Later duplicates win; deepest first.
        let mut seen: HashSet<PathBuf> = HashSet::new();
        dirs.reverse();
        dirs.retain(|(p, _)| seen.insert(p.clone()));
        dirs.sort_by(|a, b| b.0.as_os_str().as_bytes().cmp(a.0.as_os_str().as_bytes()));
        let mut chain = DirChain::default();
        for (real, meta) in dirs {
            let fd = match self.open_real_in(&mut chain, &real, OFlags::RDONLY) {
                Ok(fd) => fd,
                // Removed again later in the same archive: nothing to do.
                Err(LayerError::Io { source, .. })
                    if source.raw_os_error() == Some(Errno::NOENT.raw_os_error()) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            let abs = self.abs(&real);
            // `layer.md` § Changeset over existing files: the entry's attributes replace the
            // existing directory's, so xattrs it does not list are removed.
            let file = File::from(fd);
            if let Ok(names) = xattr::FileExt::list_xattr(&file) {
                for n in names {
                    if !meta.xattrs.iter().any(|(k, _)| *k == n)
                        && (self.opts.privileged || n.as_bytes().starts_with(b"user."))
                    {
                        let _ = xattr::FileExt::remove_xattr(&file, &n);
                    }
                }
            }
            self.fd_meta(&file, &meta, &abs)?;
        }
        Ok(())
    }
}

impl From<&RawEntry> for Meta {
    fn from(e: &RawEntry) -> Meta {
        Meta {
            mode: e.mode & 0o7777,
            uid: u32::try_from(e.uid).unwrap_or(u32::MAX),
            gid: u32::try_from(e.gid).unwrap_or(u32::MAX),
            mtime: e.mtime,
            xattrs: e
                .xattrs
                .iter()
                .map(|(k, v)| (OsString::from_vec(k.clone()), v.clone()))
                .collect(),
        }
    }
}
