//! The library's diff on images made byte by byte (see common/mod.rs).

mod common;

use common::*;
use strata_diff::{diff, Attribute, ChangeKind, DiffError, DiffOptions, FileChange, StoredImage};
use strata_store::{Image, Store};

fn run(store: &Store, a: &Image, b: &Image, opts: &DiffOptions) -> strata_diff::ImageDiff {
    diff(StoredImage::new(store, a), StoredImage::new(store, b), opts).unwrap()
}

fn changes(d: &strata_diff::ImageDiff) -> Vec<FileChange> {
    d.files.as_ref().unwrap().changes.clone()
}

fn one(d: &strata_diff::ImageDiff, path: &str) -> FileChange {
    let c = changes(d);
    c.into_iter().find(|c| c.path == path).unwrap_or_else(|| panic!("{path} not in diff"))
}

const T0: &str = "1970-01-01T00:00:00Z";

#[test]
fn identical_images_are_identical_and_read_nothing() {
    let f = fixture();
    let base = put_layer(&f.store, &base_entries(), "ADD base", false);
    let a = put_image(&f.store, std::slice::from_ref(&base), &[], T0);
    let b = put_image(&f.store, &[base], &[], T0);
    let d = run(&f.store, &a, &b, &DiffOptions::default());
    assert!(d.identical);
    assert_eq!(d.config.as_ref().unwrap().len(), 0);
    assert!(changes(&d).is_empty());
    let layers = d.layers.as_ref().unwrap();
    assert_eq!(layers.shared.len(), 1);
    assert!(layers.only_in_a.is_empty() && layers.only_in_b.is_empty());
    assert_eq!(layers.first_divergence, None);
    assert_eq!(d.transfer.unwrap().blobs, 0);
    assert_eq!(d.stats.layers_read, 0, "shared layers are never read");
    assert_eq!(d.version, 1);
}

/// Two images on a 3-layer base whose top layers touch the same paths: the diff reads the two
/// top layers and nothing of the base.
#[test]
fn changed_file_in_last_layer_reads_only_the_unshared_layers() {
    let f = fixture();
    let base = put_layer(&f.store, &base_entries(), "ADD base", true);
    let b1 = put_layer(&f.store, &[dir("usr"), file("usr/lib.so", &[7u8; 5000])], "COPY lib", true);
    let b2 = put_layer(&f.store, &[dir("var"), file("var/log", b"")], "RUN log", false);
    let app =
        |v: &[u8]| vec![dir("app"), file("app/config", v), file("app/main", b"main\n").mode(0o755)];
    let ta = put_layer(&f.store, &app(b"version=1\n"), "COPY app/ /app/ # v1", true);
    let tb = put_layer(&f.store, &app(b"version=22\n"), "COPY app/ /app/ # v2", true);
    let a = put_image(&f.store, &[base.clone(), b1.clone(), b2.clone(), ta.clone()], &[], T0);
    let b = put_image(&f.store, &[base, b1, b2, tb.clone()], &[], T0);
    let d = run(&f.store, &a, &b, &DiffOptions::default());
    assert!(!d.identical);
    let c = changes(&d);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].path, "app/config");
    assert_eq!(c[0].change, ChangeKind::Modified);
    assert_eq!(c[0].changed, vec![Attribute::Content, Attribute::Size]);
    assert_eq!(c[0].layer, Some(3));
    assert_eq!(c[0].created_by.as_deref(), Some("COPY app/ /app/ # v2"));
    assert_eq!(d.stats.layers_read, 2, "only the two top layers are read");
    assert_eq!(d.stats.layers_total, 5);
    let layers = d.layers.as_ref().unwrap();
    assert_eq!(layers.first_divergence, Some(3));
    assert_eq!(layers.shared.len(), 3);
    assert_eq!(layers.only_in_a.len(), 1);
    assert_eq!(layers.only_in_b[0].created_by.as_deref(), Some("COPY app/ /app/ # v2"));
    assert_eq!(layers.only_in_b[0].index, 3);
    // The layer was read, so its uncompressed size is known; a shared gzip one from its trailer.
    assert!(layers.only_in_b[0].uncompressed_size.is_some());
    assert!(layers.shared[0].layer.uncompressed_size.is_some());
    let t = d.transfer.unwrap();
    assert_eq!((t.blobs, t.layers, t.layer_bytes), (3, 1, tb.desc.size()));
    assert_eq!(d.files.as_ref().unwrap().totals.modified, 1);
}

