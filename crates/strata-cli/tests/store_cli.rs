//! The store commands end to end, with real skopeo and umoci where installed.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::{have, run, TempRoot};

struct Env {
    dir: TempRoot,
    store: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = TempRoot::new();
        Env { store: dir.path("store"), dir }
    }

    fn strata(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("--store")
            .arg(&self.store)
            .args(args)
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.strata(args);
        assert!(
            out.status.success(),
            "strata {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }

    fn blob_count(&self) -> usize {
        std::fs::read_dir(self.store.join("blobs/sha256")).unwrap().count()
    }
}

/// A small tree with the shapes that matter: nested dirs, a symlink, a hardlink, an
/// executable, an empty file.
fn make_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc/app")).unwrap();
    std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
    std::fs::write(dir.join("etc/app/config"), "key = value\n").unwrap();
    std::fs::write(dir.join("usr/bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    std::fs::set_permissions(dir.join("usr/bin/tool"), std::fs::Permissions::from_mode(0o755))
        .unwrap();
    std::fs::hard_link(dir.join("usr/bin/tool"), dir.join("usr/bin/tool-alias")).unwrap();
    symlink("tool", dir.join("usr/bin/link")).unwrap();
    std::fs::write(dir.join("empty"), "").unwrap();
}

fn diff_trees(a: &Path, b: &Path) {
    let out =
        Command::new("diff").arg("-r").arg("--no-dereference").arg(a).arg(b).output().unwrap();
    assert!(out.status.success(), "trees differ:\n{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn import_dedups_and_lists() {
    let env = Env::new();
    let tree = env.path("tree");
    make_tree(&tree);
    let first = env.ok(&["import", tree.to_str().unwrap(), "app:v1"]);
    assert!(first.contains(") written"), "{first}");
    let blobs = env.blob_count();
    assert_eq!(blobs, 3, "layer, config, manifest");
    let second = env.ok(&["import", tree.to_str().unwrap(), "app:v2"]);
    assert!(second.contains("already stored"), "{second}");
    assert_eq!(env.blob_count(), blobs, "importing the same tree again adds no blob");

    let list: serde_json::Value = serde_json::from_str(&env.ok(&["images", "--json"])).unwrap();
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["digest"], rows[1]["digest"]);
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "--json", "app:v1"])).unwrap();
    assert_eq!(inspect["config"]["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    assert_eq!(inspect["config"]["created"], "1970-01-01T00:00:00Z");
    assert_eq!(inspect["digest"], rows[0]["digest"]);

    env.ok(&["tag", "app:v1", "other/name:x"]);
    env.ok(&["rmi", "app:v1", "app:v2"]);
    let text = env.ok(&["images"]);
    assert!(text.contains("other/name") && !text.contains("app "), "{text}");
    // Still tagged: gc keeps everything.
    assert!(env.ok(&["gc"]).starts_with("removed 0 blobs"));
    env.ok(&["rmi", "other/name:x"]);
    let gc = env.ok(&["gc"]);
    assert!(gc.starts_with("removed 3 blobs"), "{gc}");
    assert_eq!(env.blob_count(), 0);
    assert!(env.ok(&["fsck"]).contains("clean"));
}

#[test]
fn same_tree_gives_same_digest_in_fresh_stores_whatever_the_mtimes() {
    let a = Env::new();
    let b = Env::new();
    let (ta, tb) = (a.path("t"), b.path("t"));
    make_tree(&ta);
    make_tree(&tb);
    // Different mtimes (both above the clamp at 0) must not matter.
    let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    std::fs::File::options()
        .write(true)
        .open(tb.join("etc/app/config"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    let da = a.ok(&["import", ta.to_str().unwrap(), "x"]);
    let db = b.ok(&["import", tb.to_str().unwrap(), "x"]);
    assert_eq!(da.lines().last(), db.lines().last());
}

#[test]
fn exports_round_trip_through_every_transport() {
    let env = Env::new();
    let tree = env.path("tree");
    make_tree(&tree);
    env.ok(&["import", tree.to_str().unwrap(), "app:v1"]);

    // dir: the flattened filesystem is the source tree.
    let flat = env.path("flat");
    env.ok(&["export", "app:v1", &format!("dir:{}", flat.display())]);
    diff_trees(&tree, &flat);
    // ... and refuses to write into a non-empty directory.
    let out = env.strata(&["export", "app:v1", &format!("dir:{}", flat.display())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));

    // oci: and docker-archive: come back with the same config and layer content.
    let layout = env.path("layout");
    env.ok(&["export", "app:v1", &format!("oci:{}:app:v1", layout.display())]);
    let archive = env.path("app.tar");
    env.ok(&["export", "app:v1", &format!("docker-archive:{}", archive.display())]);
    let fresh = Env::new();
    fresh.ok(&["import", &format!("oci:{}:app:v1", layout.display()), "from-oci:1"]);
    fresh.ok(&["import", &format!("docker-archive:{}", archive.display()), "from-archive:1"]);
    let a: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "--json", "app:v1"])).unwrap();
    let b: serde_json::Value =
        serde_json::from_str(&fresh.ok(&["inspect", "--json", "from-oci:1"])).unwrap();
    let c: serde_json::Value =
        serde_json::from_str(&fresh.ok(&["inspect", "--json", "from-archive:1"])).unwrap();
    assert_eq!(a["digest"], b["digest"], "an OCI copy keeps the manifest digest");
    assert_eq!(a["config"], c["config"], "a docker-archive keeps the config");
    let flat2 = env.path("flat2");
    fresh.ok(&["export", "from-archive:1", &format!("dir:{}", flat2.display())]);
    diff_trees(&tree, &flat2);
    // inspect reads foreign locations without a store.
    let foreign = env.ok(&["inspect", &format!("docker-archive:{}", archive.display())]);
    assert!(foreign.contains("Layers:       1"), "{foreign}");
    assert!(env.ok(&["fsck"]).contains("clean") && fresh.ok(&["fsck"]).contains("clean"));
}

