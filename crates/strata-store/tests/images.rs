//! Images, tags and reference resolution.

mod common;

use std::fs;

use common::{config, make_image, put_layer};
use strata_store::oci_spec::image::{Descriptor, MediaType};
use strata_store::{Store, StoreError, REF_NAME_ANNOTATION};
use strata_types::Digest;

fn digest_of(d: &Descriptor) -> Digest {
    Digest::try_from(d.digest()).unwrap()
}

#[test]
fn put_image_then_read_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let (layer, diff_id) = put_layer(&store, b"not really a tar, but bytes");
    let cfg = config(&[diff_id], "/bin/true");
    let manifest = store.put_image(&cfg, std::slice::from_ref(&layer)).unwrap();
    assert_eq!(*manifest.media_type(), MediaType::ImageManifest);
    // Same inputs, same digest.
    assert_eq!(store.put_image(&cfg, std::slice::from_ref(&layer)).unwrap(), manifest);
    let image = store.image(&manifest).unwrap();
    assert_eq!(image.config, cfg);
    assert_eq!(image.manifest.layers(), &vec![layer.clone()]);
    assert_eq!(image.layer_digests().unwrap(), vec![digest_of(&layer)]);
    assert_eq!(image.digest().unwrap(), digest_of(&manifest));
    // The manifest JSON carries schemaVersion 2 and the OCI media type.
    let raw: serde_json::Value =
        serde_json::from_slice(&store.read_blob(&digest_of(&manifest)).unwrap()).unwrap();
    assert_eq!(raw["schemaVersion"], 2);
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(raw["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
}

#[test]
fn put_image_checks_layers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let (layer, diff_id) = put_layer(&store, b"layer");
    let absent = Descriptor::new(MediaType::ImageLayer, 3, Digest::of_bytes(b"nope"));
    let err = store.put_image(&config(&[diff_id], "x"), &[absent]).unwrap_err();
    assert!(matches!(err, StoreError::BlobNotFound { .. }), "{err:?}");
    let mut wrong_size = layer.clone();
    wrong_size.set_size(99);
    let err = store.put_image(&config(&[diff_id], "x"), &[wrong_size]).unwrap_err();
    assert!(matches!(err, StoreError::SizeMismatch { expected: 99, found: 5, .. }), "{err:?}");
    let err = store.put_image(&config(&[], "x"), std::slice::from_ref(&layer)).unwrap_err();
    assert!(matches!(err, StoreError::LayerCountMismatch { diff_ids: 0, layers: 1, .. }));
    let mut docker = layer.clone();
    docker.set_media_type(MediaType::Other(
        "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
    ));
    let err = store.put_image(&config(&[diff_id], "x"), &[docker]).unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedMediaType { .. }), "{err:?}");
}

#[test]
fn image_rejects_unknown_media_types() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let (layer, diff_id) = put_layer(&store, b"layer");
    let cfg = store.put_json(&config(&[diff_id], "x")).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg.digest, "size": cfg.size},
        "layers": [{"mediaType": "application/x-weird", "digest": layer.digest(), "size": layer.size()}],
    });
    let put = store.put_json(&manifest).unwrap();
    let desc = Descriptor::new(MediaType::ImageManifest, put.size, put.digest);
    let err = store.image(&desc).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("application/x-weird") && msg.contains(&layer.digest().to_string()),
        "{msg}"
    );
    let as_index = Descriptor::new(MediaType::ImageIndex, put.size, put.digest);
    assert!(matches!(store.image(&as_index), Err(StoreError::UnsupportedMediaType { .. })));
    let mut wrong_size = desc.clone();
    wrong_size.set_size(put.size + 1);
    assert!(matches!(store.image(&wrong_size), Err(StoreError::SizeMismatch { .. })));
}

