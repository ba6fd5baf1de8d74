//! Writing and reading blobs: hash while streaming, verify, rename into place.
//!
//! A [`BlobWriter`] streams bytes into a temporary file under `<root>/strata/v1/tmp/` (the same
//! file system as `blobs/`, so the final `rename` is atomic) while feeding a SHA-256 hasher.
//! [`BlobWriter::commit`] flushes, `fsync`s and renames the file to `blobs/sha256/<hex>` of the
//! hash it computed, so a blob whose name does not match its bytes cannot be created through
//! this API. Two writers of the same content race harmlessly: both renames install identical
//! bytes. A writer dropped before commit removes its temporary file.
//!
//! Reading the other way, [`VerifyingReader`] hashes what passes through it and turns a mismatch
//! into an [`io::Error`] at end of file, so a consumer that reads to the end never silently
//! accepts corrupt content.

use std::fs::{self, File, Permissions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustix::fs::{flock, FlockOperation};
use tempfile::NamedTempFile;

use crate::error::StoreError;
use crate::store::Store;
use strata_types::{Digest, Hasher};

/// Result of storing a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutBlob {
    /// The digest of the stored bytes.
    pub digest: Digest,
    /// The number of bytes.
    pub size: u64,
    /// `true` if this call installed the blob; `false` if it was already present (deduplicated,
    /// nothing was added to `blobs/`).
    pub created: bool,
}

/// A blob being written: implements [`Write`], hashes as it goes, and becomes a blob on
/// [`commit`](BlobWriter::commit). Created by [`Store::blob_writer`](crate::Store::blob_writer).
///
/// Its temporary file carries an exclusive `flock` for the writer's lifetime, which is how
/// the next writer or [`Store::gc`](crate::Store::gc) tells a live writer's file from one
/// left by a dead process. The digest is recorded in the store handle's lease as the blob is
/// renamed into place (see [`Store::lease`](crate::Store::lease)), so a concurrent gc keeps
/// it until the handle is dropped.
pub struct BlobWriter {
    file: BufWriter<NamedTempFile>,
    hasher: Hasher,
    size: u64,
    store: Store,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("temp", &self.file.get_ref().path())
            .field("size", &self.size)
            .finish()
    }
}

impl BlobWriter {
    pub(crate) fn new(store: Store) -> Result<BlobWriter, StoreError> {
        let temp = locked_temp_file(&store.tmp_dir(), "blob-")?;
        Ok(BlobWriter {
            file: BufWriter::with_capacity(128 * 1024, temp),
            hasher: Hasher::new(),
            size: 0,
            store,
        })
    }

    /// The temporary file's path (under `<root>/strata/v1/tmp/`).
    pub fn temp_path(&self) -> &Path {
        self.file.get_ref().path()
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.size
    }

    /// The digest of the bytes written so far (the writer stays usable).
    pub fn current_digest(&self) -> Digest {
        self.hasher.clone().finish()
    }

    /// Finishes the blob: flush, `fsync`, rename to `blobs/sha256/<hex>`.
    ///
    /// If the blob already exists, the temporary file is discarded and `created` is `false`.
    pub fn commit(self) -> Result<PutBlob, StoreError> {
        self.finish(None, None)
    }

