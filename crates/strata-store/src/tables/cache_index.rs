//! The build cache index: which layer a build step produced, by the step's cache key.
//!
//! strata-build computes a step's key (a digest of everything the step's result depends on);
//! the store keeps `key -> layer` entries as small JSON files, one per key, under
//! `strata/v1/cache-v1/<kind>/<key-hex>`, written atomically. The index is not a gc root: an
//! entry lives exactly as long as its layer blob (gc drops the rest), and an entry whose blob
//! is gone is a miss, never an error. A change of this entry format needs a new directory
//! version; the optional `inputs` field (what went into the key, field by field, as digests)
//! was added compatibly: older entries simply have none.
//!
//! To explain a miss, strata-build also names the entry a step position last produced
//! ([`Store::cache_note_step`]): `strata/v1/cache-steps-v1/<locator-hex>` holds the key of
//! that entry, where the locator is a digest strata-build makes of the context, recipe,
//! platform, stage and step. gc drops a pointer whose entry has been gone for a week.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use oci_spec::image::{Descriptor, MediaType};
use serde::{Deserialize, Serialize};
use strata_types::Digest;

use crate::blob::{remove_file_if_exists, write_atomic};
use crate::error::StoreError;
use crate::gc::read_dir_if_exists;
use crate::store::Store;

/// Versioned directory of the index under `strata/v1/`.
const DIR: &str = "cache-v1";

/// The kind of step an entry is for (a subdirectory of the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CacheKind {
    /// `RUN`.
    Run,
    /// `COPY` and `ADD`.
    Copy,
    /// `WORKDIR` that creates its directory.
    Workdir,
}

impl CacheKind {
    fn dir(self) -> &'static str {
        match self {
            CacheKind::Run => "run",
            CacheKind::Copy => "copy",
            CacheKind::Workdir => "workdir",
        }
    }

    /// Every kind, in index order.
    pub const ALL: [CacheKind; 3] = [CacheKind::Run, CacheKind::Copy, CacheKind::Workdir];
}

/// A step's cache key: its kind and the digest strata-build computed for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey {
    /// What kind of step.
    pub kind: CacheKind,
    /// The key digest.
    pub digest: Digest,
}

/// The layer a cached step produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The layer blob's descriptor (media type, digest, size).
    pub layer: Descriptor,
    /// The layer's diffID.
    pub diff_id: Digest,
}

/// What went into a cache key, field by field: each top-level field of the key document
/// as the digests of its canonical JSON (one per element for an array, one otherwise).
/// Digests, never values: a build arg's value does not become readable from the store. Two
/// inputs compare field by field to say why a step missed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheInputs {
    /// Field name to the digests of its value.
    pub fields: BTreeMap<String, Vec<Digest>>,
}

/// The file format of an entry.
#[derive(Serialize, Deserialize)]
struct EntryFile {
    digest: Digest,
    diff_id: Digest,
    size: u64,
    media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inputs: Option<CacheInputs>,
}

/// Versioned directory of the step pointers under `strata/v1/`.
const STEPS_DIR: &str = "cache-steps-v1";

/// How long gc keeps a step pointer whose entry is gone.
const STEP_POINTER_GRACE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

impl CacheKind {
    fn parse_dir(name: &str) -> Option<CacheKind> {
        CacheKind::ALL.into_iter().find(|k| k.dir() == name)
    }
}

impl Store {
    fn cache_entry_path(&self, key: &CacheKey) -> PathBuf {
        self.meta_dir().join(DIR).join(key.kind.dir()).join(key.digest.hex())
    }

    /// The entry for `key`, if there is one and its layer blob is still stored with the size
    /// it recorded.
    pub fn cache_get(&self, key: &CacheKey) -> Option<CacheEntry> {
        let bytes = fs::read(self.cache_entry_path(key)).ok()?;
        let e: EntryFile = serde_json::from_slice(&bytes).ok()?;
        // Pinned (when leased) before the check, so gc cannot take the layer after it.
        let present = self.pinned_lookup(&[e.digest, e.diff_id], || {
            (self.blob_size(&e.digest).ok()? == e.size).then_some(())
        });
        present?;
        let layer = Descriptor::new(MediaType::from(e.media_type.as_str()), e.size, e.digest);
        Some(CacheEntry { layer, diff_id: e.diff_id })
    }

