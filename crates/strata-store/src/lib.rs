//! strata's content-addressed store, laid out on disk as an OCI image layout.
//!
//! A [`Store`] is a directory that OCI tools which read zstd layers can read directly
//! (`skopeo inspect oci:$STORE:app:v1`; umoci 0.4 predates zstd and needs a gzip export):
//!
//! ```text
//! <root>/oci-layout              {"imageLayoutVersion":"1.0.0"}
//! <root>/index.json              image index; tags are entries annotated with
//!                                org.opencontainers.image.ref.name = "name:tag"
//! <root>/blobs/sha256/<hex>      every blob, named by the SHA-256 of its bytes
//! <root>/strata/format          {"storeFormat":2}; a newer number is refused on open
//! <root>/strata/v1/tags-v1/<tag> a copy of each tag's index.json entry, which
//!                                `fsck --repair` rebuilds a lost index.json from
//! <root>/strata/v1/lost+found.json  images fsck --repair untagged: blobs were gone
//! <root>/strata/v1/damaged/index.json.<secs>  a damaged index.json fsck --repair replaced
//! <root>/strata/v1/lock          flock serializing index.json updates
//! <root>/strata/v1/gc.lock       held shared by a writer recording in its lease, by gc exclusively
//! <root>/strata/v1/leases/<name> a live writer's lease: owner, then digests it wrote or pinned
//! <root>/strata/v1/tmp/          flock'd temp files and work dirs (Store::work_dir)
//! <root>/strata/v1/roots/<name>  extra gc roots, one digest per line (Store::set_gc_roots)
//! <root>/strata/v1/roots/dangling  untagged images kept until pruned (Store::keep_dangling)
//! <root>/strata/v1/snapshots/<diffid-hex>    unpacked layers (Store::snapshots)
//! <root>/strata/v1/layers/<diffid-hex>.<c>   which blob holds a diffID (Store::find_layer)
//! <root>/strata/v1/cache-v1/<kind>/<key>     build cache index (Store::cache_get)
//! <root>/strata/v1/hashes-v1/<key>           context stat-hash caches (Store::context_cache)
//! <root>/strata/v1/registry-v1/blobs/<hex>   where blobs were seen (Store::blob_locations)
//! <root>/strata/v1/cache-mounts/<id>[@N]     RUN --mount=type=cache dirs (Store::cache_mount)
//! <root>/strata/v1/layer-tocs-v1/<diffid>      a layer's table of contents blob (Store::layer_toc)
//! <root>/strata/v1/cache-mount-states-v1/<id>  a cache mount's last exported chain (Store::cache_mount_state)
//! ```
//!
//! The store is closed: no other crate builds a path inside the root. Everything beside the
//! OCI layout is a typed side table with its own methods (the `tables` module), so
//! [`Store::gc`] and [`Store::fsck`] know every one of them.
//!
//! The model is "write once, name by content". A blob is streamed into a temp file while being
//! hashed and renamed into `blobs/sha256/` under the digest that was computed, so a blob whose
//! name does not match its bytes cannot be created through this API, and concurrent writers of
//! the same content race harmlessly without locks. Mutable state is only `index.json` (the
//! tags), updated under an exclusive file lock by atomic rename, so readers never see a
//! half-written file, and followed by the tag records (the `tag_records` module), so that no
//! single damaged file loses a tag: a command that finds `index.json` missing or unparseable
//! stops with [`StoreError::DamagedFile`], and [`Store::fsck`] with `repair` rebuilds it. Every
//! metadata file (`index.json`, tag records, side tables, the format file, lost+found) is
//! written the same way: temp file on the store's file system, `fsync`, rename, `fsync` of the
//! directory, so a process killed mid-write leaves the old or the new file. The store format
//! (`strata/format`; none means format 1, from before tag records) is checked on open, and a
//! store written by a newer strata is refused ([`StoreError::NewerFormat`]) rather than
//! half-understood. Everything else is derived: [`Store::gc`] deletes what no tag, gc root
//! or caller-given digest reaches; [`Store::fsck`] re-hashes every blob and checks every
//! reference.
//!
//! Concurrency: any number of threads and processes may use one store at once. Blob writes need
//! no lock (identical content renames onto identical content); `index.json` updates (`tag`,
//! `untag`) and `gc` take an exclusive `flock` on `strata/v1/lock`; every writer holds a lease
//! (a locked file under `strata/v1/leases/` listing what it wrote or pinned, [`Store::lease`]),
//! which gc treats as roots, so gc runs beside builds and never sweeps a blob that is written
//! but not yet tagged, and removes the leases (and leftovers) of dead processes; readers take
//! no lock and
//! see each `index.json` whole, old or new. Tools that write the layout themselves (e.g. `skopeo
//! copy` into `oci:$STORE:name`) do not take strata's lock; do not run them while strata is
//! tagging. Durability: blobs and `index.json` are `fsync`ed before, and their directory after,
//! the rename that publishes them.
//!
//! Blob reads come in two speeds: [`Store::open_blob`] trusts the file system (what was renamed
//! in was verified); [`Store::open_blob_verified`] and [`Store::read_blob`] re-hash, for content
//! whose integrity matters more than the cost; [`Store::verify_blob`] re-hashes one before it
//! is sent anywhere, or after a streaming read of it failed; a mismatch found for a command
//! is reported against the image ([`StoreError::CorruptBlob`]); [`Store::fsck`] re-hashes
//! everything.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod blob;
mod dangling;
mod error;
mod fsck;
mod gc;
mod image;
mod index;
mod layers;
mod lease;
mod lost_found;
mod store;
mod tables;
mod tag_records;

pub use blob::{BlobWriter, PutBlob, VerifyingReader};
pub use dangling::{RemovedImage, DANGLING_ROOTS};
pub use error::{FileDamage, NotAStoreProblem, StoreError};
pub use fsck::{FsckProblem, FsckReport, Referrer};
pub use gc::GcReport;
pub use image::Image;
pub use index::REF_NAME_ANNOTATION;
pub use layers::KnownLayer;
pub use lost_found::LostImage;
pub use store::{canonical_json, Store};
pub use tables::{
    CacheEntry, CacheIndex, CacheInputs, CacheKey, CacheKind, CacheMount, CachePrune,
    CachePruneReport, CacheUsage, GitTrees, Sharing, Snapshots, WorkDir, CACHE_ARTIFACT_TYPE,
    CACHE_INDEX_MEDIA_TYPE, CACHE_INDEX_VERSION, LAYER_TOC_MEDIA_TYPE,
};

/// Re-export of the `oci-spec` crate whose image types (descriptors, manifests, configs) this
/// API speaks, so callers use the same version.
pub use oci_spec;
