//! The one error type of this crate.

use std::io;

use strata_store::StoreError;
use strata_types::Digest;

/// Everything that can go wrong while comparing or listing images, with the layer, blob or
/// path at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiffError {
    /// Reading a manifest, config or blob from a store failed (missing blob, bad digest, ...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A layer blob's bytes do not hash to the digest the manifest gives it.
    #[error("layer {layer} ({digest}) is corrupt: its bytes hash to {found}")]
    CorruptBlob {
        /// Zero-based layer index in the image.
        layer: usize,
        /// The digest the manifest names.
        digest: Digest,
        /// The digest of the bytes in the store.
        found: Digest,
    },
    /// A layer blob has a different length than its descriptor says.
    #[error("layer {layer} ({digest}) is corrupt: expected {expected} bytes, found {found}")]
    BlobSize {
        /// Zero-based layer index in the image.
        layer: usize,
        /// The blob.
        digest: Digest,
        /// The descriptor's size.
        expected: u64,
        /// The size found.
        found: u64,
    },
    /// A layer's uncompressed tar does not hash to the config's `rootfs.diff_ids` entry.
    #[error("layer {layer} ({digest}): diffID mismatch: config says {expected}, layer content is {found}")]
    DiffIdMismatch {
        /// Zero-based layer index in the image.
        layer: usize,
        /// The layer blob.
        digest: Digest,
        /// The config's diffID.
        expected: Digest,
        /// The sha256 of the uncompressed tar.
        found: Digest,
    },
    /// A layer could not be decompressed or is not a valid tar archive.
    #[error("layer {layer} ({digest}): cannot read the layer archive")]
    LayerRead {
        /// Zero-based layer index in the image.
        layer: usize,
        /// The layer blob.
        digest: Digest,
        /// The decompressor's or tar reader's error.
        #[source]
        source: io::Error,
    },
    /// The config lists a different number of diffIDs than the manifest has layers.
    #[error("image config {config} lists {diff_ids} diffIDs for {layers} layers")]
    LayerCount {
        /// The config blob.
        config: Digest,
        /// Entries in `rootfs.diff_ids`.
        diff_ids: usize,
        /// Layers in the manifest.
        layers: usize,
    },
    /// `ls --layer N` (or another layer index) names a layer the image does not have.
    #[error("layer index {index} is out of range: the image has {layers} layers")]
    NoSuchLayer {
        /// The index asked for.
        index: usize,
        /// How many layers the image has.
        layers: usize,
    },
    /// A hardlink points at a path that does not exist below it (or a chain of them loops).
    #[error("layer {layer}: hardlink {path:?} points at {target:?}, which is not in the image")]
    DanglingHardlink {
        /// Zero-based layer index holding the link.
        layer: usize,
        /// The link's path.
        path: String,
        /// Its target.
        target: String,
    },
}

impl DiffError {
    /// Whether the error means the store is damaged: a layer blob whose bytes do not match
    /// its name or size, or a store error that says so ([`StoreError::is_damage`]).
    pub fn is_damage(&self) -> bool {
        match self {
            DiffError::CorruptBlob { .. } | DiffError::BlobSize { .. } => true,
            DiffError::Store(s) => s.is_damage(),
            _ => false,
        }
    }
}
