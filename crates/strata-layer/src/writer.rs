//! Writing a [`Changeset`] as a deterministic OCI layer tar, compressed, hashed in one pass.
//!
//! The same changeset, source bytes and [`LayerWriter`] settings always give the same bytes
//! (DESIGN.md decision 3). The tar policy, fixed here and nowhere else:
//!
//! - **Format**: POSIX ustar headers (`ustar\0` magic, version `00`); a PAX extended header
//!   (typeflag `x`, name `././@PaxHeader`) is emitted *only* when needed, with records sorted by
//!   key: `path` when the name is over 100 bytes (the ustar prefix field is never used),
//!   `linkpath` when a link target is over 100 bytes, `size`/`uid`/`gid` when a value does not
//!   fit its octal field, and `SCHILY.xattr.NAME` for every xattr. No GNU extensions
//!   (no `L`/`K` long names, no base-256 numbers, no sparse files). The archive ends with
//!   two zero blocks and is not padded to a 10 KiB record.
//! - **Order**: entries sorted bytewise by path (a parent is a prefix of its children, so it
//!   comes first), with one refinement from `layer.md` § Whiteouts ("whiteout files appear
//!   before sibling directory entries"): whiteout markers (`DIR/.wh.NAME`,
//!   `DIR/.wh..wh..opq`) sort as if their name began with a NUL byte, i.e. right after `DIR/`
//!   itself and before any other child of `DIR` (plain bytewise order would put siblings such
//!   as `-x` or `+y` first). Parent directories of every change are included (read from the
//!   source tree) even when they did not change themselves, so an extractor never has to
//!   invent one.
//! - **Names**: relative, no leading `./`, directories end with `/`, no entry for the root.
//! - **Metadata**: mode is `st_mode & 07777` (setuid/setgid/sticky kept); numeric uid/gid kept;
//!   uname/gname empty; mtime is `clamp(mtime.secs, 0, epoch)` in whole seconds, where `epoch`
//!   is the build timestamp (`SOURCE_DATE_EPOCH`, default 0); devmajor/devminor are set for
//!   devices and zero otherwise.
//! - **Whiteouts** (`layer.md` § Whiteouts and § Opaque Whiteout): a deletion is an empty
//!   regular file `DIR/.wh.NAME`, an opaque directory is the directory entry followed (in sort
//!   order) by an empty `DIR/.wh..wh..opq`; both have mode 0644, uid/gid 0, mtime 0.
//! - **Hardlinks** (`layer.md` § Hardlinks): regular files of this layer sharing `(dev, ino)`
//!   are one group; the first path of the group in sort order carries the bytes, the others
//!   are typeflag `1` entries whose linkname is that first path. A file whose other links are
//!   not part of the layer is written as a plain file.
//! - **Sockets** are omitted (tar cannot represent them).
//!
//! Compression: zstd by default, always in zstd's multi-threaded mode with at least one
//! worker. That mode's output does not depend on the number of worker threads (checked with
//! `zstd -T1/-T2/-T4/-T8`, and by this crate's tests), although it differs from
//! single-threaded zstd. Unless a level is set, zstd runs with strata's own parameter set
//! ([`ZSTD_DEFAULT_PARAMS`]: level 3 with strategy `fast`, an 8 MiB window, 2^17 hash
//! entries, minimum match 6 and 8 MiB jobs) instead of zstd's level-3 table (strategy
//! `dfast`, 2 MiB window). Layers are trees of many files of a few MiB, and the larger window
//! finds repeats across them that a 2 MiB window misses, which more than pays for the cheaper
//! match finder: on a 1 GiB copy of /usr/lib it gives a 2.5% smaller blob than `zstd -3` for
//! about 25% less compression CPU (on /usr/share the same size, on /usr/bin 2% larger), and
//! decompresses as fast. 8 MiB is the largest window RFC 8878 § 3.1.1.1.2 recommends every
//! decoder to support, so any zstd reader takes these layers. The parameters are part of the
//! output's identity ([`LayerWriter::compression_id`]). An explicit [`LayerWriter::level`]
//! uses zstd's table for that level. gzip uses a fixed header (no mtime, no file name, OS = unknown) at level 6.
//! One pass yields the diffID (sha256 of the tar), the digest (sha256 of the compressed
//! stream) and both sizes.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use strata_types::CancelToken;

use crate::changeset::{Change, Changeset};
use crate::error::{LayerError, Result};
use strata_store::Store;
use strata_types::Digest;

use crate::scan::{Entry, EntryKind};

/// Name prefix of a whiteout entry (`layer.md` § Whiteouts).
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of an opaque whiteout entry (`layer.md` § Opaque Whiteout).
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// The compression applied to a layer's tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// Plain tar (`application/vnd.oci.image.layer.v1.tar`).
    None,
    /// gzip (`...tar+gzip`).
    Gzip,
    /// zstd (`...tar+zstd`), the default.
    #[default]
    Zstd,
}

