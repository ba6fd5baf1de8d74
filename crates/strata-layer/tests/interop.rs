//! Interop with real tools: GNU tar and umoci read our layers, and we apply theirs.
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{assert_same, is_root, normalize, skip_without, write_file, Norm};
use filetime::FileTime;
use sha2::Digest as _;
use strata_layer::{apply, diff, scan, ApplyOptions, Compression, LayerWriter};

const EPOCH: i64 = 1_600_000_000;

/// A tree with every feature a layer must carry.
fn tree(root: &Path, xattrs: bool) {
    write_file(&root.join("etc/conf"), b"conf\n");
    write_file(&root.join("bin/tool"), &vec![0x7f; 70_000]);
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("bin/tool"), root.join("bin/tool-alias")).unwrap();
    symlink("../etc/conf", root.join("bin/conf-link")).unwrap();
    symlink("/".to_string() + &"long-target/".repeat(12), root.join("bin/long-link")).unwrap();
    let deep = "deep-directory-name-".repeat(4);
    write_file(&root.join(&deep).join("with a space and ünicode ✓ and more").join("f"), b"deep");
    fs::create_dir(root.join("sticky")).unwrap();
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    if xattrs {
        xattr::set(root.join("etc/conf"), "user.note", b"hello\nworld").unwrap();
    }
    if is_root() {
        std::os::unix::fs::lchown(root.join("etc/conf"), Some(1234), Some(5678)).unwrap();
    }
    let t = FileTime::from_unix_time(1_500_000_000, 0);
    for e in walkdir::WalkDir::new(root).min_depth(1).contents_first(true) {
        filetime::set_symlink_file_times(e.unwrap().path(), t, t).unwrap();
    }
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn gnu_tar_layers_apply_like_the_source_tree() {
    if skip_without("tar") {
        return;
    }
    for (format, xattrs) in [("gnu", false), ("posix", true)] {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        fs::create_dir_all(&dst).unwrap();
        fs::create_dir_all(&src).unwrap();
        tree(&src, xattrs);
        let archive = t.path().join("l.tar.gz");
        let mut cmd = Command::new("tar");
        cmd.arg(format!("--format={format}")).arg("--numeric-owner").arg("-czf").arg(&archive);
        if xattrs {
            cmd.arg("--xattrs").arg("--xattrs-include=*");
        }
        run(cmd.arg("-C").arg(&src).arg("."));
        apply(fs::File::open(&archive).unwrap(), &dst, &ApplyOptions::default()).unwrap();
        assert_same(
            &normalize(&scan(&src).unwrap(), i64::MAX),
            &normalize(&scan(&dst).unwrap(), i64::MAX),
        );
    }
}

