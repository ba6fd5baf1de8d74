//! Blob round trips, dedup, verification and store opening.

mod common;

use std::fs;
use std::io::{Read, Write};

use strata_store::{NotAStoreProblem, Store, StoreError};
use strata_types::Digest;

fn blob_files(store: &Store) -> usize {
    fs::read_dir(common::layout::blob_dir(store)).unwrap().count()
}

fn tmp_files(store: &Store) -> usize {
    fs::read_dir(common::layout::tmp_dir(store)).unwrap().count()
}

#[test]
fn blob_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("store")).unwrap();
    let data = b"hello, blobs".repeat(50_000);
    let put = store.put_blob(data.as_slice()).unwrap();
    assert!(put.created);
    assert_eq!(put.size, data.len() as u64);
    assert_eq!(put.digest, Digest::of_bytes(&data));
    assert!(store.has_blob(&put.digest));
    assert_eq!(store.blob_size(&put.digest).unwrap(), data.len() as u64);
    assert_eq!(
        common::layout::blob_path(&store, &put.digest),
        store.root().join("blobs/sha256").join(put.digest.hex())
    );
    assert_eq!(store.read_blob(&put.digest).unwrap(), data);
    let mut back = Vec::new();
    store.open_blob_verified(&put.digest).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(tmp_files(&store), 0, "temp file left behind");
    assert_eq!(store.list_blobs().unwrap(), vec![put.digest]);
}

#[test]
fn writer_streams_and_dedups() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let mut w = store.blob_writer().unwrap();
    for chunk in [&b"abc"[..], b"", b"def"] {
        w.write_all(chunk).unwrap();
    }
    assert_eq!(w.written(), 6);
    let first = w.commit().unwrap();
    assert!(first.created);
    assert_eq!(first.digest, Digest::of_bytes(b"abcdef"));
    let count = blob_files(&store);
    let second = store.put_blob(&b"abcdef"[..]).unwrap();
    assert_eq!(second.digest, first.digest);
    assert!(!second.created, "second put must be a dedup");
    assert_eq!(blob_files(&store), count);
    assert_eq!(tmp_files(&store), 0);
    let empty = store.put_json(&serde_json::json!({"b": 1, "a": [1, 2]})).unwrap();
    assert_eq!(store.read_blob(&empty.digest).unwrap(), br#"{"a":[1,2],"b":1}"#);
}

#[test]
fn dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let mut w = store.blob_writer().unwrap();
    w.write_all(b"never committed").unwrap();
    assert!(w.temp_path().exists());
    drop(w);
    assert_eq!(tmp_files(&store), 0);
    assert_eq!(blob_files(&store), 0);
}

#[test]
fn verified_put_with_wrong_digest_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let wrong = Digest::of_bytes(b"something else");
    let err = store.put_blob_verified(&b"content"[..], &wrong, None).unwrap_err();
    match err {
        StoreError::DigestMismatch { expected, found } => {
            assert_eq!(expected, wrong);
            assert_eq!(found, Digest::of_bytes(b"content"));
        }
        other => panic!("unexpected error {other:?}"),
    }
    let right = Digest::of_bytes(b"content");
    let err = store.put_blob_verified(&b"content"[..], &right, Some(8)).unwrap_err();
    assert!(matches!(err, StoreError::SizeMismatch { expected: 8, found: 7, .. }), "{err:?}");
    assert_eq!(blob_files(&store), 0);
    assert_eq!(tmp_files(&store), 0);
    assert!(!store.has_blob(&wrong) && !store.has_blob(&right));
    let ok = store.put_blob_verified(&b"content"[..], &right, Some(7)).unwrap();
    assert!(ok.created);
    assert_eq!(ok.digest, right);
}

#[test]
fn corrupted_blob_is_caught_by_verified_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let put = store.put_blob(&b"precious bytes"[..]).unwrap();
    fs::write(common::layout::blob_path(&store, &put.digest), b"precious byteZ").unwrap();
    // The fast path does not notice...
    let mut raw = String::new();
    store.open_blob(&put.digest).unwrap().read_to_string(&mut raw).unwrap();
    assert_eq!(raw, "precious byteZ");
    // ...the verified ones do, naming both digests.
    let mut r = store.open_blob_verified(&put.digest).unwrap();
    let err = r.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    let msg = err.to_string();
    assert!(msg.contains(&put.digest.to_string()), "{msg}");
    assert!(msg.contains(&Digest::of_bytes(b"precious byteZ").to_string()), "{msg}");
    assert!(matches!(store.read_blob(&put.digest), Err(StoreError::DigestMismatch { .. })));
    // Truncation too.
    fs::write(common::layout::blob_path(&store, &put.digest), b"precious").unwrap();
    assert!(store.open_blob_verified(&put.digest).unwrap().read_to_end(&mut Vec::new()).is_err());
}

#[test]
fn missing_blob_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let d = Digest::of_bytes(b"absent");
    assert!(!store.has_blob(&d));
    for err in [
        store.open_blob(&d).unwrap_err(),
        store.read_blob(&d).unwrap_err(),
        store.blob_size(&d).unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::BlobNotFound { digest } if digest == d), "{err:?}");
    }
}

#[test]
fn init_is_idempotent_and_open_requires_a_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    assert!(matches!(
        Store::open(&root),
        Err(StoreError::NotAStore { problem: NotAStoreProblem::Missing, .. })
    ));
    let store = Store::init(&root).unwrap();
    let put = store.put_blob(&b"x"[..]).unwrap();
    let again = Store::init(&root).unwrap();
    assert!(again.has_blob(&put.digest));
    assert_eq!(
        fs::read_to_string(root.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(index["manifests"], serde_json::json!([]));
    Store::open(&root).unwrap();
}

#[test]
fn verifying_reader_finish_checks_unread_tail() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let put = store.put_blob(&b"head and a tail nobody reads"[..]).unwrap();
    let mut r = store.open_blob_verified(&put.digest).unwrap();
    let mut head = [0u8; 4];
    r.read_exact(&mut head).unwrap();
    assert!(!r.is_verified());
    r.finish().unwrap();
    // Corrupt the tail only: a consumer stopping early would never notice, finish does.
    fs::write(common::layout::blob_path(&store, &put.digest), b"head and a tail nobody readZ")
        .unwrap();
    let mut r = store.open_blob_verified(&put.digest).unwrap();
    r.read_exact(&mut head).unwrap();
    assert!(
        matches!(r.finish(), Err(StoreError::DigestMismatch { expected, .. }) if expected == put.digest)
    );
}