#[test]
fn skopeo_reads_our_store_and_exports() {
    if !have("skopeo") {
        return;
    }
    let env = Env::new();
    let tree = env.path("tree");
    make_tree(&tree);
    env.ok(&["import", "--compression", "gzip", tree.to_str().unwrap(), "app:v1"]);
    let ours: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "--json", "app:v1"])).unwrap();
    let store_ref = format!("oci:{}:app:v1", env.store.display());
    let info: serde_json::Value =
        serde_json::from_str(&run(Command::new("skopeo").args(["inspect", &store_ref]))).unwrap();
    assert_eq!(info["Digest"], ours["digest"]);
    // skopeo copies our store into a docker-archive; we read that back to the same config.
    let archive = env.path("skopeo.tar");
    run(Command::new("skopeo").args([
        "copy",
        &store_ref,
        &format!("docker-archive:{}:app:v1", archive.display()),
    ]));
    let back: serde_json::Value = serde_json::from_str(&env.ok(&[
        "inspect",
        "--json",
        &format!("docker-archive:{}", archive.display()),
    ]))
    .unwrap();
    assert_eq!(back["config"]["rootfs"], ours["config"]["rootfs"]);
    // And skopeo reads our own docker-archive export.
    let ours_tar = env.path("ours.tar");
    env.ok(&["export", "app:v1", &format!("docker-archive:{}:app:v1", ours_tar.display())]);
    let info: serde_json::Value =
        serde_json::from_str(&run(Command::new("skopeo")
            .args(["inspect", &format!("docker-archive:{}", ours_tar.display())])))
        .unwrap();
    assert_eq!(info["Layers"].as_array().unwrap().len(), 1);
}

#[test]
fn umoci_unpacks_our_export_to_the_source_tree() {
    if !have("umoci") {
        return;
    }
    let env = Env::new();
    let tree = env.path("tree");
    make_tree(&tree);
    env.ok(&["import", tree.to_str().unwrap(), "app:v1"]);
    // Debian's umoci predates zstd layers: export recompressed to gzip.
    let layout = env.path("layout");
    env.ok(&[
        "export",
        "--compression",
        "gzip",
        "app:v1",
        &format!("oci:{}:app:v1", layout.display()),
    ]);
    let bundle = env.path("bundle");
    run(Command::new("umoci").args([
        "unpack",
        "--rootless",
        "--image",
        &format!("{}:app:v1", layout.display()),
        bundle.to_str().unwrap(),
    ]));
    diff_trees(&tree, &bundle.join("rootfs"));
}

