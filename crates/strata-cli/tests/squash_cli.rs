//! `strata build --squash` and `--squash-all` (issue 19): the build's layers made one (the
//! base's kept) or the whole image one, with the same files as the unsquashed image, history
//! entries that match the layers, diffIDs that are the layer's tar digest, and the step cache
//! working as before. RUN needs root.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

mod common;

use common::{counts, needs_root, run, strata, workspace};

const RECIPE: &str = "\
FROM lamp-base:latest
RUN echo a > /a && rm /etc/group && mkdir -p /srv/x && echo x > /srv/x/f
ENV X=1
RUN echo b > /b && echo bob:x:1000:1000::/:/bin/sh >> /etc/passwd && rm -r /srv/x && rm /tmp/../a
";

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn inspect(store: &Path, image: &str) -> serde_json::Value {
    serde_json::from_str(&ok(strata(store, &["inspect", "--json", image]))).unwrap()
}

/// path -> "type mode uid gid size link sha256" of an image's files.
fn files(store: &Path, image: &str, dir: &Path) -> BTreeMap<String, String> {
    ok(strata(store, &["export", image, &format!("dir:{}", dir.display())]));
    let rootfs = dir.join("rootfs");
    let root = if rootfs.is_dir() { rootfs } else { dir.to_path_buf() };
    let listing = run(Command::new("find")
        .args([".", "-mindepth", "1", "-printf", "%p\t%y %m %U %G %l\n"])
        .current_dir(&root));
    listing
        .lines()
        .map(|l| {
            let (path, meta) = l.split_once('\t').unwrap();
            let mut meta = meta.to_string();
            if meta.starts_with("f ") {
                meta.push_str(&run(Command::new("sha256sum").arg(path).current_dir(&root))[..64]);
            }
            (path.to_string(), meta)
        })
        .collect()
}

/// The sha256 of the layer blob's tar (zstd-decompressed).
fn tar_digest(store: &Path, blob: &str) -> String {
    let path = store.join("blobs/sha256").join(blob.trim_start_matches("sha256:"));
    let out =
        run(Command::new("sh").arg("-c").arg(format!("zstd -dc '{}' | sha256sum", path.display())));
    format!("sha256:{}", &out[..64])
}

/// Layer count, and that history and diffIDs tell the truth about the layers.
fn check_layers(store: &Path, image: &str) -> Vec<String> {
    let v = inspect(store, image);
    let layers: Vec<String> = v["manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let diff_ids = v["config"]["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.len(), layers.len(), "{image}");
    for (blob, diff_id) in layers.iter().zip(diff_ids) {
        assert_eq!(tar_digest(store, blob), diff_id.as_str().unwrap(), "{image}: {blob}");
    }
    let history = v["config"]["history"].as_array().unwrap();
    let with_layer = history.iter().filter(|h| h["empty_layer"] != serde_json::json!(true));
    assert_eq!(with_layer.count(), layers.len(), "{image}: {history:?}");
    layers
}

#[test]
fn squash_keeps_the_base_layers_and_squash_all_makes_one_layer() {
    if !needs_root() || !common::have("zstd") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    run(Command::new(workspace().join("examples/lamp/make-base.sh"))
        .env("STRATA", env!("CARGO_BIN_EXE_strata"))
        .env("STRATA_STORE", &store));
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), RECIPE).unwrap();
    let ctx = ctx.to_str().unwrap();
    let build = |extra: &[&str], tag: &str| {
        let mut args = vec!["build", "--progress", "plain", "-t", tag];
        args.extend_from_slice(extra);
        args.push(ctx);
        let out = strata(&store, &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (ok(out).trim().to_string(), stderr)
    };
    let (_, _) = build(&[], "plain:1");
    let (squashed, log) = build(&["--squash"], "squashed:1");
    // The steps came from the cache; only the squashed layer is new.
    assert_eq!(counts(&log), (2, 1), "{log}");
    let (all, _) = build(&["--squash-all"], "all:1");

    let base = check_layers(&store, "lamp-base:latest");
    let plain = check_layers(&store, "plain:1");
    let sq = check_layers(&store, "squashed:1");
    let sa = check_layers(&store, "all:1");
    assert_eq!((plain.len(), sq.len(), sa.len()), (3, 2, 1));
    assert_eq!(sq[0], base[0], "--squash keeps the base layer as it is");
    assert_ne!(sa[0], base[0]);

    // Same files, whichever way the layers are cut.
    let want = files(&store, "plain:1", &tmp.path().join("plain"));
    assert!(!want.contains_key("./etc/group") && want.contains_key("./etc/passwd"));
    assert!(want.contains_key("./srv") && !want.contains_key("./srv/x"));
    assert_eq!(files(&store, "squashed:1", &tmp.path().join("sq")), want);
    assert_eq!(files(&store, "all:1", &tmp.path().join("all")), want);

    // History: buildah's, the base's entries kept by --squash and dropped by --squash-all,
    // the last step's entry carrying the layer.
    let created_by = |image: &str| -> Vec<(String, bool)> {
        inspect(&store, image)["config"]["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let by = h["created_by"].as_str().unwrap_or("").to_string();
                (by, h["empty_layer"] == serde_json::json!(true))
            })
            .collect()
    };
    let sq_history = created_by("squashed:1");
    assert_eq!(sq_history.len(), 4, "{sq_history:?}");
    assert_eq!(sq_history[0], ("strata import".to_string(), false));
    assert!(sq_history[1].1 && sq_history[2].1 && !sq_history[3].1, "{sq_history:?}");
    assert!(sq_history[3].0.contains("echo b"), "{sq_history:?}");
    let sa_history = created_by("all:1");
    assert_eq!(sa_history.len(), 3, "{sa_history:?}");
    assert!(!sa_history[2].1 && sa_history[2].0.contains("echo b"), "{sa_history:?}");

    // A rebuild with no change hits every step and gives the same image.
    let (again, log) = build(&["--squash"], "squashed:2");
    assert_eq!(again, squashed, "{log}");
    assert_eq!(counts(&log).0, 2, "{log}");
    let (again, _) = build(&["--squash-all"], "all:2");
    assert_eq!(again, all);
    ok(strata(&store, &["fsck"]));
}

#[test]
fn squash_and_squash_all_together_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = strata(&tmp.path().join("store"), &["build", "--squash", "--squash-all", "."]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--squash") && stderr.contains("--squash-all"), "{stderr}");
}
