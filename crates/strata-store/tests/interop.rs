//! The store is an OCI layout that skopeo and umoci read directly.

mod common;

use std::process::Command;

use common::{config, have_tool, make_image, real_tar, run};
use strata_store::oci_spec::image::{Descriptor, MediaType};
use strata_store::Store;
use strata_types::Digest;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn skopeo_inspects_and_copies_a_tagged_image() {
    if !have_tool("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("store")).unwrap();
    // gzip, because skopeo compresses uncompressed layers when writing to an oci: destination,
    // which would change the manifest; with a gzip layer the copy is byte for byte.
    let tar = real_tar(&[("hello.txt", "hello\n")]);
    let diff_id = Digest::of_bytes(&tar);
    let gz = gzip(&tar);
    let put = store.put_blob(gz.as_slice()).unwrap();
    let layer = Descriptor::new(MediaType::ImageLayerGzip, put.size, put.digest);
    let manifest = store.put_image(&config(&[diff_id], "/hello"), &[layer]).unwrap();
    store.tag("app:v1", &manifest).unwrap();
    store.tag("registry.example:5000/team/app:v2", &manifest).unwrap();
    let root = store.root().to_str().unwrap();
    for reference in ["app:v1", "registry.example:5000/team/app:v2"] {
        let out = run(Command::new("skopeo").args(["inspect", &format!("oci:{root}:{reference}")]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["Digest"], manifest.digest().to_string(), "{out}");
        assert_eq!(v["Layers"].as_array().unwrap().len(), 1, "{out}");
        let raw = run(Command::new("skopeo").args([
            "inspect",
            "--config",
            &format!("oci:{root}:{reference}"),
        ]));
        let config: serde_json::Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(config["config"]["Cmd"][0], "/hello", "{raw}");
    }
    let other = dir.path().join("other");
    run(Command::new("skopeo").args([
        "copy",
        &format!("oci:{root}:app:v1"),
        &format!("oci:{}:x", other.display()),
    ]));
    // The copy is itself a valid layout our store opens, and it has the same manifest digest
    // (same bytes: skopeo copies OCI-to-OCI without rewriting).
    let copy = Store::open(&other).unwrap();
    let got = copy.resolve("x").unwrap();
    assert_eq!(got.digest(), manifest.digest());
    assert!(copy.fsck(false).unwrap().is_clean());
    let img = copy.image(&got).unwrap();
    assert_eq!(img.manifest.layers().len(), 1);
}

#[test]
fn umoci_unpacks_a_tagged_image() {
    if !have_tool("umoci") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("store")).unwrap();
    let manifest =
        make_image(&store, &[("hello.txt", "hello from strata\n"), ("etc/motd", "hi\n")], "/hello");
    store.tag("app:v1", &manifest).unwrap();
    let bundle = dir.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:app:v1", store.root().display()))
        .arg(&bundle));
    let hello = std::fs::read_to_string(bundle.join("rootfs/hello.txt")).unwrap();
    assert_eq!(hello, "hello from strata\n");
    assert_eq!(std::fs::read_to_string(bundle.join("rootfs/etc/motd")).unwrap(), "hi\n");
    let runtime: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(runtime["process"]["args"][0], "/hello");
}

#[test]
fn skopeo_reads_a_zstd_layer_image() {
    if !have_tool("skopeo") || !have_tool("zstd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("store")).unwrap();
    let tar = real_tar(&[("z.txt", "zstd\n")]);
    let zst = {
        use std::io::Write;
        let mut child = Command::new("zstd")
            .args(["-q", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&tar).unwrap();
        child.wait_with_output().unwrap().stdout
    };
    let put = store.put_blob(zst.as_slice()).unwrap();
    let layer = Descriptor::new(MediaType::ImageLayerZstd, put.size, put.digest);
    let manifest = store.put_image(&config(&[Digest::of_bytes(&tar)], "/z"), &[layer]).unwrap();
    store.tag("zapp:v1", &manifest).unwrap();
    let out = run(Command::new("skopeo")
        .args(["inspect", &format!("oci:{}:zapp:v1", store.root().display())]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Layers"][0], put.digest.to_string(), "{out}");
    // A copy reads every blob (skopeo verifies digests) and keeps the zstd layer as is.
    let other = dir.path().join("other");
    run(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:zapp:v1", store.root().display()),
        &format!("oci:{}:z", other.display()),
    ]));
    let copy = Store::open(&other).unwrap();
    assert_eq!(copy.load_image("z").unwrap().layer_digests().unwrap(), vec![put.digest]);
    // And the image reads back through our strict reader.
    assert_eq!(store.load_image("zapp:v1").unwrap().layer_digests().unwrap(), vec![put.digest]);
}
