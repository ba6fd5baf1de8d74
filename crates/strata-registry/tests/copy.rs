//! Registry to registry copies against two real registries (distribution's `docker-registry`):
//! only what the destination lacks is downloaded and uploaded, same-registry blobs are
//! mounted, and the manifest arrives byte for byte.

mod common;

use common::registry::{registry_available, Registry, RegistryOptions};
use common::{client, have_tool, make_image, random_bytes, reference, skopeo_ok, skopeo_stdout};
use common::{put_image_for, tar_layer, Recorder};
use strata_registry::{
    copy, copy_all, push_index, BlobOutcome, NoTransferProgress, PullOptions, PushOptions,
    TransferEvent,
};
use strata_store::Store;
use strata_types::Digest;
use strata_types::Platform;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

fn layer(seed: u64) -> Vec<u8> {
    tar_layer(&[(&format!("f{seed}"), random_bytes(seed, 4000 + seed as usize))])
}

#[test]
fn copy_between_registries_moves_only_what_the_destination_lacks() {
    if !registry_available() {
        return;
    }
    let (a, b) = (Registry::start(RegistryOptions::default()), Registry::start(Default::default()));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("store")).unwrap();
    let v1 = make_image(&store, &[layer(1), layer(2), layer(3)], "v1");
    let v2 = make_image(&store, &[layer(1), layer(2), layer(4)], "v2");
    let client = client();
    for (image, tag) in [(&v1, "src/app:v1"), (&v2, "src/app:v2")] {
        strata_registry::push(
            &client,
            &store,
            image,
            &reference(&a, tag),
            &PushOptions::default(),
            &NoTransferProgress,
        )
        .unwrap();
    }
    // Each copy gets an empty scratch store and the client no hints store: every byte that
    // reaches the destination comes over the wire.
    let scratch = |name: &str| Store::init(dir.path().join(name)).unwrap();
    let run = |from: &str, to: (&common::registry::Registry, &str), name: &str, dry: bool| {
        let options = PushOptions { dry_run: dry, ..Default::default() };
        let host = Platform::host();
        let (src, dst) = (reference(&a, from), reference(to.0, to.1));
        copy(&client, &scratch(name), &src, &dst, &host, &options, &NoTransferProgress).unwrap()
    };

    // Dry run: the destination is asked, nothing is written or downloaded.
    let dry = run("src/app:v1", (&b, "dst/app:v1"), "s0", true);
    assert!(dry.report.dry_run);
    assert_eq!((dry.report.uploaded, dry.report.downloaded), (4, 4), "{:?}", dry.report);
    assert!(a.downloads("src/app").is_empty(), "{}", a.log());
    assert!(b.uploads("dst/app").is_empty());

    // v1 to an empty registry: everything moves once.
    let c1 = run("src/app:v1", (&b, "dst/app:v1"), "s1", false);
    assert_eq!(c1.manifest, v1.digest().unwrap());
    assert_eq!(
        (c1.report.uploaded, c1.report.downloaded, c1.report.present),
        (4, 4, 0),
        "{:?}",
        c1.report
    );
    assert_eq!(a.downloads("src/app").len(), 4, "{}", a.log());
    assert_eq!(b.uploads("dst/app").len(), 4, "{}", b.log());

    // v2 shares two layers with v1: they are found at the destination and never downloaded.
    let c2 = run("src/app:v2", (&b, "dst/app:v2"), "s2", false);
    assert_eq!(c2.manifest, v2.digest().unwrap());
    assert_eq!(
        (c2.report.present, c2.report.uploaded, c2.report.downloaded),
        (2, 2, 2),
        "{:?}",
        c2.report
    );
    for blob in &c2.report.blobs {
        let shared =
            v1.manifest.layers().iter().any(|l| l.digest().to_string() == blob.digest.to_string());
        let want = if shared { BlobOutcome::Present } else { BlobOutcome::Uploaded };
        assert_eq!(blob.outcome, want, "{blob:?}");
    }
    assert_eq!(a.downloads("src/app").len(), 6, "{}", a.log());
    assert_eq!(b.uploads("dst/app").len(), 6, "{}", b.log());

    // Another repository of the same registry: mounted, nothing downloaded or uploaded.
    let events = Recorder::default();
    let options = PushOptions::default();
    let c3 = copy(
        &client,
        &scratch("s3"),
        &reference(&a, "src/app:v2"),
        &reference(&a, "other/app:v2"),
        &Platform::host(),
        &options,
        &events,
    )
    .unwrap();
    assert_eq!((c3.report.mounted, c3.report.downloaded, c3.report.bytes), (4, 0, 0));
    assert_eq!(a.mounts("other/app").len(), 4, "{}", a.log());
    assert_eq!(a.downloads("src/app").len(), 6);
    assert!(events.0.lock().unwrap().iter().any(|e| matches!(e, TransferEvent::Manifest { .. })));

    // What arrived pulls back into a fresh store with the same digests.
    for (reg, tag, image) in
        [(&b, "dst/app:v2", &v2), (&a, "other/app:v2", &v2), (&b, "dst/app:v1", &v1)]
    {
        let fresh = scratch(&format!("pull-{}", tag.replace(['/', ':'], "-")));
        let pulled = strata_registry::pull(
            &client,
            &fresh,
            &reference(reg, tag),
            &PullOptions::default(),
            &NoTransferProgress,
        )
        .unwrap();
        assert_eq!(pulled.image.digest().unwrap(), image.digest().unwrap(), "{tag}");
    }
}

