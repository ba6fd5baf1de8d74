//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

use strata_types::ReferenceError;
use strata_types::{Digest, DigestParseError};

/// Everything that can go wrong in the store, each with the path, digest or name at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O operation on `path` failed.
    #[error("I/O error on {path}")]
    Io {
        /// The file or directory being accessed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading the content to be stored failed (the source, not the store, is at fault).
    #[error("reading blob content from its source failed")]
    SourceRead {
        /// The source's error.
        #[source]
        source: io::Error,
    },
    /// `root` exists but is not an OCI image layout (no `oci-layout` file), so it was not touched.
    #[error("{root} is not a strata store: {problem}")]
    NotAStore {
        /// The directory given as store root.
        root: PathBuf,
        /// What is missing or unexpected.
        problem: NotAStoreProblem,
    },
    /// The `oci-layout` file does not parse (a damaged `index.json` is
    /// [`StoreError::DamagedFile`]).
    #[error("{path} is corrupt")]
    CorruptFile {
        /// The file that does not parse.
        path: PathBuf,
        /// The parse error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A metadata file the store keeps (`index.json`, the format file) is missing or does not
    /// parse. Nothing was modified; [`Store::fsck`](crate::Store::fsck) with `repair` rebuilds
    /// it (`index.json` from the tag records).
    #[error("{path} is damaged ({problem}); run `strata fsck --repair` to rebuild it")]
    DamagedFile {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        problem: FileDamage,
    },
    /// The store was written by a newer strata, in a format this code does not know; it was
    /// not touched.
    #[error(
        "{path}: store format {found} is newer than this strata understands (format \
         {supported}); use a newer strata"
    )]
    NewerFormat {
        /// The format file.
        path: PathBuf,
        /// The format version found in it.
        found: u32,
        /// The newest format version this code reads and writes.
        supported: u32,
    },
    /// The `oci-layout` file names a layout version this code does not understand.
    #[error("{path}: unsupported imageLayoutVersion {found:?} (expected \"1.0.0\")")]
    UnsupportedLayoutVersion {
        /// The `oci-layout` file.
        path: PathBuf,
        /// The version found in it.
        found: String,
    },
    /// A line of a gc roots file is not a digest.
    #[error("{path}:{line}: not a digest")]
    InvalidRootsLine {
        /// The roots file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Why the line is not a digest.
        #[source]
        source: DigestParseError,
    },
    /// A gc roots file name is not a plain file name.
    #[error("invalid gc roots name {name:?}: expected [A-Za-z0-9._-]+ not starting with '.'")]
    InvalidRootsName {
        /// The rejected name.
        name: String,
    },
    /// A digest string (in a descriptor or given by a caller) is malformed or not sha256.
    #[error(transparent)]
    InvalidDigest(#[from] DigestParseError),
    /// Content does not hash to the digest it was expected to have.
    #[error("content mismatch: expected {expected}, found {found}")]
    DigestMismatch {
        /// The digest the content should have had.
        expected: Digest,
        /// The digest of the bytes actually read or written.
        found: Digest,
    },
    /// A stored blob that an image needs does not hash to its name (bit rot, a bad disk, a
    /// hand edit), found while reading it for a command; the command stopped before tagging
    /// or sending anything. [`Store::fsck`](crate::Store::fsck) with `repair` removes the blob
    /// and untags the image.
    #[error("blob {digest} of image {image} is corrupt; run `strata fsck --repair`")]
    CorruptBlob {
        /// The blob's name (what its bytes should hash to).
        digest: Digest,
        /// What its bytes hash to.
        found: Digest,
        /// The image being read, as the user named it.
        image: String,
    },
    /// Content has a different length than its descriptor says.
    #[error("size mismatch for {digest}: expected {expected} bytes, found {found}")]
    SizeMismatch {
        /// The blob (the expected digest when writing).
        digest: Digest,
        /// The size from the descriptor or caller.
        expected: u64,
        /// The actual size.
        found: u64,
    },
    /// The store has no blob with this digest.
    #[error("blob {digest} not found in store")]
    BlobNotFound {
        /// The missing blob.
        digest: Digest,
    },
    /// A blob that should hold JSON (manifest, config, index) does not parse as the expected type.
    #[error("blob {digest} is not a valid {what}")]
    InvalidBlobJson {
        /// The blob.
        digest: Digest,
        /// What it should have been (e.g. "image manifest").
        what: &'static str,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A build-cache index document is not JSON of the index format.
    #[error("the build cache index is malformed")]
    InvalidCacheIndex {
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A build-cache index document has a format version this strata does not read.
    #[error(
        "the build cache index has format version {found}; this strata reads version {supported}"
    )]
    CacheIndexVersion {
        /// The version found.
        found: u64,
        /// The version supported.
        supported: u64,
    },
    /// A value could not be serialized to JSON for storing.
    #[error("cannot serialize {what} to JSON")]
    Serialize {
        /// What was being serialized.
        what: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A descriptor or manifest has a media type this store does not handle here.
    #[error("blob {digest} has unsupported media type {found:?} (expected {expected})")]
    UnsupportedMediaType {
        /// The blob described.
        digest: Digest,
        /// The media type found.
        found: String,
        /// What was acceptable at that point.
        expected: &'static str,
    },
    /// An image's config lists a different number of layer diff IDs than its manifest has layers.
    #[error("image config {config} lists {diff_ids} diff IDs but {layers} layers were given")]
    LayerCountMismatch {
        /// The config blob.
        config: Digest,
        /// Entries in `rootfs.diff_ids`.
        diff_ids: usize,
        /// Layer descriptors given.
        layers: usize,
    },
    /// An image reference or tag does not follow the distribution reference grammar.
    #[error(transparent)]
    InvalidReference(#[from] ReferenceError),
    /// An image location (`oci:DIR`, `docker-archive:FILE`, ...) is malformed.
    #[error("invalid image location {input:?}: {reason}")]
    InvalidLocation {
        /// The location as given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A reference with a digest was given where only `name[:tag]` makes sense (e.g. to `tag`).
    #[error("{reference:?}: expected name[:tag] without a digest")]
    UnexpectedDigest {
        /// The reference as given.
        reference: String,
    },
    /// No tag or manifest matches the reference.
    #[error("image {reference:?} not found in store")]
    ImageNotFound {
        /// The reference as given.
        reference: String,
    },
    /// A digest prefix matches more than one image.
    #[error("{reference:?} is ambiguous: matches {}", list_digests(candidates))]
    AmbiguousReference {
        /// The prefix as given.
        reference: String,
        /// Every matching manifest digest.
        candidates: Vec<Digest>,
    },
    /// An image named by its ID has several tags, and removing it was not forced.
    #[error(
        "image {digest} has several tags ({}): name the tag to remove, or force removal of all",
        tags.join(", ")
    )]
    ImageHasTags {
        /// The image's manifest digest.
        digest: Digest,
        /// Its tags (`name:tag`), sorted.
        tags: Vec<String>,
    },
}

impl StoreError {
    /// Whether the error means the store's content is damaged (a blob or metadata file that
    /// does not match what refers to it, or is missing), as opposed to a bad request or an
    /// environment problem. `strata fsck` tells what exactly; the CLI exits 3 for these.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StoreError::CorruptFile { .. }
                | StoreError::CorruptBlob { .. }
                | StoreError::DamagedFile { .. }
                | StoreError::InvalidRootsLine { .. }
                | StoreError::DigestMismatch { .. }
                | StoreError::SizeMismatch { .. }
                | StoreError::InvalidBlobJson { .. }
                | StoreError::BlobNotFound { .. }
        )
    }
}

