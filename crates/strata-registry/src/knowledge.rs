//! Where blobs were seen: `blob digest -> registry/repository` records in the store's metadata.
//!
//! A registry only lets a client mount a blob from a repository it names (distribution-spec
//! "Mounting a blob from another repository"), so to mount, the client must remember where the
//! blob lives. Every push and pull records it in the store's blob-location table
//! (`Store::record_blob_location`). The records are hints: a mount the registry refuses
//! (202) falls back to an upload, and a failure to write a record never fails a transfer.
//! `Store::gc` drops the record of a blob the store no longer holds.

use strata_store::Store;
use strata_types::Digest;

/// The `registry/repository` locations recorded for `digest`, newest last.
pub(crate) fn locations(store: &Store, digest: &Digest) -> Vec<String> {
    store.blob_locations(digest)
}

/// A repository of `registry`, other than `repository`, that `digest` was seen in.
pub(crate) fn mount_source(
    store: &Store,
    digest: &Digest,
    registry: &str,
    repository: &str,
) -> Option<String> {
    let prefix = format!("{registry}/");
    locations(store, digest).into_iter().rev().find_map(|loc| {
        let repo = loc.strip_prefix(&prefix)?;
        (repo != repository && !repo.is_empty()).then(|| repo.to_owned())
    })
}

/// Records that `digest` lives at `location` (`registry/repository`). Best effort.
pub(crate) fn record(store: &Store, digest: &Digest, location: &str) {
    let _ = store.record_blob_location(digest, location);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_give_mount_sources_on_the_same_registry_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path()).unwrap();
        let d = Digest::of_bytes(b"x");
        assert_eq!(mount_source(&store, &d, "r:1", "a"), None);
        record(&store, &d, "r:1/a");
        record(&store, &d, "r:1/a");
        assert_eq!(locations(&store, &d), vec!["r:1/a".to_owned()]);
        assert_eq!(mount_source(&store, &d, "r:1", "a"), None);
        assert_eq!(mount_source(&store, &d, "r:1", "b").as_deref(), Some("a"));
        assert_eq!(mount_source(&store, &d, "r:2", "b"), None);
        record(&store, &d, "r:1/team/c");
        assert_eq!(mount_source(&store, &d, "r:1", "b").as_deref(), Some("team/c"));
        assert!(store.fsck(false).unwrap().is_clean());
    }
}