#[test]
fn corruption_is_caught_by_fsck_and_repaired() {
    let env = Env::new();
    let tree = env.path("tree");
    make_tree(&tree);
    env.ok(&["import", tree.to_str().unwrap(), "app:v1"]);
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "--json", "app:v1"])).unwrap();
    let layer = inspect["manifest"]["layers"][0]["digest"].as_str().unwrap().to_string();
    let blob = env.store.join("blobs/sha256").join(layer.strip_prefix("sha256:").unwrap());
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    // Exit 3: store damage (`strata --help`, exit codes).
    let out = env.strata(&["fsck"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&layer));
    // A verified read refuses it too, as store damage (exit 3) naming blob and image.
    let out = env.strata(&["export", "app:v1", &format!("dir:{}", env.path("x").display())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&format!("blob {layer} of image app:v1 is corrupt")), "{stderr}");
    // Repair removes the corrupt blob (exit 3: damage was found) and untags the image that
    // needed it into lost+found, so the store is consistent again.
    let out = env.strata(&["fsck", "--repair"]);
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("removed corrupt blob"), "{stdout}");
    assert!(stdout.contains("untagged into lost+found: app:v1"), "{stdout}");
    assert!(!blob.exists());
    assert!(!env.ok(&["images"]).contains("app"));
    env.ok(&["gc"]);
    let out = env.ok(&["fsck"]);
    assert!(out.contains("clean") && out.contains("lost+found (1 images):"), "{out}");
}

/// Regression (issue 16): a stored layer blob damaged so that decoding it fails (a zstd
/// error early in the stream, or a digest mismatch at its end) exited 2 like a bad request.
/// It is store damage: exit 3, one line naming the blob and pointing at `strata fsck`, from
/// every command that decodes the layer.
#[test]
fn a_layer_blob_damaged_inside_exits_3_naming_it_from_every_reader() {
    let env = Env::new();
    let tree = env.path("tree");
    make_tree(&tree);
    // Enough incompressible bytes that a flip in the middle lands inside compressed data.
    let noise: Vec<u8> =
        (0u64..64 * 1024).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(tree.join("noise"), noise).unwrap();
    env.ok(&["import", tree.to_str().unwrap(), "app:v1"]);
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "--json", "app:v1"])).unwrap();
    let layer = inspect["manifest"]["layers"][0]["digest"].as_str().unwrap().to_string();
    let blob = env.store.join("blobs/sha256").join(layer.strip_prefix("sha256:").unwrap());
    let whole = std::fs::read(&blob).unwrap();
    // Byte 30: inside the first zstd block's header/data (decoding fails early); the middle:
    // inside the data (decoding may get through to a digest mismatch at the end).
    for at in [30, whole.len() / 2] {
        let mut bytes = whole.clone();
        bytes[at] ^= 0xff;
        std::fs::write(&blob, &bytes).unwrap();
        let out_dir = env.path(&format!("out-{at}"));
        let archive = env.path(&format!("archive-{at}.tar"));
        let layout = env.path(&format!("layout-{at}"));
        for args in [
            vec!["ls".to_string(), "app:v1".to_string()],
            vec!["export".into(), "app:v1".into(), format!("dir:{}", out_dir.display())],
            vec!["export".into(), "app:v1".into(), format!("docker-archive:{}", archive.display())],
            vec![
                "export".into(),
                "--compression".into(),
                "gzip".into(),
                "app:v1".into(),
                format!("oci:{}", layout.display()),
            ],
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = env.strata(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "byte {at}, {args:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "byte {at}, {args:?}: one line: {stderr}");
            assert!(
                stderr.contains(&layer) && stderr.contains("is corrupt"),
                "byte {at}, {args:?}: names the blob: {stderr}"
            );
            // `run \`strata fsck\`` (damage found decoding) or `run \`strata fsck --repair\``
            // (a verified read that names the image).
            assert!(stderr.contains("run `strata fsck"), "byte {at}, {args:?}: {stderr}");
        }
    }
    std::fs::write(&blob, &whole).unwrap();
    assert!(env.ok(&["fsck"]).contains("clean"));
}

