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

/// Each entry of a snapshot dir as an overlay mount or a later step sees it (a whiteout is
/// only a whiteout; a hardlink names the first path of its inode).
fn snapshot_tree(dir: &Path) -> Vec<String> {
    let scan = strata_layer::scan_with_digests(dir).unwrap();
    let mut first = std::collections::HashMap::new();
    let mut out = Vec::new();
    for e in scan.entries() {
        let path = e.path.display().to_string();
        if e.kind == EntryKind::CharDevice && e.rdev == 0 {
            out.push(format!("{path} whiteout"));
            continue;
        }
        let group = first.entry(e.ino).or_insert_with(|| path.clone()).clone();
        let opaque = strata_layer::overlay::is_opaque(&dir.join(&e.path));
        out.push(format!(
            "{path} {:?} {:o} {}:{} size={} mtime={:?} link={:?} rdev={} digest={:?} nlink={} \
             inode-of={group} xattrs={:?} opaque={opaque}",
            e.kind,
            e.mode,
            e.uid,
            e.gid,
            e.size,
            e.mtime,
            e.link_target,
            e.rdev,
            e.digest,
            e.nlink,
            e.xattrs,
        ));
    }
    out
}

#[test]
fn an_upper_made_a_snapshot_equals_its_layer_unpacked() {
    if !is_root() {
        eprintln!("skipping: whiteouts and trusted.* xattrs need root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (up, dst) = (t.path().join("upper"), t.path().join("unpacked"));
    fs::create_dir(&dst).unwrap();
    fs::create_dir(&up).unwrap();
    whiteout(&up.join("gone"));
    write_file(&up.join("opq/new"), b"n");
    xattr::set(up.join("opq"), "trusted.overlay.opaque", b"y").unwrap();
    write_file(&up.join("etc/copied-up"), b"c");
    xattr::set(up.join("etc/copied-up"), "trusted.overlay.origin", b"\0\xfb").unwrap();
    xattr::set(up.join("etc/copied-up"), "user.keep", b"k").unwrap();
    xattr::set(up.join("etc"), "trusted.overlay.impure", b"y").unwrap();
    xattr::set(&up, "trusted.overlay.origin", b"\0\xfb").unwrap();
    write_file(&up.join("etc/a"), b"linked");
    fs::hard_link(up.join("etc/a"), up.join("etc/b")).unwrap();
    std::os::unix::fs::symlink("a", up.join("etc/link")).unwrap();
    rustix::fs::chownat(
        rustix::fs::CWD,
        up.join("etc/link"),
        Some(rustix::fs::Uid::from_raw(5)),
        Some(rustix::fs::Gid::from_raw(6)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    write_file(&up.join("bin/suid"), b"#!");
    std::os::unix::fs::chown(up.join("bin/suid"), Some(7), Some(8)).unwrap();
    fs::set_permissions(up.join("bin/suid"), std::os::unix::fs::PermissionsExt::from_mode(0o4755))
        .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        up.join("bin/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(up.join("bin/sock")).unwrap();
    write_file(&up.join("old"), b"old");
    let old = filetime::FileTime::from_unix_time(500_000_000, 123);
    filetime::set_symlink_file_times(up.join("old"), old, old).unwrap();
    // A deletion the upper has no whiteout for (an opaque dir rewritten as explicit ones).
    let mut changes = strata_layer::overlay::changeset_from_upper(&up).unwrap().changes().to_vec();
    changes.push(Change::Deleted("etc/hidden-lower".into()));
    let cs = strata_layer::Changeset::from_changes(changes);
    let epoch = 1_000_000_000;
    let mut blob = Vec::new();
    LayerWriter::new(Compression::Zstd).epoch(epoch).write(&cs, &up, &mut blob).unwrap();
    apply(&blob[..], &dst, &ApplyOptions::default().overlay_whiteouts()).unwrap();

    assert!(strata_layer::overlay::snapshot_from_upper(&up, &cs, epoch).unwrap());
    let (adopted, unpacked) = (snapshot_tree(&up), snapshot_tree(&dst));
    assert_eq!(adopted, unpacked, "adopted (left) vs unpacked (right)");
    for want in
        ["bin/fifo Fifo", "bin/suid File 4755 7:8", "etc/hidden-lower whiteout", "gone whiteout"]
    {
        assert!(adopted.iter().any(|l| l.starts_with(want)), "{want} in {adopted:#?}");
    }
    assert!(adopted.iter().any(|l| l.starts_with("opq Dir") && l.ends_with("opaque=true")));
    assert!(!up.join("bin/sock").exists(), "a layer has no sockets");
    assert!(xattr::list(&up).unwrap().next().is_none(), "overlay's xattrs leave the root");
}

#[test]
fn an_upper_that_is_not_its_changeset_is_left_alone() {
    if !is_root() {
        eprintln!("skipping: trusted.* xattrs need root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let up = t.path();
    write_file(&up.join("etc/a"), b"a");
    xattr::set(up.join("etc/a"), "trusted.overlay.origin", b"\0\xfb").unwrap();
    let cs = strata_layer::overlay::changeset_from_upper(up).unwrap();
    // Written to after the changeset was read: not what the layer holds.
    write_file(&up.join("etc/late"), b"late");
    assert!(!strata_layer::overlay::snapshot_from_upper(up, &cs, 0).unwrap());
    assert!(xattr::get(up.join("etc/a"), "trusted.overlay.origin").unwrap().is_some());
    fs::remove_file(up.join("etc/late")).unwrap();
    fs::write(up.join("etc/a"), b"b").unwrap(); // same size, other mtime
    filetime::set_file_mtime(up.join("etc/a"), filetime::FileTime::from_unix_time(1, 0)).unwrap();
    assert!(!strata_layer::overlay::snapshot_from_upper(up, &cs, 0).unwrap());
}
