//! Whole multi-platform images (`push_index`, `pull_all`) against a real registry
//! (distribution's `docker-registry`), checked with skopeo.

mod common;

use common::{
    client, put_image_for, random_bytes, reference, skopeo_stdout, started_registry, tar_layer,
};
use strata_registry::{
    pull, pull_all, push_index, NoTransferProgress, PullOptions, PushOptions, Reference,
    RegistryError,
};
use strata_store::oci_spec::image::{Descriptor, MediaType};
use strata_store::Store;
use strata_types::Platform;
use strata_types::{Digest, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};

/// A linux image for `arch` with a layer shared by every platform and one of its own.
fn platform_image(store: &Store, arch: &str, seed: u64) -> Descriptor {
    let shared = tar_layer(&[("etc/shared", random_bytes(1, 2000))]);
    let own = tar_layer(&[(&format!("bin/{arch}"), random_bytes(seed, 3000))]);
    put_image_for(store, &[shared, own], arch, &format!("/bin/{arch}"))
}

/// Stores an OCI index of an amd64 and an arm64 image; returns its digest and the children's.
fn multi_platform(store: &Store) -> (Digest, Vec<(String, Digest)>) {
    let mut entries = Vec::new();
    let mut children = Vec::new();
    for (i, arch) in ["amd64", "arm64"].into_iter().enumerate() {
        let desc = platform_image(store, arch, 10 + i as u64);
        let digest = Digest::try_from(desc.digest()).unwrap();
        entries.push(serde_json::json!({
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": digest.to_string(),
            "size": desc.size(),
            "platform": {"architecture": arch, "os": "linux"},
        }));
        children.push((arch.to_owned(), digest));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": entries,
    });
    let put = store.put_blob(serde_json::to_vec(&index).unwrap().as_slice()).unwrap();
    store.tag("multi:v1", &Descriptor::new(MediaType::ImageIndex, put.size, put.digest)).unwrap();
    (put.digest, children)
}

