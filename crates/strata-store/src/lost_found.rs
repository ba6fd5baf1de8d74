//! Damaged images and lost+found: what `fsck --repair` untagged because blobs are gone.
//!
//! An image is damaged when a blob it reaches (manifest, config, a layer, a platform's manifest)
//! is missing from `blobs/sha256/`: deleted by hand, or removed by [`Store::fsck`] because its
//! bytes no longer matched its name. Such an image cannot be exported, pushed or built on, so
//! a tag naming it is a lie. [`Store::missing_blobs`] finds the missing blobs cheaply (existence
//! only, no re-hash), for listings to mark the image; [`Store::fsck`] with `repair` untags it
//! and appends a [`LostImage`] to `<root>/strata/v1/lost+found.json` (`{"lost":[...]}`, oldest
//! first), written atomically like every metadata file. The record keeps the whole `index.json`
//! entry, so once the missing blobs are fetched again the manifest can be re-tagged by digest.
//! lost+found is not a gc root: the surviving blobs of a lost image are freed by the next gc,
//! as an untagged image's are; the record stays until removed by hand.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::Descriptor;
use serde::{Deserialize, Serialize};

use crate::error::{FileDamage, StoreError};
use crate::gc::{children_of, is_manifest_like};
use crate::index::StoreLock;
use crate::store::Store;
use strata_types::Digest;

/// File name of the lost+found list under `strata/v1/`.
const LOST_FOUND_FILE: &str = "lost+found.json";

/// An image `fsck --repair` untagged because blobs it needs are gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostImage {
    /// The tag it had (`name:tag`), or `None` for an untagged `index.json` entry.
    pub name: Option<String>,
    /// Its `index.json` entry (the manifest or index descriptor).
    pub descriptor: Descriptor,
    /// The blobs it reaches that are missing (or were corrupt), sorted.
    pub missing: Vec<Digest>,
    /// When it was untagged, in seconds since the Unix epoch (0 if not untagged yet).
    #[serde(rename = "untaggedAt")]
    pub untagged_at: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct LostFoundFile {
    lost: Vec<LostImage>,
}

impl Store {
    fn lost_found_path(&self) -> PathBuf {
        self.meta_dir().join(LOST_FOUND_FILE)
    }

    /// The images [`Store::fsck`] untagged so far, oldest first (see the `lost_found` module).
    pub fn lost_and_found(&self) -> Result<Vec<LostImage>, StoreError> {
        let path = self.lost_found_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let file: LostFoundFile = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::DamagedFile { path, problem: FileDamage::Unparseable(e) })?;
        Ok(file.lost)
    }

    /// Appends `lost` to lost+found (the caller holds the store lock); an entry already listed
    /// (same name and digest) is not repeated. A damaged list is replaced: it only said what was
    /// lost before, and fsck reported it.
    pub(crate) fn add_lost(&self, _lock: &StoreLock, lost: &[LostImage]) -> Result<(), StoreError> {
        let mut all = match self.lost_and_found() {
            Ok(all) => all,
            Err(StoreError::DamagedFile { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        for l in lost {
            let same =
                |o: &LostImage| o.name == l.name && o.descriptor.digest() == l.descriptor.digest();
            if !all.iter().any(same) {
                all.push(l.clone());
            }
        }
        let bytes = serde_json::to_vec_pretty(&LostFoundFile { lost: all })
            .map_err(|source| StoreError::Serialize { what: "lost+found", source })?;
        self.write_file_atomic(&self.lost_found_path(), &bytes)
    }

    /// The blobs reachable from `descriptor` (an `index.json` entry: a manifest or an index)
    /// that are not in the store, sorted. Only existence is checked; [`Store::fsck`] re-hashes.
    /// Empty means the image is whole as far as the blob directory can tell.
    pub fn missing_blobs(&self, descriptor: &Descriptor) -> Result<Vec<Digest>, StoreError> {
        self.damaged_blobs(descriptor, &BTreeSet::new())
    }

    /// [`Store::missing_blobs`], counting the blobs in `corrupt` as missing too.
    pub(crate) fn damaged_blobs(
        &self,
        descriptor: &Descriptor,
        corrupt: &BTreeSet<Digest>,
    ) -> Result<Vec<Digest>, StoreError> {
        let mut missing = BTreeSet::new();
        let mut visited = BTreeSet::new();
        let mut pending =
            vec![(descriptor.digest().to_string(), descriptor.media_type().to_string())];
        while let Some((digest, media_type)) = pending.pop() {
            // A malformed digest is fsck's InvalidDigest, not a missing blob.
            let Ok(digest) = digest.parse::<Digest>() else { continue };
            if !visited.insert(digest) {
                continue;
            }
            if corrupt.contains(&digest) || !self.has_blob(&digest) {
                missing.insert(digest);
                continue;
            }
            if !is_manifest_like(&media_type) {
                continue;
            }
            let path = self.blob_path(&digest);
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    missing.insert(digest);
                    continue;
                }
                Err(e) => return Err(StoreError::Io { path, source: e }),
            };
            // A manifest that does not parse is fsck's InvalidManifest.
            let Ok(children) = children_of(&bytes) else { continue };
            for child in children {
                let digest = match child.digest {
                    Ok(d) => d.to_string(),
                    Err(e) => e.input,
                };
                pending.push((digest, child.media_type));
            }
        }
        Ok(missing.into_iter().collect())
    }
}

/// Seconds since the Unix epoch, for [`LostImage::untagged_at`].
pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}