/// Writes `bytes` over the store's index.json (or deletes it for `None`).
fn damage_index(env: &Env, bytes: Option<&[u8]>) {
    let index = env.store.join("index.json");
    match bytes {
        Some(b) => std::fs::write(index, b).unwrap(),
        None => std::fs::remove_file(index).unwrap(),
    }
}

#[test]
fn a_damaged_index_json_is_one_clear_error_and_fsck_repair_rebuilds_it() {
    let env = Env::new();
    let tree = env.path("tree");
    make_tree(&tree);
    env.ok(&["import", tree.to_str().unwrap(), "app:v1"]);
    env.ok(&["tag", "app:v1", "team/app:v2"]);
    let listed = env.ok(&["images"]);
    let whole = std::fs::read(env.store.join("index.json")).unwrap();
    for damage in [Some(&whole[..whole.len() / 2]), Some(&b"garbage"[..]), None] {
        damage_index(&env, damage);
        for args in [
            vec!["images"],
            vec!["inspect", "app:v1"],
            vec!["tag", "app:v1", "x"],
            vec!["gc"],
            vec!["import", tree.to_str().unwrap(), "app:v3"],
        ] {
            let out = env.strata(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
            assert!(
                stderr.contains("index.json is damaged")
                    && stderr.contains("run `strata fsck --repair`"),
                "{args:?}: {stderr}"
            );
        }
        // fsck without repair says what is wrong and changes nothing.
        let out = env.strata(&["fsck"]);
        assert_eq!(out.status.code(), Some(3));
        assert!(String::from_utf8_lossy(&out.stdout).contains("index.json is damaged"));
        assert_eq!(env.strata(&["images"]).status.code(), Some(3));

        let out = env.strata(&["fsck", "--repair"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("rebuilt index.json from 2 tag records"), "{stdout}");
        assert_eq!(
            stdout.contains("kept the damaged index.json as "),
            damage.is_some(),
            "{stdout}"
        );
        assert_eq!(env.ok(&["images"]), listed);
        assert!(env.ok(&["fsck"]).contains("clean"));
    }
}

#[test]
fn images_marks_damaged_images_and_fsck_repair_moves_them_to_lost_found() {
    let env = Env::new();
    let tree = env.path("tree");
    make_tree(&tree);
    let other = env.path("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("file"), "other image\n").unwrap();
    env.ok(&["import", tree.to_str().unwrap(), "app:v1"]);
    env.ok(&["import", other.to_str().unwrap(), "other:v1"]);
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "--json", "--no-efficiency", "app:v1"])).unwrap();
    let layer = inspect["manifest"]["layers"][0]["digest"].as_str().unwrap().to_string();
    std::fs::remove_file(env.store.join("blobs/sha256").join(&layer["sha256:".len()..])).unwrap();

    let text = env.ok(&["images"]);
    let app = text.lines().find(|l| l.starts_with("app ")).unwrap();
    assert!(app.contains("DAMAGED: 1 blob missing, run `strata fsck --repair`"), "{text}");
    let fine = text.lines().find(|l| l.starts_with("other ")).unwrap();
    assert!(!fine.contains("DAMAGED"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&env.ok(&["images", "--json"])).unwrap();
    let rows = json.as_array().unwrap();
    let app = rows.iter().find(|r| r["name"] == "app").unwrap();
    assert_eq!(app["missing"], serde_json::json!([layer]));
    let fine = rows.iter().find(|r| r["name"] == "other").unwrap();
    assert_eq!(fine["missing"], serde_json::json!([]));

    let out = env.strata(&["fsck"]);
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "damaged: app:v1 ({}): missing {layer}",
            inspect["digest"].as_str().unwrap()
        )),
        "{stdout}"
    );

    let out = env.strata(&["fsck", "--repair"]);
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("untagged into lost+found: app:v1"), "{stdout}");
    assert!(stdout.contains("lost+found (1 images):"), "{stdout}");
    let text = env.ok(&["images"]);
    assert!(!text.contains("app") && text.contains("other"), "{text}");
    // Kept for the user to see: every later fsck lists it.
    let out = env.ok(&["fsck"]);
    assert!(out.contains("clean") && out.contains("  app:v1 sha256:"), "{out}");
}

