//! Two tables of hints, which may be lost at any time without harm: where blobs were seen in
//! registries, and the context stat-hash cache of strata-build.

use std::fs;
use std::path::PathBuf;

use strata_types::Digest;

use crate::blob::{remove_file_if_exists, write_atomic};
use crate::error::StoreError;
use crate::gc::read_dir_if_exists;
use crate::store::Store;

/// Versioned directory of the blob-location records under `strata/v1/`.
const LOCATIONS_DIR: &str = "registry-v1/blobs";
/// At most this many locations are kept per blob (the newest).
const MAX_LOCATIONS: usize = 32;
/// Versioned directory of the context stat-hash caches under `strata/v1/`.
const CONTEXT_DIR: &str = "hashes-v1";

impl Store {
    fn location_path(&self, digest: &Digest) -> PathBuf {
        self.meta_dir().join(LOCATIONS_DIR).join(digest.hex())
    }

    /// Where `digest` was seen (`registry/repository`), newest last: strata-registry's mount
    /// hints (distribution-spec, "Mounting a blob from another repository", needs a
    /// repository that holds the blob). One file per blob, a location per line.
    pub fn blob_locations(&self, digest: &Digest) -> Vec<String> {
        fs::read_to_string(self.location_path(digest))
            .map(|text| text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Records that `digest` lives at `location` (`registry/repository`), keeping the newest
    /// 32 of each blob.
    pub fn record_blob_location(&self, digest: &Digest, location: &str) -> Result<(), StoreError> {
        let mut known = self.blob_locations(digest);
        if known.last().is_some_and(|l| l == location) {
            return Ok(());
        }
        known.retain(|l| l != location);
        known.push(location.to_owned());
        let skip = known.len().saturating_sub(MAX_LOCATIONS);
        let mut text = known[skip..].join("\n");
        text.push('\n');
        let path = self.location_path(digest);
        self.write_table_file(&path, text.as_bytes())
    }

    /// The context stat-hash cache saved under `key` (strata-build's format, opaque here).
    pub fn context_cache(&self, key: &Digest) -> Option<Vec<u8>> {
        fs::read(self.meta_dir().join(CONTEXT_DIR).join(key.hex())).ok()
    }

    /// Replaces the context stat-hash cache saved under `key`.
    pub fn put_context_cache(&self, key: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.meta_dir().join(CONTEXT_DIR).join(key.hex());
        self.write_table_file(&path, bytes)
    }

    /// Writes a table file atomically, creating its directory.
    fn write_table_file(&self, path: &std::path::Path, bytes: &[u8]) -> Result<(), StoreError> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
        }
        self.ensure_meta_dirs()?;
        write_atomic(&self.tmp_dir(), path, bytes)
    }
}

/// Removes the records of blobs this store no longer holds, so they do not outgrow the
/// store. Files with other names are left alone.
pub(crate) fn sweep_blob_locations(store: &Store) -> Result<usize, StoreError> {
    let dir = store.meta_dir().join(LOCATIONS_DIR);
    let Some(entries) = read_dir_if_exists(&dir)? else { return Ok(0) };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(StoreError::io(&dir))?;
        let Some(digest) = entry.file_name().to_str().and_then(|n| Digest::from_hex(n).ok()) else {
            continue;
        };
        if !store.has_blob(&digest) && remove_file_if_exists(&entry.path())? {
            removed += 1;
        }
    }
    Ok(removed)
}