/// A rebuild tags the image it built again: when the tag already names it, `index.json` is
/// not rewritten (no temp file, rename or fsync on a no-op build); a moved tag still is.
#[test]
fn retagging_the_same_image_leaves_index_json_alone() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let a = make_image(&store, &[("a", "a")], "a");
    let b = make_image(&store, &[("b", "b")], "b");
    store.tag("app:v1", &a).unwrap();
    store.tag("other:v1", &b).unwrap();
    let path = common::layout::index_path(&store);
    let ino = || fs::metadata(&path).unwrap().ino();
    let before = (ino(), fs::read(&path).unwrap());
    // Not the last entry: a retag that moved it to the end would change the bytes.
    store.tag("app:v1", &a).unwrap();
    assert_eq!(store.retag("app:v1", &a).unwrap(), None);
    assert_eq!((ino(), fs::read(&path).unwrap()), before, "index.json was rewritten");
    store.tag("app:v1", &b).unwrap();
    assert_ne!(ino(), before.0, "a moved tag must be written");
    assert_eq!(store.resolve("app:v1").unwrap().digest(), b.digest());
}

#[test]
fn tag_untag_list_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let a = make_image(&store, &[("a", "a")], "a");
    let b = make_image(&store, &[("b", "b")], "b");
    store.tag("app", &a).unwrap();
    store.tag("app:v2", &b).unwrap();
    store.tag("registry.example:5000/team/app:v2", &b).unwrap();
    let names: Vec<String> = store.tags().unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["app:latest", "app:v2", "registry.example:5000/team/app:v2"]);
    // The annotation holds name:tag.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(common::layout::index_path(&store)).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["annotations"][REF_NAME_ANNOTATION], "app:latest");

    assert_eq!(store.resolve("app").unwrap().digest(), a.digest());
    assert_eq!(store.resolve("app:latest").unwrap().digest(), a.digest());
    assert_eq!(store.resolve("app:v2").unwrap().digest(), b.digest());
    assert_eq!(store.resolve(b.digest().as_ref()).unwrap().digest(), b.digest());
    assert_eq!(store.resolve(&format!("whatever@{}", a.digest())).unwrap().digest(), a.digest());
    let a_hex = digest_of(&a).hex();
    assert_eq!(store.resolve(&a_hex[..12]).unwrap().digest(), a.digest());
    assert_eq!(store.resolve(&format!("sha256:{}", &a_hex[..8])).unwrap().digest(), a.digest());

    // Retagging moves the tag; the old target is untouched.
    store.tag("app", &b).unwrap();
    assert_eq!(store.resolve("app").unwrap().digest(), b.digest());
    assert_eq!(store.tags().unwrap().len(), 3);

    // Untag returns what it pointed at.
    let removed = store.untag("app:v2").unwrap();
    assert_eq!(removed.digest(), b.digest());
    assert!(matches!(store.resolve("app:v2"), Err(StoreError::ImageNotFound { .. })));
    assert!(matches!(store.untag("app:v2"), Err(StoreError::ImageNotFound { .. })));

    // An untagged manifest is still resolvable by its full digest (typed from its mediaType).
    store.untag("app").unwrap();
    store.untag("registry.example:5000/team/app:v2").unwrap();
    assert!(store.tags().unwrap().is_empty());
    let by_digest = store.resolve(a.digest().as_ref()).unwrap();
    assert_eq!(by_digest.digest(), a.digest());
    assert_eq!(by_digest.size(), a.size());
    assert_eq!(*by_digest.media_type(), MediaType::ImageManifest);
    assert!(matches!(
        store.resolve(&Digest::of_bytes(b"x").to_string()),
        Err(StoreError::ImageNotFound { .. })
    ));
}

