//! The side tables: each one's API, and gc and fsck knowing them.

mod common;

use std::fs;

use strata_store::oci_spec::image::{Descriptor, MediaType};
use strata_store::{CacheEntry, CacheKey, CacheKind, Store, StoreError};
use strata_types::Digest;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("store")).unwrap();
    (dir, store)
}

fn layer_entry(store: &Store, bytes: &[u8]) -> CacheEntry {
    let put = store.put_blob(bytes).unwrap();
    CacheEntry {
        layer: Descriptor::new(MediaType::ImageLayer, put.size, put.digest),
        diff_id: put.digest,
    }
}

#[test]
fn cache_entries_live_as_long_as_their_blob() {
    let (_dir, store) = store();
    let key = CacheKey { kind: CacheKind::Run, digest: Digest::of_bytes(b"step") };
    assert_eq!(store.cache_get(&key), None);
    let entry = layer_entry(&store, b"layer bytes");
    store.cache_put(&key, &entry).unwrap();
    assert_eq!(store.cache_get(&key), Some(entry.clone()));
    let other = CacheKey { kind: CacheKind::Copy, digest: key.digest };
    assert_eq!(store.cache_get(&other), None, "kinds are separate");
    assert_eq!(store.cache_entries().unwrap(), vec![(key, entry.clone())]);
    // Not a gc root: the unreferenced layer goes, and its entry with it.
    let report = store.gc(&[]).unwrap();
    assert_eq!(report.build_cache_removed, 1);
    assert_eq!(store.cache_get(&key), None);
    assert!(store.cache_entries().unwrap().is_empty());
}

#[test]
fn fsck_repair_drops_entries_that_name_a_removed_blob() {
    let (_dir, store) = store();
    let key = CacheKey { kind: CacheKind::Workdir, digest: Digest::of_bytes(b"w") };
    let entry = layer_entry(&store, b"soon corrupt");
    store.cache_put(&key, &entry).unwrap();
    let digest = Digest::try_from(entry.layer.digest()).unwrap();
    store.record_blob_location(&digest, "r.example/team/app").unwrap();
    fs::write(common::layout::blob_path(&store, &digest), b"rotten bytes").unwrap();
    let report = store.fsck(true).unwrap();
    assert_eq!(report.removed, vec![digest]);
    assert_eq!(report.table_entries_dropped, 2, "{report:?}");
    assert!(store.blob_locations(&digest).is_empty());
    assert!(store.fsck(false).unwrap().is_clean());
}

#[test]
fn snapshots_appear_whole_and_a_failed_fill_leaves_nothing() {
    let (_dir, store) = store();
    let id = Digest::of_bytes(b"layer");
    assert_eq!(store.snapshots().get(&id), None);
    let failed: Result<_, StoreError> = store.snapshots().ensure(&id, |dir| {
        fs::write(dir.join("half"), "x").unwrap();
        Err(StoreError::BlobNotFound { digest: id })
    });
    assert!(failed.is_err());
    assert_eq!(store.snapshots().get(&id), None);
    assert_eq!(common::count(&common::layout::tmp_dir(&store)), 0, "work dir removed");
    let dir = store
        .snapshots()
        .ensure(&id, |dir| {
            fs::write(dir.join("file"), "content")
                .map_err(|e| StoreError::Io { path: dir.to_path_buf(), source: e })
        })
        .unwrap();
    assert_eq!(fs::read_to_string(dir.join("file")).unwrap(), "content");
    // A second ensure does not fill again.
    let again = store.snapshots().ensure(&id, |_| -> Result<(), StoreError> { panic!() });
    assert_eq!(again.unwrap(), dir);
    assert_eq!(store.snapshots().get(&id), Some(dir));
}

#[test]
fn snapshots_adopt_only_trees_from_work_dirs() {
    let (dir, store) = store();
    let id = Digest::of_bytes(b"copy layer");
    let outside = dir.path().join("tree");
    fs::create_dir(&outside).unwrap();
    assert!(store.snapshots().adopt(&id, &outside).is_err());
    let work = store.work_dir("step-").unwrap();
    let tree = work.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("a"), "a").unwrap();
    let snap = store.snapshots().adopt(&id, &tree).unwrap();
    assert!(snap.join("a").is_file());
    assert!(!tree.exists(), "renamed, not copied");
}

