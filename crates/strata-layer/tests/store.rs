//! Layers written into and applied from a strata-store.
mod common;

use std::fs;

use common::{assert_same, normalize, write_file};
use strata_layer::{
    apply_blob, scan, write_layer, ApplyOptions, Changeset, LayerError, LayerWriter,
};
use strata_store::Store;

#[test]
fn write_layer_stores_the_blob_and_apply_blob_restores_it() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::init(t.path().join("store")).unwrap();
    let src = t.path().join("src");
    write_file(&src.join("a/b"), b"hello");
    write_file(&src.join("c"), &vec![3u8; 100_000]);
    let snap = scan(&src).unwrap();
    let w = LayerWriter::default().epoch(i64::MAX);
    let d = write_layer(&store, &w, &Changeset::from_scan(snap.clone()), &src).unwrap();
    assert!(store.has_blob(&d.digest));
    assert_eq!(
        fs::metadata(store.root().join("blobs/sha256").join(d.digest.hex())).unwrap().len(),
        d.size
    );
    assert_eq!(d.media_type, "application/vnd.oci.image.layer.v1.tar+zstd");
    // Writing the same layer again deduplicates to the same digest.
    let again = write_layer(&store, &w, &Changeset::from_scan(snap.clone()), &src).unwrap();
    assert_eq!(again, d);

    let dst = t.path().join("dst");
    fs::create_dir(&dst).unwrap();
    let r = apply_blob(&store, &d.digest, &dst, &ApplyOptions::default()).unwrap();
    assert_eq!(r.diff_id, Some(d.diff_id));
    assert_same(&normalize(&snap, i64::MAX), &normalize(&scan(&dst).unwrap(), i64::MAX));
}

#[test]
fn apply_blob_of_a_missing_blob_is_a_store_error() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::init(t.path().join("store")).unwrap();
    let missing = strata_types::Digest::of_bytes(b"nope");
    let err = apply_blob(&store, &missing, t.path(), &ApplyOptions::default()).unwrap_err();
    assert!(matches!(err, LayerError::Store(_)), "{err:?}");
}