    /// Records `entry` as the result of `key` (atomically; a later put replaces it).
    pub fn cache_put(&self, key: &CacheKey, entry: &CacheEntry) -> Result<(), StoreError> {
        self.cache_put_with_inputs(key, entry, None)
    }

    /// [`Store::cache_put`], keeping what went into the key (see [`CacheInputs`]).
    pub fn cache_put_with_inputs(
        &self,
        key: &CacheKey,
        entry: &CacheEntry,
        inputs: Option<&CacheInputs>,
    ) -> Result<(), StoreError> {
        let digest = Digest::try_from(entry.layer.digest())?;
        let file = EntryFile {
            digest,
            diff_id: entry.diff_id,
            size: entry.layer.size(),
            media_type: entry.layer.media_type().to_string(),
            inputs: inputs.cloned(),
        };
        let bytes = serde_json::to_vec(&file)
            .map_err(|source| StoreError::Serialize { what: "cache entry", source })?;
        let path = self.cache_entry_path(key);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
        }
        self.ensure_meta_dirs()?;
        write_atomic(&self.tmp_dir(), &path, &bytes)
    }

    /// What went into `key`, when its entry is still in the index and recorded them (its
    /// blob may be gone).
    pub fn cache_inputs(&self, key: &CacheKey) -> Option<CacheInputs> {
        let bytes = fs::read(self.cache_entry_path(key)).ok()?;
        serde_json::from_slice::<EntryFile>(&bytes).ok()?.inputs
    }

    /// Whether the index has an entry for `key` (whether or not its blob is still stored).
    pub fn cache_entry_exists(&self, key: &CacheKey) -> bool {
        self.cache_entry_path(key).is_file()
    }

    fn step_path(&self, locator: &Digest) -> PathBuf {
        self.meta_dir().join(STEPS_DIR).join(locator.hex())
    }

    /// Notes that the step at `locator` last produced the entry `key` (best effort for the
    /// caller: a lost pointer only makes a later miss less well explained).
    pub fn cache_note_step(&self, locator: &Digest, key: &CacheKey) -> Result<(), StoreError> {
        let path = self.step_path(locator);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
        }
        self.ensure_meta_dirs()?;
        let text = format!("{}/{}", key.kind.dir(), key.digest.hex());
        write_atomic(&self.tmp_dir(), &path, text.as_bytes())
    }

    /// The key of the entry the step at `locator` last produced, if noted.
    pub fn cache_step(&self, locator: &Digest) -> Option<CacheKey> {
        let text = fs::read_to_string(self.step_path(locator)).ok()?;
        let (kind, hex) = text.trim().split_once('/')?;
        Some(CacheKey { kind: CacheKind::parse_dir(kind)?, digest: Digest::from_hex(hex).ok()? })
    }

    /// Every entry whose layer blob is stored, by kind and key.
    pub fn cache_entries(&self) -> Result<Vec<(CacheKey, CacheEntry)>, StoreError> {
        let mut out = Vec::new();
        for kind in CacheKind::ALL {
            let dir = self.meta_dir().join(DIR).join(kind.dir());
            let Some(entries) = read_dir_if_exists(&dir)? else { continue };
            for entry in entries {
                let entry = entry.map_err(StoreError::io(&dir))?;
                let Some(digest) =
                    entry.file_name().to_str().and_then(|n| Digest::from_hex(n).ok())
                else {
                    continue;
                };
                let key = CacheKey { kind, digest };
                if let Some(e) = self.cache_get(&key) {
                    out.push((key, e));
                }
            }
        }
        out.sort_by_key(|(k, _)| (k.kind.dir(), k.digest));
        Ok(out)
    }
}

