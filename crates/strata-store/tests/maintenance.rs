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

    // Temp entries: a stale one, a fresh one (both unlocked: a dead writer's), an old one held
    // by a live writer (leased before they appear: taking a lease sweeps them too).
    let writer = Store::open(dir.path()).unwrap();
    writer.lease().unwrap();
    let stale = common::layout::tmp_dir(&store).join("blob-stale");
    fs::write(&stale, "half a blob").unwrap();
    let old = SystemTime::now() - Duration::from_secs(3600);
    fs::File::options().write(true).open(&stale).unwrap().set_modified(old).unwrap();
    let fresh = common::layout::tmp_dir(&store).join("blob-fresh");
    fs::write(&fresh, "just started").unwrap();
    let mut live = writer.blob_writer().unwrap();
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
    assert_eq!(report.temp_entries_removed, 2);
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
    assert!(!stale.exists() && !fresh.exists() && live.temp_path().exists());
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
fn gc_runs_while_another_handle_writes_and_keeps_what_its_lease_names() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Store::init(dir.path()).unwrap();
    let base = make_image(&setup, &[("base", "1")], "base");
    setup.tag("base:1", &base).unwrap();
    // Garbage: written by a handle whose lease has ended.
    let garbage = setup.put_blob(&b"nobody wants this"[..]).unwrap();
    drop(setup);

    // A build in progress: leased from the start, its base read through the store, a layer
    // written, not tagged.
    let writer = Store::open(dir.path()).unwrap();
    writer.lease().unwrap();
    let base_image = writer.image(&base).unwrap();
    let (pending_layer, pending) = common::put_layer(&writer, &common::real_tar(&[("new", "x")]));
    // Meanwhile the base loses its tag.
    writer.untag("base:1").unwrap();

    let gc = Store::open(dir.path()).unwrap();
    let report = gc.gc(&[]).unwrap();
    assert_eq!(report.removed, vec![garbage.digest], "{report:?}");
    assert_eq!(report.leases_live, 1, "{report:?}");
    assert!(gc.has_blob(&pending), "gc swept a leased, untagged blob");
    for d in image_blobs(&gc, &base) {
        assert!(gc.has_blob(&d), "gc swept {d} of the base the build pinned");
    }

    // The build finishes: an image on the pinned base plus its own layer, tagged.
    // (Uncompressed layers: a diffID is the layer's digest.)
    let base_layer = base_image.manifest.layers()[0].clone();
    let diff_ids = [digest_of(&base_layer), pending];
    let child = writer
        .put_image(&common::config(&diff_ids, "child"), &[base_layer, pending_layer])
        .unwrap();
    writer.tag("child:1", &child).unwrap();
    assert!(gc.fsck(false).unwrap().is_clean());

    // Once the writer is gone, its lease goes with it: only tagged content stays, so the
    // untagged base's manifest and config go (its layer is the child's too).
    drop((writer, base_image));
    let mut base_only = image_blobs(&gc, &base)[..2].to_vec();
    base_only.sort();
    let report = gc.gc(&[]).unwrap();
    assert_eq!(report.leases_live, 0, "{report:?}");
    assert_eq!(report.removed, base_only, "{report:?}");
    assert!(gc.load_image("child:1").is_ok());
    assert!(gc.fsck(false).unwrap().is_clean());
}

#[test]
fn gc_and_writers_race_without_losing_a_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    std::thread::scope(|s| {
        let collector = s.spawn(|| {
            let gc = Store::open(dir.path()).unwrap();
            let mut runs = 0;
            for _ in 0..40 {
                gc.gc(&[]).unwrap();
                runs += 1;
            }
            runs
        });
        for i in 0..4 {
            let root = dir.path().to_path_buf();
            s.spawn(move || {
                for round in 0..15 {
                    // Each round a fresh handle (a fresh process, in effect): written
                    // untagged, then tagged, with gc running throughout.
                    let writer = Store::open(&root).unwrap();
                    let content = format!("{i}-{round}");
                    let m = make_image(&writer, &[("f", content.as_str())], &content);
                    writer.tag(&format!("w{i}:r{round}"), &m).unwrap();
                }
            });
        }
        assert_eq!(collector.join().unwrap(), 40);
    });
    store.gc(&[]).unwrap();
    assert!(store.fsck(false).unwrap().is_clean());
    for i in 0..4 {
        for round in 0..15 {
            store.load_image(&format!("w{i}:r{round}")).unwrap();
        }
    }
}

/// Not a test of its own: the helper process of `gc_sweeps_the_lease_of_a_killed_process`
/// (run when `STRATA_LEASE_HELPER` names a store), which writes an untagged blob and half of
/// another, says so, and waits to be killed.
#[test]
fn lease_helper_process() {
    let Some(root) = std::env::var_os("STRATA_LEASE_HELPER") else { return };
    let store = Store::open(&root).unwrap();
    let put = store.put_blob(&b"written by a process about to be killed"[..]).unwrap();
    let mut half = store.blob_writer().unwrap();
    std::io::Write::write_all(&mut half, b"half of a blob").unwrap();
    std::io::Write::flush(&mut half).unwrap();
    let ready = std::path::Path::new(&root).join("..").join("helper-ready");
    fs::write(&ready, put.digest.to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(120));
    drop(half);
}

#[test]
fn gc_sweeps_the_lease_of_a_killed_process() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::init(&root).unwrap();
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lease_helper_process", "--test-threads", "1"])
        .env("STRATA_LEASE_HELPER", &root)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = dir.path().join("helper-ready");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        assert!(std::time::Instant::now() < deadline, "the helper never got ready");
        assert!(helper.try_wait().unwrap().is_none(), "the helper exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let written: Digest = fs::read_to_string(&ready).unwrap().parse().unwrap();

    // Alive: its lease is a root, its half-written blob a live temp file.
    let report = store.gc(&[]).unwrap();
    assert_eq!((report.leases_live, report.leases_removed), (1, 0), "{report:?}");
    assert!(report.removed.is_empty() && store.has_blob(&written), "{report:?}");
    assert_eq!(report.temp_entries_removed, 0, "{report:?}");
    assert_eq!(common::count(&common::layout::tmp_dir(&store)), 1);

    helper.kill().unwrap(); // SIGKILL: no destructor runs
    helper.wait().unwrap();

    // The next writer to open the store sweeps the dead process's temp file...
    let next = Store::open(&root).unwrap();
    next.lease().unwrap();
    assert_eq!(common::count(&common::layout::tmp_dir(&store)), 0, "leftover temp not swept");
    drop(next);
    // ... and the next gc its lease, and the blob only that lease kept.
    let report = store.gc(&[]).unwrap();
    assert_eq!((report.leases_live, report.leases_removed), (0, 1), "{report:?}");
    assert_eq!(report.removed, vec![written], "{report:?}");
    assert!(store.fsck(false).unwrap().is_clean());
}