#[test]
fn gnu_tar_lists_and_extracts_our_layers() {
    if skip_without("tar") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    fs::create_dir_all(&dst).unwrap();
    fs::create_dir_all(&src).unwrap();
    tree(&src, true);
    let layer = t.path().join("l.tar");
    LayerWriter::new(Compression::None)
        .epoch(EPOCH)
        .write_dir(&src, fs::File::create(&layer).unwrap())
        .unwrap();
    let listing = String::from_utf8(run(Command::new("tar")
        .arg("--numeric-owner")
        .arg("--quoting-style=literal")
        .arg("-tvf")
        .arg(&layer)))
    .unwrap();
    let names: Vec<&str> = listing
        .lines()
        .map(|l| {
            // "mode uid/gid size date time name[ -> target | link to target]"
            let mut rest = l;
            for _ in 0..5 {
                rest = rest.trim_start();
                rest = &rest[rest.find(' ').unwrap()..];
            }
            let name = rest.trim_start();
            name.split(" -> ").next().unwrap().split(" link to ").next().unwrap()
        })
        .collect();
    let snap = scan(&src).unwrap();
    let mut expect: Vec<String> = snap
        .entries()
        .iter()
        .map(|e| {
            let p = e.path.to_str().unwrap().to_string();
            if e.kind == strata_layer::EntryKind::Dir {
                p + "/"
            } else {
                p
            }
        })
        .collect();
    expect.sort_by(|a, b| a.trim_end_matches('/').cmp(b.trim_end_matches('/')));
    assert_eq!(names, expect, "{listing}");
    assert!(listing.contains("bin/tool-alias link to bin/tool"), "{listing}");
    assert!(listing.contains("-rwsr-xr-x"), "{listing}");
    assert!(listing.contains("drwxrwxrwt"), "{listing}");
    if is_root() {
        assert!(listing.contains("1234/5678"), "{listing}");
    }
    // GNU tar extracts it to the same tree (mtimes clamped to EPOCH are above the source's).
    run(Command::new("tar")
        .arg("--xattrs")
        .arg("--xattrs-include=*")
        .arg("--numeric-owner")
        .arg("-xpf")
        .arg(&layer)
        .arg("-C")
        .arg(&dst));
    assert_same(&normalize(&snap, EPOCH), &normalize(&scan(&dst).unwrap(), i64::MAX));
    // And zstd(1) decompresses our zstd stream to the same tar.
    let mut zst = Vec::new();
    let d = LayerWriter::new(Compression::Zstd).epoch(EPOCH).write_dir(&src, &mut zst).unwrap();
    let zpath = t.path().join("l.tar.zst");
    fs::write(&zpath, &zst).unwrap();
    if !skip_without("zstd") {
        let tar = run(Command::new("zstd").arg("-dc").arg(&zpath));
        assert_eq!(tar, fs::read(&layer).unwrap());
        assert_eq!(*d.diff_id.as_bytes(), <[u8; 32]>::from(sha2::Sha256::digest(&tar)));
    }
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// Writes a one-image OCI layout at `dir` with `layers` = (blob, diffID), tagged `t`.
fn oci_layout(dir: &Path, layers: &[(Vec<u8>, String)], media_type: &str) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put = |b: &[u8]| {
        let d = digest(b);
        fs::write(blobs.join(d.trim_start_matches("sha256:")), b).unwrap();
        d
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (blob, diff_id) in layers {
        descs.push(
            serde_json::json!({"mediaType": media_type, "digest": put(blob), "size": blob.len()}),
        );
        diff_ids.push(diff_id.clone());
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(&config), "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(&manifest),
            "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "t"}}]
    }))
    .unwrap();
    fs::write(dir.join("index.json"), index).unwrap();
}

#[test]
fn umoci_unpacks_our_two_layer_image_with_whiteouts() {
    if skip_without("umoci") || !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (lower, upper) = (t.path().join("lower"), t.path().join("upper"));
    fs::create_dir_all(&lower).unwrap();
    tree(&lower, true);
    run(Command::new("cp").arg("-a").arg(&lower).arg(&upper));
    fs::remove_file(upper.join("etc/conf")).unwrap();
    fs::remove_dir_all(upper.join("sticky")).unwrap();
    write_file(&upper.join("etc/new"), b"new");
    let w = LayerWriter::new(Compression::Gzip).epoch(i64::MAX);
    let (ls, us) = (scan(&lower).unwrap(), scan(&upper).unwrap());
    let mut l1 = Vec::new();
    let d1 = w.write(&strata_layer::Changeset::from_scan(ls.clone()), &lower, &mut l1).unwrap();
    let mut l2 = Vec::new();
    let d2 = w.write(&diff(&ls, &us).unwrap(), &upper, &mut l2).unwrap();
    let layout = t.path().join("layout");
    oci_layout(
        &layout,
        &[(l1, d1.diff_id.to_string()), (l2, d2.diff_id.to_string())],
        Compression::Gzip.media_type(),
    );
    let bundle = t.path().join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle));
    let mut want = normalize(&us, i64::MAX);
    let got = normalize(&scan(&bundle.join("rootfs")).unwrap(), i64::MAX);
    // umoci restores directory mtimes only for directories it creates; compare the rest.
    ignore_dir_mtimes(&mut want, &got);
    assert_same(&want, &got);
}