/// One entry of the local build cache as `strata cache ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheUsage {
    /// Kind and key.
    pub key: CacheKey,
    /// The layer it names.
    pub entry: CacheEntry,
    /// When a build last made or reused it.
    pub last_used: std::time::SystemTime,
    /// Whether an image (tagged, `<none>` or rooted) holds its layer too: removing the
    /// entry then frees no space.
    pub in_image: bool,
}

impl CacheUsage {
    /// The bytes of the layers only the cache holds among `entries` (each layer once): what
    /// pruning all of them would free.
    pub fn cache_only_bytes(entries: &[CacheUsage]) -> u64 {
        let mut seen = std::collections::BTreeSet::new();
        entries
            .iter()
            .filter(|u| !u.in_image && seen.insert(u.entry.layer.digest().to_string()))
            .map(|u| u.entry.layer.size())
            .sum()
    }
}

/// What [`Store::cache_prune`] removes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CachePrune {
    /// Also entries whose layers images hold (`--all`): those entries go, the layers stay
    /// with their images.
    pub all: bool,
    /// Only entries unused for at least this long (`--filter until=24h`).
    pub unused_for: Option<std::time::Duration>,
    /// Keep the most recently used cache-only layers up to this many (compressed) bytes
    /// (`--keep-storage`); `None` keeps none of those the other rules select.
    pub keep_bytes: Option<u64>,
}

impl CachePrune {
    /// Sets [`CachePrune::all`].
    pub fn with_all(mut self, all: bool) -> CachePrune {
        self.all = all;
        self
    }

    /// Sets [`CachePrune::unused_for`].
    pub fn with_unused_for(mut self, age: Option<std::time::Duration>) -> CachePrune {
        self.unused_for = age;
        self
    }

    /// Sets [`CachePrune::keep_bytes`].
    pub fn with_keep_bytes(mut self, bytes: Option<u64>) -> CachePrune {
        self.keep_bytes = bytes;
        self
    }
}

/// What [`Store::cache_prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CachePruneReport {
    /// Entries removed.
    pub entries_removed: usize,
    /// Entries kept.
    pub entries_kept: usize,
    /// Bytes of cache-only layers kept after the prune.
    pub cache_only_bytes: u64,
    /// The collection that freed the layers (blobs and bytes freed).
    pub gc: crate::GcReport,
}

