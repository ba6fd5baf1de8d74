//! The build cache index: which layer a build step produced, by the step's cache key.
//!
//! strata-build computes a step's key (a digest of everything the step's result depends on);
//! the store keeps `key -> layer` entries as small JSON files, one per key, under
//! `strata/v1/cache-v1/<kind>/<key-hex>`, written atomically. The index is not a gc root: an
//! entry lives exactly as long as its layer blob (gc drops the rest), and an entry whose blob
//! is gone is a miss, never an error. A change of this entry format needs a new directory
//! version.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// The file format of an entry.
#[derive(Serialize, Deserialize)]
struct EntryFile {
    digest: Digest,
    diff_id: Digest,
    size: u64,
    media_type: String,
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
        if self.blob_size(&e.digest).ok()? != e.size {
            return None;
        }
        let layer = Descriptor::new(MediaType::from(e.media_type.as_str()), e.size, e.digest);
        Some(CacheEntry { layer, diff_id: e.diff_id })
    }

    /// Records `entry` as the result of `key` (atomically; a later put replaces it).
    pub fn cache_put(&self, key: &CacheKey, entry: &CacheEntry) -> Result<(), StoreError> {
        let digest = Digest::try_from(entry.layer.digest())?;
        let file = EntryFile {
            digest,
            diff_id: entry.diff_id,
            size: entry.layer.size(),
            media_type: entry.layer.media_type().to_string(),
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
    Ok(removed)
}
