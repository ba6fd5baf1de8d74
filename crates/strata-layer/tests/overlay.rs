//! Overlay upperdirs as changesets: char 0/0 whiteouts and opaque-directory xattrs.
mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{assert_same, is_root, normalize, write_file};
use strata_layer::{
    apply, layer_from_dir, scan, ApplyOptions, Change, Compression, EntryKind, LayerWriter,
};

fn whiteout(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        rustix::fs::makedev(0, 0),
    )
    .unwrap();
}

#[test]
fn synthetic_upperdir_translates_to_oci_changes() {
    if !is_root() {
        eprintln!("skipping: mknod of a 0/0 whiteout and trusted.* xattrs need root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let up = t.path();
    whiteout(&up.join("gone"));
    write_file(&up.join("opq/new"), b"n");
    xattr::set(up.join("opq"), "trusted.overlay.opaque", b"y").unwrap();
    write_file(&up.join("uopq/x"), b"x");
    xattr::set(up.join("uopq"), "user.overlay.opaque", b"y").unwrap();
    write_file(&up.join("mod"), b"m");
    xattr::set(up.join("mod"), "trusted.overlay.origin", b"\0\xfb").unwrap();
    xattr::set(up.join("mod"), "user.keep", b"k").unwrap();
    let cs = strata_layer::overlay::changeset_from_upper(up).unwrap();
    let kinds: Vec<(String, &str)> = cs
        .changes()
        .iter()
        .map(|c| {
            let k = match c {
                Change::Added(_) => "added",
                Change::Modified(_) => "modified",
                Change::Opaque(_) => "opaque",
                Change::Deleted(_) => "deleted",
                _ => "other",
            };
            (c.path().display().to_string(), k)
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("gone".into(), "deleted"),
            ("mod".into(), "added"),
            ("opq".into(), "opaque"),
            ("opq/new".into(), "added"),
            ("uopq".into(), "opaque"),
            ("uopq/x".into(), "added"),
        ]
    );
    let m = cs.changes()[1].entry().unwrap();
    assert_eq!(m.xattrs.keys().map(|k| k.to_str().unwrap()).collect::<Vec<_>>(), ["user.keep"]);
    let mut out = Vec::new();
    LayerWriter::new(Compression::None).write(&cs, up, &mut out).unwrap();
    let names = common::tar_names(&out);
    assert_eq!(
        names,
        [
            ".wh.gone",
            "mod",
            "opq/",
            "opq/.wh..wh..opq",
            "opq/new",
            "uopq/",
            "uopq/.wh..wh..opq",
            "uopq/x"
        ]
    );
}

#[test]
fn real_overlay_mount_round_trips_through_a_layer() {
    if !is_root() {
        eprintln!("skipping: mounting overlayfs needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let [lower, upper, work, merged, dst] =
        ["lower", "upper", "work", "merged", "dst"].map(|n| t.path().join(n));
    for d in [&lower, &upper, &work, &merged, &dst] {
        fs::create_dir(d).unwrap();
    }
    write_file(&lower.join("keep"), b"keep");
    write_file(&lower.join("del"), b"del");
    write_file(&lower.join("dir/old1"), b"1");
    write_file(&lower.join("dir/sub/old2"), b"2");
    write_file(&lower.join("mod/f"), b"before");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off",
        lower.display(),
        upper.display(),
        work.display()
    );
    let ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("STRATA_TEST_STRICT").as_deref() == Ok("1") {
            panic!("cannot mount overlayfs and STRATA_TEST_STRICT=1");
        }
        eprintln!("skipping: cannot mount overlayfs here");
        return;
    }
    fs::remove_file(merged.join("del")).unwrap();
    fs::remove_dir_all(merged.join("dir")).unwrap();
    write_file(&merged.join("dir/fresh"), b"fresh"); // recreated dir: opaque
    fs::write(merged.join("mod/f"), b"after!").unwrap();
    write_file(&merged.join("added/x"), b"x");
    let want = scan(&merged).unwrap();
    let want = normalize(&want, i64::MAX);
    let st = Command::new("umount").arg(&merged).status().unwrap();
    assert!(st.success());

    let cs = strata_layer::overlay::changeset_from_upper(&upper).unwrap();
    assert!(cs
        .changes()
        .iter()
        .any(|c| matches!(c, Change::Opaque(e) if e.path == Path::new("dir"))));
    assert!(cs.changes().iter().any(|c| matches!(c, Change::Deleted(p) if p == Path::new("del"))));
    let mut l1 = Vec::new();
    layer_from_dir(&lower, &mut l1).unwrap();
    let mut l2 = Vec::new();
    LayerWriter::new(Compression::Zstd).epoch(i64::MAX).write(&cs, &upper, &mut l2).unwrap();
    apply(&l1[..], &dst, &ApplyOptions::default()).unwrap();
    apply(&l2[..], &dst, &ApplyOptions::default()).unwrap();
    let got = normalize(&scan(&dst).unwrap(), i64::MAX);
    // The base layer clamped mtimes to 0; entries it carried unchanged differ only by that.
    let mut want = want;
    for (k, v) in want.iter_mut() {
        if let Some(g) = got.get(k) {
            if v.kind == EntryKind::Dir || g.mtime == 0 {
                v.mtime = g.mtime;
            }
        }
    }
    assert_same(&want, &got);
}