#[test]
fn whiteouts_remove_files_and_directories() {
    let f = fixture();
    let base = put_layer(&f.store, &base_entries(), "ADD base", false);
    let rm = put_layer(
        &f.store,
        &[dir("etc"), whiteout("etc/old"), whiteout("etc/conf.d")],
        "RUN rm -r /etc/old /etc/conf.d",
        false,
    );
    let a = put_image(&f.store, std::slice::from_ref(&base), &[], T0);
    let b = put_image(&f.store, &[base, rm], &[], T0);
    let d = run(&f.store, &a, &b, &DiffOptions::default());
    let c = changes(&d);
    let removed: Vec<&str> =
        c.iter().filter(|c| c.change == ChangeKind::Removed).map(|c| c.path.as_str()).collect();
    assert_eq!(removed, ["etc/conf.d", "etc/conf.d/a.conf", "etc/conf.d/b.conf", "etc/old"]);
    for r in c.iter().filter(|c| c.change == ChangeKind::Removed) {
        assert_eq!(r.layer, Some(1));
        assert_eq!(r.created_by.as_deref(), Some("RUN rm -r /etc/old /etc/conf.d"));
    }
    assert_eq!(d.files.as_ref().unwrap().totals.removed_bytes, 9 + 4 + 4);
    // Reversed: the files come back.
    let d = run(&f.store, &b, &a, &DiffOptions::default());
    assert!(changes(&d).iter().filter(|c| c.change == ChangeKind::Added).count() == 4);
}

#[test]
fn opaque_directory_hides_lower_children_only() {
    let f = fixture();
    let base = put_layer(&f.store, &base_entries(), "ADD base", false);
    let op = put_layer(
        &f.store,
        &[dir("etc"), dir("etc/conf.d"), opaque("etc/conf.d"), file("etc/conf.d/c.conf", b"c\n")],
        "RUN replace conf.d",
        false,
    );
    let a = put_image(&f.store, std::slice::from_ref(&base), &[], T0);
    let b = put_image(&f.store, &[base, op], &[], T0);
    let d = run(&f.store, &a, &b, &DiffOptions::default());
    let c: Vec<(String, ChangeKind)> =
        changes(&d).into_iter().map(|c| (c.path, c.change)).collect();
    assert_eq!(
        c,
        [
            ("etc/conf.d/a.conf".to_string(), ChangeKind::Removed),
            ("etc/conf.d/b.conf".to_string(), ChangeKind::Removed),
            ("etc/conf.d/c.conf".to_string(), ChangeKind::Added),
        ]
    );
}

#[test]
fn mode_only_owner_only_symlink_and_xattr_changes() {
    let f = fixture();
    let base = put_layer(&f.store, &base_entries(), "ADD base", false);
    let top = put_layer(
        &f.store,
        &[
            dir("bin"),
            file("bin/tool", b"#!/bin/sh\necho tool\n").mode(0o700),
            symlink("bin/sh", "busybox"),
            dir("etc"),
            file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n").owner(33, 33),
            file("etc/old", b"obsolete\n").xattr("user.note", b"x\ny"),
        ],
        "RUN chmod; chown; ln -sf",
        false,
    );
    let a = put_image(&f.store, std::slice::from_ref(&base), &[], T0);
    let b = put_image(&f.store, &[base, top], &[], T0);
    let d = run(&f.store, &a, &b, &DiffOptions::default());
    assert_eq!(changes(&d).len(), 4, "{:?}", changes(&d));
    assert_eq!(one(&d, "bin/tool").changed, [Attribute::Mode]);
    assert_eq!(one(&d, "etc/passwd").changed, [Attribute::Owner]);
    assert_eq!(one(&d, "etc/passwd").b.as_ref().unwrap().uid, 33);
    let sh = one(&d, "bin/sh");
    assert_eq!(sh.changed, [Attribute::LinkTarget]);
    assert_eq!(sh.b.unwrap().link_target.as_deref(), Some("busybox"));
    let old = one(&d, "etc/old");
    assert_eq!(old.changed, [Attribute::Xattrs]);
    assert_eq!(old.b.unwrap().xattrs["user.note"], "x\ny");
}

