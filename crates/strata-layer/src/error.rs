//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while scanning, diffing, writing or applying a layer.
///
/// Every variant names the path (relative to the tree or archive it came from) at fault,
/// so a caller can print it as-is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// A filesystem operation on `path` failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done (`lstat`, `open`, `read`, `mkdir`, ...).
        op: &'static str,
        /// The path the operation was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Writing the layer stream (tar, compressor or output sink) failed.
    #[error("writing layer stream at {path}")]
    Write {
        /// The entry being written when the sink failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading the layer stream failed or it is not a valid tar archive.
    #[error("reading layer archive (entry #{index})")]
    ReadArchive {
        /// Zero-based index of the tar entry being read.
        index: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A path in the scan or changeset is not usable for the requested operation.
    #[error("{path}: path is not relative and normalized (no `.`/`..`/absolute components)")]
    BadPath {
        /// The offending path.
        path: PathBuf,
    },
    /// A file changed size while it was being written into a layer.
    #[error("{path}: file size changed while writing the layer (expected {expected} bytes, found {found})")]
    SizeChanged {
        /// The file.
        path: PathBuf,
        /// Size recorded by the scan.
        expected: u64,
        /// Bytes actually available.
        found: u64,
    },
    /// An archive entry was refused by [`apply`](crate::apply) because it is unsafe.
    #[error("refusing archive entry {path:?}: {reason}")]
    Unsafe {
        /// The entry name exactly as it appears in the archive.
        path: PathBuf,
        /// Why it was refused.
        reason: UnsafeReason,
    },
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] strata_store::StoreError),
    /// The blob the store computed differs from the digest of the stream we wrote.
    #[error("layer blob digest mismatch: writer computed {expected}, store computed {found}")]
    DigestMismatch {
        /// Digest computed while writing the layer.
        expected: strata_types::Digest,
        /// Digest the store computed for the committed blob.
        found: strata_types::Digest,
    },
    /// The write was stopped through the writer's cancel token
    /// ([`LayerWriter::cancel_on`](crate::LayerWriter::cancel_on)).
    #[error("layer write cancelled")]
    Cancelled,
    /// An archive entry has a type or header field this crate does not support.
    #[error("unsupported archive entry {path:?}: {what}")]
    Unsupported {
        /// The entry name exactly as it appears in the archive.
        path: PathBuf,
        /// What is unsupported.
        what: &'static str,
    },
}

/// Why [`apply`](crate::apply) refused an archive entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnsafeReason {
    /// The name contains a `..` component.
    #[error("path contains a `..` component")]
    DotDot,
    /// The name is absolute (starts with `/`).
    #[error("absolute path")]
    Absolute,
    /// Resolving the name (or its hardlink target) followed a symlink that leads outside the root.
    #[error("resolves through symlink {symlink:?} to a location outside the target directory")]
    SymlinkEscape {
        /// The symlink, relative to the root, that pointed outside.
        symlink: PathBuf,
    },
    /// Too many symlinks were followed (loop).
    #[error("too many levels of symbolic links")]
    SymlinkLoop,
    /// A hardlink's target is absolute, contains `..`, or does not exist inside the root.
    #[error("hardlink target {target:?} is not inside the target directory")]
    HardlinkOutside {
        /// The link target as written in the archive.
        target: PathBuf,
    },
    /// A device node in an unprivileged apply.
    #[error("device node needs privileges (ApplyOptions::privileged is false)")]
    DeviceNotPrivileged,
    /// A parent component exists and is not a directory.
    #[error("parent component {component:?} is not a directory")]
    ParentNotDirectory {
        /// The component, relative to the root.
        component: PathBuf,
    },
    /// A whiteout naming `.`, `..` or nothing.
    #[error("malformed whiteout name")]
    BadWhiteout,
}

impl LayerError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LayerError::Io { op, path: path.into(), source }
    }
}

/// Result alias for this crate.
pub type Result<T, E = LayerError> = std::result::Result<T, E>;
