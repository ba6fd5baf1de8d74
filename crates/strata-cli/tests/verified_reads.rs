//! Verified reads on every path (issue 15 point 1): a byte flipped in a stored layer blob
//! stops `build` (FROM it, RUN or COPY), `push`, `copy`, `export` and `diff` with one line
//! naming the blob and the image, exit status 3 (store damage), nothing tagged and nothing
//! sent: a push verifies every blob it will upload before the first upload, so the registry
//! gets no blob of the image at all. A multi-platform image is named with the platforms whose
//! images use the blob (`mp:1 (linux/arm64)`).

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
    assert_refused_as(store, layer, "base:1", args);
}

/// `args` fails with exit 3 and the one line naming the corrupt blob `layer` of `image`; the
/// tags are what they were.
fn assert_refused_as(store: &Path, layer: &str, image: &str, args: &[&str]) {
    let before = ok(store, &["images"]);
    assert_error_line(store, layer, image, args);
    assert_eq!(ok(store, &["images"]), before, "{args:?} changed the tags");
}

/// `args` fails with exit 3 and the one line naming the corrupt blob `layer` of `image`.
fn assert_error_line(store: &Path, layer: &str, image: &str, args: &[&str]) {
    let out = strata(store, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = format!(
        "strata: error: blob {layer} of image {image} is corrupt; run `strata fsck --repair`"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("strata: error")).collect();
    assert_eq!(errors, [line.as_str()], "{args:?}: {stderr}");
    assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The descriptor `index.json` of `store` records under `name`.
fn tagged(store: &Path, name: &str) -> serde_json::Value {
    let index = read_json(&store.join("index.json"));
    let found = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
        .cloned();
    found.unwrap_or_else(|| panic!("{name} is not tagged: {index}"))
}

/// Every blob of the image manifest `digest`: itself, its config, its layers.
fn image_blobs(store: &Path, digest: &str) -> Vec<String> {
    let manifest = read_json(&blob_path(store, digest));
    let mut blobs = vec![digest.to_owned(), manifest["config"]["digest"].as_str().unwrap().into()];
    for l in manifest["layers"].as_array().unwrap() {
        blobs.push(l["digest"].as_str().unwrap().to_owned());
    }
    blobs
}

/// Flips a byte in the middle of a stored blob.
fn rot(store: &Path, digest: &str) {
    let path = blob_path(store, digest);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
}

/// A context whose recipe makes three layers by COPY (no sandbox needed), the one of
/// `only-$TARGETARCH` differing between platforms.
fn three_layer_context(tmp: &TempRoot) -> PathBuf {
    let ctx = tmp.path("three");
    std::fs::create_dir_all(&ctx).unwrap();
    for name in ["first", "only-amd64", "only-arm64", "last"] {
        let text: String = (0..20_000).map(|i| format!("{name} line {i}\n")).collect();
        std::fs::write(ctx.join(name), text).unwrap();
    }
    let recipe = "FROM scratch\nCOPY first /first\nARG TARGETARCH\n\
                  COPY only-${TARGETARCH} /only\nCOPY last /last\n";
    std::fs::write(ctx.join("Dockerfile"), recipe).unwrap();
    ctx
}

/// A store with `multi:1`, a three-layer image, and its blobs (manifest, config, layers).
fn multi_layer_store(tmp: &TempRoot) -> (PathBuf, Vec<String>) {
    let store = tmp.path("store");
    let ctx = three_layer_context(tmp);
    ok(&store, &["build", "-t", "multi:1", ctx.to_str().unwrap()]);
    let manifest = tagged(&store, "multi:1")["digest"].as_str().unwrap().to_owned();
    let blobs = image_blobs(&store, &manifest);
    (store, blobs)
}

/// Asserts the registry holds none of `blobs` and was never asked to start an upload.
fn assert_nothing_sent(reg: &Registry, blobs: &[String]) {
    for b in blobs {
        assert!(!reg.blob_data_path(b).exists(), "{b} reached the registry");
    }
    let log = reg.log();
    let posts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"POST /v2/") && l.contains("/blobs/uploads/"))
        .collect();
    assert!(posts.is_empty(), "uploads were started: {posts:#?}");
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

#[test]
fn push_and_copy_of_a_corrupt_image_send_no_blob_of_it() {
    if !registry::registry_available() {
        return;
    }
    let reg = Registry::start(RegistryOptions { htpasswd: None });
    let tmp = TempRoot::new();
    let (store, blobs) = multi_layer_store(&tmp);
    // blobs: manifest, config, three layers; the middle layer rots. Its siblings and the
    // config verify: before, they were uploaded while the push went on to the corrupt one.
    let layer = blobs[3].clone();
    rot(&store, &layer);
    let push = format!("docker://{}/multi:1", reg.host());
    assert_refused_as(&store, &layer, "multi:1", &["push", "multi:1", &push]);
    let copy = format!("docker://{}/copied:1", reg.host());
    assert_refused_as(&store, &layer, "multi:1", &["copy", "multi:1", &copy]);
    assert_nothing_sent(&reg, &blobs);
}

#[test]
fn a_push_that_sends_nothing_does_not_read_what_the_registry_has() {
    if !registry::registry_available() {
        return;
    }
    let reg = Registry::start(RegistryOptions { htpasswd: None });
    let tmp = TempRoot::new();
    let (store, blobs) = multi_layer_store(&tmp);
    ok(&store, &["push", "multi:1", &format!("docker://{}/multi:1", reg.host())]);
    let uploads = reg.uploads("multi").len();
    assert_eq!(uploads, 4, "config and three layers");
    // The layer rots after the registry got its true bytes (checked against the digest):
    // pushing again sends nothing, so nothing is read and nothing stops the push, as with
    // skopeo. `strata fsck` is what finds the local damage.
    rot(&store, &blobs[3]);
    ok(&store, &["push", "multi:1", &format!("docker://{}/multi:2", reg.host())]);
    assert_eq!(reg.uploads("multi").len(), uploads, "a blob was uploaded again");
    let tag = reg.storage().join("docker/registry/v2/repositories/multi/_manifests/tags/2");
    assert!(tag.exists(), "the second tag was not pushed");
    let fsck = strata(&store, &["fsck"]);
    assert!(!fsck.status.success(), "fsck did not see the rot");
}

/// A store with `mp:1`, an index of linux/amd64 and linux/arm64 images built from
/// [`three_layer_context`], whose arm64-only layer rots, and that layer.
fn corrupt_index_store(tmp: &TempRoot) -> (PathBuf, String, Vec<String>) {
    let store = tmp.path("store");
    let ctx = three_layer_context(tmp);
    let platforms = "linux/amd64,linux/arm64";
    ok(&store, &["build", "--platform", platforms, "-t", "mp:1", ctx.to_str().unwrap()]);
    let index = tagged(&store, "mp:1")["digest"].as_str().unwrap().to_owned();
    let mut blobs = vec![index.clone()];
    let mut arm_layer = None;
    for m in read_json(&blob_path(&store, &index))["manifests"].as_array().unwrap() {
        let image = image_blobs(&store, m["digest"].as_str().unwrap());
        if m["platform"]["architecture"] == "arm64" {
            arm_layer = Some(image[3].clone());
        }
        blobs.extend(image);
    }
    let layer = arm_layer.expect("an arm64 image");
    rot(&store, &layer);
    (store, layer, blobs)
}

#[test]
fn multi_platform_export_and_build_output_name_the_image_and_platform() {
    let tmp = TempRoot::new();
    let (store, layer, _) = corrupt_index_store(&tmp);
    let named = "mp:1 (linux/arm64)";
    let out = format!("oci:{}", tmp.path("whole").display());
    assert_refused_as(&store, &layer, named, &["export", "mp:1", &out]);
    let out = format!("oci:{}", tmp.path("one").display());
    let one = ["export", "--platform", "linux/arm64", "mp:1", &out];
    assert_refused_as(&store, &layer, named, &one);
    // The same recipe again: every step cached, the index written out whole.
    let ctx = tmp.path("three");
    let out = format!("oci:{}", tmp.path("built").display());
    let platforms = "linux/amd64,linux/arm64";
    let build = ["build", "--platform", platforms, "-t", "mp:2", "--output", &out];
    assert_error_line(
        &store,
        &layer,
        "mp:2 (linux/arm64)",
        &[&build[..], &[ctx.to_str().unwrap()]].concat(),
    );
}

#[test]
fn multi_platform_push_copy_and_build_push_name_the_image_and_send_nothing() {
    if !registry::registry_available() {
        return;
    }
    let reg = Registry::start(RegistryOptions { htpasswd: None });
    let tmp = TempRoot::new();
    let (store, layer, blobs) = corrupt_index_store(&tmp);
    let named = "mp:1 (linux/arm64)";
    let to = |tag: &str| format!("docker://{}/mp:{tag}", reg.host());
    assert_refused_as(&store, &layer, named, &["push", "mp:1", &to("1")]);
    assert_refused_as(&store, &layer, named, &["copy", "--all", "mp:1", &to("2")]);
    let one = ["push", "--platform", "linux/arm64", "mp:1", &to("3")];
    assert_refused_as(&store, &layer, named, &one);
    let ctx = tmp.path("three");
    let platforms = "linux/amd64,linux/arm64";
    let out = to("4");
    let build = ["build", "--platform", platforms, "-t", "mp:4", "--output", &out];
    let build = [&build[..], &[ctx.to_str().unwrap()]].concat();
    assert_error_line(&store, &layer, "mp:4 (linux/arm64)", &build);
    assert_nothing_sent(&reg, &blobs);
}

#[test]
fn a_cache_export_with_a_corrupt_layer_sends_none_of_its_layers() {
    if !registry::registry_available() {
        return;
    }
    let reg = Registry::start(RegistryOptions { htpasswd: None });
    let tmp = TempRoot::new();
    let (store, blobs) = multi_layer_store(&tmp);
    rot(&store, &blobs[3]);
    // Every step is cached; the export's layers are the image's, the middle one corrupt.
    let ctx = tmp.path("three");
    let cache = format!("type=registry,ref={}/cache:1", reg.host());
    let out =
        strata(&store, &["build", "-t", "multi:1", "--cache-to", &cache, ctx.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&blobs[3]), "{stderr}");
    assert_nothing_sent(&reg, &blobs[2..]);
}