#[test]
fn hardlinks_share_their_target_content() {
    let f = fixture();
    let base = put_layer(&f.store, &base_entries(), "ADD base", false);
    let top = put_layer(
        &f.store,
        &[
            dir("bin"),
            hardlink("bin/tool2", "bin/tool"),
            dir("opt"),
            file("opt/x", b"xx\n"),
            hardlink("opt/y", "opt/x"),
        ],
        "RUN ln",
        false,
    );
    let a = put_image(&f.store, std::slice::from_ref(&base), &[], T0);
    let b = put_image(&f.store, &[base, top], &[], T0);
    let d = run(&f.store, &a, &b, &DiffOptions::default());
    let tool2 = one(&d, "bin/tool2");
    assert_eq!(tool2.change, ChangeKind::Added);
    let meta = tool2.b.unwrap();
    assert_eq!(meta.hardlink.as_deref(), Some("bin/tool"));
    assert_eq!(meta.mode, "0755", "a hardlink has its target's inode");
    assert_eq!(meta.digest, Some(strata_types::Digest::of_bytes(b"#!/bin/sh\necho tool\n")));
    let y = one(&d, "opt/y").b.unwrap();
    assert_eq!((y.hardlink.as_deref(), y.size), (Some("opt/x"), 3));
    // Hardlinked bytes are counted once.
    assert_eq!(d.files.as_ref().unwrap().totals.added_bytes, 3);
    // A file turned into a hardlink of an identical file is a change of link, not content.
    let top2 = put_layer(
        &f.store,
        &[dir("opt"), file("opt/x", b"xx\n"), file("opt/y", b"xx\n")],
        "COPY",
        false,
    );
    let c = put_image(
        &f.store,
        &[put_layer(&f.store, &base_entries(), "ADD base", false), top2],
        &[],
        T0,
    );
    let d = run(&f.store, &c, &b, &DiffOptions::default());
    assert_eq!(one(&d, "opt/y").changed, [Attribute::Hardlink]);
}

#[test]
fn config_only_change_moves_config_and_manifest() {
    let f = fixture();
    let base = put_layer(&f.store, &base_entries(), "ADD base", false);
    let a = put_image(&f.store, std::slice::from_ref(&base), &[("version", "1")], T0);
    let b = put_image(&f.store, &[base], &[("version", "1"), ("team", "web")], T0);
    let d = run(&f.store, &a, &b, &DiffOptions::default());
    assert!(!d.identical);
    let config = d.config.as_ref().unwrap();
    assert_eq!(config.len(), 1, "{config:?}");
    assert_eq!(config[0].field, "Labels[team]");
    assert_eq!(config[0].a, serde_json::Value::Null);
    assert_eq!(config[0].b, "web");
    assert!(changes(&d).is_empty());
    assert_eq!(d.layers.as_ref().unwrap().first_divergence, None);
    let t = d.transfer.unwrap();
    assert_eq!((t.blobs, t.layers), (2, 0), "config and manifest only");
    assert_eq!(d.stats.layers_read, 0);
}