impl StoreError {
    /// A [`StoreError::DigestMismatch`] of a stored blob, as the [`StoreError::CorruptBlob`]
    /// of `image` (the name the user gave it); any other error unchanged.
    pub fn of_image(self, image: &str) -> StoreError {
        match self {
            StoreError::DigestMismatch { expected, found } => {
                StoreError::CorruptBlob { digest: expected, found, image: image.to_owned() }
            }
            other => other,
        }
    }

    /// The [`StoreError::CorruptBlob`] that `err` is or carries: found anywhere in its
    /// `source()` chain, also inside an [`io::Error`] (as a [`crate::VerifyingReader`]
    /// reports it, which `io::Error::source` does not show).
    pub fn corrupt_blob_in<'a>(
        err: &'a (dyn std::error::Error + 'static),
    ) -> Option<&'a StoreError> {
        let mut next = Some(err);
        while let Some(e) = next {
            let store = e
                .downcast_ref::<StoreError>()
                .or_else(|| e.downcast_ref::<io::Error>()?.get_ref()?.downcast_ref::<StoreError>());
            if let Some(found @ StoreError::CorruptBlob { .. }) = store {
                return Some(found);
            }
            next = e.source();
        }
        None
    }
}

fn list_digests(ds: &[Digest]) -> String {
    ds.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// What is wrong with a damaged metadata file ([`StoreError::DamagedFile`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileDamage {
    /// The file is absent although the layout around it exists.
    #[error("missing")]
    Missing,
    /// The file does not parse (truncated, or garbage); the parser's message has line and column.
    #[error("does not parse: {0}")]
    Unparseable(serde_json::Error),
}

/// Why a directory was refused as a store root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotAStoreProblem {
    /// The directory does not exist.
    #[error("directory does not exist")]
    Missing,
    /// The path exists but is not a directory.
    #[error("not a directory")]
    NotADirectory,
    /// The `oci-layout` marker file is absent.
    #[error("no oci-layout file")]
    NoLayoutFile,
    /// `blobs/sha256` is absent.
    #[error("no blobs/sha256 directory")]
    NoBlobDir,
    /// `init` was pointed at a non-empty directory that is not a layout; it refuses to write there.
    #[error("directory is not empty and has no oci-layout file (found {entry:?})")]
    NotEmpty {
        /// The first unexpected entry found.
        entry: String,
    },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }
}
