//! Filesystem scans, changesets, deterministic OCI layer tars, safe apply, and the overlay model.
//!
//! A layer is the difference between two filesystem trees, serialized as a tar archive
//! (OCI image-spec `layer.md`). This crate has the four steps of that life cycle, each in its
//! own module: [`scan`] a tree into a [`Scan`] (metadata only, sorted, parallel), compute a
//! [`Changeset`] between two scans ([`diff`]) or read one from an overlayfs upperdir
//! ([`overlay::changeset_from_upper`]; the [`overlay`] module is the one model of how
//! overlayfs stores layers), serialize it with a [`LayerWriter`] into a tar whose
//! bytes depend only on the changeset, the source bytes and the writer settings
//! (DESIGN.md decision 3), and [`apply`] a layer onto a directory without ever writing
//! outside it. The streaming tar reader under apply is public as [`tarread`], so other crates
//! (strata-diff) read layer headers and file bytes with the same parser. The crate never
//! spawns processes and never prints.
//!
//! ```no_run
//! # fn main() -> Result<(), strata_layer::LayerError> {
//! use std::path::Path;
//! use strata_layer::{apply, diff, scan, ApplyOptions, Compression, LayerWriter};
//!
//! let lower = scan(Path::new("/tmp/before"))?;
//! let upper = scan(Path::new("/tmp/after"))?;
//! let changes = diff(&lower, &upper)?; // hashes only files whose mtime alone differs
//! let mut blob = Vec::new();
//! let layer = LayerWriter::new(Compression::Zstd)
//!     .epoch(0) // SOURCE_DATE_EPOCH: later mtimes are clamped to it
//!     .write(&changes, upper.root(), &mut blob)?;
//! let report = apply(&blob[..], Path::new("/tmp/rootfs"), &ApplyOptions::default())?;
//! assert_eq!(report.diff_id, Some(layer.diff_id));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod apply;
mod changeset;
mod error;
pub mod listing;
pub mod overlay;
mod scan;
mod squash;
pub mod tarread;
mod writer;

pub use apply::apply_blob;
pub use apply::{apply, check_entry_name, decompress, ApplyOptions, ApplyReport};
pub use changeset::{diff, Change, Changeset};
pub use error::{LayerError, Result, UnsafeReason};
pub use scan::{hash_file, scan, scan_with_digests, Entry, EntryKind, Scan, Timestamp};
pub use squash::squash;
pub use strata_types::Digest;
pub use writer::{
    layer_from_dir, write_layer, Compression, LayerDescriptor, LayerWriter, WriteTimes,
    OPAQUE_WHITEOUT, WHITEOUT_PREFIX, ZSTD_DEFAULT_PARAMS,
};
