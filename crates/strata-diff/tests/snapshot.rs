//! Base layers with an unpacked snapshot in the store are asked with `lstat` instead of being
//! read, and the answers are the same as from their tars.

mod common;

use common::*;
use strata_diff::{diff, DiffOptions, StoredImage};
use strata_store::{Image, Store};

#[allow(clippy::print_stderr)] // the skip message is the point
fn root() -> bool {
    let yes = rustix::process::geteuid().is_root();
    if !yes {
        if std::env::var_os("STRATA_TEST_STRICT").is_some_and(|v| v == "1") {
            panic!("snapshot probes need root (trusted.* xattrs) and STRATA_TEST_STRICT=1");
        }
        eprintln!("skipping: snapshot probes are used by root only");
    }
    yes
}

/// Unpacks `layer` as a build would: the tar applied, whiteouts as char 0/0, opaque xattr.
fn make_snapshot(store: &Store, layer: &Layer, entries: &[Ent]) {
    store
        .snapshots()
        .ensure(&layer.diff_id, |dir| {
            fill_snapshot(dir, entries);
            Ok::<(), strata_store::StoreError>(())
        })
        .unwrap();
}

fn fill_snapshot(dir: &std::path::Path, entries: &[Ent]) {
    let plain: Vec<Ent> = entries
        .iter()
        .filter(|e| !e.path.rsplit('/').next().unwrap().starts_with(".wh."))
        .cloned()
        .collect();
    strata_layer::apply(tar_bytes(&plain).as_slice(), dir, &Default::default()).unwrap();
    for e in entries {
        let (parent, name) = e.path.rsplit_once('/').unwrap_or(("", &e.path));
        if name == ".wh..wh..opq" {
            rustix::fs::setxattr(
                dir.join(parent),
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap();
        } else if let Some(victim) = name.strip_prefix(".wh.") {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                dir.join(parent).join(victim),
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                0,
            )
            .unwrap();
        }
    }
}

fn run(store: &Store, a: &Image, b: &Image) -> strata_diff::ImageDiff {
    diff(StoredImage::new(store, a), StoredImage::new(store, b), &DiffOptions::default()).unwrap()
}

#[test]
fn new_paths_are_decided_by_snapshots_without_reading_the_base() {
    if !root() {
        return;
    }
    let f = fixture();
    let base_e = base_entries();
    let base = put_layer(&f.store, &base_e, "ADD base", true);
    let hide_e = vec![dir("etc"), dir("etc/conf.d"), opaque("etc/conf.d"), whiteout("etc/old")];
    let hide = put_layer(&f.store, &hide_e, "RUN hide", false);
    let top = put_layer(
        &f.store,
        &[
            dir("app"),
            file("app/x", b"x"),
            dir("etc"),
            dir("etc/conf.d"),
            file("etc/conf.d/a.conf", b"again\n"),
            file("etc/old", b"back\n"),
        ],
        "COPY",
        false,
    );
    let a = put_image(&f.store, &[base.clone(), hide.clone()], &[], "1970-01-01T00:00:00Z");
    let b = put_image(&f.store, &[base.clone(), hide.clone(), top], &[], "1970-01-01T00:00:00Z");
    let from_tars = run(&f.store, &a, &b);
    assert_eq!(from_tars.stats.snapshot_probes, 0);
    assert_eq!(from_tars.stats.layers_read, 3);
    make_snapshot(&f.store, &base, &base_e);
    make_snapshot(&f.store, &hide, &hide_e);
    let probed = run(&f.store, &a, &b);
    assert!(probed.stats.snapshot_probes > 0);
    // app/ is in no base snapshot; etc/conf.d/a.conf and etc/old are hidden by `hide`: only
    // the etc and etc/conf.d directories (which `hide` has) need its tar, never the base's.
    assert_eq!(probed.stats.layers_read, 2, "{:?}", probed.stats);
    assert_eq!(probed.files, from_tars.files);
    let added: Vec<&str> =
        probed.files.as_ref().unwrap().changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(added, ["app", "app/x", "etc/conf.d/a.conf", "etc/old"]);
}