impl Compression {
    /// A short name: `tar`, `gzip` or `zstd` (the store's layer index keys use it).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// The OCI media type of a layer with this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// What writing a layer produced. Two are equal when they describe the same blob (digests,
/// sizes, media type), however long each write took.
#[derive(Debug, Clone)]
pub struct LayerDescriptor {
    /// sha256 of the compressed stream (the blob's name).
    pub digest: Digest,
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    /// Size of the compressed stream in bytes.
    pub size: u64,
    /// Size of the uncompressed tar in bytes.
    pub uncompressed_size: u64,
    /// OCI media type of the blob.
    pub media_type: &'static str,
    /// Where the write spent its time.
    pub times: WriteTimes,
}

/// Where a layer write spent its wall time, stage by stage. With compression the stages run
/// pipelined on two threads (plus the compressor's workers), so they overlap and their sum is
/// more than the write took; each is the time its stage was busy, not waiting for the other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteTimes {
    /// Reading the files and making the tar stream, hashed for the diffID.
    pub tar: std::time::Duration,
    /// Compressing the stream (nothing without compression).
    pub compress: std::time::Duration,
    /// Handing the blob to its sink: for [`write_layer`], hashing and writing it into the
    /// store, `fsync` and rename included.
    pub store: std::time::Duration,
}

impl PartialEq for LayerDescriptor {
    fn eq(&self, other: &Self) -> bool {
        (self.digest, self.diff_id, self.size, self.uncompressed_size, self.media_type)
            == (other.digest, other.diff_id, other.size, other.uncompressed_size, other.media_type)
    }
}

impl Eq for LayerDescriptor {}

impl LayerDescriptor {
    /// The OCI descriptor of the blob (media type, size, digest) a manifest lists.
    pub fn descriptor(&self) -> strata_store::oci_spec::image::Descriptor {
        use strata_store::oci_spec::image::{Descriptor, MediaType};
        Descriptor::new(MediaType::from(self.media_type), self.size, self.digest)
    }
}

/// zstd parameters of a [`LayerWriter`] with no level set, as `zstd --zstd=` spells them,
/// applied on top of level 3 (see the module docs for why and what they measure).
pub const ZSTD_DEFAULT_PARAMS: &str = "strategy=1,wlog=23,hlog=17,mml=6,jobsize=8388608";

/// [`ZSTD_DEFAULT_PARAMS`] as the encoder takes them (a unit test keeps the two in step). The
/// job size is fixed so the frame does not depend on zstd's defaults for the window; like
/// every multi-threaded setting it does not depend on the worker count.
fn zstd_default_params() -> [zstd::zstd_safe::CParameter; 5] {
    use zstd::zstd_safe::{CParameter, Strategy};
    [
        CParameter::Strategy(Strategy::ZSTD_fast),
        CParameter::WindowLog(23),
        CParameter::HashLog(17),
        CParameter::MinMatch(6),
        CParameter::JobSize(8 << 20),
    ]
}

/// Writes changesets as layer tars; the settings are part of the output's identity.
#[derive(Debug, Clone)]
pub struct LayerWriter {
    compression: Compression,
    /// `None`: gzip 6, or zstd with [`ZSTD_DEFAULT_PARAMS`].
    level: Option<i32>,
    epoch: i64,
    zstd_workers: u32,
    /// Checked between entries and between chunks of a file's bytes.
    cancel: Option<CancelToken>,
}

impl Default for LayerWriter {
    fn default() -> Self {
        LayerWriter::new(Compression::Zstd)
    }
}

impl LayerWriter {
    /// A writer with the given compression, its default settings (zstd with
    /// [`ZSTD_DEFAULT_PARAMS`], gzip level 6) and epoch 0.
    pub fn new(compression: Compression) -> LayerWriter {
        let workers = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        LayerWriter {
            compression,
            level: None,
            epoch: 0,
            zstd_workers: workers.max(1),
            cancel: None,
        }
    }

    /// Sets the build timestamp: every mtime above it is clamped down to it.
    pub fn epoch(mut self, secs: i64) -> LayerWriter {
        self.epoch = secs;
        self
    }

    /// Sets the compression level (zstd 1..=22 with zstd's own parameter table for that level,
    /// gzip 0..=9). Part of the output's identity.
    pub fn level(mut self, level: i32) -> LayerWriter {
        self.level = Some(level);
        self
    }

    /// Sets the number of zstd worker threads (at least 1). Does not change the output.
    pub fn zstd_workers(mut self, n: u32) -> LayerWriter {
        self.zstd_workers = n.max(1);
        self
    }

