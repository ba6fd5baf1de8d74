//! The store root: opening, creating, and the blob operations.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::blob::{write_atomic, write_new, BlobWriter, PutBlob, VerifyingReader};
use crate::error::{FileDamage, NotAStoreProblem, StoreError};
use crate::lease::Lease;
use strata_types::Digest;

/// Opens (creating if needed) a file used only for its `flock`.
pub(crate) fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(StoreError::io(path))
}

/// File name of the layout marker (image-layout.md, "oci-layout file").
pub(crate) const OCI_LAYOUT_FILE: &str = "oci-layout";
/// File name of the layout's top-level index (image-layout.md, "index.json file").
pub(crate) const INDEX_FILE: &str = "index.json";
/// The only `imageLayoutVersion` defined by the image spec so far.
pub(crate) const LAYOUT_VERSION: &str = "1.0.0";
/// strata's own metadata, versioned so a future format can live beside this one.
pub(crate) const META_DIR: &str = "strata/v1";
/// The store format file, outside `strata/v1` so that every version finds it.
pub(crate) const FORMAT_FILE: &str = "strata/format";
/// The store format this code reads and writes. 1: no format file, tags only in `index.json`;
/// 2: a tag record per tag under `strata/v1/tags-v1/`, kept in step with `index.json`.
pub(crate) const STORE_FORMAT: u32 = 2;

/// The store format file's content.
#[derive(Serialize, Deserialize)]
struct FormatFile {
    #[serde(rename = "storeFormat")]
    store_format: u32,
}

fn format_file_bytes() -> Result<Vec<u8>, StoreError> {
    let format = FormatFile { store_format: STORE_FORMAT };
    serde_json::to_vec(&format)
        .map_err(|source| StoreError::Serialize { what: "store format", source })
}

#[derive(Serialize, Deserialize)]
struct OciLayoutFile {
    #[serde(rename = "imageLayoutVersion")]
    image_layout_version: String,
}

/// A content-addressed store rooted at a directory that is also an OCI image layout.
///
/// Cheap to clone; holds its root path and, once it has written, a writer lease shared by all
/// clones (see [`Store::lease`]). All methods are safe to call from several threads and several
/// processes on the same root at once (see the crate docs for the guarantees).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// This handle's lease file, once taken (see [`Store::lease`]).
    lease: Arc<Mutex<Option<Lease>>>,
}

impl Store {
    /// Opens an existing store. The directory must be an OCI image layout: an `oci-layout` file
    /// with version 1.0.0, a parseable `index.json`, and `blobs/sha256/`, in a store format no
    /// newer than this code's ([`StoreError::NewerFormat`]). A missing or unparseable
    /// `index.json` is [`StoreError::DamagedFile`]: [`Store::open_for_repair`] and
    /// [`Store::fsck`] rebuild it. Nothing is modified; strata's metadata directories are
    /// created later, when first needed.
    pub fn open(root: impl AsRef<Path>) -> Result<Store, StoreError> {
        let store = Store::open_for_repair(root)?;
        store.read_format()?;
        store.read_index()?;
        Ok(store)
    }