#[test]
fn copy_keeps_a_docker_schema2_manifest_byte_for_byte() {
    if !registry_available() || !have_tool("skopeo") {
        return;
    }
    let (a, b) = (Registry::start(RegistryOptions::default()), Registry::start(Default::default()));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("store")).unwrap();
    let image = make_image(&store, &[layer(7), layer(8)], "docker");
    store.tag("sk:v1", &image.manifest_descriptor).unwrap();
    // skopeo writes it as Docker schema2 (its own conversion, new digest).
    let src = format!("oci:{}:sk:v1", store.root().display());
    let theirs = format!("docker://{}/docker/app:v1", a.host());
    skopeo_ok(&["copy", "--format", "v2s2", "--dest-tls-verify=false", &src, &theirs]);
    let raw_a = skopeo_stdout(&["inspect", "--raw", "--tls-verify=false", &theirs]);
    assert!(String::from_utf8_lossy(&raw_a)
        .contains("application/vnd.docker.distribution.manifest.v2+json"));

    let copied = copy(
        &client(),
        &Store::init(dir.path().join("scratch")).unwrap(),
        &reference(&a, "docker/app:v1"),
        &reference(&b, "docker/app:v1"),
        &Platform::host(),
        &PushOptions::default(),
        &NoTransferProgress,
    )
    .unwrap();
    assert_eq!(copied.media_type, "application/vnd.docker.distribution.manifest.v2+json");
    let ours = format!("docker://{}/docker/app:v1", b.host());
    let raw_b = skopeo_stdout(&["inspect", "--raw", "--tls-verify=false", &ours]);
    assert_eq!(raw_b, raw_a, "the manifest changed on the way");
    assert_eq!(copied.manifest, strata_types::Digest::of_bytes(&raw_a));
    // skopeo reads the copy whole (config and layers verified by its own digests).
    let layout = dir.path().join("check");
    skopeo_ok(&["copy", "--src-tls-verify=false", &ours, &format!("oci:{}:x", layout.display())]);
}