    /// Stops a write once `token` is cancelled: the writer looks at it between entries and
    /// between 1 MiB chunks of a file, and fails with [`LayerError::Cancelled`] (a blob
    /// being written to the store is then dropped, never committed). Does not change the
    /// output.
    pub fn cancel_on(mut self, token: CancelToken) -> LayerWriter {
        self.cancel = Some(token);
        self
    }

    /// The compression this writer applies.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Names the compression and every parameter of it that shapes the output bytes, e.g.
    /// `zstd:strata-1` (the default parameters), `zstd:level-19`, `gzip:level-6`, `none`.
    /// Build caches key on it, so a layer compressed another way is never reused as if it
    /// were this writer's output. Changing [`ZSTD_DEFAULT_PARAMS`] must change this name.
    pub fn compression_id(&self) -> String {
        match (self.compression, self.level) {
            (Compression::None, _) => "none".into(),
            (Compression::Zstd, None) => "zstd:strata-1".into(),
            (Compression::Zstd, Some(l)) => format!("zstd:level-{l}"),
            (Compression::Gzip, _) => format!("gzip:level-{}", self.gzip_level()),
        }
    }

    /// The gzip level: the one set, clamped to 0..=9, else 6.
    fn gzip_level(&self) -> u32 {
        self.level.unwrap_or(6).clamp(0, 9) as u32
    }

    /// Writes `changeset` as a layer into `out`, reading file bytes (and the metadata of
    /// unchanged parent directories) from `source`, and returns its digests and sizes.
    ///
    /// With compression, the tar is produced on the calling thread while a second thread
    /// hashes it for the diffID and a third compresses it, hashes the result and writes
    /// `out`; they are joined by small queues of 1 MiB chunks.
    pub fn write<W: Write + Send>(
        &self,
        changeset: &Changeset,
        source: &Path,
        out: W,
    ) -> Result<LayerDescriptor> {
        let media_type = self.compression.media_type();
        if self.compression == Compression::None {
            // The blob is the tar: the diffID hash is the digest too.
            let raw = self.write_raw(changeset, source, out)?;
            return Ok(raw.describe(raw.diff_id, media_type));
        }
        let mut hashed = HashCount::new(out);
        let raw = self.write_raw(changeset, source, &mut hashed)?;
        let (_, digest, _) = hashed.finish();
        Ok(raw.describe(digest, media_type))
    }

    /// [`LayerWriter::write`] without hashing the compressed output, for sinks that hash it
    /// anyway (the store's blob writer): the diffID and both sizes.
    fn write_raw<W: Write + Send>(
        &self,
        changeset: &Changeset,
        source: &Path,
        out: W,
    ) -> Result<RawLayer> {
        let started = Instant::now();
        let ancestors = missing_ancestors(changeset, source)?;
        let items = plan(changeset, &ancestors)?;
        let end = |e| write_err(Path::new(""), e);
        if self.compression == Compression::None {
            let mut tar = BufWriter::with_capacity(CHUNK, HashCount::new(Count::new(out)));
            write_items(&mut tar, &items, source, self.epoch, self.cancel.as_ref())?;
            let (mut out, diff_id, size) =
                tar.into_inner().map_err(|e| end(e.into_error()))?.finish();
            out.flush().map_err(end)?;
            let times = WriteTimes {
                tar: started.elapsed().saturating_sub(out.spent),
                compress: Duration::ZERO,
                store: out.spent,
            };
            return Ok(RawLayer { diff_id, size, uncompressed_size: size, times });
        }
        // Three stages joined by queues of 1 MiB chunks: the tar (this thread), its diffID
        // hash, the compressor (with the store's writes). Hashing the tar on its own thread
        // keeps ~0.25 s per 500 MB of sha256 off the tar's path, which is the critical one.
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
        let (hashed_tx, hashed_rx) = mpsc::sync_channel::<Vec<u8>>(4);
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        std::thread::scope(|scope| {
            let hasher = scope.spawn(move || -> (Digest, u64) {
                let (mut hasher, mut count) = (Sha256::new(), 0u64);
                for chunk in rx {
                    hasher.update(&chunk);
                    count += chunk.len() as u64;
                    // The compressor stopped: its error is the one reported.
                    if hashed_tx.send(chunk).is_err() {
                        break;
                    }
                }
                (Digest::from_sha256(hasher.finalize().into()), count)
            });
            let compressor = scope.spawn(move || -> io::Result<(u64, Duration, Duration)> {
                let began = Instant::now();
                let mut idle = Duration::ZERO;
                let mut comp = self.compressor(Count::new(out))?;
                loop {
                    let waiting = Instant::now();
                    let Ok(chunk) = hashed_rx.recv() else { break };
                    idle += waiting.elapsed();
                    comp.write_all(&chunk)?;
                    let _ = free_tx.send(chunk);
                }
                let mut counted = comp.finish()?;
                counted.flush()?;
                let busy = began.elapsed().saturating_sub(idle);
                Ok((counted.count, busy.saturating_sub(counted.spent), counted.spent))
            });
            let mut sink = ChunkSink::new(tx, free_rx);
            let produced = write_items(&mut sink, &items, source, self.epoch, self.cancel.as_ref());
            let flushed = sink.close();
            let tar_time = started.elapsed().saturating_sub(sink.waited);
            let hashed = hasher.join();
            let compressed = compressor
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("layer compressor thread panicked")));
            // A failing sink stops the compressor first; its error is the one to report.
            let (size, compress, store) = match (produced, compressed) {
                (Err(e), Ok(_)) => return Err(e),
                (_, Err(e)) => return Err(end(e)),
                (Ok(()), Ok(r)) => r,
            };
            flushed.map_err(end)?;
            let (diff_id, uncompressed_size) =
                hashed.map_err(|_| end(io::Error::other("layer hash thread panicked")))?;
            let times = WriteTimes { tar: tar_time, compress, store };
            Ok(RawLayer { diff_id, size, uncompressed_size, times })
        })
    }

    /// Compresses an uncompressed layer stream `from` into `to` with this writer's settings
    /// (a layer recompressed for a destination that wants another compression).
    pub fn compress_stream<R: io::Read, W: Write>(&self, mut from: R, to: W) -> io::Result<()> {
        let mut enc = self.compressor(to)?;
        io::copy(&mut from, &mut enc)?;
        enc.finish()?;
        Ok(())
    }

    pub(crate) fn compressor<W: Write>(&self, sink: W) -> io::Result<Compressor<W>> {
        Ok(match self.compression {
            Compression::None => Compressor::None(sink),
            Compression::Gzip => Compressor::Gzip(
                flate2::GzBuilder::new()
                    .operating_system(255)
                    .write(sink, flate2::Compression::new(self.gzip_level())),
            ),
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(sink, self.level.unwrap_or(3))?;
                enc.multithread(self.zstd_workers)?;
                if self.level.is_none() {
                    for p in zstd_default_params() {
                        enc.set_parameter(p)?;
                    }
                }
                Compressor::Zstd(enc)
            }
        })
    }

    /// Writes the whole tree under `dir` (not `dir` itself) as one layer.
    pub fn write_dir<W: Write + Send>(&self, dir: &Path, out: W) -> Result<LayerDescriptor> {
        let cs = Changeset::of_dir(dir)?;
        self.write(&cs, dir, out)
    }
}

