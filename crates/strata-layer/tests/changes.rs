//! Whiteouts, opaque directories and the diff rule, through two-layer sequences.
mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use common::{assert_same, dir, file, normalize, raw_tar, tar_names, write_file};
use filetime::FileTime;
use strata_layer::{
    apply, diff, layer_from_dir, scan, ApplyOptions, Change, Changeset, Compression, LayerWriter,
};

fn layer(cs: &Changeset, src: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    LayerWriter::new(Compression::None).epoch(i64::MAX).write(cs, src, &mut out).unwrap();
    out
}

fn base(root: &Path) {
    write_file(&root.join("a/b/c/bar"), b"bar");
    write_file(&root.join("a/keep"), b"keep");
    write_file(&root.join("x"), b"x");
    write_file(&root.join("d/y"), b"y");
    write_file(&root.join("d/sub/z"), b"z");
    symlink("a/keep", root.join("link")).unwrap();
}

fn copy_tree(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success());
}

#[test]
fn diff_then_apply_on_lower_reproduces_upper() {
    let t = tempfile::tempdir().unwrap();
    let (lower, upper, out) =
        (t.path().join("lower"), t.path().join("upper"), t.path().join("out"));
    fs::create_dir(&lower).unwrap();
    base(&lower);
    copy_tree(&lower, &upper);
    fs::remove_file(upper.join("x")).unwrap();
    fs::remove_dir_all(upper.join("d")).unwrap();
    write_file(&upper.join("a/keep"), b"changed!");
    write_file(&upper.join("a/new"), b"new");
    fs::remove_file(upper.join("link")).unwrap();
    fs::create_dir(upper.join("link")).unwrap(); // symlink replaced by a directory
    write_file(&upper.join("link/inside"), b"i");
    fs::remove_dir_all(upper.join("a/b")).unwrap();
    write_file(&upper.join("a/b"), b"dir became a file");

    let (ls, us) = (scan(&lower).unwrap(), scan(&upper).unwrap());
    let cs = diff(&ls, &us).unwrap();
    let deleted: Vec<_> = cs
        .changes()
        .iter()
        .filter(|&c| matches!(c, Change::Deleted(_)))
        .map(|c| c.path().to_owned())
        .collect();
    // One deletion per removed subtree; `a/b`'s children vanish with the type change.
    assert_eq!(deleted, vec![Path::new("d").to_owned(), Path::new("x").to_owned()]);
    let l2 = layer(&cs, &upper);
    let names = tar_names(&l2);
    assert!(names.contains(&".wh.x".to_string()), "{names:?}");
    assert!(names.contains(&".wh.d".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("d/")), "{names:?}");

    fs::create_dir(&out).unwrap();
    let mut l1 = Vec::new();
    layer_from_dir(&lower, &mut l1).unwrap();
    apply(&l1[..], &out, &ApplyOptions::default()).unwrap();
    let r = apply(&l2[..], &out, &ApplyOptions::default()).unwrap();
    assert_eq!(r.whiteouts, 2);
    let mut expect = normalize(&us, i64::MAX);
    let got = normalize(&scan(&out).unwrap(), i64::MAX);
    // Directory mtimes of the base layer were clamped to 0 by layer_from_dir; compare the rest.
    for (k, v) in expect.iter_mut() {
        if v.kind == strata_layer::EntryKind::Dir {
            v.mtime = got.get(k).map_or(v.mtime, |g| g.mtime);
        }
    }
    assert_same(&expect, &got);
}