#[test]
fn umoci_repacked_layers_apply_like_umoci_unpacks_them() {
    if skip_without("umoci") || !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let img = format!("{}:t", layout.display());
    let bundle = t.path().join("b");
    run(Command::new("umoci").arg("init").arg("--layout").arg(&layout));
    run(Command::new("umoci").arg("new").arg("--image").arg(&img));
    run(Command::new("umoci").arg("unpack").arg("--image").arg(&img).arg(&bundle));
    let rootfs = bundle.join("rootfs");
    tree(&rootfs, true);
    run(Command::new("umoci").arg("repack").arg("--image").arg(&img).arg(&bundle));
    // Second layer: deletions (umoci writes .wh. entries) and a modification.
    fs::remove_dir_all(&bundle).unwrap();
    run(Command::new("umoci").arg("unpack").arg("--image").arg(&img).arg(&bundle));
    fs::remove_file(rootfs.join("bin/conf-link")).unwrap();
    fs::remove_dir_all(rootfs.join("sticky")).unwrap();
    fs::write(rootfs.join("etc/conf"), b"changed").unwrap();
    // umoci (Go archive/tar) rounds mtimes to whole seconds; keep them whole.
    let t2 = FileTime::from_unix_time(1_550_000_000, 0);
    for e in walkdir::WalkDir::new(&rootfs).min_depth(1) {
        filetime::set_symlink_file_times(e.unwrap().path(), t2, t2).unwrap();
    }
    run(Command::new("umoci").arg("repack").arg("--image").arg(&img).arg(&bundle));
    // Apply umoci's layers, in manifest order, with ours.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    let m = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(blob(m)).unwrap()).unwrap();
    let dst = t.path().join("dst");
    fs::create_dir(&dst).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        let f = fs::File::open(blob(l["digest"].as_str().unwrap())).unwrap();
        apply(f, &dst, &ApplyOptions::default()).unwrap();
    }
    let mut want = normalize(&scan(&rootfs).unwrap(), i64::MAX);
    let got = normalize(&scan(&dst).unwrap(), i64::MAX);
    ignore_dir_mtimes(&mut want, &got);
    assert!(!dst.join("sticky").exists() && !dst.join("bin/conf-link").exists());
    assert_same(&want, &got);
}

#[test]
fn buildah_committed_layers_apply_like_the_container_filesystem() {
    if skip_without("buildah") || !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("storage");
    let runroot = t.path().join("run");
    let buildah = || {
        let mut c = Command::new("buildah");
        c.arg("--storage-driver")
            .arg("vfs")
            .arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(&runroot);
        c
    };
    let text =
        |out: Vec<u8>| String::from_utf8(out).unwrap().trim().lines().last().unwrap().to_string();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    tree(&src, false);
    let c1 = text(run(buildah().args(["from", "scratch"])));
    run(buildah().arg("copy").arg(&c1).arg(&src).arg("/"));
    run(buildah().args(["commit", &c1, "strata-test-base"]));
    let c2 = text(run(buildah().args(["from", "strata-test-base"])));
    let mnt = std::path::PathBuf::from(text(run(buildah().args(["mount", &c2]))));
    fs::remove_file(mnt.join("bin/conf-link")).unwrap();
    fs::remove_dir_all(mnt.join("sticky")).unwrap();
    fs::write(mnt.join("etc/conf"), b"changed").unwrap();
    write_file(&mnt.join("etc/added"), b"added");
    // containers/storage may round sub-second mtimes; keep them whole.
    let t2 = FileTime::from_unix_time(1_550_000_000, 0);
    for e in walkdir::WalkDir::new(&mnt).min_depth(1) {
        filetime::set_symlink_file_times(e.unwrap().path(), t2, t2).unwrap();
    }
    let mut want = normalize(&scan(&mnt).unwrap(), i64::MAX);
    let layout = t.path().join("layout");
    run(buildah()
        .args(["commit", "--format", "oci", &c2])
        .arg(format!("oci:{}:t", layout.display())));
    let _ = buildah().args(["rm", "-a"]).output();
    let _ = buildah().args(["rmi", "-a", "-f"]).output();

    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    let m = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(blob(m)).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{manifest}");
    let dst = t.path().join("dst");
    fs::create_dir(&dst).unwrap();
    for l in layers {
        let f = fs::File::open(blob(l["digest"].as_str().unwrap())).unwrap();
        apply(f, &dst, &ApplyOptions::default()).unwrap();
    }
    let got = normalize(&scan(&dst).unwrap(), i64::MAX);
    ignore_dir_mtimes(&mut want, &got);
    assert!(!dst.join("sticky").exists() && !dst.join("bin/conf-link").exists());
    assert_same(&want, &got);
}

/// Takes `got`'s mtime for every directory of `want`: the tools compared against restore
/// directory mtimes only for directories they create (or not at all), so those are not compared.
fn ignore_dir_mtimes(want: &mut BTreeMap<Vec<u8>, Norm>, got: &BTreeMap<Vec<u8>, Norm>) {
    for (k, v) in want.iter_mut() {
        if v.kind == strata_layer::EntryKind::Dir {
            v.mtime = got.get(k).map_or(v.mtime, |g| g.mtime);
        }
    }
}