/// Writes `changeset` (bytes from `source`) as a layer blob into `store`.
///
/// The blob is streamed into the store's [`BlobWriter`](strata_store::BlobWriter) (hashed
/// there too, renamed into place on commit); the descriptor carries both digests.
pub fn write_layer(
    store: &Store,
    writer: &LayerWriter,
    changeset: &Changeset,
    source: &Path,
) -> Result<LayerDescriptor> {
    // The blob writer hashes what it stores (that hash names the blob), so the compressed
    // stream is hashed once, there.
    let mut blob = store.blob_writer()?;
    let mut raw = writer.write_raw(changeset, source, &mut blob)?;
    let committing = Instant::now();
    let put = blob.commit()?;
    raw.times.store += committing.elapsed();
    if writer.compression == Compression::None && put.digest != raw.diff_id {
        return Err(LayerError::DigestMismatch { expected: raw.diff_id, found: put.digest });
    }
    Ok(raw.describe(put.digest, writer.compression.media_type()))
}

/// The whole tree under `dir` as one layer with default settings (zstd, epoch 0).
pub fn layer_from_dir<W: Write + Send>(dir: &Path, out: W) -> Result<LayerDescriptor> {
    LayerWriter::default().write_dir(dir, out)
}

fn write_err(path: &Path, source: io::Error) -> LayerError {
    LayerError::Write { path: path.to_path_buf(), source }
}

/// One tar entry to emit. Entries are borrowed (from the changeset, or from the ancestor
/// directories it lacks, read beforehand), so the list is small: a layer of 200,000 files
/// would otherwise hold a second copy of every entry while it is written.
enum Item<'a> {
    Entry(&'a Entry),
    Hardlink(&'a Entry, PathBuf),
    /// A whiteout or opaque marker, by its full tar path.
    Marker(PathBuf),
}

impl Item<'_> {
    fn path(&self) -> &Path {
        match self {
            Item::Entry(e) | Item::Hardlink(e, _) => &e.path,
            Item::Marker(p) => p,
        }
    }
}

/// The order of entries in the tar (see the module docs): bytewise by path, except that a
/// whiteout's name is prefixed with NUL so it precedes its siblings.
fn sort_key<'i>(item: &'i Item<'_>) -> Cow<'i, [u8]> {
    let p = item.path().as_os_str().as_bytes();
    match item {
        Item::Marker(_) => {
            let cut = p.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
            let mut k = Vec::with_capacity(p.len() + 1);
            k.extend_from_slice(&p[..cut]);
            k.push(0);
            k.extend_from_slice(&p[cut..]);
            Cow::Owned(k)
        }
        _ => Cow::Borrowed(p),
    }
}