#[test]
fn unchanged_metadata_means_unchanged_without_reading_bytes() {
    let t = tempfile::tempdir().unwrap();
    let (lower, upper) = (t.path().join("l"), t.path().join("u"));
    write_file(&lower.join("same"), b"aaaa");
    write_file(&lower.join("touched"), b"bbbb");
    write_file(&lower.join("rewritten"), b"cccc");
    write_file(&lower.join("sneaky"), b"dddd");
    copy_tree(&lower, &upper);
    let t1 = FileTime::from_unix_time(1_600_000_000, 5);
    // Same bytes, new mtime: hashed, found equal, not a change.
    filetime::set_file_mtime(upper.join("touched"), t1).unwrap();
    // Same size, new bytes, new mtime: hashed, found different.
    fs::write(upper.join("rewritten"), b"CCCC").unwrap();
    filetime::set_file_mtime(upper.join("rewritten"), t1).unwrap();
    // Same size and mtime, different bytes: by the documented rule this is NOT detected.
    let old = fs::metadata(upper.join("sneaky")).unwrap();
    fs::write(upper.join("sneaky"), b"DDDD").unwrap();
    filetime::set_file_mtime(upper.join("sneaky"), FileTime::from_last_modification_time(&old))
        .unwrap();
    let cs = diff(&scan(&lower).unwrap(), &scan(&upper).unwrap()).unwrap();
    let paths: Vec<_> = cs.changes().iter().map(|c| c.path().to_owned()).collect();
    assert!(paths.contains(&Path::new("rewritten").to_owned()), "{paths:?}");
    assert!(!paths.contains(&Path::new("touched").to_owned()), "{paths:?}");
    assert!(!paths.contains(&Path::new("same").to_owned()), "{paths:?}");
    assert!(!paths.contains(&Path::new("sneaky").to_owned()), "{paths:?}");
}

#[test]
fn opaque_dir_hides_lower_children_but_not_its_own_in_any_order() {
    for marker_last in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        fs::create_dir(&out).unwrap();
        // layer.md § Whiteouts example: base a/b/c/bar; next layer recreates a/b/c/foo.
        let l1 = raw_tar(&[
            dir("a/"),
            dir("a/b/"),
            dir("a/b/c/"),
            file("a/b/c/bar", b"1"),
            file("a/z", b"z"),
        ]);
        apply(&l1[..], &out, &ApplyOptions::default()).unwrap();
        let mut entries =
            vec![dir("a/"), dir("a/b/"), dir("a/b/c/"), file("a/b/c/foo", b"2"), file("a/-x", b"")];
        let opq = file("a/.wh..wh..opq", b"");
        if marker_last {
            entries.push(opq);
        } else {
            entries.insert(1, opq);
        }
        let r = apply(&raw_tar(&entries)[..], &out, &ApplyOptions::default()).unwrap();
        assert_eq!(r.opaque_dirs, 1);
        assert!(out.join("a/b/c/foo").exists());
        assert!(out.join("a/-x").exists());
        assert!(!out.join("a/b/c/bar").exists(), "marker_last={marker_last}");
        assert!(!out.join("a/z").exists(), "marker_last={marker_last}");
        assert!(!out.join("a/.wh..wh..opq").exists());
    }
}

#[test]
fn whiteout_does_not_remove_an_entry_of_the_same_layer() {
    let t = tempfile::tempdir().unwrap();
    let l = raw_tar(&[file("f", b"new"), file(".wh.f", b""), file(".wh.nothing", b"")]);
    let r = apply(&l[..], t.path(), &ApplyOptions::default()).unwrap();
    assert_eq!(fs::read(t.path().join("f")).unwrap(), b"new");
    assert!(!t.path().join(".wh.f").exists());
    assert_eq!(r.whiteouts, 0);
}

#[test]
fn writer_emits_opaque_marker_and_missing_parents_in_order() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path();
    write_file(&src.join("p/q/opq/new"), b"n");
    write_file(&src.join("p/q/file"), b"f");
    write_file(&src.join("p/-dash"), b"d");
    let s = scan(src).unwrap();
    let e = |p: &str| s.get(Path::new(p)).unwrap().clone();
    let cs = Changeset::from_changes(vec![
        Change::Added(e("p/q/opq/new")),
        Change::Opaque(e("p/q/opq")),
        Change::Modified(e("p/q/file")),
        Change::Deleted("p/gone".into()),
        Change::Added(e("p/-dash")),
        Change::Deleted("p/+plus".into()),
    ]);
    let names = tar_names(&layer(&cs, src));
    assert_eq!(
        names,
        vec![
            "p/",
            "p/.wh.+plus",
            "p/.wh.gone",
            "p/-dash",
            "p/q/",
            "p/q/file",
            "p/q/opq/",
            "p/q/opq/.wh..wh..opq",
            "p/q/opq/new"
        ]
    );
}

