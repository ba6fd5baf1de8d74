//! strata's content-addressed store, laid out on disk as an OCI image layout.
//!
//! A [`Store`] is a directory that any OCI tool can read directly (`skopeo inspect
//! oci:$STORE:app:v1`, `umoci unpack --image $STORE:app:v1`):
//!
//! ```text
//! <root>/oci-layout              {"imageLayoutVersion":"1.0.0"}
//! <root>/index.json              image index; tags are entries annotated with
//!                                org.opencontainers.image.ref.name = "name:tag"
//! <root>/blobs/sha256/<hex>      every blob, named by the SHA-256 of its bytes
//! <root>/strata/v1/lock          flock serializing index.json updates
//! <root>/strata/v1/gc.lock       writers' shared flock (their lease), gc's exclusive one
//! <root>/strata/v1/tmp/          temp files of writers in progress (same file system)
//! <root>/strata/v1/roots/*       extra gc roots, one digest per line (e.g. the build cache)
//! <root>/strata/v1/snapshots/<hex>  unpacked layers, removed by gc when unreachable
//! <root>/strata/v1/layers/<diffid>.<compression>  which blob holds a diffID (a hint)
//! ```
//!
//! The model is "write once, name by content". A blob is streamed into a temp file while being
//! hashed and renamed into `blobs/sha256/` under the digest that was computed, so a blob whose
//! name does not match its bytes cannot be created through this API, and concurrent writers of
//! the same content race harmlessly without locks. Mutable state is only `index.json` (the
//! tags), updated under an exclusive file lock by atomic rename, so readers never see a
//! half-written file. Everything else is derived: [`Store::gc`] deletes what no tag, gc root
//! or caller-given digest reaches; [`Store::fsck`] re-hashes every blob and checks every
//! reference.
//!
//! Concurrency: any number of threads and processes may use one store at once. Blob writes need
//! no lock (identical content renames onto identical content); `index.json` updates (`tag`,
//! `untag`) and `gc` take an exclusive `flock` on `strata/v1/lock`; writers hold a lease (a
//! shared `flock` on `strata/v1/gc.lock`) so gc never sweeps a blob that is written but not yet
//! tagged ([`Store::lease`]); readers take no lock and
//! see each `index.json` whole, old or new. Tools that write the layout themselves (e.g. `skopeo
//! copy` into `oci:$STORE:name`) do not take strata's lock; do not run them while strata is
//! tagging. Durability: blobs and `index.json` are `fsync`ed before, and their directory after,
//! the rename that publishes them.
//!
//! Blob reads come in two speeds: [`Store::open_blob`] trusts the file system (what was renamed
//! in was verified); [`Store::open_blob_verified`] and [`Store::read_blob`] re-hash, for content
//! whose integrity matters more than the cost; [`Store::fsck`] re-hashes everything.
#![deny(missing_docs)]

mod blob;
mod error;
mod fsck;
mod gc;
mod image;
mod index;
mod layers;
mod store;

pub use blob::{BlobWriter, PutBlob, VerifyingReader};
pub use error::{NotAStoreProblem, StoreError};
pub use fsck::{FsckProblem, FsckReport, Referrer};
pub use gc::GcReport;
pub use image::Image;
pub use index::REF_NAME_ANNOTATION;
pub use layers::KnownLayer;
pub use store::{canonical_json, Store};

/// Re-export of the `oci-spec` crate whose image types (descriptors, manifests, configs) this
/// API speaks, so callers use the same version.
pub use oci_spec;