impl Store {
    /// Marks the entry of `key` as used now (for `strata cache ls` and pruning by age and
    /// size; best effort).
    pub fn cache_touch(&self, key: &CacheKey) {
        let now = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_NOW },
            last_modification: rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_NOW },
        };
        let _ = rustix::fs::utimensat(
            rustix::fs::CWD,
            self.cache_entry_path(key),
            &now,
            rustix::fs::AtFlags::empty(),
        );
    }

    /// Every entry whose layer is stored, most recently used first.
    pub fn cache_usage(&self) -> Result<Vec<CacheUsage>, StoreError> {
        let in_images = self.image_blobs()?;
        let mut out = Vec::new();
        for (key, entry) in self.cache_entries()? {
            let Ok(md) = fs::metadata(self.cache_entry_path(&key)) else { continue };
            let last_used = md.modified().map_err(StoreError::io(self.cache_entry_path(&key)))?;
            let digest = Digest::try_from(entry.layer.digest())?;
            out.push(CacheUsage { key, entry, last_used, in_image: in_images.contains(&digest) });
        }
        out.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.key.cmp(&b.key)));
        Ok(out)
    }

    /// Removes build-cache entries as `opts` says, then collects (see [`Store::gc`]) with
    /// the layers of the kept cache-only entries as extra roots, so exactly the removed
    /// entries' layers that nothing else holds are freed, and at most `keep_bytes` of
    /// cache-only layers remain (the cap is exact: kept layers are counted once each, most
    /// recently used first, and one that would pass the cap goes with all older ones). With
    /// `unused_for` too, entries used more recently stay whatever their size and the cap
    /// applies to the older ones.
    pub fn cache_prune(&self, opts: &CachePrune) -> Result<CachePruneReport, StoreError> {
        let now = std::time::SystemTime::now();
        let old_enough = |u: &CacheUsage| match opts.unused_for {
            None => true,
            Some(age) => now.duration_since(u.last_used).unwrap_or_default() >= age,
        };
        let mut report = CachePruneReport::default();
        let mut kept_layers: std::collections::BTreeSet<Digest> = Default::default();
        let mut budget_left = opts.keep_bytes.unwrap_or(0);
        let mut over = false;
        for u in self.cache_usage()? {
            let digest = Digest::try_from(u.entry.layer.digest())?;
            let remove = if u.in_image {
                opts.all && old_enough(&u)
            } else if !old_enough(&u) {
                // Too recently used to go: kept whatever the cap.
                false
            } else if kept_layers.contains(&digest) {
                false
            } else if !over && opts.keep_bytes.is_some() && u.entry.layer.size() <= budget_left {
                budget_left -= u.entry.layer.size();
                false
            } else {
                over = true;
                true
            };
            if remove {
                if remove_file_if_exists(&self.cache_entry_path(&u.key))? {
                    report.entries_removed += 1;
                }
            } else {
                report.entries_kept += 1;
                if !u.in_image && kept_layers.insert(digest) {
                    report.cache_only_bytes += u.entry.layer.size();
                }
            }
        }
        let roots: Vec<Digest> = kept_layers.into_iter().collect();
        report.gc = self.gc(&roots)?;
        Ok(report)
    }

    /// [`Store::gc`] that keeps the most recently used cache-only layers up to `keep_bytes`
    /// (`strata gc --keep-storage`); plain `gc` keeps none.
    pub fn gc_keep_cache(&self, keep_bytes: u64) -> Result<crate::GcReport, StoreError> {
        let opts = CachePrune { all: false, unused_for: None, keep_bytes: Some(keep_bytes) };
        Ok(self.cache_prune(&opts)?.gc)
    }
}

/// The `artifactType` of a build-cache artifact in a registry or an OCI layout (image-spec
/// manifest.md "Guidelines for Artifact Usage": an artifact that is not an image sets
/// `artifactType`, which registries and `skopeo inspect --raw` show as is).
pub const CACHE_ARTIFACT_TYPE: &str = "application/vnd.strata.cache.v1+json";

/// The media type of the cache index blob, the artifact's config.
pub const CACHE_INDEX_MEDIA_TYPE: &str = "application/vnd.strata.cache.index.v1+json";

/// The cache index format version [`CacheIndex::to_json`] writes and the only one
/// [`CacheIndex::from_json`] reads.
pub const CACHE_INDEX_VERSION: u64 = 1;

/// The portable form of (part of) the build cache: the entries a build used, by key, as they
/// travel in a cache artifact. Each entry is what a local entry holds, the layer descriptor
/// and its diffID: a hit's config change and history are recomputed from the recipe, so the
/// layer is all a step's result needs. The JSON document:
///
/// ```json
/// {"version": 1,
///  "entries": [{"kind": "run", "key": "sha256:...",
///               "layer": {"mediaType": "...", "digest": "sha256:...", "size": 123},
///               "diffID": "sha256:..."}]}
/// ```
///
/// Entries are sorted by kind and key, so one set of entries has one serialization.
///
/// With `--cache-to ...,mounts=true` the index also carries the contents of
/// `RUN --mount=type=cache` directories, by cache id: each as a chain of layers, the first
/// the whole directory, each later one a changeset on the ones before (so an export uploads
/// only what changed since the chain it started from). Applied in order into an empty
/// directory, a chain gives the mount's content:
///
/// ```json
///  "mounts": [{"id": "go-build", "layers": [{"layer": {...}, "diffID": "sha256:..."}]}]
/// ```
///
/// The field is optional, so indexes without it (and readers that do not know it) stay
/// version 1.
///
/// `tocs` (optional too) gives, by diffID, the table of contents of layers the entries' steps
/// stand on (base layers included): a blob of media type [`LAYER_TOC_MEDIA_TYPE`] listing the
/// layer's entries without their bytes, so a runner that takes a hit need not download the
/// layer until a step reads its files:
///
/// ```json
///  "tocs": [{"diffID": "sha256:...", "toc": {"mediaType": "application/vnd.strata.layer.toc.v1+zstd", ...}}]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheIndex {
    /// The entries, by key.
    pub entries: BTreeMap<CacheKey, CacheEntry>,
    /// Cache-mount contents, by cache id: each a chain of layers applied in order.
    pub mounts: BTreeMap<String, Vec<CacheEntry>>,
    /// Layer tables of contents, by the layer's diffID.
    pub tocs: BTreeMap<Digest, Descriptor>,
    /// Layers no entry produced that the entries stand on (their stages' base images), by
    /// diffID: kept in the artifact so an importer can fetch them from the cache too, and
    /// take a base it never downloads (`"baseLayers": [{"diffID": ..., "layer": {...}}]`).
    pub base_layers: BTreeMap<Digest, Descriptor>,
}

