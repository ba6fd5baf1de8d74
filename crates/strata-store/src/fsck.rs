//! Consistency check: re-hash every blob, follow every reference.
//!
//! [`Store::fsck`] reads every file in `blobs/sha256/` (in parallel) and compares its hash with
//! its name, then walks from each `index.json` entry through manifests and indexes checking that
//! every referenced blob exists with the size its descriptor states and that every manifest
//! parses. Problems are collected into a [`FsckReport`] rather than returned as errors, so one
//! bad blob does not hide the others. With `repair`, blobs whose bytes do not match their name
//! are deleted (they can never be valid), and images that need a deleted or missing blob are
//! untagged into lost+found (see the `lost_found` module), to be fetched or rebuilt again.
//!
//! fsck also checks the store's own metadata, and repairs it: a missing or unparseable
//! `index.json` is rebuilt from the tag records (the `tag_records` module), tag records are
//! brought in step with `index.json` (created for a store older than them), and a damaged
//! format file is rewritten. It runs on a store that [`Store::open`] refuses for such damage;
//! open it with [`Store::open_for_repair`].

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::PathBuf;

use rayon::prelude::*;

use crate::blob::remove_file_if_exists;
use crate::error::StoreError;
use crate::gc::{children_of, is_manifest_like};
use crate::image::ref_name;
use crate::lost_found::LostImage;
use crate::store::Store;
use strata_types::{Digest, Hasher};

fn lost_image(
    entry: &oci_spec::image::Descriptor,
    missing: Vec<Digest>,
    untagged_at: u64,
) -> LostImage {
    LostImage {
        name: ref_name(entry).map(str::to_owned),
        descriptor: entry.clone(),
        missing,
        untagged_at,
    }
}

/// Where a reference checked by fsck came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Referrer {
    /// An entry of `index.json`.
    Index,
    /// A descriptor inside this manifest or index blob.
    Blob(Digest),
}

impl fmt::Display for Referrer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Referrer::Index => f.write_str("index.json"),
            Referrer::Blob(d) => write!(f, "{d}"),
        }
    }
}

/// One inconsistency found by [`Store::fsck`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FsckProblem {
    /// A blob's bytes do not hash to its file name.
    CorruptBlob {
        /// The name (expected digest).
        digest: Digest,
        /// What the bytes hash to.
        found: Digest,
    },
    /// A descriptor points at a blob that is not in the store.
    MissingBlob {
        /// The absent blob.
        digest: Digest,
        /// Who refers to it.
        referenced_by: Referrer,
    },
    /// A descriptor's size differs from the blob's.
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// Who refers to it.
        referenced_by: Referrer,
        /// The size in the descriptor.
        expected: u64,
        /// The blob's actual size.
        found: u64,
    },
    /// A descriptor's digest is not a sha256 digest this store can hold.
    InvalidDigest {
        /// The digest string as written.
        digest: String,
        /// Who refers to it.
        referenced_by: Referrer,
    },
    /// A manifest or index blob does not parse as JSON.
    InvalidManifest {
        /// The blob.
        digest: Digest,
        /// The parser's message (line and column).
        reason: String,
    },
    /// A metadata file of the store (`index.json`, a tag record, the format file, lost+found)
    /// is missing or does not parse.
    DamagedFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file in `blobs/sha256/` whose name is not a digest.
    StrayFile {
        /// Its path.
        path: PathBuf,
    },
}

impl fmt::Display for FsckProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsckProblem::CorruptBlob { digest, found } => {
                write!(f, "blob {digest} is corrupt: content hashes to {found}")
            }
            FsckProblem::MissingBlob { digest, referenced_by } => {
                write!(f, "blob {digest} referenced by {referenced_by} is missing")
            }
            FsckProblem::SizeMismatch { digest, referenced_by, expected, found } => write!(
                f,
                "blob {digest} referenced by {referenced_by} has {found} bytes, descriptor says {expected}"
            ),
            FsckProblem::InvalidDigest { digest, referenced_by } => {
                write!(f, "{referenced_by} refers to invalid digest {digest:?}")
            }
            FsckProblem::InvalidManifest { digest, reason } => {
                write!(f, "manifest {digest} does not parse: {reason}")
            }
            FsckProblem::DamagedFile { path, reason } => {
                write!(f, "{} is damaged: {reason}", path.display())
            }
            FsckProblem::StrayFile { path } => {
                write!(f, "{} is not named by a digest", path.display())
            }
        }
    }
}