#[test]
fn a_store_of_a_newer_format_is_refused() {
    let env = Env::new();
    let tree = env.path("tree");
    make_tree(&tree);
    env.ok(&["import", tree.to_str().unwrap(), "app:v1"]);
    std::fs::write(env.store.join("strata/format"), r#"{"storeFormat":7}"#).unwrap();
    for args in [vec!["images"], vec!["fsck", "--repair"]] {
        let out = env.strata(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("store format 7") && stderr.contains("format 2"), "{stderr}");
    }
}

#[test]
fn bad_input_is_refused_and_leaves_the_store_alone() {
    let env = Env::new();
    let tree = env.path("tree");
    make_tree(&tree);
    env.ok(&["import", tree.to_str().unwrap(), "app:v1"]);
    let index = std::fs::read(env.store.join("index.json")).unwrap();
    for args in [
        vec!["import", tree.to_str().unwrap(), "Bad Name"],
        vec!["import", "/nonexistent/tree", "app:v2"],
        vec!["inspect", "nope:v1"],
        vec!["tag", "nope:v1", "x:y"],
        vec!["rmi", "nope:v1"],
        vec!["export", "app:v1", "docker://localhost/x:y"],
        vec!["inspect", "oci:/nonexistent/layout"],
    ] {
        let out = env.strata(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?} says why");
    }
    assert_eq!(std::fs::read(env.store.join("index.json")).unwrap(), index);
    assert!(env.ok(&["fsck"]).contains("clean"));
    // No store yet is an empty list (a fresh machine); a directory that is not a store is an
    // error, not an empty list.
    let images = |store: &Path| {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["--store", store.to_str().unwrap(), "images"])
            .output()
            .unwrap()
    };
    assert_eq!(images(&env.path("nostore")).status.code(), Some(0));
    assert_eq!(images(&tree).status.code(), Some(2));
}

#[test]
fn import_of_a_tar_archive_matches_import_of_the_tree() {
    let env = Env::new();
    let tree = env.path("tree");
    make_tree(&tree);
    let tarball = env.path("tree.tar.gz");
    run(Command::new("tar").arg("-czf").arg(&tarball).arg("-C").arg(&tree).arg("."));
    let from_dir = env.ok(&["import", tree.to_str().unwrap(), "a"]);
    let from_tar = env.ok(&["import", tarball.to_str().unwrap(), "b"]);
    assert!(from_tar.contains("already stored"), "{from_tar}");
    assert_eq!(
        from_dir.lines().last().unwrap().split(' ').nth(1),
        from_tar.lines().last().unwrap().split(' ').nth(1)
    );
}

#[test]
fn export_dir_creates_device_nodes_only_when_asked() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let env = Env::new();
    // An image whose /dev holds a character device (1:3) and a block device (8:0): on a host
    // those are real devices, so `export dir:` leaves them out unless --devices.
    let tarball = env.path("devs.tar");
    run(Command::new("python3").arg("-c").arg(format!(
        r##"
import tarfile, io
with tarfile.open("{}", "w") as t:
    d = tarfile.TarInfo("dev"); d.type = tarfile.DIRTYPE; d.mode = 0o755; t.addfile(d)
    for name, kind, major, minor in [("dev/null", tarfile.CHRTYPE, 1, 3), ("dev/sda", tarfile.BLKTYPE, 8, 0)]:
        n = tarfile.TarInfo(name); n.type = kind; n.devmajor = major; n.devminor = minor; n.mode = 0o666; t.addfile(n)
    f = tarfile.TarInfo("bin-su"); f.mode = 0o4755; data = b"#!/bin/sh\n"; f.size = len(data); t.addfile(f, io.BytesIO(data))
"##,
        tarball.display()
    )));
    env.ok(&["import", tarball.to_str().unwrap(), "devs:1"]);
    let flat = env.path("flat");
    let out = env.strata(&["export", "devs:1", &format!("dir:{}", flat.display())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("skipped 2 device node(s)") && err.contains("--devices"), "{err}");
    assert!(flat.join("dev").is_dir());
    assert!(std::fs::symlink_metadata(flat.join("dev/null")).is_err());
    assert!(std::fs::symlink_metadata(flat.join("dev/sda")).is_err());
    if common::needs_root() {
        // Root keeps setuid bits, as `tar -x` as root does; --devices creates the nodes.
        let m = std::fs::metadata(flat.join("bin-su")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o4755);
        let flat2 = env.path("flat2");
        env.ok(&["export", "--devices", "devs:1", &format!("dir:{}", flat2.display())]);
        let sda = std::fs::symlink_metadata(flat2.join("dev/sda")).unwrap();
        assert!(sda.file_type().is_block_device());
        assert_eq!(sda.rdev(), rustix_free_makedev(8, 0));
        export_as_nobody_strips_setid(&env);
    }
}