/// The media type of a layer's table of contents: strata-layer's listing of the layer's
/// unpacked tree (overlay whiteouts included, file bytes left out), zstd-compressed.
pub const LAYER_TOC_MEDIA_TYPE: &str = "application/vnd.strata.layer.toc.v1+zstd";

#[derive(Serialize, Deserialize)]
struct IndexFile {
    version: u64,
    entries: Vec<IndexFileEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    mounts: Vec<IndexFileMount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tocs: Vec<IndexFileToc>,
    #[serde(default, rename = "baseLayers", skip_serializing_if = "Vec::is_empty")]
    base_layers: Vec<IndexFileLayer>,
}

#[derive(Serialize, Deserialize)]
struct IndexFileToc {
    #[serde(rename = "diffID")]
    diff_id: Digest,
    toc: Descriptor,
}

#[derive(Serialize, Deserialize)]
struct IndexFileMount {
    id: String,
    layers: Vec<IndexFileLayer>,
}

#[derive(Serialize, Deserialize)]
struct IndexFileLayer {
    layer: Descriptor,
    #[serde(rename = "diffID")]
    diff_id: Digest,
}

#[derive(Serialize, Deserialize)]
struct IndexFileEntry {
    kind: CacheKind,
    key: Digest,
    layer: Descriptor,
    #[serde(rename = "diffID")]
    diff_id: Digest,
}

/// Only the version, read first so a future format is named as such, not as malformed.
#[derive(Deserialize)]
struct IndexVersion {
    version: u64,
}

impl CacheIndex {
    /// The index as its versioned JSON document.
    pub fn to_json(&self) -> Result<Vec<u8>, StoreError> {
        let file = IndexFile {
            version: CACHE_INDEX_VERSION,
            entries: self
                .entries
                .iter()
                .map(|(k, e)| IndexFileEntry {
                    kind: k.kind,
                    key: k.digest,
                    layer: e.layer.clone(),
                    diff_id: e.diff_id,
                })
                .collect(),
            mounts: self
                .mounts
                .iter()
                .map(|(id, chain)| IndexFileMount {
                    id: id.clone(),
                    layers: chain
                        .iter()
                        .map(|e| IndexFileLayer { layer: e.layer.clone(), diff_id: e.diff_id })
                        .collect(),
                })
                .collect(),
            tocs: self
                .tocs
                .iter()
                .map(|(d, toc)| IndexFileToc { diff_id: *d, toc: toc.clone() })
                .collect(),
            base_layers: self
                .base_layers
                .iter()
                .map(|(d, layer)| IndexFileLayer { layer: layer.clone(), diff_id: *d })
                .collect(),
        };
        serde_json::to_vec(&file)
            .map_err(|source| StoreError::Serialize { what: "cache index", source })
    }

