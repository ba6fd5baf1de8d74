//! Tag records: every tag also kept beside `index.json`, so losing that one file loses no tag.
//!
//! `index.json` is the layout's entry point, and other tools (skopeo, umoci) read and write it,
//! so it stays the truth while it parses. But it is one file: truncated by a full disk, left as
//! garbage by a tool that does not write atomically, or deleted, it would take every tag with it
//! although every blob is intact. So the store keeps one small record per tag under
//! `<root>/strata/v1/tags-v1/`: the tag's `index.json` entry (its descriptor, carrying the
//! `ref.name` annotation) as canonical JSON, in a file named after the tag (`/` written as
//! `%2F`; a name too long for a file name becomes `sha256-<hex of the name>`). The annotation
//! inside is what names the tag; the file name only keeps records apart. One file per tag rather
//! than a journal of operations: a record is written atomically like every metadata file, there
//! is nothing to replay or compact, and losing a record loses one copy that `index.json` holds.
//!
//! Every `index.json` update, under the store lock, writes `index.json` first and then makes
//! the records match it: new or changed tags are written, removed ones deleted. A process killed
//! between the two leaves the records one operation behind (old or new state, never a torn
//! file), which the next update or `fsck --repair` corrects. A store from before the records
//! (format 1) gets them on its first update or repair. When `index.json` is missing or does not
//! parse, [`Store::fsck`] with `repair` writes a new one from the records. Entries of
//! `index.json` without a `ref.name` (roots another tool may add) are not tags and have no
//! record. A tag another tool writes into `index.json` directly (`skopeo copy` to
//! `oci:$STORE:name`) gets its record at strata's next update or repair. gc treats every
//! record's target as a root, so a record never names a swept blob.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use oci_spec::image::{Descriptor, ImageIndex};

use crate::blob::{remove_file_if_exists, write_atomic};
use crate::error::StoreError;
use crate::gc::read_dir_if_exists;
use crate::image::ref_name;
use crate::store::{canonical_json, Store};

/// Versioned directory of the tag records under `strata/v1/`.
const TAGS_DIR: &str = "tags-v1";
/// Longest tag name stored as-is in a file name (file names stop at 255 bytes).
const MAX_PLAIN_NAME: usize = 200;

/// One tag record read back.
#[derive(Debug)]
pub(crate) struct TagRecord {
    /// The tag (`ref.name` annotation).
    pub(crate) name: String,
    /// The `index.json` entry.
    pub(crate) descriptor: Descriptor,
    /// The record file.
    path: PathBuf,
    /// Its bytes, to skip rewriting an unchanged record.
    bytes: Vec<u8>,
}

/// Every record in `tags-v1/`, and the files there that are not valid records.
#[derive(Debug, Default)]
pub(crate) struct TagRecords {
    /// Valid records, in file-name order.
    pub(crate) records: Vec<TagRecord>,
    /// Files that do not parse as a descriptor with a `ref.name`, with the reason.
    pub(crate) damaged: Vec<(PathBuf, String)>,
}

/// The record file name of tag `name`: ref names use `[A-Za-z0-9._:@+/-]`, so escaping `/`
/// as `%2F` is reversible and never yields `.` or `..`.
fn record_file_name(name: &str) -> String {
    if name.len() <= MAX_PLAIN_NAME {
        name.replace('/', "%2F")
    } else {
        format!("sha256-{}", strata_types::Digest::of_bytes(name.as_bytes()).hex())
    }
}

impl Store {
    /// `<root>/strata/v1/tags-v1`.
    fn tags_dir(&self) -> PathBuf {
        self.meta_dir().join(TAGS_DIR)
    }

    /// Reads every tag record; damaged ones are listed, not fatal.
    pub(crate) fn read_tag_records(&self) -> Result<TagRecords, StoreError> {
        let dir = self.tags_dir();
        let mut out = TagRecords::default();
        let Some(entries) = read_dir_if_exists(&dir)? else { return Ok(out) };
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(StoreError::io(&dir))?;
            if entry.file_type().map_err(StoreError::io(entry.path()))?.is_file() {
                paths.push(entry.path());
            }
        }
        paths.sort();
        for path in paths {
            let bytes = fs::read(&path).map_err(StoreError::io(&path))?;
            match serde_json::from_slice::<Descriptor>(&bytes) {
                Ok(descriptor) => match ref_name(&descriptor).map(str::to_owned) {
                    Some(name) => out.records.push(TagRecord { name, descriptor, path, bytes }),
                    None => out.damaged.push((path, "no ref.name annotation".to_owned())),
                },
                Err(e) => out.damaged.push((path, e.to_string())),
            }
        }
        Ok(out)
    }

    /// Makes the records match the tags of `index` (the caller holds the store lock): writes
    /// the missing and changed ones, deletes the rest. Returns how many files it wrote or
    /// deleted.
    pub(crate) fn sync_tag_records(&self, index: &ImageIndex) -> Result<usize, StoreError> {
        let dir = self.tags_dir();
        let mut wanted: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
        for entry in index.manifests() {
            if let Some(name) = ref_name(entry) {
                wanted.insert(dir.join(record_file_name(name)), canonical_json(entry)?);
            }
        }
        let existing = self.read_tag_records()?;
        let mut have: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
        for record in existing.records {
            have.insert(record.path, record.bytes);
        }
        let mut changed = 0;
        for (path, _) in existing.damaged {
            if !wanted.contains_key(&path) && remove_file_if_exists(&path)? {
                changed += 1;
            }
        }
        for path in have.keys() {
            if !wanted.contains_key(path) && remove_file_if_exists(path)? {
                changed += 1;
            }
        }
        if !wanted.is_empty() && !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
            crate::blob::sync_dir(&self.meta_dir())?;
        }
        self.ensure_meta_dirs()?;
        for (path, bytes) in &wanted {
            if have.get(path) != Some(bytes) {
                write_atomic(&self.tmp_dir(), path, bytes)?;
                changed += 1;
            }
        }
        if changed > 0 {
            crate::blob::sync_dir(&dir)?;
        }
        Ok(changed)
    }

    /// An `index.json` holding exactly the tags the records name, sorted by tag.
    pub(crate) fn index_from_records(&self) -> Result<(ImageIndex, TagRecords), StoreError> {
        let records = self.read_tag_records()?;
        let mut by_name: BTreeMap<&str, &Descriptor> = BTreeMap::new();
        for r in &records.records {
            by_name.insert(&r.name, &r.descriptor);
        }
        let mut index = crate::index::empty_index()?;
        index.set_manifests(by_name.into_values().cloned().collect());
        Ok((index, records))
    }
}

#[cfg(test)]
mod tests {
    use super::record_file_name;

    #[test]
    fn record_names_are_plain_file_names() {
        assert_eq!(record_file_name("app:v1"), "app:v1");
        assert_eq!(record_file_name("r.example/team/app:1.0"), "r.example%2Fteam%2Fapp:1.0");
        let long = format!("{}:v1", "a".repeat(250));
        assert!(record_file_name(&long).starts_with("sha256-"));
        assert!(record_file_name(&long).len() < 255);
    }
}
