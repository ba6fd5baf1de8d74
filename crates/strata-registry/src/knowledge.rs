//! Where blobs were seen: `blob digest -> registry/repository` records in the store's metadata.
//!
//! A registry only lets a client mount a blob from a repository it names (distribution-spec
//! "Mounting a blob from another repository"), so to mount, the client must remember where the
//! blob lives. Every push and pull records it in `<store>/strata/v1/registry-v1/blobs/<hex>`,
//! one `registry/repository` per line. The records are hints: a mount the registry refuses
//! (202) falls back to an upload, and a failure to write a record never fails a transfer.
//! `Store::gc` drops the record of a blob the store no longer holds.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use strata_store::Store;
use strata_types::Digest;

/// Versioned directory under the store's metadata dir.
const DIR: &str = "registry-v1/blobs";
/// At most this many locations are kept per blob (the newest).
const MAX_LOCATIONS: usize = 32;

fn path(store: &Store, digest: &Digest) -> PathBuf {
    store.meta_dir().join(DIR).join(digest.hex())
}

/// The `registry/repository` locations recorded for `digest`, newest last.
pub(crate) fn locations(store: &Store, digest: &Digest) -> Vec<String> {
    fs::read_to_string(path(store, digest))
        .map(|text| text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
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
    let mut known = locations(store, digest);
    if known.last().is_some_and(|l| l == location) {
        return;
    }
    known.retain(|l| l != location);
    known.push(location.to_owned());
    let skip = known.len().saturating_sub(MAX_LOCATIONS);
    let mut text = known[skip..].join("\n");
    text.push('\n');
    let dest = path(store, digest);
    let _ = write_atomic(store, &dest, text.as_bytes());
}

fn write_atomic(store: &Store, dest: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp_dir = store.tmp_dir();
    fs::create_dir_all(&tmp_dir)?;
    let mut tmp = tempfile_in(&tmp_dir)?;
    tmp.1.write_all(bytes)?;
    drop(tmp.1);
    let result = fs::rename(&tmp.0, dest);
    if result.is_err() {
        let _ = fs::remove_file(&tmp.0);
    }
    result
}

/// A new file in `dir` with a unique name (pid, thread and time based).
fn tempfile_in(dir: &std::path::Path) -> std::io::Result<(PathBuf, fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let p = dir.join(format!("registry-{}-{n}", std::process::id()));
    let f = fs::OpenOptions::new().write(true).create_new(true).open(&p)?;
    Ok((p, f))
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
