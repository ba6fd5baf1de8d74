//! history, ls and efficiency.

mod common;

use common::*;
use strata_diff::{efficiency, history, ls, DiffError, LsOptions, StoredImage};

#[test]
fn history_lists_empty_layers_and_sizes() {
    let f = fixture();
    let base = put_layer(&f.store, &base_entries(), "ADD base", true);
    let top = put_layer(&f.store, &[dir("app"), file("app/a", b"a")], "COPY app", false);
    let img = put_image(&f.store, &[base.clone(), top.clone()], &[], "1970-01-01T00:00:00Z");
    let h = history(StoredImage::new(&f.store, &img)).unwrap();
    assert_eq!(h.len(), 3);
    assert!(h[0].empty_layer && h[0].layer.is_none());
    assert_eq!(h[0].created_by.as_deref(), Some("LABEL metadata"));
    let l1 = h[1].layer.as_ref().unwrap();
    assert_eq!((l1.index, l1.size, l1.diff_id), (0, base.desc.size(), base.diff_id));
    assert_eq!(l1.uncompressed_size, Some(tar_bytes(&base_entries()).len() as u64));
    let l2 = h[2].layer.as_ref().unwrap();
    assert_eq!((l2.index, l2.created_by.as_deref()), (1, Some("COPY app")));
    assert_eq!(l2.uncompressed_size, Some(top.desc.size()), "plain tar");
}

#[test]
fn ls_shows_the_layer_of_each_entry_and_states_after_a_layer() {
    let f = fixture();
    let base = put_layer(&f.store, &base_entries(), "ADD base", false);
    let top = put_layer(
        &f.store,
        &[dir("etc"), file("etc/passwd", b"new\n"), whiteout("etc/old"), whiteout("etc/conf.d")],
        "RUN",
        false,
    );
    let img = put_image(&f.store, &[base, top], &[], "1970-01-01T00:00:00Z");
    let s = StoredImage::new(&f.store, &img);
    let all = ls(s, &LsOptions::default()).unwrap();
    let names: Vec<(&str, usize)> = all.iter().map(|e| (e.path.as_str(), e.layer)).collect();
    assert_eq!(names, [("bin", 0), ("bin/sh", 0), ("bin/tool", 0), ("etc", 1), ("etc/passwd", 1)]);
    let etc = ls(s, &LsOptions::default().path("/etc")).unwrap();
    assert_eq!(etc.len(), 2);
    let first = ls(s, &LsOptions::default().layer(0).path("etc")).unwrap();
    assert_eq!(first.len(), 6, "etc, conf.d and its two files, old, passwd");
    assert!(first.iter().all(|e| e.layer == 0));
    assert!(matches!(
        ls(s, &LsOptions::default().layer(2)),
        Err(DiffError::NoSuchLayer { index: 2, layers: 2 })
    ));
}

#[test]
fn efficiency_counts_overwritten_and_deleted_bytes() {
    let f = fixture();
    let big = vec![1u8; 10_000];
    let l0 = put_layer(
        &f.store,
        &[dir("data"), file("data/big", &big), file("data/keep", b"k")],
        "ADD",
        false,
    );
    let l1 = put_layer(&f.store, &[dir("data"), file("data/big", &big[..4000])], "RUN trim", false);
    let l2 = put_layer(&f.store, &[dir("data"), whiteout("data/big")], "RUN rm", false);
    let img = put_image(&f.store, &[l0, l1, l2], &[], "1970-01-01T00:00:00Z");
    let e = efficiency(StoredImage::new(&f.store, &img), 10).unwrap();
    assert_eq!(e.total_bytes, 14_001);
    assert_eq!(e.wasted_bytes, 14_000);
    assert_eq!(e.worst.len(), 1);
    assert_eq!(e.worst[0].path, "data/big");
    assert_eq!(e.worst[0].layers, [0, 1]);
    assert!((e.score - 1.0 / 14_001.0).abs() < 1e-9);
}