#[test]
fn semantic_ignores_timestamps_and_nothing_else() {
    let f = fixture();
    let base = put_layer(&f.store, &base_entries(), "ADD base", false);
    let app = |t: u64, mode: u32| {
        put_layer(
            &f.store,
            &[dir("app").mtime(t), file("app/run", b"run\n").mtime(t).mode(mode)],
            "COPY",
            false,
        )
    };
    let a = put_image(&f.store, &[base.clone(), app(100, 0o644)], &[], "2024-01-01T00:00:00Z");
    let b = put_image(&f.store, &[base.clone(), app(200, 0o644)], &[], "2025-01-01T00:00:00Z");
    let plain = run(&f.store, &a, &b, &DiffOptions::default());
    assert!(!plain.identical);
    assert_eq!(one(&plain, "app/run").changed, [Attribute::Mtime]);
    assert_eq!(one(&plain, "app").changed, [Attribute::Mtime]);
    assert!(plain.config.as_ref().unwrap().iter().any(|c| c.field == "created"));
    let semantic = run(&f.store, &a, &b, &DiffOptions::default().semantic(true));
    assert!(semantic.identical, "{semantic:#?}");
    assert!(changes(&semantic).is_empty());
    assert!(semantic.config.as_ref().unwrap().is_empty());
    // A mode change is still one.
    let c = put_image(&f.store, &[base, app(300, 0o600)], &[], "2026-01-01T00:00:00Z");
    let semantic = run(&f.store, &a, &c, &DiffOptions::default().semantic(true));
    assert!(!semantic.identical);
    assert_eq!(changes(&semantic).len(), 1);
    assert_eq!(one(&semantic, "app/run").changed, [Attribute::Mode]);
}

#[test]
fn file_replaced_by_directory_and_back() {
    let f = fixture();
    let base = put_layer(&f.store, &base_entries(), "ADD base", false);
    let top = put_layer(&f.store, &[dir("etc"), file("etc/conf.d", b"now a file\n")], "RUN", false);
    let a = put_image(&f.store, std::slice::from_ref(&base), &[], T0);
    let b = put_image(&f.store, &[base, top], &[], T0);
    let d = run(&f.store, &a, &b, &DiffOptions::default());
    let c: Vec<(String, ChangeKind)> =
        changes(&d).into_iter().map(|c| (c.path, c.change)).collect();
    assert_eq!(
        c,
        [
            ("etc/conf.d".to_string(), ChangeKind::Modified),
            ("etc/conf.d/a.conf".to_string(), ChangeKind::Removed),
            ("etc/conf.d/b.conf".to_string(), ChangeKind::Removed),
        ]
    );
    assert!(one(&d, "etc/conf.d").changed.contains(&Attribute::Type));
}

#[test]
fn file_content_diff_text_and_binary() {
    let f = fixture();
    let base = put_layer(&f.store, &base_entries(), "ADD base", false);
    let top = put_layer(
        &f.store,
        &[
            dir("etc"),
            file("etc/passwd", b"root:x:0:0::/root:/bin/sh\nwww:x:33:33::/var/www:/bin/sh\n"),
            dir("bin"),
            file("bin/tool", &[0u8, 1, 2, 3]).mode(0o755),
        ],
        "RUN useradd",
        false,
    );
    let a = put_image(&f.store, std::slice::from_ref(&base), &[], T0);
    let b = put_image(&f.store, &[base, top], &[], T0);
    let d = run(&f.store, &a, &b, &DiffOptions::default().file("/etc/passwd"));
    let fc = d.file_content.as_ref().unwrap();
    assert!(fc.text && !fc.identical);
    let unified = fc.unified.as_deref().unwrap();
    assert!(unified.contains("--- a/etc/passwd"), "{unified}");
    assert!(unified.contains("+www:x:33:33::/var/www:/bin/sh"), "{unified}");
    assert_eq!(changes(&d).len(), 1, "the file section is restricted to the file");
    let d = run(&f.store, &a, &b, &DiffOptions::default().file("bin/tool"));
    let fc = d.file_content.unwrap();
    assert!(!fc.text && fc.unified.is_none());
    assert_eq!(fc.b.as_ref().unwrap().size, 4);
    assert_eq!(fc.a.as_ref().unwrap().layer, 0);
    assert_ne!(fc.a.unwrap().digest, fc.b.unwrap().digest);
}

