//! Consistency check: re-hash every blob, follow every reference.
//!
//! [`Store::fsck`] reads every file in `blobs/sha256/` (in parallel) and compares its hash with
//! its name, then walks from each `index.json` entry through manifests and indexes checking that
//! every referenced blob exists with the size its descriptor states and that every manifest
//! parses. Problems are collected into a [`FsckReport`] rather than returned as errors, so one
//! bad blob does not hide the others. With `repair`, blobs whose bytes do not match their name
//! are deleted (they can never be valid); references to them then show up as missing, to be
//! fetched or rebuilt again.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::PathBuf;

use rayon::prelude::*;

use crate::blob::remove_file_if_exists;
use crate::error::StoreError;
use crate::gc::{children_of, is_manifest_like};
use crate::store::Store;
use strata_types::{Digest, Hasher};

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
}

impl FsckReport {
    /// `true` if no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Store {
    /// Checks the whole store; with `repair`, deletes corrupt blobs. Errors only when the store
    /// itself cannot be read (e.g. `index.json` is unreadable or corrupt).
    pub fn fsck(&self, repair: bool) -> Result<FsckReport, StoreError> {
        let index = self.read_index()?;
        let mut report = FsckReport::default();
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
            // Every side table that names blobs: entries whose blob a repair (or anything
            // else) removed go, as gc would drop them.
            report.table_entries_dropped = crate::tables::sweep_build_cache(self)?
                + crate::tables::sweep_blob_locations(self)?
                + self.sweep_layer_index()?;
        }
        Ok(report)
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
