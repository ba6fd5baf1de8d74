//! The layer index: which stored blob holds a given diffID in a given compression.
//!
//! A layer has two names: its diffID (sha256 of the uncompressed tar, what image configs list)
//! and its digest (sha256 of the compressed blob, what manifests and the blob directory use).
//! Computing a diffID only needs a tar stream and a hash; computing a digest also needs the
//! compressor. Recording `diffID + compression -> digest, size` lets a writer that has just
//! hashed a tar learn that the compressed blob is already stored, and skip compressing and
//! writing it. Entries live in `<root>/strata/v1/layers/<diffid-hex>.<compression>` as one line
//! `sha256:<hex> <size>`; they are hints, checked against the blob directory on every lookup,
//! and `gc` drops those whose blob is gone.

use std::fs;
use std::io;
use std::path::PathBuf;

use crate::blob::write_atomic;
use crate::error::StoreError;
use crate::gc::read_dir_if_exists;
use crate::store::Store;
use strata_types::Digest;

/// A stored blob holding a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownLayer {
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Store {
    /// `<root>/strata/v1/layers`.
    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.meta_dir().join("layers")
    }

    fn layer_entry_path(&self, diff_id: &Digest, key: &str) -> Result<PathBuf, StoreError> {
        if !valid_key(key) {
            return Err(StoreError::InvalidLocation {
                input: key.to_string(),
                reason: "layer index keys are letters, digits, '-' and '_'",
            });
        }
        Ok(self.layers_dir().join(format!("{}.{key}", diff_id.hex())))
    }

    /// Records that blob `digest` (`size` bytes, already in the store) is layer `diff_id`
    /// compressed as `key` (e.g. `zstd`).
    pub fn record_layer(
        &self,
        diff_id: &Digest,
        key: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<(), StoreError> {
        let path = self.layer_entry_path(diff_id, key)?;
        let dir = self.layers_dir();
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        fs::create_dir_all(self.tmp_dir()).map_err(StoreError::io(self.tmp_dir()))?;
        write_atomic(&self.tmp_dir(), &path, format!("{digest} {size}\n").as_bytes())
    }

    /// The blob recorded for `diff_id` in compression `key`, if it is still in the store with
    /// the recorded size. A malformed or stale entry is ignored (it is only a hint).
    pub fn find_layer(
        &self,
        diff_id: &Digest,
        key: &str,
    ) -> Result<Option<KnownLayer>, StoreError> {
        let path = self.layer_entry_path(diff_id, key)?;
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let mut parts = text.split_whitespace();
        let (Some(Ok(digest)), Some(Ok(size))) =
            (parts.next().map(str::parse::<Digest>), parts.next().map(str::parse::<u64>))
        else {
            return Ok(None);
        };
        // Pinned (when leased) before the check, so gc cannot take the blob after it.
        self.with_pins(&[digest, *diff_id], || match self.blob_size(&digest) {
            Ok(found) if found == size => Ok(Some(KnownLayer { digest, size })),
            _ => Ok(None),
        })
    }

    /// Removes index entries whose blob is gone; returns how many. Called by `gc`.
    pub(crate) fn sweep_layer_index(&self) -> Result<usize, StoreError> {
        let dir = self.layers_dir();
        let Some(entries) = read_dir_if_exists(&dir)? else { return Ok(0) };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(StoreError::io(&dir))?;
            let path = entry.path();
            let keep = fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.split_whitespace().next().and_then(|d| d.parse::<Digest>().ok()))
                .is_some_and(|d| self.has_blob(&d));
            if !keep {
                match fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::Io { path, source: e }),
                }
            }
        }
        Ok(removed)
    }
}