    /// Like [`commit`](BlobWriter::commit), but fails with
    /// [`StoreError::DigestMismatch`] or [`StoreError::SizeMismatch`] (and stores nothing) unless
    /// the bytes hash to `expected` and, if given, have length `size`.
    pub fn commit_verified(
        self,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<PutBlob, StoreError> {
        self.finish(Some(expected), size)
    }

    fn finish(self, expected: Option<&Digest>, size: Option<u64>) -> Result<PutBlob, StoreError> {
        let BlobWriter { file, hasher, size: written, store } = self;
        let digest = hasher.finish();
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(StoreError::DigestMismatch { expected: *expected, found: digest });
            }
            if let Some(size) = size {
                if size != written {
                    return Err(StoreError::SizeMismatch {
                        digest: *expected,
                        expected: size,
                        found: written,
                    });
                }
            }
        }
        let temp = file.into_inner().map_err(|e| {
            let (source, file) = e.into_parts();
            StoreError::Io { path: file.get_ref().path().to_owned(), source }
        })?;
        let blob_dir = store.blob_dir();
        let dest = blob_dir.join(digest.hex());
        // Recorded in the lease, then published or found present, with no gc in between.
        store.with_pins(&[digest], || {
            if dest.exists() {
                // Dedup: the blob is already there. (Its bytes are trusted here; `fsck`
                // re-hashes.)
                return Ok(PutBlob { digest, size: written, created: false });
            }
            let temp_path = temp.path().to_owned();
            let io_err = StoreError::io(&temp_path);
            temp.as_file().set_permissions(Permissions::from_mode(0o644)).map_err(io_err)?;
            temp.as_file().sync_all().map_err(StoreError::io(&temp_path))?;
            // rename(2) replaces atomically; a racing writer of the same digest installs the
            // same bytes, so whichever rename lands last is as good as the first.
            temp.persist(&dest)
                .map_err(|e| StoreError::Io { path: dest.clone(), source: e.error })?;
            sync_dir(&blob_dir)?;
            Ok(PutBlob { digest, size: written, created: true })
        })
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// `fsync` a directory so a rename into it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(StoreError::io(dir))
}

/// Writes `bytes` to `dest` atomically: temp file in `tmp_dir`, `fsync`, rename, `fsync` dir.
pub(crate) fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut temp = locked_temp_file(tmp_dir, "file-")?;
    temp.write_all(bytes).map_err(StoreError::io(temp.path()))?;
    temp.as_file().set_permissions(Permissions::from_mode(0o644)).map_err(StoreError::io(dest))?;
    temp.as_file().sync_all().map_err(StoreError::io(temp.path()))?;
    temp.persist(dest).map_err(|e| StoreError::Io { path: dest.to_owned(), source: e.error })?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Like [`write_atomic`] but never replaces an existing `dest` (returns `Ok(false)` then).
pub(crate) fn write_new(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<bool, StoreError> {
    let mut temp = locked_temp_file(tmp_dir, "file-")?;
    temp.write_all(bytes).map_err(StoreError::io(temp.path()))?;
    temp.as_file().set_permissions(Permissions::from_mode(0o644)).map_err(StoreError::io(dest))?;
    temp.as_file().sync_all().map_err(StoreError::io(temp.path()))?;
    match temp.persist_noclobber(dest) {
        Ok(_) => {}
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(StoreError::Io { path: dest.to_owned(), source: e.error }),
    }
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    Ok(true)
}

/// A [`Read`] adapter that hashes everything read through it and, at end of input, fails with
/// [`io::ErrorKind::InvalidData`] unless the content hashed to the expected digest (and had the
/// expected size, if one was given). The error's inner value is a [`StoreError::DigestMismatch`]
/// or [`StoreError::SizeMismatch`] naming both digests.
///
/// Bytes are passed on before the check, so a consumer must treat everything it read as
/// untrusted until it has seen `Ok(0)` from this reader.
#[derive(Debug)]
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Hasher,
    expected: Digest,
    expected_size: Option<u64>,
    read: u64,
    verified: bool,
}

impl<R: Read> VerifyingReader<R> {
    /// Wraps `inner`, expecting its full content to hash to `expected`.
    pub fn new(inner: R, expected: Digest, expected_size: Option<u64>) -> VerifyingReader<R> {
        VerifyingReader {
            inner,
            hasher: Hasher::new(),
            expected,
            expected_size,
            read: 0,
            verified: false,
        }
    }

