//! The store's side tables: everything strata keeps beside the OCI layout, each with its own
//! typed API, so no other crate builds a path inside the store root (DESIGN.md) and `gc` and
//! `fsck` know every table.
//!
//! | table | directory under `strata/v1/` | kept until |
//! | --- | --- | --- |
//! | [`Store::cache_get`], build cache index | `cache-v1/<kind>/<key-hex>` | its layer blob is gone |
//! | [`Store::context_cache`], context stat-hash cache | `hashes-v1/<context-key-hex>` | replaced by the next build of that context |
//! | [`Store::blob_locations`], where blobs were seen | `registry-v1/blobs/<blob-hex>` | the blob is gone |
//! | [`Store::snapshots`], unpacked layers | `snapshots/<diffid-hex>` | its layer is unreachable |
//! | [`Store::cache_mount`] ([`Store::cache_mount_dir`]), `RUN --mount=type=cache` dirs | `cache-mounts/<id>`, more instances `<id>@N` | removed by hand |
//! | [`Store::layer_toc`], a layer's table of contents blob, by diffID | `layer-tocs-v1/<diffid-hex>` | its blob is gone (then unknown); gc keeps the blob while its layer is in a kept image |
//! | [`Store::cache_mount_state`], the layer chain a cache mount's content was last exported or seeded as | `cache-mount-states-v1/<id>` | replaced by the next export or seed; dropped when the mount is created afresh; its chain's blobs are gc roots meanwhile (`roots/cache-mount.<id>`) |
//! | [`Store::git_trees`], git build contexts checked out by commit | `git-trees-v1/<key-hex>` | removed by hand |
//! | [`Store::work_dir`], flock'd work directories | `tmp/<prefix>XXXX` | dropped, or swept when unlocked |
//! | [`Store::lease`], a live writer's roots | `leases/<name>` | its handle is dropped, or gc finds it unlocked |
//! | [`Store::find_layer`], which blob holds a diffID | `layers/<diffid-hex>.<compression>` | its blob is gone |
//! | [`Store::set_gc_roots`], extra gc roots | `roots/<name>` | replaced by its writer |
//!
//! The build cache index also has a portable form, [`CacheIndex`] (a versioned JSON document,
//! the config of the cache artifact strata-registry pushes), which is not stored here: its
//! entries enter the table above one by one, when a build takes them.
//!
//! Two more files beside the layout are not hints but the store's own state, each in its own
//! module: the tag records (`tags-v1/<tag>`, a copy of each `index.json` tag that
//! [`Store::fsck`] rebuilds a lost `index.json` from; gc roots) and lost+found
//! (`lost+found.json`, the images [`Store::fsck`] untagged because blobs were gone). A damaged
//! `index.json` that a repair replaced is kept as `damaged/index.json.<secs>`. gc deletes none
//! of them: they are removed by hand.

mod cache_index;
mod git_trees;
mod hints;
mod mounts;
mod snapshots;
mod tocs;
mod workdir;

pub use cache_index::{
    CacheEntry, CacheIndex, CacheInputs, CacheKey, CacheKind, CachePrune, CachePruneReport,
    CacheUsage, CACHE_ARTIFACT_TYPE, CACHE_INDEX_MEDIA_TYPE, CACHE_INDEX_VERSION,
    LAYER_TOC_MEDIA_TYPE,
};
pub use git_trees::GitTrees;
pub use mounts::{CacheMount, Sharing};
pub use snapshots::Snapshots;
pub use workdir::WorkDir;

pub(crate) use cache_index::sweep_build_cache;
pub(crate) use hints::sweep_blob_locations;
pub(crate) use tocs::sweep_layer_tocs;