/// Stores a Docker manifest list of an amd64 and an arm64 Docker schema2 image (sharing one
/// layer) as loose blobs; returns the list's digest.
fn docker_list(store: &Store) -> Digest {
    let shared = tar_layer(&[("etc/shared", random_bytes(21, 2000))]);
    let mut entries = Vec::new();
    for (i, arch) in ["amd64", "arm64"].into_iter().enumerate() {
        let own = tar_layer(&[(&format!("bin/{arch}"), random_bytes(30 + i as u64, 3000))]);
        let oci = put_image_for(store, &[shared.clone(), own], arch, arch);
        let digest = Digest::try_from(oci.digest()).unwrap();
        let mut m: serde_json::Value =
            serde_json::from_slice(&store.read_blob(&digest).unwrap()).unwrap();
        m["mediaType"] = DOCKER_MANIFEST.into();
        m["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json".into();
        for l in m["layers"].as_array_mut().unwrap() {
            l["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar".into();
        }
        let put = store.put_blob(serde_json::to_vec(&m).unwrap().as_slice()).unwrap();
        entries.push(serde_json::json!({
            "mediaType": DOCKER_MANIFEST,
            "digest": put.digest.to_string(),
            "size": put.size,
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let list =
        serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": entries});
    store.put_blob(serde_json::to_vec(&list).unwrap().as_slice()).unwrap().digest
}

#[test]
fn copy_all_moves_a_docker_manifest_list_keeping_every_digest() {
    if !registry_available() || !have_tool("skopeo") {
        return;
    }
    let (a, b) = (Registry::start(RegistryOptions::default()), Registry::start(Default::default()));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("store")).unwrap();
    let list = docker_list(&store);
    let client = client();
    let src = reference(&a, "multi/app:v1");
    push_index(&client, &store, &list, &src, &PushOptions::default(), &NoTransferProgress).unwrap();
    let raw = |r: &Registry, repo: &str| {
        skopeo_stdout(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/{repo}", r.host()),
        ])
    };
    let raw_a = raw(&a, "multi/app:v1");
    assert_eq!(Digest::of_bytes(&raw_a), list);

    let scratch = Store::init(dir.path().join("scratch")).unwrap();
    let dry = PushOptions { dry_run: true, ..Default::default() };
    let plan = copy_all(
        &client,
        &scratch,
        &src,
        &reference(&b, "mirror/app:v1"),
        &dry,
        &NoTransferProgress,
    )
    .unwrap();
    // 2 configs, 2 own layers, 1 shared layer: each once.
    assert_eq!((plan.report.uploaded, plan.report.downloaded), (5, 5), "{:?}", plan.report);
    assert!(b.uploads("mirror/app").is_empty());

    let copied = copy_all(
        &client,
        &scratch,
        &src,
        &reference(&b, "mirror/app:v1"),
        &PushOptions::default(),
        &NoTransferProgress,
    )
    .unwrap();
    assert_eq!((copied.manifest, copied.media_type), (list, DOCKER_LIST));
    assert_eq!((copied.report.uploaded, copied.report.downloaded), (5, 5), "{:?}", copied.report);
    assert_eq!(a.downloads("multi/app").len(), 5, "{}", a.log());
    assert_eq!(raw(&b, "mirror/app:v1"), raw_a, "the list changed on the way");
    // Every platform arrived intact: skopeo copies each out of the mirror.
    let layout = dir.path().join("check");
    skopeo_ok(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/mirror/app:v1", b.host()),
        &format!("oci:{}:x", layout.display()),
    ]);

    // Again to another repository of the source registry: all mounted, nothing downloaded.
    let copied = copy_all(
        &client,
        &Store::init(dir.path().join("scratch2")).unwrap(),
        &src,
        &reference(&a, "elsewhere/app:v1"),
        &PushOptions::default(),
        &NoTransferProgress,
    )
    .unwrap();
    assert_eq!((copied.report.mounted, copied.report.downloaded), (5, 0), "{:?}", copied.report);
    assert_eq!(a.downloads("multi/app").len(), 5);
    assert_eq!(raw(&a, "elsewhere/app:v1"), raw_a);
}
