//! Helpers shared by this crate's integration tests: test images and a real registry.
#![allow(dead_code, clippy::print_stderr)]

pub mod fake;
pub mod registry;

use std::sync::Mutex;

use registry::Registry;
use strata_registry::{Client, ClientOptions, Reference, TransferEvent, TransferSink};
use strata_store::oci_spec::image::{
    ConfigBuilder, Descriptor, ImageConfigurationBuilder, MediaType, RootFsBuilder,
};
use strata_store::{Image, Store};

/// Deterministic pseudo-random bytes (xorshift), incompressible enough for transfer tests.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A real tar (deterministic headers) holding `files`.
pub fn tar_layer(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Stores an image whose layers are the given tars (uncompressed) and returns it.
pub fn make_image(store: &Store, layers: &[Vec<u8>], cmd: &str) -> Image {
    let desc = put_image_for(store, layers, "amd64", cmd);
    store.image(&desc).unwrap()
}

/// Stores a linux/`arch` image whose layers are the given tars (uncompressed) and whose
/// command is `cmd`; returns its manifest descriptor.
pub fn put_image_for(store: &Store, layers: &[Vec<u8>], arch: &str, cmd: &str) -> Descriptor {
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        let put = store.put_blob(tar.as_slice()).unwrap();
        descriptors.push(Descriptor::new(MediaType::ImageLayer, put.size, put.digest));
        diff_ids.push(put.digest.to_string());
    }
    let rootfs = RootFsBuilder::default().typ("layers").diff_ids(diff_ids).build().unwrap();
    let config = ImageConfigurationBuilder::default()
        .created("1970-01-01T00:00:00Z")
        .architecture(arch)
        .os("linux")
        .config(ConfigBuilder::default().cmd(vec![cmd.to_owned()]).build().unwrap())
        .rootfs(rootfs)
        .build()
        .unwrap();
    store.put_image(&config, &descriptors).unwrap()
}

/// A small image of `n` single-file tar layers whose content depends on `seed`.
pub fn small_image(store: &Store, seed: u64, n: usize) -> Image {
    let layers: Vec<Vec<u8>> = (0..n)
        .map(|i| tar_layer(&[(&format!("f{i}"), random_bytes(seed * 100 + i as u64, 3000 + i))]))
        .collect();
    make_image(store, &layers, &format!("cmd-{seed}"))
}

/// A sink that keeps every event.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<TransferEvent>>);

impl TransferSink for Recorder {
    fn event(&self, event: &TransferEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

/// Whether an external tool runs; when not, prints why (or panics under STRATA_TEST_STRICT=1).
pub fn have_tool(tool: &str) -> bool {
    let ok = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("STRATA_TEST_STRICT").is_none_or(|v| v != "1"),
            "{tool} is required under STRATA_TEST_STRICT=1"
        );
        eprintln!("skipping: {tool} not found");
    }
    ok
}

/// The client the real-registry tests use: two retries, 20 ms backoff, default credentials.
pub fn client() -> Client {
    Client::new(ClientOptions { retries: 2, ..Default::default() })
        .unwrap()
        .with_backoff(std::time::Duration::from_millis(20))
}

/// The start of most real-registry tests: a registry with default options, a temp dir and a
/// store in its `a`; `None` (the test returns) when the registry binary is absent.
pub fn started_registry() -> Option<(Registry, tempfile::TempDir, Store)> {
    if !registry::registry_available() {
        return None;
    }
    let reg = Registry::start(registry::RegistryOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("a")).unwrap();
    Some((reg, dir, store))
}

/// `<registry host>/<repo_tag>` as a reference.
pub fn reference(reg: &Registry, repo_tag: &str) -> Reference {
    format!("{}/{repo_tag}", reg.host()).parse().unwrap()
}

/// Runs skopeo with `args`, asserts it succeeded and returns its stdout.
pub fn skopeo_stdout(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("skopeo").args(args).output().unwrap();
    assert!(out.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// [`skopeo_stdout`] as text.
pub fn skopeo_ok(args: &[&str]) -> String {
    String::from_utf8_lossy(&skopeo_stdout(args)).into_owned()
}
