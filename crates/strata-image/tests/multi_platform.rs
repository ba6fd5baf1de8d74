//! Multi-platform images (an OCI index in the store) read, copied and exported as a whole or
//! one platform at a time: `image_size`, `open_local_any`, `copy_index`, `export_index`,
//! `load_platform` and `copy` of a store index.

use std::path::Path;

use strata_image::platforms::{is_index, platforms};
use strata_image::{
    copy, copy_index, export_index, image_size, import_tree, load_platform, open_local_any,
    put_index, CopyOptions, ExportOptions, ImageError, ImportOptions, Opened, PlatformImage,
};
use strata_registry::{Client, ClientOptions, NoTransferProgress};
use strata_store::oci_spec::image::{Arch, Descriptor, MediaType};
use strata_store::Store;
use strata_types::{ImageLocation, Platform};

/// A one-layer image of a tree holding `/etc/arch` = `content`, its config saying `arch`.
fn image_for(store: &Store, dir: &Path, arch: &str, content: &str) -> Descriptor {
    let tree = dir.join(format!("tree-{arch}-{}", content.len()));
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/arch"), content).unwrap();
    let imported = import_tree(store, &tree, &ImportOptions::default()).unwrap();
    let image = store.image(&imported.manifest).unwrap();
    let mut config = image.config.clone();
    config.set_architecture(Arch::from(arch));
    store.put_image(&config, image.manifest.layers()).unwrap()
}

/// `app:v1`, an index of an amd64 and an arm64 image; their manifests.
fn two_platforms(
    store: &Store,
    dir: &Path,
    same_tree: bool,
) -> (Descriptor, Descriptor, Descriptor) {
    let amd = image_for(store, dir, "amd64", "amd64\n");
    let arm = image_for(store, dir, "arm64", if same_tree { "amd64\n" } else { "arm64\n" });
    let entry = |p: &str, m: &Descriptor| PlatformImage {
        platform: p.parse().unwrap(),
        manifest: m.clone(),
    };
    let index =
        put_index(store, &[entry("linux/amd64", &amd), entry("linux/arm64", &arm)]).unwrap();
    store.tag("app:v1", &index).unwrap();
    (index, amd, arm)
}

#[test]
fn size_counts_a_blob_shared_by_platforms_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::init(tmp.path().join("store")).unwrap();
    let (index, amd, arm) = two_platforms(&store, tmp.path(), true);
    let (a, b) = (store.image(&amd).unwrap(), store.image(&arm).unwrap());
    assert_eq!(a.manifest.layers(), b.manifest.layers(), "one layer for both");
    let layer = a.manifest.layers()[0].size();
    let expected = layer + a.manifest.config().size() + b.manifest.config().size();
    assert_eq!(image_size(&store, &index).unwrap(), expected);
    assert_eq!(image_size(&store, &amd).unwrap(), layer + a.manifest.config().size());
    // Damage is still found through the index.
    assert!(store.missing_blobs(&index).unwrap().is_empty());
    let config = b.manifest.config().digest().to_string();
    std::fs::remove_file(store.root().join("blobs/sha256").join(&config[7..])).unwrap();
    assert_eq!(store.missing_blobs(&index).unwrap().len(), 1);
}

#[test]
fn an_index_opens_whole_and_each_platform_opens_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::init(tmp.path().join("store")).unwrap();
    let (index, _, arm) = two_platforms(&store, tmp.path(), false);
    let location: ImageLocation = "app:v1".parse().unwrap();
    let Opened::Index(opened) = open_local_any(Some(&store), &location).unwrap() else {
        panic!("app:v1 is an index")
    };
    assert_eq!(opened.descriptor.digest(), index.digest());
    assert_eq!(opened.platform_names(), ["linux/amd64", "linux/arm64"]);
    let arm64: Platform = "linux/arm64".parse().unwrap();
    assert_eq!(
        opened.image(Some(&arm64)).unwrap().image.manifest_descriptor.digest(),
        arm.digest()
    );
    assert_eq!(opened.find(&arm64).unwrap().manifest.digest(), arm.digest());
    let s390x: Platform = "linux/s390x".parse().unwrap();
    let err = opened.image(Some(&s390x)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "app:v1 has no image for linux/s390x (it has: linux/amd64, linux/arm64)"
    );
    // A single image opens as one.
    store.tag("arm:v1", &arm).unwrap();
    let single = open_local_any(Some(&store), &"arm:v1".parse().unwrap()).unwrap();
    assert!(
        matches!(single, Opened::Image(i) if i.image.manifest_descriptor.digest() == arm.digest())
    );
}

