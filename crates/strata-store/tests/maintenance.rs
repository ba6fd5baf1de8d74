//! gc, fsck, and what happens with broken stores.

mod common;

use std::fs;
use std::time::{Duration, SystemTime};

use common::make_image;
use strata_store::oci_spec::image::Descriptor;
use strata_store::{FsckProblem, NotAStoreProblem, Referrer, Store, StoreError};
use strata_types::Digest;

fn digest_of(d: &Descriptor) -> Digest {
    Digest::try_from(d.digest()).unwrap()
}

/// All blobs of an image: manifest, config, layers.
fn image_blobs(store: &Store, m: &Descriptor) -> Vec<Digest> {
    let img = store.image(m).unwrap();
    let mut out = vec![digest_of(m), Digest::try_from(img.manifest.config().digest()).unwrap()];
    out.extend(img.layer_digests().unwrap());
    out
}

#[test]
fn gc_frees_unreachable_and_keeps_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let kept = make_image(&store, &[("kept", "1")], "kept");
    let dropped = make_image(&store, &[("dropped", "2")], "dropped");
    let by_roots_file = make_image(&store, &[("cache", "3")], "cache");
    let by_arg = make_image(&store, &[("arg", "4")], "arg");
    let loose = store.put_blob(&b"loose blob"[..]).unwrap();
    let loose_root = store.put_blob(&b"blob kept by a roots file"[..]).unwrap();
    store.tag("kept:v1", &kept).unwrap();
    store.tag("dropped:v1", &dropped).unwrap();
    store.untag("dropped:v1").unwrap();
    store.set_gc_roots("build-cache", &[digest_of(&by_roots_file), loose_root.digest]).unwrap();

    // Snapshots: one for a kept layer (by blob digest), one for a kept diffID, one unreachable
    // (with a read-only directory inside, as unpacked layers have), one foreign name.
    let kept_layer = store.image(&kept).unwrap().layer_digests().unwrap()[0];
    let kept_diff_id: Digest =
        store.image(&kept).unwrap().config.rootfs().diff_ids()[0].parse().unwrap();
    let dropped_layer = store.image(&dropped).unwrap().layer_digests().unwrap()[0];
    for d in [kept_layer, kept_diff_id, dropped_layer] {
        fs::create_dir_all(common::layout::snapshot_dir(&store, &d).join("etc")).unwrap();
        fs::write(common::layout::snapshot_dir(&store, &d).join("etc/file"), "x").unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    let ro = common::layout::snapshot_dir(&store, &dropped_layer).join("etc");
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    fs::create_dir_all(common::layout::snapshots_dir(&store).join("not-a-digest")).unwrap();

    // Temp entries: a stale one, a fresh one, an old one held by a live writer.
    let stale = common::layout::tmp_dir(&store).join("blob-stale");
    fs::write(&stale, "half a blob").unwrap();
    let old = SystemTime::now() - Duration::from_secs(3600);
    fs::File::options().write(true).open(&stale).unwrap().set_modified(old).unwrap();
    let fresh = common::layout::tmp_dir(&store).join("blob-fresh");
    fs::write(&fresh, "just started").unwrap();
    let mut live = store.blob_writer().unwrap();
    std::io::Write::write_all(&mut live, b"in progress").unwrap();
    fs::File::options().write(true).open(live.temp_path()).unwrap().set_modified(old).unwrap();

    // Registry blob-location records (strata-registry's mount hints): one per blob.
    let locations = common::layout::meta_dir(&store).join("registry-v1/blobs");
    fs::create_dir_all(&locations).unwrap();
    for d in [kept_layer, dropped_layer] {
        fs::write(locations.join(d.hex()), "127.0.0.1:5000/team/app\n").unwrap();
    }
    fs::write(locations.join("README"), "not a record").unwrap();

    let mut expect_removed: Vec<Digest> = image_blobs(&store, &dropped);
    expect_removed.push(loose.digest);
    expect_removed.sort();
    let expect_bytes: u64 = expect_removed.iter().map(|d| store.blob_size(d).unwrap()).sum();

    let report = store.gc(&[digest_of(&by_arg)]).unwrap();
    assert_eq!(report.removed, expect_removed);
    assert_eq!(report.bytes_freed, expect_bytes);
    assert_eq!(report.snapshots_removed, 1);
    assert_eq!(report.temp_entries_removed, 1);
    for m in [&kept, &by_roots_file, &by_arg] {
        for d in image_blobs(&store, m) {
            assert!(store.has_blob(&d), "reachable {d} was deleted");
        }
    }
    assert!(store.has_blob(&loose_root.digest));
    for d in &expect_removed {
        assert!(!store.has_blob(d));
    }
    assert_eq!(report.blobs_kept, store.list_blobs().unwrap().len());
    assert!(common::layout::snapshot_dir(&store, &kept_layer).join("etc/file").exists());
    assert!(common::layout::snapshot_dir(&store, &kept_diff_id).exists());
    assert!(!common::layout::snapshot_dir(&store, &dropped_layer).exists());
    assert!(common::layout::snapshots_dir(&store).join("not-a-digest").exists());
    assert!(!stale.exists() && fresh.exists() && live.temp_path().exists());
    assert_eq!(report.blob_locations_removed, 1);
    assert!(locations.join(kept_layer.hex()).exists());
    assert!(!locations.join(dropped_layer.hex()).exists());
    assert!(locations.join("README").exists());
    // The live writer can still finish.
    let put = live.commit().unwrap();
    assert!(store.has_blob(&put.digest));
    assert!(store.fsck(false).unwrap().is_clean());
    // A second run with the same roots finds nothing more (except the blob just written).
    let again = store.gc(&[digest_of(&by_arg), put.digest]).unwrap();
    assert!(again.removed.is_empty(), "{again:?}");
}

