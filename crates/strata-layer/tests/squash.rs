//! Squashing layers into one: applied over the kept layers, the squashed layer gives the same
//! tree as the layers it replaces, with whiteouts for exactly the lower files deleted.
mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{assert_same, normalize, write_file};
use strata_layer::overlay::MergedView;
use strata_layer::{
    apply_blob, diff, scan, squash, write_layer, ApplyOptions, Change, LayerWriter,
};
use strata_store::Store;

fn layer(store: &Store, lower: &Path, upper: &Path) -> strata_types::Digest {
    let changes = diff(&scan(lower).unwrap(), &scan(upper).unwrap()).unwrap();
    write_layer(store, &LayerWriter::default(), &changes, upper).unwrap().digest
}

fn copy_tree(from: &Path, to: &Path) {
    let ok = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(ok.success());
}

#[test]
fn squashed_layer_replays_the_layers_it_replaces() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::init(t.path().join("store")).unwrap();
    let p = |n: &str| t.path().join(n);
    // The base, kept below.
    write_file(&p("base/etc/group"), b"root:x:0:\n");
    write_file(&p("base/etc/passwd"), b"root:x:0:0::/root:/bin/sh\n");
    write_file(&p("base/d/a"), b"a");
    write_file(&p("base/d/sub/x"), b"x");
    write_file(&p("base/keep/k"), b"k");
    // Step 1 adds and modifies; step 2 deletes a base file, its own file and a base dir;
    // step 3 makes the dir again with other contents.
    copy_tree(&p("base"), &p("t1"));
    write_file(&p("t1/new/n1"), b"n1");
    write_file(&p("t1/tmpfile"), b"short-lived");
    write_file(&p("t1/etc/passwd"), b"root:x:0:0::/root:/bin/sh\nbob:x:1:1::/:\n");
    copy_tree(&p("t1"), &p("t2"));
    fs::remove_file(p("t2/etc/group")).unwrap();
    fs::remove_file(p("t2/tmpfile")).unwrap();
    fs::remove_dir_all(p("t2/d")).unwrap();
    copy_tree(&p("t2"), &p("t3"));
    write_file(&p("t3/d/sub/y"), b"yy");
    let layers = [
        layer(&store, &p("base"), &p("t1")),
        layer(&store, &p("t1"), &p("t2")),
        layer(&store, &p("t2"), &p("t3")),
    ];

    let lower = MergedView::new(vec![p("base")]);
    fs::create_dir(p("tree")).unwrap();
    let changes = squash(&store, &layers, &lower, &p("tree"), &ApplyOptions::default()).unwrap();
    let deleted: Vec<PathBuf> = changes
        .changes()
        .iter()
        .filter_map(|c| match c {
            Change::Deleted(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    // Base files only: the step's own short-lived file needs no whiteout.
    let want: Vec<PathBuf> = ["d/a", "d/sub/x", "etc/group"].iter().map(PathBuf::from).collect();
    assert_eq!(deleted, want);
    let squashed = write_layer(&store, &LayerWriter::default(), &changes, &p("tree")).unwrap();

    // base + squashed == t3
    let base_layer = write_layer(
        &store,
        &LayerWriter::default(),
        &strata_layer::Changeset::from_scan(scan(&p("base")).unwrap()),
        &p("base"),
    )
    .unwrap();
    fs::create_dir(p("out")).unwrap();
    apply_blob(&store, &base_layer.digest, &p("out"), &ApplyOptions::default()).unwrap();
    let r = apply_blob(&store, &squashed.digest, &p("out"), &ApplyOptions::default()).unwrap();
    assert_eq!(r.diff_id, Some(squashed.diff_id));
    assert_same(&normalize(&scan(&p("t3")).unwrap(), 0), &normalize(&scan(&p("out")).unwrap(), 0));
}

#[test]
fn squashing_everything_needs_no_whiteouts() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::init(t.path().join("store")).unwrap();
    let p = |n: &str| t.path().join(n);
    fs::create_dir(p("empty")).unwrap();
    write_file(&p("t1/a/b"), b"b");
    write_file(&p("t1/c"), b"c");
    copy_tree(&p("t1"), &p("t2"));
    fs::remove_file(p("t2/c")).unwrap();
    let layers = [layer(&store, &p("empty"), &p("t1")), layer(&store, &p("t1"), &p("t2"))];
    fs::create_dir(p("tree")).unwrap();
    let changes =
        squash(&store, &layers, &MergedView::default(), &p("tree"), &ApplyOptions::default())
            .unwrap();
    assert!(changes.changes().iter().all(|c| !matches!(c, Change::Deleted(_))), "{changes:?}");
    assert_same(&normalize(&scan(&p("t2")).unwrap(), 0), &normalize(&scan(&p("tree")).unwrap(), 0));
}