fn check_path(p: &Path) -> Result<()> {
    let ok = !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        return Err(LayerError::BadPath { path: p.to_path_buf() });
    }
    if p.file_name().is_some_and(|n| n.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes())) {
        return Err(LayerError::Unsupported {
            path: p.to_path_buf(),
            what: "file name begins with `.wh.`, which layers reserve for whiteouts",
        });
    }
    Ok(())
}

/// The ancestor directories of the changeset's paths that it does not list itself, read from
/// `source` (parents before children in the tar: every entry's directory is in the layer).
fn missing_ancestors(changeset: &Changeset, source: &Path) -> Result<Vec<Entry>> {
    let listed = |c: &Change| !matches!(c, Change::Added(e) | Change::Modified(e) if e.kind == EntryKind::Socket);
    let present: HashSet<&Path> = changeset
        .changes()
        .iter()
        .filter(|c| listed(c) && !matches!(c, Change::Deleted(_)))
        .map(Change::path)
        .collect();
    let mut missing: BTreeSet<&Path> = BTreeSet::new();
    for ch in changeset.changes().iter().filter(|c| listed(c)) {
        let mut anc = ch.path().parent();
        while let Some(a) = anc {
            if a.as_os_str().is_empty() || present.contains(a) || !missing.insert(a) {
                break;
            }
            anc = a.parent();
        }
    }
    missing.into_iter().map(|a| Entry::from_path(source, a)).collect()
}

/// Turns a changeset (and the ancestor directories it lacks, [`missing_ancestors`]) into the
/// sorted list of tar entries.
fn plan<'c>(changeset: &'c Changeset, ancestors: &'c [Entry]) -> Result<Vec<Item<'c>>> {
    let markers = changeset
        .changes()
        .iter()
        .filter(|c| !matches!(c, Change::Added(_) | Change::Modified(_)))
        .count();
    let mut items = Vec::with_capacity(changeset.len() + markers + ancestors.len());
    for ch in changeset.changes() {
        check_path(ch.path())?;
        match ch {
            Change::Added(e) | Change::Modified(e) => {
                if e.kind != EntryKind::Socket {
                    items.push(Item::Entry(e));
                }
            }
            Change::Opaque(e) => {
                items.push(Item::Entry(e));
                items.push(Item::Marker(e.path.join(OPAQUE_WHITEOUT)));
            }
            Change::Deleted(p) => {
                let name = p.file_name().unwrap_or_default();
                let mut marker = OsStr::new(WHITEOUT_PREFIX).to_os_string();
                marker.push(name);
                items.push(Item::Marker(match p.parent() {
                    Some(parent) => parent.join(marker),
                    None => PathBuf::from(marker),
                }));
            }
        }
    }
    items.extend(ancestors.iter().map(Item::Entry));
    items.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
    // Hardlink groups: the first path (in sort order) of each (dev, ino) carries the bytes.
    let mut first: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let items = items
        .into_iter()
        .map(|item| match item {
            Item::Entry(e) if e.kind == EntryKind::File && e.nlink > 1 => {
                match first.entry((e.dev, e.ino)) {
                    std::collections::hash_map::Entry::Occupied(o) => {
                        Item::Hardlink(e, o.get().clone())
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(e.path.clone());
                        Item::Entry(e)
                    }
                }
            }
            other => other,
        })
        .collect();
    Ok(items)
}

const BLOCK: usize = 512;
const CHUNK: usize = 1 << 20;