#[test]
fn gc_refuses_bad_roots_file_and_corrupt_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let m = make_image(&store, &[("a", "a")], "a");
    store.tag("a", &m).unwrap();
    let junk = store.put_blob(&b"junk"[..]).unwrap();
    fs::write(common::layout::roots_dir(&store).join("bad"), "# comment\n\nsha256:nothex\n")
        .unwrap();
    let err = store.gc(&[]).unwrap_err();
    assert!(matches!(&err, StoreError::InvalidRootsLine { line: 3, .. }), "{err:?}");
    assert!(err.to_string().contains("bad:3"), "{err}");
    fs::remove_file(common::layout::roots_dir(&store).join("bad")).unwrap();
    // A corrupt reachable manifest: its references are unknown, so nothing may be deleted.
    let manifest_path = common::layout::blob_path(&store, &digest_of(&m));
    let mut bytes = fs::read(&manifest_path).unwrap();
    bytes[10] ^= 1;
    fs::write(&manifest_path, &bytes).unwrap();
    assert!(matches!(store.gc(&[]), Err(StoreError::DigestMismatch { .. })));
    assert!(store.has_blob(&junk.digest));
    assert!(matches!(
        store.set_gc_roots("../escape", &[]),
        Err(StoreError::InvalidRootsName { .. })
    ));
}

#[test]
fn fsck_finds_corruption_and_repair_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let m = make_image(&store, &[("file", "content")], "cmd");
    store.tag("app:v1", &m).unwrap();
    let clean = store.fsck(false).unwrap();
    assert!(clean.is_clean(), "{clean:?}");
    assert_eq!(clean.blobs_checked, 3);

    let layer = store.image(&m).unwrap().layer_digests().unwrap()[0];
    let path = common::layout::blob_path(&store, &layer);
    let full = fs::read(&path).unwrap();
    fs::write(&path, &full[..full.len() / 2]).unwrap(); // truncated
    fs::write(common::layout::blob_dir(&store).join("stray.txt"), "?").unwrap();

    let report = store.fsck(false).unwrap();
    assert!(!report.is_clean());
    assert!(report.removed.is_empty());
    let found = Digest::of_bytes(&full[..full.len() / 2]);
    assert!(report.problems.contains(&FsckProblem::CorruptBlob { digest: layer, found }));
    assert!(report.problems.contains(&FsckProblem::SizeMismatch {
        digest: layer,
        referenced_by: Referrer::Blob(digest_of(&m)),
        expected: full.len() as u64,
        found: (full.len() / 2) as u64,
    }));
    assert!(report.problems.iter().any(|p| matches!(p, FsckProblem::StrayFile { .. })));
    assert!(report.problems.iter().all(|p| !p.to_string().is_empty()));
    assert!(store.has_blob(&layer), "no repair without asking");

    let repaired = store.fsck(true).unwrap();
    assert_eq!(repaired.removed, vec![layer]);
    assert!(!store.has_blob(&layer));
    // The image that needs it is untagged into lost+found, saying what it lacks.
    assert_eq!(repaired.damaged_images.len(), 1);
    assert_eq!(repaired.damaged_images[0].name.as_deref(), Some("app:v1"));
    assert_eq!(repaired.damaged_images[0].missing, vec![layer]);
    assert!(store.tags().unwrap().is_empty());
    let lost = store.lost_and_found().unwrap();
    assert_eq!(lost, repaired.damaged_images);
    // Restoring the bytes and tagging the lost manifest again makes the store clean (apart
    // from the stray file) and the image whole.
    store.put_blob(full.as_slice()).unwrap();
    store.tag("app:v1", &lost[0].descriptor).unwrap();
    fs::remove_file(common::layout::blob_dir(&store).join("stray.txt")).unwrap();
    assert!(store.fsck(false).unwrap().is_clean());
    assert!(store.missing_blobs(&m).unwrap().is_empty());
}

#[test]
fn fsck_reports_dangling_tags() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let m = make_image(&store, &[("f", "x")], "x");
    store.tag("app", &m).unwrap();
    fs::remove_file(common::layout::blob_path(&store, &digest_of(&m))).unwrap();
    let report = store.fsck(false).unwrap();
    assert_eq!(
        report.problems,
        vec![FsckProblem::MissingBlob { digest: digest_of(&m), referenced_by: Referrer::Index }]
    );
}