#[test]
fn digest_prefix_ambiguity() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    // Find two images whose manifest digests share 4 hex digits without writing hundreds of
    // them: predict each manifest digest from canonical JSON, then store only the pair.
    let (layer, diff_id) = put_layer(&store, b"shared layer");
    let predict = |cmd: &str| {
        let cfg = strata_store::canonical_json(&config(&[diff_id], cmd)).unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": Digest::of_bytes(&cfg),
                "size": cfg.len(),
            },
            "layers": [layer],
        });
        Digest::of_bytes(&strata_store::canonical_json(&manifest).unwrap())
    };
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    let mut pair = None;
    for i in 0..5000 {
        let cmd = format!("cmd{i}");
        let prefix = predict(&cmd).hex()[..4].to_owned();
        if let Some(prev) = seen.insert(prefix.clone(), cmd.clone()) {
            let first =
                store.put_image(&config(&[diff_id], &prev), std::slice::from_ref(&layer)).unwrap();
            let second =
                store.put_image(&config(&[diff_id], &cmd), std::slice::from_ref(&layer)).unwrap();
            assert_eq!(digest_of(&first), predict(&prev), "put_image is not canonical JSON");
            pair = Some((prefix, first, second));
            break;
        }
    }
    let (prefix, first, second) = pair.expect("birthday bound: a 4-hex collision within 5000");
    store.tag("one", &first).unwrap();
    store.tag("two", &second).unwrap();
    match store.resolve(&prefix) {
        Err(StoreError::AmbiguousReference { reference, candidates }) => {
            assert_eq!(reference, prefix);
            let mut want = vec![digest_of(&first), digest_of(&second)];
            want.sort();
            let mut got = candidates;
            got.sort();
            assert_eq!(got, want);
        }
        other => panic!("expected ambiguity, got {other:?}"),
    }
    // A longer prefix disambiguates.
    let long = &digest_of(&first).hex()[..20];
    assert_eq!(store.resolve(long).unwrap().digest(), first.digest());
    // Too short to be a prefix: treated as a name, which does not exist.
    assert!(matches!(store.resolve(&prefix[..3]), Err(StoreError::ImageNotFound { .. })));
    // A tag named like a hex prefix wins over the prefix.
    store.tag(&prefix, &first).unwrap();
    assert_eq!(store.resolve(&prefix).unwrap().digest(), first.digest());
}

#[test]
fn invalid_names_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let a = make_image(&store, &[("a", "a")], "a");
    for bad in ["App:v1", "app:", "app:-v1", "a//b", "", "app@sha256:1234"] {
        let err = store.tag(bad, &a).unwrap_err();
        assert!(matches!(err, StoreError::InvalidReference(_)), "{bad:?}: {err:?}");
        assert!(err.to_string().contains("invalid image reference"), "{err}");
    }
    let err = store.tag(&format!("app@{}", a.digest()), &a).unwrap_err();
    assert!(matches!(err, StoreError::UnexpectedDigest { .. }), "{err:?}");
    assert!(matches!(store.resolve("Bad Name"), Err(StoreError::InvalidReference(_))));
    assert!(matches!(store.resolve("sha256:xyz"), Err(StoreError::InvalidDigest(_))));
    // Tagging something that is not in the store fails and leaves index.json alone.
    let before = fs::read(common::layout::index_path(&store)).unwrap();
    let ghost = Descriptor::new(MediaType::ImageManifest, 10, Digest::of_bytes(b"ghost"));
    assert!(matches!(store.tag("ghost", &ghost), Err(StoreError::BlobNotFound { .. })));
    assert_eq!(fs::read(common::layout::index_path(&store)).unwrap(), before);
    assert!(store.tags().unwrap().is_empty());
}

#[test]
fn json_keys_are_sorted_so_hashmap_order_cannot_change_a_digest() {
    use strata_store::oci_spec::image::ConfigBuilder;
    let labels: std::collections::HashMap<String, String> =
        (0..32).map(|i| (format!("label{i:02}"), i.to_string())).collect();
    let mut cfg = config(&[], "x");
    cfg.set_config(Some(ConfigBuilder::default().labels(labels).build().unwrap()));
    let text = String::from_utf8(strata_store::canonical_json(&cfg).unwrap()).unwrap();
    let order: Vec<usize> =
        (0..32).map(|i| text.find(&format!("\"label{i:02}\"")).unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "keys not sorted: {text}");
    assert!(!text.contains(' ') && !text.contains('\n'), "not compact: {text}");
}
