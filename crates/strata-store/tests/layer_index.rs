//! The diffID -> blob layer index, and images whose config is kept byte for byte.

mod common;

use common::{config, put_layer};
use strata_store::Store;
use strata_types::Digest;

#[test]
fn layer_index_records_finds_and_is_swept_by_gc() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let (layer, diff_id) = put_layer(&store, b"layer bytes");
    let blob = Digest::try_from(layer.digest()).unwrap();
    assert_eq!(store.find_layer(&diff_id, "zstd").unwrap(), None);
    store.record_layer(&diff_id, "zstd", &blob, layer.size()).unwrap();
    let found = store.find_layer(&diff_id, "zstd").unwrap().unwrap();
    assert_eq!((found.digest, found.size), (blob, layer.size()));
    // Another compression is another key.
    assert_eq!(store.find_layer(&diff_id, "gzip").unwrap(), None);
    // A wrong size makes the hint unusable rather than wrong.
    store.record_layer(&diff_id, "gzip", &blob, layer.size() + 1).unwrap();
    assert_eq!(store.find_layer(&diff_id, "gzip").unwrap(), None);
    // Keys cannot name paths.
    assert!(store.record_layer(&diff_id, "../x", &blob, 1).is_err());
    // The blob is unreachable: gc removes it and the index entries pointing at it.
    let report = store.gc(&[]).unwrap();
    assert!(report.removed.contains(&blob));
    assert_eq!(report.layer_index_removed, 2);
    assert_eq!(store.find_layer(&diff_id, "zstd").unwrap(), None);
}

#[test]
fn put_image_with_config_keeps_config_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let (layer, diff_id) = put_layer(&store, b"layer");
    // Pretty-printed, unlike what put_json would write: must survive unchanged.
    let bytes = serde_json::to_vec_pretty(&config(&[diff_id], "/bin/sh")).unwrap();
    let put = store.put_blob(bytes.as_slice()).unwrap();
    let manifest =
        store.put_image_with_config(&put.digest, put.size, std::slice::from_ref(&layer)).unwrap();
    let image = store.image(&manifest).unwrap();
    assert_eq!(Digest::try_from(image.manifest.config().digest()).unwrap(), put.digest);
    assert_eq!(store.read_blob(&put.digest).unwrap(), bytes);
    // Wrong size or layer count is refused.
    assert!(store
        .put_image_with_config(&put.digest, put.size + 1, std::slice::from_ref(&layer))
        .is_err());
    assert!(store.put_image_with_config(&put.digest, put.size, &[]).is_err());
}