fn write_items<W: TarSink>(
    tar: &mut W,
    items: &[Item<'_>],
    source: &Path,
    epoch: i64,
    cancel: Option<&CancelToken>,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    for item in items {
        check(cancel)?;
        write_item(tar, item, source, epoch, &mut buf, cancel)?;
    }
    tar.write_all(&[0u8; 1024]).map_err(|e| write_err(Path::new(""), e))
}

/// The producer end of the tar -> compressor queue: fills 1 MiB chunks and sends them,
/// reusing the buffers the compressor hands back.
struct ChunkSink {
    tx: Option<mpsc::SyncSender<Vec<u8>>>,
    free: mpsc::Receiver<Vec<u8>>,
    /// Always `CHUNK` bytes long; `filled` of them are data.
    cur: Vec<u8>,
    filled: usize,
    /// Time spent waiting for room in the queue (the compressor behind).
    waited: Duration,
}

impl ChunkSink {
    fn new(tx: mpsc::SyncSender<Vec<u8>>, free: mpsc::Receiver<Vec<u8>>) -> ChunkSink {
        ChunkSink { tx: Some(tx), free, cur: vec![0; CHUNK], filled: 0, waited: Duration::ZERO }
    }

    fn send(&mut self) -> io::Result<()> {
        let mut next = self.free.try_recv().unwrap_or_default();
        next.resize(CHUNK, 0);
        let mut full = std::mem::replace(&mut self.cur, next);
        full.truncate(self.filled);
        self.filled = 0;
        let started = Instant::now();
        let sent = match &self.tx {
            Some(tx) => tx
                .send(full)
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "layer compressor stopped")),
            None => Err(io::Error::new(io::ErrorKind::BrokenPipe, "layer stream closed")),
        };
        self.waited += started.elapsed();
        sent
    }

    /// Sends what is buffered and closes the queue.
    fn close(&mut self) -> io::Result<()> {
        let r = if self.filled == 0 { Ok(()) } else { self.send() };
        self.tx = None;
        r
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (CHUNK - self.filled).min(data.len());
        self.cur[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where tar bytes go; file contents can be read straight into it.
trait TarSink: Write {
    /// Reads at most `max` bytes of `f` into the stream; `Ok(0)` at end of file.
    fn fill_from(&mut self, f: &mut fs::File, max: usize, buf: &mut [u8]) -> io::Result<usize> {
        let k = max.min(buf.len());
        let n = f.read(&mut buf[..k])?;
        self.write_all(&buf[..n])?;
        Ok(n)
    }
}

impl<W: Write> TarSink for BufWriter<W> {}

impl TarSink for ChunkSink {
    /// Reads directly into the queue's current chunk: no intermediate copy.
    fn fill_from(&mut self, f: &mut fs::File, max: usize, _buf: &mut [u8]) -> io::Result<usize> {
        let start = self.filled;
        let k = max.min(CHUNK - start);
        let n = f.read(&mut self.cur[start..start + k])?;
        self.filled += n;
        if self.filled == CHUNK {
            self.send()?;
        }
        Ok(n)
    }
}

fn octal(field: &mut [u8], v: u64) -> bool {
    let digits = field.len() - 1;
    if digits < 22 && v >= 1u64 << (3 * digits) {
        return false;
    }
    let s = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + base.to_string().len();
    if len.to_string().len() > base.to_string().len() {
        len += 1;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

struct Header<'a> {
    name: &'a [u8],
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    typeflag: u8,
    linkname: &'a [u8],
    dev: (u32, u32),
    xattrs: Option<&'a std::collections::BTreeMap<std::ffi::OsString, Vec<u8>>>,
}

/// Serializes one header (preceded by a PAX header when needed) into `out`.
fn encode_header(h: &Header<'_>, out: &mut Vec<u8>) {
    let mut block = [0u8; BLOCK];
    let mut pax = Vec::new();
    let mut pax_entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if h.name.len() > 100 {
        pax_entries.push((b"path".to_vec(), h.name.to_vec()));
    }
    let n = h.name.len().min(100);
    block[..n].copy_from_slice(&h.name[..n]);
    octal(&mut block[100..108], u64::from(h.mode));
    if !octal(&mut block[108..116], h.uid) {
        octal(&mut block[108..116], 0);
        pax_entries.push((b"uid".to_vec(), h.uid.to_string().into_bytes()));
    }
    if !octal(&mut block[116..124], h.gid) {
        octal(&mut block[116..124], 0);
        pax_entries.push((b"gid".to_vec(), h.gid.to_string().into_bytes()));
    }
    if !octal(&mut block[124..136], h.size) {
        octal(&mut block[124..136], 0);
        pax_entries.push((b"size".to_vec(), h.size.to_string().into_bytes()));
    }
    let mtime = h.mtime.min((1u64 << 33) - 1);
    octal(&mut block[136..148], mtime);
    block[156] = h.typeflag;
    if h.linkname.len() > 100 {
        pax_entries.push((b"linkpath".to_vec(), h.linkname.to_vec()));
    }
    let n = h.linkname.len().min(100);
    block[157..157 + n].copy_from_slice(&h.linkname[..n]);
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    octal(&mut block[329..337], u64::from(h.dev.0));
    octal(&mut block[337..345], u64::from(h.dev.1));
    if let Some(x) = h.xattrs {
        for (k, v) in x {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k.as_bytes());
            pax_entries.push((key, v.clone()));
        }
    }
    checksum(&mut block);
    if !pax_entries.is_empty() {
        pax_entries.sort();
        for (k, v) in &pax_entries {
            pax_record(&mut pax, k, v);
        }
        let mut pb = [0u8; BLOCK];
        let name = b"././@PaxHeader";
        pb[..name.len()].copy_from_slice(name);
        octal(&mut pb[100..108], 0o644);
        octal(&mut pb[108..116], 0);
        octal(&mut pb[116..124], 0);
        octal(&mut pb[124..136], pax.len() as u64);
        octal(&mut pb[136..148], 0);
        pb[156] = b'x';
        pb[257..263].copy_from_slice(b"ustar\0");
        pb[263..265].copy_from_slice(b"00");
        octal(&mut pb[329..337], 0);
        octal(&mut pb[337..345], 0);
        checksum(&mut pb);
        out.extend_from_slice(&pb);
        out.extend_from_slice(&pax);
        out.resize(out.len().next_multiple_of(BLOCK), 0);
    }
    out.extend_from_slice(&block);
}

fn checksum(block: &mut [u8; BLOCK]) {
    block[148..156].copy_from_slice(b"        ");
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(s.as_bytes());
}

fn clamp_mtime(e: &Entry, epoch: i64) -> u64 {
    u64::try_from(e.mtime.secs.min(epoch).max(0)).unwrap_or(0)
}

fn write_item<W: TarSink>(
    tar: &mut W,
    item: &Item<'_>,
    source: &Path,
    epoch: i64,
    buf: &mut [u8],
    cancel: Option<&CancelToken>,
) -> Result<()> {
    let mut hdr = Vec::with_capacity(BLOCK * 2);
    let path = item.path();
    match item {
        Item::Marker(p) => encode_header(
            &Header {
                name: p.as_os_str().as_bytes(),
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: 0,
                mtime: 0,
                typeflag: b'0',
                linkname: b"",
                dev: (0, 0),
                xattrs: None,
            },
            &mut hdr,
        ),
        Item::Entry(e) | Item::Hardlink(e, _) => {
            let mut name = e.path.as_os_str().as_bytes().to_vec();
            let (typeflag, linkname, size): (u8, &[u8], u64) = match (item, e.kind) {
                (Item::Hardlink(_, t), _) => (b'1', t.as_os_str().as_bytes(), 0),
                (_, EntryKind::File) => (b'0', b"", e.size),
                (_, EntryKind::Dir) => {
                    name.push(b'/');
                    (b'5', b"", 0)
                }
                (_, EntryKind::Symlink) => (
                    b'2',
                    e.link_target.as_deref().map(|t| t.as_os_str().as_bytes()).unwrap_or(b""),
                    0,
                ),
                (_, EntryKind::CharDevice) => (b'3', b"", 0),
                (_, EntryKind::BlockDevice) => (b'4', b"", 0),
                (_, EntryKind::Fifo) => (b'6', b"", 0),
                (_, EntryKind::Socket) => return Ok(()),
            };
            let dev = if matches!(e.kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
                e.device_numbers()
            } else {
                (0, 0)
            };
            encode_header(
                &Header {
                    name: &name,
                    mode: e.mode & 0o7777,
                    uid: u64::from(e.uid),
                    gid: u64::from(e.gid),
                    size,
                    mtime: clamp_mtime(e, epoch),
                    typeflag,
                    linkname,
                    dev,
                    xattrs: Some(&e.xattrs),
                },
                &mut hdr,
            );
            tar.write_all(&hdr).map_err(|err| write_err(path, err))?;
            if typeflag == b'0' {
                copy_file(tar, &source.join(&e.path), &e.path, size, buf, cancel)?;
            }
            return Ok(());
        }
    }
    tar.write_all(&hdr).map_err(|err| write_err(path, err))
}

/// Copies exactly `size` bytes of `abs` and the block padding; a file that shrank or grew
/// since the scan is an error (the layer would not match its changeset).
fn copy_file<W: TarSink>(
    tar: &mut W,
    abs: &Path,
    rel: &Path,
    size: u64,
    buf: &mut [u8],
    cancel: Option<&CancelToken>,
) -> Result<()> {
    let mut f = fs::File::open(abs).map_err(|e| LayerError::io("open", abs, e))?;
    let mut left = size;
    while left > 0 {
        check(cancel)?;
        let want = usize::try_from(left).unwrap_or(usize::MAX);
        let n = match tar.fill_from(&mut f, want, buf) {
            Ok(0) => {
                return Err(LayerError::SizeChanged {
                    path: rel.to_path_buf(),
                    expected: size,
                    found: size - left,
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(write_err(rel, e)),
            Err(e) => return Err(LayerError::io("read", abs, e)),
        };
        left -= n as u64;
    }
    let mut probe = [0u8; 1];
    if matches!(f.read(&mut probe), Ok(n) if n > 0) {
        return Err(LayerError::SizeChanged {
            path: rel.to_path_buf(),
            expected: size,
            found: size + 1,
        });
    }
    let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
    tar.write_all(&[0u8; BLOCK][..pad]).map_err(|e| write_err(rel, e))
}

/// [`LayerError::Cancelled`] once `cancel` is.
fn check(cancel: Option<&CancelToken>) -> Result<()> {
    match cancel {
        Some(c) if c.is_cancelled() => Err(LayerError::Cancelled),
        _ => Ok(()),
    }
}

/// What [`LayerWriter::write_raw`] produced: everything but the compressed digest.
struct RawLayer {
    diff_id: Digest,
    size: u64,
    uncompressed_size: u64,
    times: WriteTimes,
}

impl RawLayer {
    fn describe(&self, digest: Digest, media_type: &'static str) -> LayerDescriptor {
        LayerDescriptor {
            digest,
            diff_id: self.diff_id,
            size: self.size,
            uncompressed_size: self.uncompressed_size,
            media_type,
            times: self.times,
        }
    }
}

/// A writer that counts what passes through, and the time its writes took.
struct Count<W> {
    inner: W,
    count: u64,
    spent: Duration,
}

impl<W> Count<W> {
    fn new(inner: W) -> Self {
        Count { inner, count: 0, spent: Duration::ZERO }
    }
}

impl<W: Write> Write for Count<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let started = Instant::now();
        let n = self.inner.write(data);
        self.spent += started.elapsed();
        let n = n?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let started = Instant::now();
        let r = self.inner.flush();
        self.spent += started.elapsed();
        r
    }
}

/// A writer that hashes and counts what passes through.
struct HashCount<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashCount<W> {
    fn new(inner: W) -> Self {
        HashCount { inner, hasher: Sha256::new(), count: 0 }
    }

    fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest::from_sha256(self.hasher.finalize().into()), self.count)
    }
}

impl<W: Write> Write for HashCount<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) enum Compressor<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Compressor::None(w) => Ok(w),
            Compressor::Gzip(g) => g.finish(),
            Compressor::Zstd(z) => z.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::None(w) => w.write(data),
            Compressor::Gzip(g) => g.write(data),
            Compressor::Zstd(z) => z.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::None(w) => w.flush(),
            Compressor::Gzip(g) => g.flush(),
            Compressor::Zstd(z) => z.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zstd::zstd_safe::{CParameter, Strategy};

    #[test]
    fn a_cancelled_writer_stops_with_cancelled_and_an_uncancelled_one_writes() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("file"), vec![7u8; 3 << 20]).unwrap();
        let token = CancelToken::new();
        for compression in [Compression::Zstd, Compression::None] {
            let writer = LayerWriter::new(compression).cancel_on(token.clone());
            assert!(writer.write_dir(dir.path(), io::sink()).is_ok());
        }
        token.cancel();
        for compression in [Compression::Zstd, Compression::None] {
            let writer = LayerWriter::new(compression).cancel_on(token.clone());
            let err = writer.write_dir(dir.path(), io::sink()).unwrap_err();
            assert!(matches!(err, LayerError::Cancelled), "{err:?}");
        }
    }

    /// A sink that takes its time, so the store stage's share is known to be at least that.
    struct SlowSink;

    impl Write for SlowSink {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            std::thread::sleep(Duration::from_millis(2));
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_times_say_which_stage_was_busy() {
        let dir = tempfile::tempdir().unwrap();
        let mut seed = 1u64;
        let noise: Vec<u8> = (0..(4 << 20))
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (seed >> 56) as u8
            })
            .collect();
        fs::write(dir.path().join("file"), noise).unwrap();
        let zstd = LayerWriter::new(Compression::Zstd).write_dir(dir.path(), SlowSink).unwrap();
        let t = zstd.times;
        assert!(t.tar > Duration::ZERO && t.compress > Duration::ZERO, "{t:?}");
        assert!(t.store >= Duration::from_millis(2), "the sink's sleeps are store time: {t:?}");
        let raw = LayerWriter::new(Compression::None).write_dir(dir.path(), SlowSink).unwrap();
        let t = raw.times;
        assert_eq!(t.compress, Duration::ZERO, "{t:?}");
        // 4 MiB of tar through an 8 MiB buffer: at least one write of the sink.
        assert!(t.tar > Duration::ZERO && t.store >= Duration::from_millis(2), "{t:?}");
        assert_eq!(zstd.diff_id, raw.diff_id);
    }

    #[test]
    fn the_documented_zstd_parameters_are_the_ones_applied() {
        let spelled: Vec<String> = zstd_default_params()
            .iter()
            .map(|p| match p {
                CParameter::Strategy(s) => {
                    assert_eq!(*s, Strategy::ZSTD_fast);
                    "strategy=1".to_owned()
                }
                CParameter::WindowLog(v) => format!("wlog={v}"),
                CParameter::HashLog(v) => format!("hlog={v}"),
                CParameter::MinMatch(v) => format!("mml={v}"),
                CParameter::JobSize(v) => format!("jobsize={v}"),
                other => panic!("undocumented parameter {other:?}"),
            })
            .collect();
        assert_eq!(spelled.join(","), ZSTD_DEFAULT_PARAMS);
    }
}
