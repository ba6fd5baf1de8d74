//! `index.json`: reading it, and updating it under the store lock.
//!
//! image-layout.md ("index.json file") makes `index.json` the entry point of the layout: an
//! image index whose `manifests` are the layout's roots. Tags are entries carrying the
//! `org.opencontainers.image.ref.name` annotation (annotations.md, "Pre-Defined Annotation
//! Keys"). Updates are read-modify-write, so they are serialized by an exclusive `flock` on
//! `<root>/strata/v1/lock` and land by atomic rename; readers take no lock and always see either
//! the old or the new file.

use std::fs::{self, File};
use std::io;

use oci_spec::image::{ImageIndex, ImageIndexBuilder, MediaType, SCHEMA_VERSION};
use rustix::fs::{flock, FlockOperation};

use crate::error::{FileDamage, StoreError};
use crate::store::Store;

/// Annotation key naming a tag in `index.json` (annotations.md).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

pub(crate) fn empty_index() -> Result<ImageIndex, StoreError> {
    ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(Vec::new())
        .build()
        .map_err(|e| match e {
            oci_spec::OciSpecError::SerDe(source) => {
                StoreError::Serialize { what: "index.json", source }
            }
            other => StoreError::Serialize {
                what: "index.json",
                source: serde::ser::Error::custom(other.to_string()),
            },
        })
}

pub(crate) fn empty_index_bytes() -> Result<Vec<u8>, StoreError> {
    index_bytes(&empty_index()?)
}

fn index_bytes(index: &ImageIndex) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(index).map_err(|source| StoreError::Serialize { what: "index.json", source })
}

/// Holds the store's exclusive lock until dropped (closing the file releases the `flock`).
#[derive(Debug)]
pub(crate) struct StoreLock {
    _file: File,
}

impl Store {
    /// Reads and parses `index.json`; a missing or unparseable one is
    /// [`StoreError::DamagedFile`] ([`Store::fsck`] with `repair` rebuilds it from the tag
    /// records).
    pub fn read_index(&self) -> Result<ImageIndex, StoreError> {
        self.read_index_with_bytes().map(|(index, _)| index)
    }

    /// [`Store::read_index`], and the bytes it was parsed from.
    fn read_index_with_bytes(&self) -> Result<(ImageIndex, Vec<u8>), StoreError> {
        let path = self.index_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::DamagedFile { path, problem: FileDamage::Missing })
            }
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        match serde_json::from_slice(&bytes) {
            Ok(index) => Ok((index, bytes)),
            Err(e) => Err(StoreError::DamagedFile { path, problem: FileDamage::Unparseable(e) }),
        }
    }

    /// Takes the exclusive store lock (blocking until other updaters are done).
    pub(crate) fn lock(&self) -> Result<StoreLock, StoreError> {
        self.ensure_meta_dirs()?;
        let path = self.lock_path();
        let file = crate::store::open_lock_file(&path)?;
        flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| StoreError::Io { path, source: e.into() })?;
        Ok(StoreLock { _file: file })
    }

    /// Read-modify-write of `index.json` under the store lock. `f` may fail, in which case
    /// nothing is written. The tag records follow `index.json` (see the `tag_records` module).
    /// An update that leaves the bytes as they were (a rebuild tagging the same image again)
    /// writes no `index.json`: a no-op build costs no fsync.
    pub(crate) fn update_index<T>(
        &self,
        f: impl FnOnce(&mut ImageIndex) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let lock = self.lock()?;
        let (mut index, before) = self.read_index_with_bytes()?;
        let out = f(&mut index)?;
        self.put_index_locked(&lock, &index, Some(&before))?;
        Ok(out)
    }

    /// Replaces `index.json` atomically, then brings the tag records in step with it and
    /// marks the store as being in the current format. The caller holds the store lock.
    pub(crate) fn write_index_locked(
        &self,
        lock: &StoreLock,
        index: &ImageIndex,
    ) -> Result<usize, StoreError> {
        self.put_index_locked(lock, index, None)
    }

    /// [`Store::write_index_locked`], skipping the write of `index.json` when its bytes
    /// would be `unless` (what the file holds now); the tag records and the format mark are
    /// still brought in step.
    fn put_index_locked(
        &self,
        _lock: &StoreLock,
        index: &ImageIndex,
        unless: Option<&[u8]>,
    ) -> Result<usize, StoreError> {
        let bytes = index_bytes(index)?;
        if unless != Some(bytes.as_slice()) {
            self.write_file_atomic(&self.index_path(), &bytes)?;
        }
        let changed = self.sync_tag_records(index)?;
        if self.read_format().ok() != Some(crate::store::STORE_FORMAT) {
            self.write_format()?;
        }
        Ok(changed)
    }
}
