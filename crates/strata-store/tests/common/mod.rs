//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use strata_store::oci_spec::image::{
    ConfigBuilder, Descriptor, ImageConfiguration, ImageConfigurationBuilder, MediaType,
    RootFsBuilder,
};
use strata_store::Store;
use strata_types::Digest;

/// Whether an external tool is usable; when not, tests skip (or panic under
/// STRATA_TEST_STRICT=1).
#[allow(clippy::print_stderr)] // tests may say why they skip
pub fn have_tool(tool: &str) -> bool {
    let ok = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("STRATA_TEST_STRICT").is_none_or(|v| v != "1"),
            "{tool} is required under STRATA_TEST_STRICT=1"
        );
        eprintln!("skipping: {tool} not found");
    }
    ok
}

/// A config for one-layer-per-diff-id images.
pub fn config(diff_ids: &[Digest], cmd: &str) -> ImageConfiguration {
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap();
    ImageConfigurationBuilder::default()
        .created("1970-01-01T00:00:00Z")
        .architecture("amd64")
        .os("linux")
        .config(ConfigBuilder::default().cmd(vec![cmd.to_owned()]).build().unwrap())
        .rootfs(rootfs)
        .build()
        .unwrap()
}

/// Stores `bytes` as an uncompressed layer and returns its descriptor.
pub fn put_layer(store: &Store, bytes: &[u8]) -> (Descriptor, Digest) {
    let put = store.put_blob(bytes).unwrap();
    (Descriptor::new(MediaType::ImageLayer, put.size, put.digest), put.digest)
}

/// A real tar made by the `tar` command from a directory holding `files`.
pub fn real_tar(files: &[(&str, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let out = Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "-C"])
        .arg(dir.path())
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(out.status.success(), "tar failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// An image with one real tar layer holding `files`; returns the manifest descriptor.
pub fn make_image(store: &Store, files: &[(&str, &str)], cmd: &str) -> Descriptor {
    let (layer, diff_id) = put_layer(store, &real_tar(files));
    store.put_image(&config(&[diff_id], cmd), &[layer]).unwrap()
}

/// Runs a command, returning stdout; panics with stderr on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Count of files in a directory.
pub fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Where the store keeps things, as its module docs map them: tests that damage or inspect
/// the layout reach the files directly (no other crate may).
pub mod layout {
    use std::path::PathBuf;

    use strata_store::Store;
    use strata_types::Digest;

    pub fn blob_dir(s: &Store) -> PathBuf {
        s.root().join("blobs/sha256")
    }
    pub fn blob_path(s: &Store, d: &Digest) -> PathBuf {
        blob_dir(s).join(d.hex())
    }
    pub fn index_path(s: &Store) -> PathBuf {
        s.root().join("index.json")
    }
    pub fn meta_dir(s: &Store) -> PathBuf {
        s.root().join("strata/v1")
    }
    pub fn tmp_dir(s: &Store) -> PathBuf {
        meta_dir(s).join("tmp")
    }
    pub fn roots_dir(s: &Store) -> PathBuf {
        meta_dir(s).join("roots")
    }
    pub fn snapshots_dir(s: &Store) -> PathBuf {
        meta_dir(s).join("snapshots")
    }
    pub fn snapshot_dir(s: &Store, d: &Digest) -> PathBuf {
        snapshots_dir(s).join(d.hex())
    }
    pub fn gc_lock_path(s: &Store) -> PathBuf {
        meta_dir(s).join("gc.lock")
    }
    pub fn layers_dir(s: &Store) -> PathBuf {
        meta_dir(s).join("layers")
    }
}
