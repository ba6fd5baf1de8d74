//! The crate's one error type.

use std::io;
use std::path::PathBuf;

use strata_layer::LayerError;
use strata_registry::RegistryError;
use strata_store::StoreError;
use strata_types::{Digest, LocationError};

/// Why opening, copying, importing or exporting an image failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading (or decompressing) a stored blob failed.
    #[error("reading blob {digest}")]
    ReadBlob {
        /// The blob.
        digest: Digest,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading, writing or applying a layer failed.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry leg failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// An image location that cannot be parsed.
    #[error(transparent)]
    Location(#[from] LocationError),
    /// An image location this operation cannot read or write (e.g. a registry for export).
    #[error("{location}: not supported here")]
    UnsupportedLocation {
        /// The location as given.
        location: String,
    },
    /// No reference was given and the source holds more (or fewer) than one image.
    #[error("{location} holds {images} images: name one (e.g. {location}:NAME:TAG)")]
    AmbiguousSource {
        /// The location as given.
        location: String,
        /// How many images it holds.
        images: usize,
    },
    /// A `docker-archive` lacks a member its manifest names (or the image asked for).
    #[error("{archive}: no {member} in the archive")]
    ArchiveMissing {
        /// The archive file.
        archive: PathBuf,
        /// The missing member.
        member: String,
    },
    /// A `docker-archive` is malformed.
    #[error("{archive}: {problem}")]
    ArchiveFormat {
        /// The archive file.
        archive: PathBuf,
        /// What is wrong.
        problem: &'static str,
    },
    /// A layer's uncompressed digest differs from the diffID its image config lists.
    #[error("layer {layer}: diffID mismatch: config says {expected}, layer content is {found}")]
    DiffIdMismatch {
        /// Zero-based layer index.
        layer: usize,
        /// The config's `rootfs.diff_ids` entry.
        expected: Digest,
        /// The digest of the uncompressed layer.
        found: Digest,
    },
    /// An export to `dir:` was given a directory that is not empty.
    #[error("{path}: destination directory is not empty")]
    DestinationNotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// A local destination name that cannot be a tag (`strata copy docker://h/a:1 sha256:...`).
    #[error("cannot tag the copy as {name:?}: a destination in the store must be NAME[:TAG]")]
    InvalidDestinationName {
        /// The name as given.
        name: String,
    },
    /// The pair of locations cannot be copied (`dir:` as a source, a registry reference
    /// without a tag or digest).
    #[error("cannot copy {source_location} to {destination}: {reason}")]
    Unsupported {
        /// The source as written.
        source_location: String,
        /// The destination as written.
        destination: String,
        /// Why.
        reason: &'static str,
    },
    /// `--pull=never` and the store has no copy of a registry image.
    #[error("image {reference} is not in the store and pulling is off (--pull=never)")]
    NotInStore {
        /// The registry reference.
        reference: String,
    },
    /// A non-empty `SOURCE_DATE_EPOCH` that is not a number of seconds.
    #[error("SOURCE_DATE_EPOCH={value:?} is not a number of seconds since the epoch")]
    InvalidSourceDateEpoch {
        /// The variable's value.
        value: String,
    },
    /// A pull policy that is not `missing`, `always` or `never`.
    #[error("invalid pull policy {value:?}: use missing, always or never")]
    InvalidPullPolicy {
        /// The value given.
        value: String,
    },
    /// A multi-platform image (or a single image for another platform) has no image for
    /// the platform asked for.
    #[error("{image} has no image for {platform} (it has: {})", available.join(", "))]
    NoSuchPlatform {
        /// How the image was named.
        image: String,
        /// The platform asked for.
        platform: String,
        /// The platforms it has.
        available: Vec<String>,
    },
    /// A multi-platform image given where one image is needed (a `docker-archive`, a
    /// directory) without a platform chosen.
    #[error("{image} is a multi-platform image ({}): choose one with --platform", platforms.join(", "))]
    MultiPlatform {
        /// How the image was named.
        image: String,
        /// The platforms it has.
        platforms: Vec<String>,
    },
    /// An index was to list the same platform twice.
    #[error("two images for {platform}: an image index lists each platform once")]
    DuplicatePlatform {
        /// The platform.
        platform: String,
    },
    /// The scratch layout for a registry-to-file copy could not be made.
    #[error("creating a scratch layout in {path}")]
    Scratch {
        /// Where.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> ImageError {
        ImageError::Io { op, path: path.into(), source }
    }

    /// [`ImageError::ReadBlob`] for a failed read of the stored blob `digest`, or the blob's
    /// damage ([`StoreError::CorruptBlob`]) when its bytes do not hash to its name: a
    /// decompressor or tar reader tripping over a damaged blob is store damage.
    pub(crate) fn read_stored_blob(
        store: &strata_store::Store,
        digest: Digest,
        source: io::Error,
    ) -> ImageError {
        match store.verify_blob(&digest) {
            Err(damage @ StoreError::DigestMismatch { .. }) => ImageError::Store(damage),
            _ => ImageError::ReadBlob { digest, source },
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