    /// The layer descriptors the entries name, then those of the cache mounts' chains, the
    /// base layers and the tables of contents, each once, in key order: the artifact's
    /// `layers`.
    pub fn layers(&self) -> Vec<&Descriptor> {
        let mut seen = std::collections::BTreeSet::new();
        self.entries
            .values()
            .chain(self.mounts.values().flatten())
            .map(|e| &e.layer)
            .chain(self.base_layers.values())
            .chain(self.tocs.values())
            .filter(|l| seen.insert(l.digest().to_string()))
            .collect()
    }

    /// The cache artifact's manifest for this index, whose JSON ([`CacheIndex::to_json`])
    /// is the blob `index_digest` of `index_size` bytes: an OCI image manifest with
    /// `artifactType` [`CACHE_ARTIFACT_TYPE`], the index as its config and the layers as its
    /// layers (image-spec manifest.md "Guidelines for Artifact Usage", case 3: a config of our
    /// own media type, so no tool mistakes it for an image config).
    pub fn artifact_manifest(
        &self,
        index_digest: &Digest,
        index_size: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": CACHE_ARTIFACT_TYPE,
            "config": {
                "mediaType": CACHE_INDEX_MEDIA_TYPE,
                "digest": index_digest.to_string(),
                "size": index_size,
            },
            "layers": self.layers(),
        });
        serde_json::to_vec(&manifest)
            .map_err(|source| StoreError::Serialize { what: "cache manifest", source })
    }

    /// Parses a document [`CacheIndex::to_json`] wrote. Another version is
    /// [`StoreError::CacheIndexVersion`], anything else unreadable
    /// [`StoreError::InvalidCacheIndex`]: never a partial index.
    pub fn from_json(bytes: &[u8]) -> Result<CacheIndex, StoreError> {
        let v: IndexVersion = serde_json::from_slice(bytes)
            .map_err(|source| StoreError::InvalidCacheIndex { source })?;
        if v.version != CACHE_INDEX_VERSION {
            return Err(StoreError::CacheIndexVersion {
                found: v.version,
                supported: CACHE_INDEX_VERSION,
            });
        }
        let file: IndexFile = serde_json::from_slice(bytes)
            .map_err(|source| StoreError::InvalidCacheIndex { source })?;
        let mut entries = BTreeMap::new();
        for e in file.entries {
            // A descriptor whose digest does not parse as ours cannot be fetched: refuse the
            // whole index rather than guess.
            Digest::try_from(e.layer.digest())?;
            entries.insert(
                CacheKey { kind: e.kind, digest: e.key },
                CacheEntry { layer: e.layer, diff_id: e.diff_id },
            );
        }
        let mut mounts = BTreeMap::new();
        for m in file.mounts {
            let mut chain = Vec::with_capacity(m.layers.len());
            for l in m.layers {
                Digest::try_from(l.layer.digest())?;
                chain.push(CacheEntry { layer: l.layer, diff_id: l.diff_id });
            }
            if chain.is_empty() {
                return Err(StoreError::InvalidCacheIndex {
                    source: serde::de::Error::custom(format!(
                        "cache mount {:?} has no layers",
                        m.id
                    )),
                });
            }
            mounts.insert(m.id, chain);
        }
        let mut tocs = BTreeMap::new();
        for t in file.tocs {
            Digest::try_from(t.toc.digest())?;
            tocs.insert(t.diff_id, t.toc);
        }
        let mut base_layers = BTreeMap::new();
        for l in file.base_layers {
            Digest::try_from(l.layer.digest())?;
            base_layers.insert(l.diff_id, l.layer);
        }
        Ok(CacheIndex { entries, mounts, tocs, base_layers })
    }
}