#[test]
fn pushed_index_keeps_its_digest_and_pull_all_brings_every_platform_back() {
    let Some((reg, dir, store)) = started_registry() else { return };
    let (index, children) = multi_platform(&store);
    let client = client();
    let dest = reference(&reg, "multi/app:v1");

    // Two configs, two own layers, one shared layer: five blobs, each uploaded once.
    let report =
        push_index(&client, &store, &index, &dest, &PushOptions::default(), &NoTransferProgress)
            .unwrap();
    assert_eq!((report.uploaded, report.present, report.mounted), (5, 0, 0), "{report:?}");
    assert_eq!(report.manifest, Some(index));
    assert_eq!(reg.uploads("multi/app").len(), 5, "{}", reg.log());
    // Each child manifest was PUT by digest before the index went up under the tag.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = reg.log();
    let put = |target: &str| {
        log.find(&format!("\"PUT /v2/multi/app/manifests/{target} "))
            .unwrap_or_else(|| panic!("no PUT of {target}:\n{log}"))
    };
    for (_, child) in &children {
        assert!(put(&child.to_string()) < put("v1"), "{log}");
    }
    // Again: everything is there (the manifests are re-put, which is idempotent).
    let again =
        push_index(&client, &store, &index, &dest, &PushOptions::default(), &NoTransferProgress)
            .unwrap();
    assert_eq!((again.uploaded, again.present), (0, 5), "{again:?}");

    if common::have_tool("skopeo") {
        let url = format!("docker://{dest}");
        let raw = skopeo_stdout(&["inspect", "--raw", "--tls-verify=false", &url]);
        assert_eq!(Digest::of_bytes(&raw), index, "{}", String::from_utf8_lossy(&raw));
        // Each child is there by digest, too.
        for (_, child) in &children {
            let url = format!("docker://{}/multi/app@{child}", reg.host());
            let raw = skopeo_stdout(&["inspect", "--raw", "--tls-verify=false", &url]);
            assert_eq!(Digest::of_bytes(&raw), *child);
        }
    }

    // pull_all into a fresh store: same index digest, both children, every blob, fsck clean.
    let fresh = Store::init(dir.path().join("b")).unwrap();
    let pulled =
        pull_all(&client, &fresh, &dest, None, &PullOptions::default(), &NoTransferProgress)
            .unwrap();
    assert_eq!(Digest::try_from(pulled.descriptor.digest()).unwrap(), index);
    assert_eq!(pulled.descriptor.media_type(), &MediaType::ImageIndex);
    let want: Vec<Digest> = children.iter().map(|(_, d)| *d).collect();
    assert_eq!(pulled.manifests, want);
    assert_eq!(pulled.report.downloaded, 5, "{:?}", pulled.report);
    for (_, child) in &children {
        let image = fresh.image(&fresh.resolve(&child.to_string()).unwrap()).unwrap();
        for layer in image.layer_digests().unwrap() {
            assert!(fresh.has_blob(&layer));
        }
        assert!(fresh.has_blob(&Digest::try_from(image.manifest.config().digest()).unwrap()));
    }
    let tagged = fresh.resolve(&dest.to_string()).unwrap();
    assert_eq!(Digest::try_from(tagged.digest()).unwrap(), index);
    let fsck = fresh.fsck(false).unwrap();
    assert!(fsck.is_clean(), "{fsck:?}");
    // Again: nothing moves.
    let twice =
        pull_all(&client, &fresh, &dest, None, &PullOptions::default(), &NoTransferProgress)
            .unwrap();
    assert_eq!((twice.report.present, twice.report.downloaded), (5, 0));

    // The ordinary pull of the same tag still resolves the index to the host's platform.
    let host = Platform::host();
    if let Some((_, want)) = children.iter().find(|(arch, _)| *arch == host.architecture) {
        let single = Store::init(dir.path().join("c")).unwrap();
        let one =
            pull(&client, &single, &dest, &PullOptions::default(), &NoTransferProgress).unwrap();
        assert_eq!(one.image.digest().unwrap(), *want);
        assert_eq!(one.source_digest, index);
        assert_eq!(one.image.config.architecture().to_string(), host.architecture);
        assert_eq!(one.report.downloaded, 3);
    } else {
        eprintln!("host architecture {} is not in the test index", host.architecture);
    }

    // To another repository of the same registry: blobs are mounted, the digest is kept.
    let other = reference(&reg, "mirror:v1");
    let mounted =
        push_index(&client, &fresh, &index, &other, &PushOptions::default(), &NoTransferProgress)
            .unwrap();
    assert_eq!((mounted.mounted, mounted.uploaded), (5, 0), "{mounted:?}");
    let back = Store::init(dir.path().join("d")).unwrap();
    let named =
        pull_all(&client, &back, &other, Some("v1"), &PullOptions::default(), &NoTransferProgress)
            .unwrap();
    assert_eq!(Digest::try_from(named.descriptor.digest()).unwrap(), index);
    assert_eq!(Digest::try_from(back.resolve("v1").unwrap().digest()).unwrap(), index);
}

#[test]
fn index_push_checks_the_destination_and_dry_runs_write_nothing() {
    let Some((reg, dir, store)) = started_registry() else { return };
    let (index, _) = multi_platform(&store);
    let client = client();

    let wrong: Reference =
        format!("{}/app@{}", reg.host(), Digest::of_bytes(b"other")).parse().unwrap();
    let err =
        push_index(&client, &store, &index, &wrong, &PushOptions::default(), &NoTransferProgress)
            .unwrap_err();
    assert!(matches!(err, RegistryError::InvalidDestination { .. }), "{err}");

    let dest = reference(&reg, "app:v1");
    let dry = PushOptions { dry_run: true, ..Default::default() };
    let plan = push_index(&client, &store, &index, &dest, &dry, &NoTransferProgress).unwrap();
    assert!(plan.dry_run);
    assert_eq!((plan.uploaded, plan.bytes > 0), (5, true), "{plan:?}");
    assert!(reg.uploads("app").is_empty());
    let err = pull_all(&client, &store, &dest, None, &PullOptions::default(), &NoTransferProgress)
        .unwrap_err();
    assert!(matches!(err, RegistryError::ManifestNotFound { .. }), "{err}");

    // By digest, the index lands and a by-digest pull_all finds it.
    let by_digest: Reference = format!("{}/app@{index}", reg.host()).parse().unwrap();
    push_index(&client, &store, &index, &by_digest, &PushOptions::default(), &NoTransferProgress)
        .unwrap();
    let fresh = Store::init(dir.path().join("b")).unwrap();
    let pulled =
        pull_all(&client, &fresh, &by_digest, None, &PullOptions::default(), &NoTransferProgress)
            .unwrap();
    assert_eq!(pulled.manifests.len(), 2);
    assert!(fresh.fsck(false).unwrap().is_clean());
}