#[test]
fn an_index_exports_to_a_layout_whole_and_never_to_an_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::init(tmp.path().join("store")).unwrap();
    let (index, amd, arm) = two_platforms(&store, tmp.path(), false);
    let Opened::Index(opened) = open_local_any(Some(&store), &"app:v1".parse().unwrap()).unwrap()
    else {
        panic!("an index")
    };
    let out = tmp.path().join("out");
    let dest: ImageLocation = format!("oci:{}:multi", out.display()).parse().unwrap();
    let report = export_index(&opened, &dest, &ExportOptions::default()).unwrap();
    // Two configs, two layers, two manifests, the index.
    assert_eq!(report.items, 7);
    let layout = Store::open(&out).unwrap();
    assert_eq!(layout.resolve("multi").unwrap().digest(), index.digest());
    assert_eq!(platforms(&layout, &index).unwrap().len(), 2);
    for m in [&amd, &arm] {
        assert!(layout.missing_blobs(m).unwrap().is_empty());
    }
    assert!(layout.fsck(false).unwrap().is_clean());

    // Recompressed: new manifests and a new index, the same platforms, every layer gzip.
    let gz = tmp.path().join("gz");
    let dest: ImageLocation = format!("oci:{}:v1", gz.display()).parse().unwrap();
    let opts = ExportOptions::default().compression(Some(strata_layer::Compression::Gzip));
    export_index(&opened, &dest, &opts).unwrap();
    let layout = Store::open(&gz).unwrap();
    let top = layout.resolve("v1").unwrap();
    assert!(is_index(&top) && top.digest() != index.digest());
    let listed = platforms(&layout, &top).unwrap();
    assert_eq!(listed.len(), 2);
    for p in &listed {
        let image = layout.image(&p.manifest).unwrap();
        assert_eq!(image.manifest.layers()[0].media_type(), &MediaType::ImageLayerGzip);
    }

    for dest in [
        format!("docker-archive:{}", tmp.path().join("a.tar").display()),
        format!("dir:{}", tmp.path().join("flat").display()),
    ] {
        let err =
            export_index(&opened, &dest.parse().unwrap(), &ExportOptions::default()).unwrap_err();
        assert!(matches!(err, ImageError::MultiPlatform { .. }));
        assert_eq!(
            err.to_string(),
            "app:v1 is a multi-platform image (linux/amd64, linux/arm64): choose one with --platform"
        );
    }
    assert!(!tmp.path().join("a.tar").exists() && !tmp.path().join("flat").exists());
}

#[test]
fn copy_keeps_a_store_index_unless_a_platform_is_chosen() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::init(tmp.path().join("store")).unwrap();
    let (index, _, arm) = two_platforms(&store, tmp.path(), false);
    let client = Client::new(ClientOptions::default()).unwrap();
    let run = |src: &str, dst: &str, options: CopyOptions| {
        copy(
            &client,
            &store,
            &src.parse().unwrap(),
            &dst.parse().unwrap(),
            &options,
            &NoTransferProgress,
        )
    };
    let layout = tmp.path().join("layout");
    let whole = format!("oci:{}:whole", layout.display());
    // A dry run plans all seven blobs and writes nothing.
    let plan = run("app:v1", &whole, CopyOptions::new(1, true)).unwrap();
    assert_eq!(plan.local.map(|l| (l.written, l.skipped)), Some((7, 0)));
    assert!(!layout.exists());
    let out = run("app:v1", &whole, CopyOptions::default()).unwrap();
    assert_eq!(out.manifest.to_string(), index.digest().to_string());
    let one = format!("oci:{}:arm", layout.display());
    let arm64 = Some("linux/arm64".parse().unwrap());
    let out = run("app:v1", &one, CopyOptions::default().with_platform(arm64)).unwrap();
    assert_eq!(out.manifest.to_string(), arm.digest().to_string());
    let l = Store::open(&layout).unwrap();
    assert_eq!(l.resolve("arm").unwrap().digest(), arm.digest());

    // Back into another store, whole: the same index under a new tag.
    let other = Store::init(tmp.path().join("other")).unwrap();
    let (loaded, report) = load_platform(&other, &whole.parse().unwrap(), None).unwrap();
    assert_eq!(loaded, l.resolve("whole").unwrap());
    assert_eq!(report.copied, 7);
    let s390x: Platform = "linux/s390x".parse().unwrap();
    let err = load_platform(&other, &whole.parse().unwrap(), Some(&s390x)).unwrap_err();
    assert!(matches!(err, ImageError::NoSuchPlatform { .. }), "{err}");
    let out = run(&whole, "copied:v1", CopyOptions::default()).unwrap();
    assert_eq!(out.manifest.to_string(), index.digest().to_string());
    assert_eq!(store.resolve("copied:v1").unwrap().digest(), index.digest());

    // docker-archive needs one platform.
    let archive = format!("docker-archive:{}", tmp.path().join("a.tar").display());
    let err = run("app:v1", &archive, CopyOptions::default()).unwrap_err();
    assert!(matches!(err, ImageError::MultiPlatform { .. }), "{err}");
    let arm64 = Some("linux/arm64".parse().unwrap());
    run("app:v1", &archive, CopyOptions::default().with_platform(arm64)).unwrap();
    assert!(tmp.path().join("a.tar").is_file());
    // copy_index into a store that has everything copies nothing.
    let (_, again) = copy_index(&store, &index, &store, None).unwrap();
    assert_eq!((again.copied, again.skipped), (0, 7));
}