/// A caller other than root gets no setuid or setgid bit from `export dir:` (issue 15 point
/// 4): `devs:1`'s `bin-su` is 4755 in the image, 0755 on the disk of `nobody`.
fn export_as_nobody_strips_setid(env: &Env) {
    if !have("setpriv") {
        return;
    }
    // nobody reads an OCI layout of the image, writes into a store and a directory of its own.
    let layout = env.path("devs-layout");
    env.ok(&["export", "devs:1", &format!("oci:{}:devs", layout.display())]);
    let theirs = env.path("nobody");
    std::fs::create_dir_all(theirs.join("empty")).unwrap();
    let store = theirs.join("store");
    let init = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--store")
        .arg(&store)
        .args(["import", theirs.join("empty").to_str().unwrap(), "e:1"])
        .output()
        .unwrap();
    assert!(init.status.success());
    let chown = |path: &Path| run(Command::new("chown").args(["-R", "65534:65534"]).arg(path));
    chown(&theirs);
    let open = |path: &Path| run(Command::new("chmod").args(["-R", "a+rX"]).arg(path));
    open(&layout);
    open(&env.path(""));
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_strata"))
        .arg("--store")
        .arg(&store)
        .args(["export", &format!("oci:{}:devs", layout.display())])
        .arg(format!("dir:{}", theirs.join("flat").display()))
        .env("HOME", &theirs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = std::fs::metadata(theirs.join("flat/bin-su")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o755, "nobody got a setuid file");
}

fn rustix_free_makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xfffff000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffffff00) << 12)
        | (minor & 0xff)
}

/// Issue 15 point 2: every metadata file is written to a temp file, fsynced, renamed into
/// place, and its directory fsynced, so a crash leaves the old or the new file, whole. Seen
/// from the outside with strace on a `tag` (index.json, then the tag's record).
#[test]
fn metadata_files_are_fsynced_before_and_after_their_rename() {
    if !have("strace") {
        return;
    }
    let env = Env::new();
    std::fs::create_dir_all(env.path("empty")).unwrap();
    env.ok(&["import", env.path("empty").to_str().unwrap(), "e:1"]);
    let log = env.path("strace.log");
    let out = Command::new("strace")
        .args(["-f", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", "-o"])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_strata"))
        .arg("--store")
        .arg(&env.store)
        .args(["tag", "e:1", "e:2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(log).unwrap();
    let calls: Vec<&str> = log.lines().filter(|l| !l.contains("+++")).collect();
    let synced = |i: usize| calls.get(i).is_some_and(|l| l.contains("fsync("));
    for target in ["/index.json\"", "/tags-v1/e:2\""] {
        let i = calls
            .iter()
            .position(|l| l.contains("rename") && l.contains(target))
            .unwrap_or_else(|| panic!("no rename to {target}: {log}"));
        assert!(i > 0 && synced(i - 1), "{target} not fsynced before its rename: {log}");
        assert!(synced(i + 1), "{target}'s directory not fsynced after the rename: {log}");
    }
}