    /// Opens a store whose `index.json` or format file may be damaged, for [`Store::fsck`] to
    /// check and repair. Everything else [`Store::open`] checks is still checked, and a store
    /// of a newer format is still refused.
    pub fn open_for_repair(root: impl AsRef<Path>) -> Result<Store, StoreError> {
        let root = absolute(root.as_ref())?;
        let not_a_store = |problem| StoreError::NotAStore { root: root.clone(), problem };
        match fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(not_a_store(NotAStoreProblem::NotADirectory)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_a_store(NotAStoreProblem::Missing))
            }
            Err(e) => return Err(StoreError::Io { path: root, source: e }),
        }
        let layout_path = root.join(OCI_LAYOUT_FILE);
        let layout_bytes = match fs::read(&layout_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_a_store(NotAStoreProblem::NoLayoutFile))
            }
            Err(e) => return Err(StoreError::Io { path: layout_path, source: e }),
        };
        let layout: OciLayoutFile = serde_json::from_slice(&layout_bytes)
            .map_err(|source| StoreError::CorruptFile { path: layout_path.clone(), source })?;
        if layout.image_layout_version != LAYOUT_VERSION {
            return Err(StoreError::UnsupportedLayoutVersion {
                path: layout_path,
                found: layout.image_layout_version,
            });
        }
        if !root.join("blobs/sha256").is_dir() {
            return Err(not_a_store(NotAStoreProblem::NoBlobDir));
        }
        let store = Store { root, lease: Arc::default() };
        match store.read_format() {
            Err(e @ StoreError::NewerFormat { .. }) => Err(e),
            _ => Ok(store),
        }
    }

    /// Creates a store at `root` if there is none (idempotent, safe to race with other `init`s),
    /// then opens it. Refuses a non-empty directory that is not already a layout.
    pub fn init(root: impl AsRef<Path>) -> Result<Store, StoreError> {
        let root = absolute(root.as_ref())?;
        fs::create_dir_all(&root).map_err(StoreError::io(&root))?;
        let layout_path = root.join(OCI_LAYOUT_FILE);
        let blobs = root.join("blobs/sha256");
        if layout_path.exists() {
            // A complete layout: opened as it is, and refused when damaged or of a newer
            // format (a missing index.json is for fsck to rebuild, never to be replaced by an
            // empty one); only directories are added (an empty `blobs/` some tools omit).
            fs::create_dir_all(&blobs).map_err(StoreError::io(&blobs))?;
            let store = Store::open(&root)?;
            store.create_meta_dirs()?;
            return Ok(store);
        }
        // Only what a half-finished `init` (ours or a racing one) leaves is tolerated.
        let entries = fs::read_dir(&root).map_err(StoreError::io(&root))?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io(&root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if ![OCI_LAYOUT_FILE, INDEX_FILE, "blobs", "strata"].contains(&name.as_str()) {
                return Err(StoreError::NotAStore {
                    root,
                    problem: NotAStoreProblem::NotEmpty { entry: name },
                });
            }
        }
        fs::create_dir_all(&blobs).map_err(StoreError::io(&blobs))?;
        let store = Store { root, lease: Arc::default() };
        store.create_meta_dirs()?;
        // index.json and the format file before oci-layout: once the marker exists, the layout
        // is complete. (A racing init may have written the marker meanwhile: then these
        // no-clobber writes change nothing.)
        let empty_index = crate::index::empty_index_bytes()?;
        write_new(&store.tmp_dir(), &store.index_path(), &empty_index)?;
        write_new(&store.tmp_dir(), &store.format_path(), &format_file_bytes()?)?;
        let layout = OciLayoutFile { image_layout_version: LAYOUT_VERSION.to_owned() };
        let layout_bytes = serde_json::to_vec(&layout)
            .map_err(|source| StoreError::Serialize { what: "oci-layout", source })?;
        write_new(&store.tmp_dir(), &layout_path, &layout_bytes)?;
        Store::open(&store.root)
    }

    /// Creates strata's directories beside the layout (`tmp`, `roots`, `snapshots`).
    fn create_meta_dirs(&self) -> Result<(), StoreError> {
        for dir in [self.tmp_dir(), self.roots_dir(), self.snapshots_dir()] {
            fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        }
        Ok(())
    }

    /// The default store root: `$STRATA_STORE`, else `$XDG_DATA_HOME/strata`, else
    /// `~/.local/share/strata`. `None` if none of these variables is set (or they are empty).
    /// A relative `$XDG_DATA_HOME` is ignored, as the XDG base directory spec requires.
    pub fn default_root() -> Option<PathBuf> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(p) = var("STRATA_STORE") {
            return Some(p);
        }
        if let Some(p) = var("XDG_DATA_HOME").filter(|p| p.is_absolute()) {
            return Some(p.join("strata"));
        }
        var("HOME").map(|home| home.join(".local/share/strata"))
    }

    /// The store's root directory (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/blobs/sha256`, where every blob lives under its hex digest.
    pub(crate) fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    /// `<root>/index.json`.
    pub(crate) fn index_path(&self) -> PathBuf {
        self.root.join(INDEX_FILE)
    }

    /// `<root>/strata/format`: the store format version.
    pub(crate) fn format_path(&self) -> PathBuf {
        self.root.join(FORMAT_FILE)
    }

    /// The store's format version: 1 when there is no format file (a store made before it
    /// existed, or by another tool), else what the file says, refusing a newer one.
    pub(crate) fn read_format(&self) -> Result<u32, StoreError> {
        let path = self.format_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(1),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let format: FormatFile = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::DamagedFile { path: path.clone(), problem: FileDamage::Unparseable(e) }
        })?;
        if format.store_format > STORE_FORMAT {
            return Err(StoreError::NewerFormat {
                path,
                found: format.store_format,
                supported: STORE_FORMAT,
            });
        }
        Ok(format.store_format)
    }

    /// Records this code's format version; called once the store is in it (its tag records
    /// were just brought in step with `index.json`).
    pub(crate) fn write_format(&self) -> Result<(), StoreError> {
        self.write_file_atomic(&self.format_path(), &format_file_bytes()?)
    }

    /// `<root>/strata/v1`: strata's own metadata, beside the OCI layout.
    pub(crate) fn meta_dir(&self) -> PathBuf {
        self.root.join(META_DIR)
    }

    /// `<root>/strata/v1/tmp`: scratch space on the store's file system: blob writers' temp
    /// files and [`Store::work_dir`]s.
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.meta_dir().join("tmp")
    }

    /// `<root>/strata/v1/roots`: files listing extra gc roots, one digest per line.
    pub(crate) fn roots_dir(&self) -> PathBuf {
        self.meta_dir().join("roots")
    }

    /// `<root>/strata/v1/snapshots`: unpacked layers, one directory per layer digest (or diffID).
    pub(crate) fn snapshots_dir(&self) -> PathBuf {
        self.meta_dir().join("snapshots")
    }

    /// `<root>/strata/v1/lock`: the file whose exclusive `flock` serializes `index.json` updates.
    pub(crate) fn lock_path(&self) -> PathBuf {
        self.meta_dir().join("lock")
    }

    /// Creates strata's metadata directories if an `open`ed layout (e.g. made by skopeo) lacks them.
    pub(crate) fn ensure_meta_dirs(&self) -> Result<(), StoreError> {
        let tmp = self.tmp_dir();
        if !tmp.is_dir() {
            fs::create_dir_all(&tmp).map_err(StoreError::io(&tmp))?;
        }
        Ok(())
    }

    /// Writes `bytes` to a file in the root atomically (temp file, `fsync`, rename).
    pub(crate) fn write_file_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        self.ensure_meta_dirs()?;
        write_atomic(&self.tmp_dir(), dest, bytes)
    }

    /// The lease slot; a poisoned mutex still holds a valid file (or none).
    pub(crate) fn lease_slot(&self) -> MutexGuard<'_, Option<Lease>> {
        self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts writing a new blob; see [`BlobWriter`].
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        self.lease()?;
        BlobWriter::new(self.clone())
    }

    /// Stores everything `r` yields as one blob.
    pub fn put_blob(&self, r: impl Read) -> Result<PutBlob, StoreError> {
        let mut w = self.blob_writer()?;
        copy_into(r, &mut w)?;
        w.commit()
    }

    /// Stores everything `r` yields, but only if it hashes to `expected` (and has `size` bytes,
    /// if given); otherwise fails and stores nothing. If the blob already exists, `r` is still
    /// read to the end and checked, so a corrupt source is always reported.
    pub fn put_blob_verified(
        &self,
        r: impl Read,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<PutBlob, StoreError> {
        let mut w = self.blob_writer()?;
        copy_into(r, &mut w)?;
        w.commit_verified(expected, size)
    }

    /// Whether the blob is present (by file existence; contents are not checked).
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// `<root>/blobs/sha256/<hex>`; the file may not exist.
    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blob_dir().join(d.hex())
    }

    /// Opens a blob for reading without verifying it (fast path for trusted local reads).
    pub fn open_blob(&self, d: &Digest) -> Result<File, StoreError> {
        let path = self.blob_path(d);
        File::open(&path).map_err(|e| not_found_as_blob(e, d, path))
    }

    /// Opens a blob wrapped in a [`VerifyingReader`]: reading to the end fails with
    /// [`io::ErrorKind::InvalidData`] if the file does not hash to `d`.
    pub fn open_blob_verified(&self, d: &Digest) -> Result<VerifyingReader<File>, StoreError> {
        Ok(VerifyingReader::new(self.open_blob(d)?, *d, None))
    }

    /// Reads a whole blob into memory and verifies it; meant for small JSON blobs.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(d);
        let bytes = fs::read(&path).map_err(|e| not_found_as_blob(e, d, path))?;
        let found = Digest::of_bytes(&bytes);
        if found != *d {
            return Err(StoreError::DigestMismatch { expected: *d, found });
        }
        Ok(bytes)
    }

    /// Re-hashes the blob `d`: [`StoreError::DigestMismatch`] unless its bytes hash to `d`.
    /// Commands call this before sending a blob anywhere (a registry would get the bytes
    /// before a streaming check could object), and after a streaming read of one failed, to
    /// tell a corrupt blob (whatever the decompressor made of it) from other failures.
    pub fn verify_blob(&self, d: &Digest) -> Result<(), StoreError> {
        let mut r = self.open_blob_verified(d)?;
        match std::io::copy(&mut r, &mut std::io::sink()) {
            Ok(_) => Ok(()),
            Err(e) => match source_error(e) {
                StoreError::SourceRead { source } => {
                    Err(StoreError::Io { path: self.blob_path(d), source })
                }
                other => Err(other),
            },
        }
    }

    /// [`Store::verify_blob`] of a blob of `image` (as the user named it): a mismatch is
    /// [`StoreError::CorruptBlob`].
    pub fn verify_blob_of(&self, d: &Digest, image: &str) -> Result<(), StoreError> {
        self.verify_blob(d).map_err(|e| e.of_image(image))
    }

    /// The size of a blob in bytes (from the file system).
    pub fn blob_size(&self, d: &Digest) -> Result<u64, StoreError> {
        let path = self.blob_path(d);
        fs::metadata(&path).map(|m| m.len()).map_err(|e| not_found_as_blob(e, d, path))
    }

    /// Serializes `v` as canonical JSON and stores it: compact (no insignificant whitespace),
    /// object keys sorted bytewise at every level. Sorting makes the bytes independent of
    /// `HashMap` iteration order (labels, annotations), so the same value always yields the same
    /// digest, on any machine.
    /// A value already stored (a rebuild's config and manifest) writes nothing, not even a
    /// temp file.
    pub fn put_json<T: Serialize + ?Sized>(&self, v: &T) -> Result<PutBlob, StoreError> {
        let bytes = canonical_json(v)?;
        let digest = Digest::of_bytes(&bytes);
        self.lease()?;
        // Pinned before it is found present, as BlobWriter does, so gc cannot take it between.
        if self.with_pins(&[digest], || Ok(self.has_blob(&digest)))? {
            return Ok(PutBlob { digest, size: bytes.len() as u64, created: false });
        }
        self.put_blob(bytes.as_slice())
    }

    /// Every blob digest present in `blobs/sha256`, sorted. Files whose names are not 64
    /// lowercase hex characters are skipped (see [`Store::fsck`], which reports them).
    pub fn list_blobs(&self) -> Result<Vec<Digest>, StoreError> {
        let dir = self.blob_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let entry = entry.map_err(StoreError::io(&dir))?;
            if let Some(d) = entry.file_name().to_str().and_then(|n| Digest::from_hex(n).ok()) {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Compact JSON with object keys sorted recursively (see [`Store::put_json`]).
pub fn canonical_json<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, StoreError> {
    let what = std::any::type_name::<T>();
    let value = serde_json::to_value(v).map_err(|source| StoreError::Serialize { what, source })?;
    serde_json::to_vec(&sort_keys(value)).map_err(|source| StoreError::Serialize { what, source })
}

/// Rebuilds every object with its keys in order, whether or not serde_json's `preserve_order`
/// feature (which keeps insertion order) is enabled somewhere in the build.
fn sort_keys(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sort_keys(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

fn not_found_as_blob(e: io::Error, d: &Digest, path: PathBuf) -> StoreError {
    if e.kind() == io::ErrorKind::NotFound {
        StoreError::BlobNotFound { digest: *d }
    } else {
        StoreError::Io { path, source: e }
    }
}

/// `io::copy` with the error attributed: a read error is the source's, a write error the temp
/// file's. A [`VerifyingReader`] mismatch surfaces as the store error it carries.
fn copy_into(mut r: impl Read, w: &mut BlobWriter) -> Result<(), StoreError> {
    use std::io::Write;
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(source_error(e)),
        };
        w.write_all(&buf[..n])
            .map_err(|e| StoreError::Io { path: w.temp_path().to_owned(), source: e })?;
    }
    Ok(())
}

/// Unwraps a [`StoreError`] carried inside an `io::Error` (as `VerifyingReader` produces);
/// any other error is the source's.
pub(crate) fn source_error(e: io::Error) -> StoreError {
    if !e.get_ref().is_some_and(|inner| inner.is::<StoreError>()) {
        return StoreError::SourceRead { source: e };
    }
    let kind = e.kind();
    match e.into_inner().map(|inner| inner.downcast::<StoreError>()) {
        Some(Ok(store_err)) => *store_err,
        Some(Err(other)) => StoreError::SourceRead { source: io::Error::new(kind, other) },
        None => StoreError::SourceRead { source: io::Error::from(kind) },
    }
}

fn absolute(p: &Path) -> Result<PathBuf, StoreError> {
    std::path::absolute(p).map_err(StoreError::io(p))
}