/// Every file under `root` (except the lock file) with the hash of its bytes.
fn tree(root: &std::path::Path) -> Vec<(std::path::PathBuf, Digest)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else {
            if !p.ends_with("strata/v1/lock") {
                out.push((p.clone(), Digest::of_bytes(&fs::read(&p).unwrap())));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn broken_stores_are_clear_errors_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    // Not a layout at all.
    let plain = dir.path().join("plain");
    fs::create_dir(&plain).unwrap();
    fs::write(plain.join("notes.txt"), "mine").unwrap();
    let err = Store::open(&plain).unwrap_err();
    assert!(matches!(&err, StoreError::NotAStore { problem: NotAStoreProblem::NoLayoutFile, .. }));
    assert!(err.to_string().contains("plain") && err.to_string().contains("oci-layout"), "{err}");
    let err = Store::init(&plain).unwrap_err();
    assert!(matches!(
        err,
        StoreError::NotAStore { problem: NotAStoreProblem::NotEmpty { .. }, .. }
    ));
    assert_eq!(tree(&plain), vec![(plain.join("notes.txt"), Digest::of_bytes(b"mine"))]);
    // A file, not a directory.
    let err = Store::open(plain.join("notes.txt")).unwrap_err();
    assert!(matches!(err, StoreError::NotAStore { problem: NotAStoreProblem::NotADirectory, .. }));

    // Garbage index.json.
    let root = dir.path().join("store");
    let store = Store::init(&root).unwrap();
    let m = make_image(&store, &[("f", "x")], "x");
    store.tag("app", &m).unwrap();
    fs::write(common::layout::index_path(&store), "{ not json").unwrap();
    let before = tree(&root);
    let err = Store::open(&root).unwrap_err();
    assert!(matches!(&err, StoreError::DamagedFile { path, .. } if path.ends_with("index.json")));
    assert!(err.to_string().contains("strata fsck --repair"), "{err}");
    assert!(matches!(store.tag("app:v2", &m), Err(StoreError::DamagedFile { .. })));
    assert!(matches!(store.gc(&[]), Err(StoreError::DamagedFile { .. })));
    assert!(matches!(Store::init(&root), Err(StoreError::DamagedFile { .. })));
    // A check without repair reports it and writes nothing either (repair: tests/healing.rs).
    let report = store.fsck(false).unwrap();
    assert!(
        matches!(&report.problems[0], FsckProblem::DamagedFile { path, .. } if path.ends_with("index.json"))
    );
    assert_eq!(tree(&root), before);

    // Wrong layout version, and a garbage oci-layout.
    let other = dir.path().join("other");
    Store::init(&other).unwrap();
    fs::write(other.join("oci-layout"), r#"{"imageLayoutVersion":"9.9.9"}"#).unwrap();
    assert!(matches!(Store::open(&other), Err(StoreError::UnsupportedLayoutVersion { .. })));
    fs::write(other.join("oci-layout"), "garbage").unwrap();
    assert!(matches!(Store::open(&other), Err(StoreError::CorruptFile { .. })));
    // Missing blobs dir.
    fs::write(other.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fs::remove_dir_all(other.join("blobs")).unwrap();
    assert!(matches!(
        Store::open(&other),
        Err(StoreError::NotAStore { problem: NotAStoreProblem::NoBlobDir, .. })
    ));
}

#[test]
fn gc_refuses_while_another_handle_holds_a_writer_lease() {
    let dir = tempfile::tempdir().unwrap();
    let writer = Store::init(dir.path()).unwrap();
    // Written, not yet tagged: exactly what a build or pull holds between blob and tag.
    let pending = writer.put_blob(&b"layer of a build in progress"[..]).unwrap();

    let other = Store::open(dir.path()).unwrap();
    let err = other.gc(&[]).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(writer.has_blob(&pending.digest), "a refused gc deleted a pending blob");

    // A clone shares the lease: still in use while any clone lives.
    let clone = writer.clone();
    drop(writer);
    assert!(matches!(other.gc(&[]), Err(StoreError::InUse { .. })));
    // gc through the lease holder itself runs (its own lease does not count) and the lease
    // is shared again afterwards.
    let report = clone.gc(&[pending.digest]).unwrap();
    assert!(report.removed.is_empty());
    assert!(matches!(other.gc(&[]), Err(StoreError::InUse { .. })));

    drop(clone);
    let report = other.gc(&[]).unwrap();
    assert_eq!(report.removed, vec![pending.digest]);
}

#[test]
fn gc_refuses_while_another_process_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    // Another process holding the lease, as a running `strata build` does (flock(1) takes the
    // same BSD lock our lease takes).
    if !common::have_tool("flock") {
        return;
    }
    // `cat` exits when its stdin closes, and flock(1) then releases the lock.
    let mut holder = std::process::Command::new("flock")
        .arg("--shared")
        .arg(common::layout::gc_lock_path(&store))
        .arg("cat")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the child holds it.
    let mut refused = false;
    for _ in 0..200 {
        if matches!(store.gc(&[]), Err(StoreError::InUse { .. })) {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(holder.stdin.take());
    holder.wait().unwrap();
    assert!(refused, "gc ran while another process held a writer lease");
    store.gc(&[]).unwrap();
}