/// Removes entries whose layer blob is gone (and anything in the index that is not an entry).
pub(crate) fn sweep_build_cache(store: &Store) -> Result<usize, StoreError> {
    let root = store.meta_dir().join(DIR);
    let Some(kinds) = read_dir_if_exists(&root)? else { return Ok(0) };
    let mut removed = 0;
    for kind in kinds {
        let kind = kind.map_err(StoreError::io(&root))?.path();
        let Ok(entries) = fs::read_dir(&kind) else { continue };
        for entry in entries {
            let path = entry.map_err(StoreError::io(&kind))?.path();
            if !path.is_file() {
                continue;
            }
            let keep = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<EntryFile>(&b).ok())
                .is_some_and(|e| store.has_blob(&e.digest));
            if !keep && remove_file_if_exists(&path)? {
                removed += 1;
            }
        }
    }
    // A step pointer whose entry is gone still explains the next miss of its step ("its
    // cached layer is gone") for a while; after [`STEP_POINTER_GRACE`] it goes too, so
    // pointers of contexts never built again do not pile up.
    let steps = store.meta_dir().join(STEPS_DIR);
    let now = std::time::SystemTime::now();
    for pointer in read_dir_if_exists(&steps)?.into_iter().flatten() {
        let path = pointer.map_err(StoreError::io(&steps))?.path();
        let age = fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        if age < STEP_POINTER_GRACE {
            continue;
        }
        let live = fs::read_to_string(&path).ok().and_then(|t| {
            let (kind, hex) = t.trim().split_once('/')?;
            let key =
                CacheKey { kind: CacheKind::parse_dir(kind)?, digest: Digest::from_hex(hex).ok()? };
            Some(store.cache_entry_path(&key).is_file())
        });
        if live != Some(true) {
            remove_file_if_exists(&path)?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> CacheIndex {
        let layer_digest = Digest::of_bytes(b"layer");
        let layer = Descriptor::new(MediaType::ImageLayerZstd, 5, layer_digest);
        let mut entries = BTreeMap::new();
        entries.insert(
            CacheKey { kind: CacheKind::Run, digest: Digest::of_bytes(b"key") },
            CacheEntry { layer, diff_id: Digest::of_bytes(b"diff") },
        );
        let mut mounts = BTreeMap::new();
        let mount_layer = Descriptor::new(MediaType::ImageLayerZstd, 7, Digest::of_bytes(b"m1"));
        mounts.insert(
            "go-build".to_string(),
            vec![CacheEntry { layer: mount_layer, diff_id: Digest::of_bytes(b"m1 tar") }],
        );
        CacheIndex { entries, mounts, tocs: BTreeMap::new(), base_layers: BTreeMap::new() }
    }

    #[test]
    fn cache_index_round_trips_through_its_json() {
        let i = index();
        assert_eq!(CacheIndex::from_json(&i.to_json().unwrap()).unwrap(), i);
    }

    #[test]
    fn an_index_without_mounts_reads_as_before_and_layers_include_the_mount_chains() {
        let json = r#"{"version":1,"entries":[]}"#;
        let i = CacheIndex::from_json(json.as_bytes()).unwrap();
        assert!(i.mounts.is_empty());
        assert_eq!(String::from_utf8(i.to_json().unwrap()).unwrap(), json);
        let i = index();
        let layers: Vec<String> = i.layers().iter().map(|d| d.digest().to_string()).collect();
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[1], Digest::of_bytes(b"m1").to_string());
        let empty = r#"{"version":1,"entries":[],"mounts":[{"id":"x","layers":[]}]}"#;
        assert!(matches!(
            CacheIndex::from_json(empty.as_bytes()),
            Err(StoreError::InvalidCacheIndex { .. })
        ));
    }

    #[test]
    fn cache_index_of_another_version_is_refused_by_name() {
        let json = String::from_utf8(index().to_json().unwrap()).unwrap();
        let v2 = json.replace("\"version\":1", "\"version\":2");
        assert!(matches!(
            CacheIndex::from_json(v2.as_bytes()),
            Err(StoreError::CacheIndexVersion { found: 2, .. })
        ));
        assert!(matches!(
            CacheIndex::from_json(b"{\"version\":1,\"entries\":[{}]}"),
            Err(StoreError::InvalidCacheIndex { .. })
        ));
        assert!(matches!(
            CacheIndex::from_json(b"not json"),
            Err(StoreError::InvalidCacheIndex { .. })
        ));
    }
}
