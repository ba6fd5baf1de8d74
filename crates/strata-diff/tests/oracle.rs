//! The merged view and the file diff checked against the real thing: each image is flattened
//! with strata-layer's `apply` (`export dir:`), scanned, and compared with what `ls` and `diff`
//! computed from the tar headers alone.

mod common;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;

use common::*;
use strata_diff::{diff, ls, Attribute, ChangeKind, DiffOptions, LsOptions, StoredImage};
use strata_image::{flatten, open_local};
use strata_layer::{scan_with_digests, EntryKind};
use strata_store::{Image, Store};
use strata_types::ImageLocation;

/// path -> (kind, mode, uid, gid, size, digest, link target, mtime) of the flattened image.
type Tree = BTreeMap<String, String>;

fn owners_restored() -> bool {
    rustix::process::geteuid().is_root()
}

fn flat(store: &Store, image: &Image, tag: &str, dir: &std::path::Path) -> Tree {
    store.tag(tag, &image.manifest_descriptor).unwrap();
    let source = open_local(Some(store), &ImageLocation::Store(tag.into())).unwrap();
    let out = dir.join(tag.replace(':', "-"));
    flatten(&source, &out, &strata_image::ExportOptions::default().devices(true)).unwrap();
    let snap = scan_with_digests(&out).unwrap();
    snap.entries()
        .iter()
        .map(|e| {
            let kind = match e.kind {
                EntryKind::File => "file",
                EntryKind::Dir => "dir",
                EntryKind::Symlink => "symlink",
                _ => "other",
            };
            let owner = if owners_restored() { format!("{}:{}", e.uid, e.gid) } else { "-".into() };
            let meta = format!(
                "{kind} {:04o} {owner} {} {:?} {:?} {}",
                e.mode,
                if e.kind == EntryKind::File { e.size } else { 0 },
                e.digest,
                e.link_target.as_ref().map(|l| l.as_os_str().as_bytes().to_vec()),
                e.mtime.secs
            );
            (String::from_utf8_lossy(e.path.as_os_str().as_bytes()).into_owned(), meta)
        })
        .collect()
}

fn listed(store: &Store, image: &Image) -> Tree {
    ls(StoredImage::new(store, image), &LsOptions::default())
        .unwrap()
        .into_iter()
        .map(|e| {
            let m = e.meta;
            let kind = serde_json::to_value(m.kind).unwrap().as_str().unwrap().to_string();
            let owner = if owners_restored() { format!("{}:{}", m.uid, m.gid) } else { "-".into() };
            let meta = format!(
                "{kind} {} {owner} {} {:?} {:?} {}",
                m.mode,
                m.size,
                m.digest,
                m.link_target.map(|l| l.into_bytes()),
                m.mtime
            );
            (e.path, meta)
        })
        .collect()
}

/// Three layers exercising every rule: whiteouts of a file and of a directory, an opaque
/// directory, a directory replaced by a file and a file by a directory, a symlink retargeted,
/// hardlinks within a layer and to a lower layer, mode and owner changes.
fn layers(store: &Store) -> Vec<Layer> {
    let mut l0 = base_entries();
    l0.extend([
        dir("d").mtime(5),
        file("d/x", b"x\n").mtime(5),
        dir("d/sub").mtime(5),
        file("d/sub/y", b"y\n").mtime(5),
        file("f", b"f is a file\n").mtime(5),
        dir("h"),
        file("h/one", b"linked\n"),
        hardlink("h/two", "h/one"),
    ]);
    let l1 = vec![
        dir("bin"),
        symlink("bin/sh", "busybox"),
        dir("d").mtime(6),
        file("d/sub", b"now a file\n").mtime(6),
        dir("etc"),
        dir("etc/conf.d"),
        opaque("etc/conf.d"),
        file("etc/conf.d/c.conf", b"c\n"),
        whiteout("etc/old"),
        dir("f").mode(0o700).mtime(6),
        file("f/inside", b"in\n").owner(7, 8).mtime(6),
    ];
    let l2 = vec![
        dir("bin"),
        file("bin/tool", b"#!/bin/sh\necho tool\n").mode(0o4750).owner(0, 33),
        hardlink("bin/t2", "bin/tool"),
        whiteout("d"),
        dir("etc"),
        file("etc/passwd", b"root:x:0:0::/root:/bin/sh\nnew:x:1:1::/:/bin/sh\n"),
        dir("h"),
        hardlink("h/three", "h/one"),
        dir("new").mtime(9),
        file("new/z", b"z\n").mtime(9),
    ];
    vec![
        put_layer(store, &l0, "ADD base", true),
        put_layer(store, &l1, "RUN shuffle", false),
        put_layer(store, &l2, "RUN more", true),
    ]
}

#[test]
fn ls_matches_the_flattened_filesystem() {
    let f = fixture();
    let ls_ = layers(&f.store);
    let tmp = tempfile::tempdir().unwrap();
    for n in 1..=3 {
        let image = put_image(&f.store, &ls_[..n], &[], "1970-01-01T00:00:00Z");
        let applied = flat(&f.store, &image, &format!("img:{n}"), tmp.path());
        let computed = listed(&f.store, &image);
        assert_eq!(computed, applied, "after {n} layers");
        if n == 3 {
            assert!(computed.contains_key("new/z") && computed.contains_key("f/inside"));
            assert!(!computed.contains_key("d/x") && !computed.contains_key("etc/old"));
            assert!(computed["bin/t2"].starts_with("file 4750"), "{}", computed["bin/t2"]);
        }
    }
}

#[test]
fn file_diff_matches_a_diff_of_the_flattened_trees() {
    let f = fixture();
    let l = layers(&f.store);
    let tmp = tempfile::tempdir().unwrap();
    let pairs = [(1, 2), (2, 3), (1, 3), (3, 1)];
    let images: Vec<Image> =
        (1..=3).map(|n| put_image(&f.store, &l[..n], &[], "1970-01-01T00:00:00Z")).collect();
    let trees: Vec<Tree> = images
        .iter()
        .enumerate()
        .map(|(i, img)| flat(&f.store, img, &format!("img:{}", i + 1), tmp.path()))
        .collect();
    for (x, y) in pairs {
        let (ta, tb) = (&trees[x - 1], &trees[y - 1]);
        let mut expected: BTreeMap<String, ChangeKind> = BTreeMap::new();
        for p in ta.keys().chain(tb.keys()) {
            let kind = match (ta.get(p), tb.get(p)) {
                (Some(a), Some(b)) if a != b => ChangeKind::Modified,
                (Some(_), None) => ChangeKind::Removed,
                (None, Some(_)) => ChangeKind::Added,
                _ => continue,
            };
            expected.insert(p.clone(), kind);
        }
        let d = diff(
            StoredImage::new(&f.store, &images[x - 1]),
            StoredImage::new(&f.store, &images[y - 1]),
            &DiffOptions::default(),
        )
        .unwrap();
        let found: BTreeMap<String, ChangeKind> = d
            .files
            .unwrap()
            .changes
            .into_iter()
            // A change of hardlink grouping alone is invisible to a tree scan.
            .filter(|c| c.changed != [Attribute::Hardlink])
            .map(|c| (c.path, c.change))
            .collect();
        assert!(expected.len() >= 5, "img:{x} -> img:{y}: {expected:?}");
        assert_eq!(found, expected, "img:{x} -> img:{y}");
    }
}