#[test]
fn corrupt_blob_and_diff_id_mismatch_are_errors() {
    let f = fixture();
    let base = put_layer(&f.store, &base_entries(), "ADD base", false);
    let top = put_layer(&f.store, &[dir("x"), file("x/y", b"yy")], "RUN", true);
    let a = put_image(&f.store, std::slice::from_ref(&base), &[], T0);
    let b = put_image(&f.store, &[base.clone(), top.clone()], &[], T0);
    // A config whose diffID for the top layer is wrong.
    let mut wrong = top.clone();
    wrong.diff_id = strata_types::Digest::of_bytes(b"not the tar");
    let c = put_image(&f.store, &[base, wrong], &[], T0);
    let err = diff(
        StoredImage::new(&f.store, &a),
        StoredImage::new(&f.store, &c),
        &DiffOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, DiffError::DiffIdMismatch { layer: 1, .. }), "{err}");
    assert!(err.to_string().contains("diffID mismatch"));
    // Flip a byte of the stored blob.
    let digest = strata_types::Digest::try_from(top.desc.digest()).unwrap();
    let path = f.store.root().join("blobs/sha256").join(digest.hex());
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let err = diff(
        StoredImage::new(&f.store, &a),
        StoredImage::new(&f.store, &b),
        &DiffOptions::default(),
    )
    .unwrap_err();
    // Reported as the store's corrupt blob, against the image that has it (named by its
    // digest: these were opened without a name).
    let b_name = b.digest().unwrap().to_string();
    assert!(
        matches!(&err, DiffError::Store(strata_store::StoreError::CorruptBlob { digest: d, image, .. })
            if *d == digest && *image == b_name),
        "{err}"
    );
}

#[test]
fn json_is_versioned_and_stable() {
    let f = fixture();
    let base = put_layer(&f.store, &base_entries(), "ADD base", false);
    let top = put_layer(&f.store, &[dir("etc"), whiteout("etc/old")], "RUN rm /etc/old", false);
    let a = put_image(&f.store, std::slice::from_ref(&base), &[], T0);
    let b = put_image(&f.store, &[base, top], &[], T0);
    let d = run(&f.store, &a, &b, &DiffOptions::default());
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["identical"], false);
    let change = &v["files"]["changes"][0];
    assert_eq!(change["path"], "etc/old");
    assert_eq!(change["change"], "removed");
    assert_eq!(change["a"]["mode"], "0644");
    assert_eq!(change["a"]["kind"], "file");
    assert_eq!(change["layer"], 1);
    assert_eq!(change["created_by"], "RUN rm /etc/old");
    assert_eq!(v["layers"]["first_divergence"], 1);
    // A (the base alone) has no layer of its own above the shared one: the paths B's top layer
    // names are looked up in the base.
    assert_eq!(v["stats"]["layers_read"], 2);
}

/// Without snapshots, a path only the new layer names is looked up through the base's tars
/// (several at a time once one did not decide it), each read once.
#[test]
fn new_path_is_looked_up_through_the_base_once_per_layer() {
    let f = fixture();
    let mut base = Vec::new();
    for i in 0..5 {
        let d = format!("lib{i}");
        base.push(put_layer(
            &f.store,
            &[dir(&d), file(&format!("{d}/f"), &vec![i as u8; 3000])],
            &format!("COPY lib{i}"),
            true,
        ));
    }
    let mut with_top = base.clone();
    with_top.push(put_layer(
        &f.store,
        &[dir("lib0"), file("lib0/f", b"patched"), dir("new"), file("new/x", b"x")],
        "COPY patch",
        false,
    ));
    let a = put_image(&f.store, &base, &[], T0);
    let b = put_image(&f.store, &with_top, &[], T0);
    let d = run(&f.store, &a, &b, &DiffOptions::default());
    let c: Vec<(String, ChangeKind)> =
        changes(&d).into_iter().map(|c| (c.path, c.change)).collect();
    assert_eq!(
        c,
        [
            ("lib0/f".to_string(), ChangeKind::Modified),
            ("new".to_string(), ChangeKind::Added),
            ("new/x".to_string(), ChangeKind::Added),
        ]
    );
    assert_eq!(one(&d, "lib0/f").changed, [Attribute::Content, Attribute::Size]);
    assert_eq!(d.stats.layers_read, 6, "every layer once, the base included");
}