/// Outcome of [`Store::fsck`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Blobs re-hashed.
    pub blobs_checked: usize,
    /// Bytes re-hashed.
    pub bytes_checked: u64,
    /// Everything found wrong, in the order found.
    pub problems: Vec<FsckProblem>,
    /// Corrupt blobs deleted (only with `repair`).
    pub removed: Vec<Digest>,
    /// Side-table entries that named a blob the store no longer holds (build cache, layer
    /// index, blob locations) and were dropped (only with `repair`). They are hints, never
    /// problems: a lookup checks the blob anyway.
    pub table_entries_dropped: usize,
    /// Images that reach a missing or corrupt blob. With `repair` they were untagged (removed
    /// from `index.json`) and appended to lost+found ([`Store::lost_and_found`]).
    pub damaged_images: Vec<LostImage>,
    /// With `repair`, when `index.json` was missing or unparseable: the number of tags it was
    /// rebuilt with, from the tag records.
    pub index_rebuilt: Option<usize>,
    /// With `repair`, where the bytes of the damaged `index.json` were kept before it was
    /// rebuilt (`None` when it was missing): nothing is thrown away, in case it held more
    /// than the records.
    pub damaged_index_kept: Option<PathBuf>,
    /// Tag records written or deleted to match `index.json` (only with `repair`).
    pub tag_records_written: usize,
}