    /// The digest the content must have.
    pub fn expected(&self) -> &Digest {
        &self.expected
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// `true` once end of input was reached and the content matched.
    pub fn is_verified(&self) -> bool {
        self.verified
    }

    /// Unwraps the inner reader (verification state is lost).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads whatever the consumer left unread (e.g. the zero blocks after a tar's end marker,
    /// which archive readers stop before) and verifies the whole content. Call this after a
    /// consumer that may stop early; returns the inner reader on success.
    pub fn finish(mut self) -> Result<R, StoreError> {
        let mut sink = [0u8; 16 * 1024];
        loop {
            match self.read(&mut sink) {
                Ok(0) => return Ok(self.inner),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(crate::store::source_error(e)),
            }
        }
    }

    fn size_error(&self) -> io::Error {
        let err = StoreError::SizeMismatch {
            digest: self.expected,
            expected: self.expected_size.unwrap_or_default(),
            found: self.read,
        };
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            self.read += n as u64;
            if self.expected_size.is_some_and(|s| self.read > s) {
                return Err(self.size_error());
            }
            return Ok(n);
        }
        if buf.is_empty() || self.verified {
            return Ok(0);
        }
        if self.expected_size.is_some_and(|s| self.read != s) {
            return Err(self.size_error());
        }
        let found = self.hasher.clone().finish();
        if found != self.expected {
            let err = StoreError::DigestMismatch { expected: self.expected, found };
            return Err(io::Error::new(io::ErrorKind::InvalidData, err));
        }
        self.verified = true;
        Ok(0)
    }
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_file_if_exists(path: &Path) -> Result<bool, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::Io { path: path.to_owned(), source: e }),
    }
}

/// A new temp file `<prefix>XXXX` in the store's tmp directory, exclusively `flock`ed for as
/// long as it is open. Every entry of the tmp directory is made this way (or by
/// [`locked_temp_dir`]), which is what lets [`sweep_unlocked`] remove every unlocked entry
/// without a grace period: a sweeper that got in between creation and lock took the lock and
/// unlinked the file, which the creator sees (the path no longer names its file) and retries.
pub(crate) fn locked_temp_file(tmp_dir: &Path, prefix: &str) -> Result<NamedTempFile, StoreError> {
    loop {
        let temp = tempfile::Builder::new()
            .prefix(prefix)
            .tempfile_in(tmp_dir)
            .map_err(StoreError::io(tmp_dir))?;
        flock(temp.as_file(), FlockOperation::LockExclusive)
            .map_err(|e| StoreError::Io { path: temp.path().to_owned(), source: e.into() })?;
        if still_linked(temp.path(), temp.as_file()) {
            return Ok(temp);
        }
    }
}

/// Like [`locked_temp_file`], a directory: the [`tempfile::TempDir`] and the open directory
/// carrying its lock.
pub(crate) fn locked_temp_dir(
    tmp_dir: &Path,
    prefix: &str,
) -> Result<(tempfile::TempDir, File), StoreError> {
    loop {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(tmp_dir)
            .map_err(StoreError::io(tmp_dir))?;
        let lock = File::open(dir.path()).map_err(StoreError::io(dir.path()))?;
        flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| StoreError::Io { path: dir.path().to_path_buf(), source: e.into() })?;
        if still_linked(dir.path(), &lock) {
            return Ok((dir, lock));
        }
    }
}

/// Whether `path` still names the file `file` has open.
fn still_linked(path: &Path, file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes every entry of `dir` that nobody holds an `flock` on, each while holding its lock
/// (so a creator racing the removal sees it; see [`locked_temp_file`]). Returns how many.
pub(crate) fn sweep_unlocked(dir: &Path) -> Result<usize, StoreError> {
    let Some(entries) = crate::gc::read_dir_if_exists(dir)? else { return Ok(0) };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(StoreError::io(dir))?;
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if meta.file_type().is_symlink() {
            removed += usize::from(remove_file_if_exists(&path)?);
            continue;
        }
        // Unreadable (not ours to judge) or gone meanwhile: left alone.
        let Ok(file) = File::open(&path) else { continue };
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => continue,
            Err(e) => return Err(StoreError::Io { path, source: e.into() }),
        }
        if !still_linked(&path, &file) {
            continue;
        }
        if meta.is_dir() {
            crate::gc::remove_tree(&path)?;
        } else {
            remove_file_if_exists(&path)?;
        }
        removed += 1;
    }
    Ok(removed)
}
