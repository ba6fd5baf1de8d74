//! Verified reads on every path (issue 15 point 1): a byte flipped in a stored layer blob
//! stops `build` (FROM it, RUN or COPY), `push`, `export` and `diff` with one line naming the
//! blob and the image, exit status 3 (store damage), nothing tagged and nothing sent.

#[path = "../../strata-registry/tests/common/registry.rs"]
mod registry;

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{needs_root, TempRoot};
use registry::{Registry, RegistryOptions};

/// A fresh store (no snapshot of anything) with `base:1` (one layer, big enough that the
/// flipped byte is in the middle of compressed data) and `other:1`; `base:1`'s layer has a
/// byte flipped. Returns the store and the corrupt layer's digest.
fn corrupt_store(tmp: &TempRoot) -> (PathBuf, String) {
    let store = tmp.path("store");
    for (name, tree, content) in [("base:1", "t1", 40_000), ("other:1", "t2", 10)] {
        let dir = tmp.path(tree);
        std::fs::create_dir_all(&dir).unwrap();
        let text: String = (0..content).map(|i| format!("{name} line {i}\n")).collect();
        std::fs::write(dir.join("a"), text).unwrap();
        ok(&store, &["import", dir.to_str().unwrap(), name]);
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("index.json")).unwrap()).unwrap();
    let base = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "base:1")
        .unwrap();
    let manifest_path = blob_path(&store, base["digest"].as_str().unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest_path).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let path = blob_path(&store, &layer);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    (store, layer)
}

/// `blobs/sha256/<hex>` of the OCI layout (image-layout.md, "Blobs").
fn blob_path(store: &Path, digest: &str) -> PathBuf {
    store.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())
}

fn strata(store: &Path, args: &[&str]) -> Output {
    common::strata(store, args)
}

fn ok(store: &Path, args: &[&str]) -> String {
    let out = strata(store, args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `args` fails with exit 3 and the one line naming the corrupt blob of base:1; the tags
/// are what they were.
fn assert_refused(store: &Path, layer: &str, args: &[&str]) {
    let before = ok(store, &["images"]);
    let out = strata(store, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = format!(
        "strata: error: blob {layer} of image base:1 is corrupt; run `strata fsck --repair`"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("strata: error")).collect();
    assert_eq!(errors, [line.as_str()], "{args:?}: {stderr}");
    assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
    assert_eq!(ok(store, &["images"]), before, "{args:?} changed the tags");
}

fn context(tmp: &TempRoot, name: &str, recipe: &str) -> PathBuf {
    let ctx = tmp.path(name);
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), recipe).unwrap();
    std::fs::write(ctx.join("new"), "copied").unwrap();
    ctx
}

#[test]
fn build_from_a_corrupt_base_stops_before_tagging() {
    let tmp = TempRoot::new();
    let (store, layer) = corrupt_store(&tmp);
    // COPY needs the base's tree (to see what is at the destination), no sandbox.
    let copy = context(&tmp, "copy", "FROM base:1\nCOPY new /new\n");
    assert_refused(&store, &layer, &["build", "-t", "child:1", copy.to_str().unwrap()]);
    if needs_root() {
        let run = context(&tmp, "run", "FROM base:1\nRUN cat /a > /b\n");
        assert_refused(&store, &layer, &["build", "-t", "child:2", run.to_str().unwrap()]);
    }
}

#[test]
fn export_of_a_corrupt_image_stops_without_a_ref() {
    let tmp = TempRoot::new();
    let (store, layer) = corrupt_store(&tmp);
    let out = tmp.path("out");
    let dest = format!("oci:{}", out.display());
    assert_refused(&store, &layer, &["export", "base:1", &dest]);
    // The layout may hold blobs copied before the bad one, never a ref to the image.
    if let Ok(index) = std::fs::read_to_string(out.join("index.json")) {
        let index: serde_json::Value = serde_json::from_str(&index).unwrap();
        assert!(index["manifests"].as_array().unwrap().is_empty(), "{index}");
    }
}

#[test]
fn diff_with_a_corrupt_image_names_it() {
    let tmp = TempRoot::new();
    let (store, layer) = corrupt_store(&tmp);
    assert_refused(&store, &layer, &["diff", "base:1", "other:1"]);
}

#[test]
fn push_of_a_corrupt_image_sends_nothing_of_it() {
    if !registry::registry_available() {
        return;
    }
    let reg = Registry::start(RegistryOptions { htpasswd: None });
    let tmp = TempRoot::new();
    let (store, layer) = corrupt_store(&tmp);
    let dest = format!("docker://{}/x:1", reg.host());
    assert_refused(&store, &layer, &["push", "base:1", &dest]);
    assert!(!reg.blob_data_path(&layer).exists(), "the corrupt blob reached the registry");
    let manifest = reg.storage().join("docker/registry/v2/repositories/x/_manifests/tags/1");
    assert!(!manifest.exists(), "a manifest was pushed");
    // The same push of a sound image goes through: the refusal was the blob's doing.
    ok(&store, &["push", "other:1", &format!("docker://{}/x:2", reg.host())]);
    assert!(reg.storage().join("docker/registry/v2/repositories/x/_manifests/tags/2").exists());
}