#[test]
fn work_dirs_are_locked_while_alive_and_removed_when_dropped() {
    let (_dir, store) = store();
    let work = store.work_dir("x-").unwrap();
    let path = work.path().to_path_buf();
    assert!(path.is_dir());
    let f = fs::File::open(&path).unwrap();
    assert!(rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared).is_err());
    drop(work);
    assert!(!path.exists());
}

#[test]
fn blob_locations_keep_the_newest_without_repeats() {
    let (_dir, store) = store();
    let d = Digest::of_bytes(b"blob");
    for i in 0..40 {
        store.record_blob_location(&d, &format!("r/{i}")).unwrap();
    }
    store.record_blob_location(&d, "r/39").unwrap();
    let known = store.blob_locations(&d);
    assert_eq!(known.len(), 32);
    assert_eq!(known.first().map(String::as_str), Some("r/8"));
    assert_eq!(known.last().map(String::as_str), Some("r/39"));
}

#[test]
fn context_caches_and_cache_mounts() {
    let (_dir, store) = store();
    let key = Digest::of_bytes(b"/ctx");
    assert_eq!(store.context_cache(&key), None);
    store.put_context_cache(&key, b"one").unwrap();
    store.put_context_cache(&key, b"two").unwrap();
    assert_eq!(store.context_cache(&key).as_deref(), Some(&b"two"[..]));
    let (dir, created) = store.cache_mount_dir("/root/.cache/go-build").unwrap();
    assert!(created && dir.is_dir());
    let (again, created) = store.cache_mount_dir("/root/.cache/go-build").unwrap();
    assert_eq!((again, created), (dir.clone(), false));
    assert!(dir.starts_with(store.root()), "inside the store");
    assert_ne!(store.cache_mount_dir("../escape").unwrap().0.parent(), store.root().parent());
}

#[test]
fn a_layer_keeps_its_table_of_contents_and_a_cache_mount_its_chain() {
    let (_dir, store) = store();
    let toc_of = |store: &Store, text: &[u8]| {
        let put = store.put_blob(text).unwrap();
        Descriptor::new(
            MediaType::Other(strata_store::LAYER_TOC_MEDIA_TYPE.into()),
            put.size,
            put.digest,
        )
    };
    // A layer of a tagged image, and one that nothing keeps, each with a table of contents.
    let image = common::make_image(&store, &[("etc/hostname", "box\n")], "sh");
    store.tag("kept:1", &image).unwrap();
    let kept_layer = store.image(&image).unwrap().config.rootfs().diff_ids()[0].parse().unwrap();
    let kept_toc = toc_of(&store, b"entry kept\n");
    store.set_layer_toc(&kept_layer, &kept_toc).unwrap();
    let gone_layer = Digest::of_bytes(b"a layer no image has");
    let gone_toc = toc_of(&store, b"entry gone\n");
    store.set_layer_toc(&gone_layer, &gone_toc).unwrap();
    // A cache mount's chain: kept while its state is recorded.
    let chain = store.put_blob(&b"chain layer"[..]).unwrap().digest;
    store.set_cache_mount_state("/root/.cache/pip", b"state", &[chain]).unwrap();

    let report = store.gc(&[]).unwrap();
    assert_eq!(store.layer_toc(&kept_layer), Some(kept_toc), "the kept layer's table stays");
    assert_eq!(store.layer_toc(&gone_layer), None);
    assert!(report.removed.contains(&Digest::try_from(gone_toc.digest()).unwrap()));
    assert_eq!(report.layer_tocs_removed, 1, "its record goes with it");
    assert!(store.has_blob(&chain), "a recorded chain is a root");
    assert_eq!(store.cache_mount_state("/root/.cache/pip").as_deref(), Some(&b"state"[..]));

    store.clear_cache_mount_state("/root/.cache/pip").unwrap();
    let report = store.gc(&[]).unwrap();
    assert!(report.removed.contains(&chain), "a cleared state lets its chain go");
    assert_eq!(store.cache_mount_state("/root/.cache/pip"), None);
}