impl FsckReport {
    /// `true` if no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Store {
    /// Checks the whole store; with `repair`, deletes corrupt blobs, untags the images that
    /// need missing blobs into lost+found, rebuilds a damaged `index.json` from the tag records
    /// and brings the records in step. Errors only when the store cannot be read at all (I/O
    /// errors, a store of a newer format).
    pub fn fsck(&self, repair: bool) -> Result<FsckReport, StoreError> {
        let mut report = FsckReport::default();
        let damaged = |path, reason: String| FsckProblem::DamagedFile { path, reason };
        let mut format_damaged = false;
        match self.read_format() {
            Ok(_) => {}
            Err(StoreError::DamagedFile { path, problem }) => {
                report.problems.push(damaged(path, problem.to_string()));
                format_damaged = true;
            }
            Err(e) => return Err(e),
        }
        for (path, reason) in self.read_tag_records()?.damaged {
            report.problems.push(damaged(path, reason));
        }
        // A damaged index.json is checked as the records would rebuild it.
        let index = match self.read_index() {
            Ok(index) => index,
            Err(StoreError::DamagedFile { path, problem }) => {
                report.problems.push(damaged(path, problem.to_string()));
                self.index_from_records()?.0
            }
            Err(e) => return Err(e),
        };
        if let Err(StoreError::DamagedFile { path, problem }) = self.lost_and_found() {
            report.problems.push(damaged(path, problem.to_string()));
        }
        let dir = self.blob_dir();
        let mut blobs = Vec::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let entry = entry.map_err(StoreError::io(&dir))?;
            match entry.file_name().to_str().and_then(|n| Digest::from_hex(n).ok()) {
                Some(d) => blobs.push(d),
                None => report.problems.push(FsckProblem::StrayFile { path: entry.path() }),
            }
        }
        blobs.sort();
        let hashed: Vec<_> = blobs.par_iter().map(|d| (*d, self.hash_blob(d))).collect();
        let mut corrupt = BTreeSet::new();
        for (digest, result) in hashed {
            let (found, size) = match result {
                Ok(r) => r,
                // Deleted between listing and hashing (a concurrent gc): not a problem.
                Err(StoreError::BlobNotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            report.blobs_checked += 1;
            report.bytes_checked += size;
            if found != digest {
                corrupt.insert(digest);
                report.problems.push(FsckProblem::CorruptBlob { digest, found });
                if repair && remove_file_if_exists(&self.blob_path(&digest))? {
                    report.removed.push(digest);
                }
            }
        }
        // Walk references from index.json.
        let mut pending: Vec<(Referrer, String, String, u64)> = index
            .manifests()
            .iter()
            .map(|m| {
                (Referrer::Index, m.digest().to_string(), m.media_type().to_string(), m.size())
            })
            .collect();
        let mut visited = BTreeSet::new();
        while let Some((referenced_by, digest_str, media_type, size)) = pending.pop() {
            let Ok(digest) = digest_str.parse::<Digest>() else {
                report
                    .problems
                    .push(FsckProblem::InvalidDigest { digest: digest_str, referenced_by });
                continue;
            };
            let found = match self.blob_size(&digest) {
                Ok(found) => found,
                Err(StoreError::BlobNotFound { .. }) => {
                    // A corrupt blob just removed by repair was reported already.
                    if !corrupt.contains(&digest) {
                        report.problems.push(FsckProblem::MissingBlob { digest, referenced_by });
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if found != size {
                report.problems.push(FsckProblem::SizeMismatch {
                    digest,
                    referenced_by,
                    expected: size,
                    found,
                });
            }
            if corrupt.contains(&digest)
                || !is_manifest_like(&media_type)
                || !visited.insert(digest)
            {
                continue;
            }
            let bytes = fs::read(self.blob_path(&digest))
                .map_err(StoreError::io(self.blob_path(&digest)))?;
            match children_of(&bytes) {
                Ok(children) => pending.extend(children.into_iter().map(|c| {
                    let digest_str = match &c.digest {
                        Ok(d) => d.to_string(),
                        Err(e) => e.input.clone(),
                    };
                    (Referrer::Blob(digest), digest_str, c.media_type, c.size)
                })),
                Err(e) => report
                    .problems
                    .push(FsckProblem::InvalidManifest { digest, reason: e.to_string() }),
            }
        }
        if repair {
            self.repair_index(&mut report, format_damaged)?;
            // Every side table that names blobs: entries whose blob a repair (or anything
            // else) removed go, as gc would drop them.
            report.table_entries_dropped = crate::tables::sweep_build_cache(self)?
                + crate::tables::sweep_blob_locations(self)?
                + self.sweep_layer_index()?;
        } else {
            for entry in index.manifests() {
                let missing = self.damaged_blobs(entry, &corrupt)?;
                if !missing.is_empty() {
                    report.damaged_images.push(lost_image(entry, missing, 0));
                }
            }
        }
        Ok(report)
    }

    /// The repairs of `index.json` and its companions, under the store lock, on the index as
    /// it is now (another process may have tagged since the checks began): rebuild it from the
    /// tag records if damaged, untag images whose blobs are gone into lost+found, and bring the
    /// tag records and the format file in step.
    fn repair_index(
        &self,
        report: &mut FsckReport,
        format_damaged: bool,
    ) -> Result<(), StoreError> {
        let lock = self.lock()?;
        let (mut index, mut rewrite) = match self.read_index() {
            Ok(index) => (index, false),
            Err(StoreError::DamagedFile { .. }) => {
                let (index, _) = self.index_from_records()?;
                report.index_rebuilt = Some(index.manifests().len());
                report.damaged_index_kept = self.keep_damaged_index()?;
                (index, true)
            }
            Err(e) => return Err(e),
        };
        let untagged_at = crate::lost_found::now_secs();
        let mut kept = Vec::new();
        let mut lost = Vec::new();
        for entry in index.manifests() {
            // Corrupt blobs are deleted by now: missing is all there is.
            let missing = self.missing_blobs(entry)?;
            if missing.is_empty() {
                kept.push(entry.clone());
            } else {
                lost.push(lost_image(entry, missing, untagged_at));
            }
        }
        if !lost.is_empty() {
            // lost+found first: a kill before index.json is written lists an image still
            // tagged, which the next repair finds again, rather than losing one untracked.
            self.add_lost(&lock, &lost)?;
            index.set_manifests(kept);
            rewrite = true;
        }
        report.damaged_images = lost;
        if rewrite {
            report.tag_records_written = self.write_index_locked(&lock, &index)?;
        } else {
            report.tag_records_written = self.sync_tag_records(&index)?;
            if format_damaged || !matches!(self.read_format(), Ok(crate::store::STORE_FORMAT)) {
                self.write_format()?;
            }
        }
        Ok(())
    }

    /// Moves a damaged `index.json` to `strata/v1/damaged/index.json.<unix seconds>` (the
    /// caller holds the store lock); `None` if there is none.
    fn keep_damaged_index(&self) -> Result<Option<PathBuf>, StoreError> {
        let index = self.index_path();
        if !index.exists() {
            return Ok(None);
        }
        let dir = self.meta_dir().join("damaged");
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        let mut kept = dir.join(format!("index.json.{}", crate::lost_found::now_secs()));
        let mut n = 1;
        while kept.exists() {
            kept = dir.join(format!("index.json.{}.{n}", crate::lost_found::now_secs()));
            n += 1;
        }
        fs::rename(&index, &kept).map_err(StoreError::io(&index))?;
        crate::blob::sync_dir(&dir)?;
        crate::blob::sync_dir(self.root())?;
        Ok(Some(kept))
    }

    /// Streams a blob through SHA-256; returns (hash, size).
    fn hash_blob(&self, d: &Digest) -> Result<(Digest, u64), StoreError> {
        let path = self.blob_path(d);
        let mut file: File = self.open_blob(d)?;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    size += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::Io { path, source: e }),
            }
        }
        Ok((hasher.finish(), size))
    }
}