#[test]
fn writer_refuses_names_that_look_like_whiteouts() {
    let t = tempfile::tempdir().unwrap();
    write_file(&t.path().join(".wh.evil"), b"");
    let mut out = Vec::new();
    let err = layer_from_dir(t.path(), &mut out).unwrap_err();
    assert!(err.to_string().contains(".wh.evil"), "{err}");
}

#[test]
fn hardlinks_point_at_first_path_in_sort_order() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("s");
    write_file(&src.join("z/late"), b"shared");
    fs::hard_link(src.join("z/late"), src.join("a-early")).unwrap();
    fs::hard_link(src.join("z/late"), src.join("m")).unwrap();
    let mut out = Vec::new();
    LayerWriter::new(Compression::None).write_dir(&src, &mut out).unwrap();
    let mut a = tar::Archive::new(&out[..]);
    let mut links = Vec::new();
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        if e.header().entry_type() == tar::EntryType::Link {
            let p = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let l = String::from_utf8_lossy(&e.link_name_bytes().unwrap()).into_owned();
            links.push((p, l));
        }
    }
    assert_eq!(links, vec![("m".into(), "a-early".into()), ("z/late".into(), "a-early".into())]);
}

#[test]
fn a_file_that_changed_size_or_a_failing_sink_is_an_error_not_a_bad_layer() {
    let t = tempfile::tempdir().unwrap();
    write_file(&t.path().join("f"), &[1u8; 5000]);
    let mut snap = scan(t.path()).unwrap().into_entries();
    for c in [Compression::None, Compression::Zstd, Compression::Gzip] {
        for delta in [-1i64, 1] {
            snap[0].size = (5000 + delta) as u64;
            let cs = Changeset::from_changes(vec![Change::Added(snap[0].clone())]);
            let err = LayerWriter::new(c).write(&cs, t.path(), Vec::new()).unwrap_err();
            assert!(
                matches!(err, strata_layer::LayerError::SizeChanged { expected, .. } if expected == snap[0].size),
                "{c:?} {delta}: {err:?}"
            );
        }
    }
    struct Broken;
    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    for c in [Compression::None, Compression::Zstd] {
        let err = LayerWriter::new(c).write_dir(t.path(), Broken).unwrap_err();
        assert!(strata_types::chain(&err).contains("disk full"), "{c:?}: {err}");
    }
    // A sink that fails while the tar is still being produced (20 MB that zstd cannot shrink:
    // its first 8 MiB job is written long before the end) stops every stage of the pipeline,
    // and its error is the one reported.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..20 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    write_file(&t.path().join("noise"), &noise);
    for c in [Compression::None, Compression::Zstd, Compression::Gzip] {
        let err = LayerWriter::new(c).write_dir(t.path(), Broken).unwrap_err();
        assert!(strata_types::chain(&err).contains("disk full"), "{c:?}: {err}");
    }
}

/// `Changeset::of_dir` reads a tree level by level (a large directory's entries in parallel);
/// it must list exactly what a scan of the same tree lists, in the same order.
#[test]
fn of_dir_is_the_scan_of_the_tree_as_additions() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    base(root);
    // Wider than the walk's parallel threshold, and deep.
    for i in 0..300 {
        write_file(&root.join(format!("wide/f{i:03}")), format!("{i}").as_bytes());
    }
    write_file(&root.join("wide/sub/deeper/still/leaf"), b"leaf");
    fs::create_dir(root.join("empty")).unwrap();
    let of_dir = Changeset::of_dir(root).unwrap();
    let from_scan = Changeset::from_scan(scan(root).unwrap());
    assert_eq!(of_dir, from_scan);
    // base: 11 entries; wide/: itself, 300 files, sub/deeper/still/leaf; empty/.
    assert_eq!(of_dir.len(), 11 + (1 + 300 + 4) + 1);
    assert!(of_dir.changes().iter().all(|c| matches!(c, Change::Added(_))));
    let paths: Vec<_> = of_dir.changes().iter().map(|c| c.path().to_owned()).collect();
    let mut sorted = paths.clone();
    sorted.sort_by(|a, b| a.as_os_str().as_encoded_bytes().cmp(b.as_os_str().as_encoded_bytes()));
    assert_eq!(paths, sorted);
    // An unreadable tree is an error naming it, not an empty changeset.
    let err = Changeset::of_dir(&root.join("missing")).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");
}
