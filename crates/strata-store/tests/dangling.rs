//! Dangling images (untagged builds): kept by gc, found by ID prefix, pruned on request; and
//! `remove_image`, the library side of `strata rmi`.

mod common;

use common::make_image;
use strata_store::oci_spec::image::Descriptor;
use strata_store::{Store, StoreError};
use strata_types::Digest;

fn digest_of(d: &Descriptor) -> Digest {
    Digest::try_from(d.digest()).unwrap()
}

#[test]
fn dangling_image_is_kept_found_and_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let image = make_image(&store, &[("a", "one")], "/bin/a");
    let digest = digest_of(&image);
    store.keep_dangling(&digest).unwrap();
    store.keep_dangling(&digest).unwrap(); // listed once
    assert_eq!(store.dangling_images().unwrap(), vec![image.clone()]);
    // Found by the 12-hex ID, a shorter prefix, with or without `sha256:`.
    for name in [&digest.hex()[..12], &digest.hex()[..5], &format!("sha256:{}", &digest.hex()[..7])]
    {
        assert_eq!(digest_of(&store.resolve(name).unwrap()), digest, "{name}");
    }
    // gc keeps it and everything it reaches.
    let report = store.gc(&[]).unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    store.image(&image).unwrap();
    // Tagged, it is no longer dangling; prune forgets the entry but gc keeps the tagged image.
    store.tag("app:v1", &image).unwrap();
    assert!(store.dangling_images().unwrap().is_empty());
    assert!(store.prune_dangling().unwrap().is_empty());
    assert!(store.gc(&[]).unwrap().removed.is_empty());
    // Untagged again and not listed: gc frees it.
    store.untag("app:v1").unwrap();
    assert!(!store.gc(&[]).unwrap().removed.is_empty());
    assert!(matches!(store.resolve(&digest.hex()[..12]), Err(StoreError::ImageNotFound { .. })));
}

#[test]
fn prune_counts_only_dangling_images_and_gc_then_frees_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let kept = make_image(&store, &[("k", "kept")], "/bin/k");
    store.tag("kept", &kept).unwrap();
    let a = make_image(&store, &[("a", "one")], "/bin/a");
    let b = make_image(&store, &[("b", "two")], "/bin/b");
    store.keep_dangling(&digest_of(&a)).unwrap();
    store.keep_dangling(&digest_of(&b)).unwrap();
    store.keep_dangling(&digest_of(&kept)).unwrap(); // tagged: not dangling
    let mut pruned = store.prune_dangling().unwrap();
    pruned.sort();
    let mut expected = vec![digest_of(&a), digest_of(&b)];
    expected.sort();
    assert_eq!(pruned, expected);
    let report = store.gc(&[]).unwrap();
    assert!(report.removed.contains(&digest_of(&a)) && report.removed.contains(&digest_of(&b)));
    store.image(&kept).unwrap();
    assert!(store.fsck(false).unwrap().is_clean());
}

#[test]
fn remove_image_by_tag_by_id_and_forced() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let image = make_image(&store, &[("a", "one")], "/bin/a");
    let digest = digest_of(&image);
    let id = &digest.hex()[..12];
    store.tag("app:v1", &image).unwrap();
    store.tag("app:v2", &image).unwrap();
    match store.remove_image(id, false) {
        Err(StoreError::ImageHasTags { digest: d, tags }) => {
            assert_eq!(d, digest);
            assert_eq!(tags, ["app:v1", "app:v2"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.tags().unwrap().len(), 2, "refused: nothing removed");
    // By tag: that tag only; the image lives on under the other.
    let removed = store.remove_image("app:v1", false).unwrap();
    assert_eq!((removed.untagged, removed.deleted), (vec!["app:v1".to_string()], false));
    store.tag("app:v1", &image).unwrap();
    let removed = store.remove_image(id, true).unwrap();
    assert_eq!(removed.untagged, ["app:v1", "app:v2"]);
    assert!(removed.deleted);
    assert!(store.tags().unwrap().is_empty());
    // A dangling image by ID: forgotten.
    store.keep_dangling(&digest).unwrap();
    assert!(store.remove_image(id, false).unwrap().deleted);
    assert!(store.dangling_images().unwrap().is_empty());
}
