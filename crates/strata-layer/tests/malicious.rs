//! A corpus of hostile archives: each is refused (or contained), and nothing appears outside.
mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use common::{dir, file, hardlink, raw_tar, symlink as sym, Raw};
use strata_layer::{apply, ApplyOptions, LayerError, UnsafeReason};

/// Everything under `p` (names and contents), to prove nothing changed there.
fn listing(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = walkdir::WalkDir::new(p)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let data = if e.file_type().is_file() { fs::read(e.path()).unwrap() } else { vec![] };
            (e.path().display().to_string(), data)
        })
        .collect();
    v.sort();
    v
}

struct Jail {
    _t: tempfile::TempDir,
    top: std::path::PathBuf,
    root: std::path::PathBuf,
}

fn jail() -> Jail {
    let t = tempfile::tempdir().unwrap();
    // top/a/b/root is the target; top/sentinel must never change.
    let top = t.path().to_path_buf();
    let root = top.join("a/b/root");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir(top.join("sentinel")).unwrap();
    fs::write(top.join("sentinel/keep"), b"keep").unwrap();
    Jail { _t: t, top, root }
}

fn refused(entries: &[Raw<'_>], want: impl Fn(&UnsafeReason) -> bool, pre: impl Fn(&Path)) {
    let j = jail();
    pre(&j.root);
    let before = listing(&j.top.join("sentinel"));
    let top_before: Vec<_> =
        fs::read_dir(&j.top).unwrap().map(|e| e.unwrap().file_name()).collect();
    let passwd = fs::read("/etc/passwd").ok();
    let err = apply(&raw_tar(entries)[..], &j.root, &ApplyOptions::default()).unwrap_err();
    match &err {
        LayerError::Unsafe { reason, .. } if want(reason) => {}
        other => panic!("unexpected result: {other:?}"),
    }
    assert_eq!(listing(&j.top.join("sentinel")), before);
    let top_after: Vec<_> = fs::read_dir(&j.top).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(top_before, top_after);
    assert!(!j.top.join("a/x").exists() && !j.top.join("a/b/x").exists());
    assert_eq!(fs::read("/etc/passwd").ok(), passwd);
    assert!(!Path::new("/etc/x").exists());
}

#[test]
fn dotdot_is_refused() {
    refused(&[file("../x", b"evil")], |r| *r == UnsafeReason::DotDot, |_| {});
    refused(&[file("ok/../../x", b"evil")], |r| *r == UnsafeReason::DotDot, |_| {});
}

#[test]
fn absolute_is_refused() {
    refused(&[file("/etc/x", b"evil")], |r| *r == UnsafeReason::Absolute, |_| {});
}

#[test]
fn symlink_to_parent_then_write_through_it_is_refused() {
    let esc = |r: &UnsafeReason| matches!(r, UnsafeReason::SymlinkEscape { .. });
    refused(&[sym("l", ".."), file("l/x", b"evil")], esc, |_| {});
    refused(&[dir("d/"), sym("d/l", "../.."), file("d/l/x", b"evil")], esc, |_| {});
    // The symlink comes from a lower layer rather than this archive.
    refused(&[file("lower/x", b"evil")], esc, |root| symlink("../..", root.join("lower")).unwrap());
    // A directory entries were just written into is replaced by an escaping symlink: the
    // next entry below it must not reuse the directory opened for the earlier ones.
    refused(
        &[dir("d/"), dir("d/e/"), file("d/e/f", b"ok"), sym("d", "../.."), file("d/e/x", b"evil")],
        esc,
        |_| {},
    );
}

#[test]
fn nested_symlink_chains_are_followed_inside_and_refused_when_escaping() {
    let esc = |r: &UnsafeReason| matches!(r, UnsafeReason::SymlinkEscape { .. });
    refused(
        &[
            sym("s1", "s2"),
            sym("s2", "d/s3"),
            dir("d/"),
            sym("d/s3", "../../sentinel"),
            file("s1/x", b"e"),
        ],
        esc,
        |_| {},
    );
    refused(
        &[sym("loop1", "loop2"), sym("loop2", "loop1"), file("loop1/x", b"e")],
        |r| *r == UnsafeReason::SymlinkLoop,
        |_| {},
    );
    // A chain that stays inside is fine.
    let j = jail();
    let l = raw_tar(&[sym("s1", "s2"), sym("s2", "d/./e/.."), dir("d/"), file("s1/x", b"in")]);
    apply(&l[..], &j.root, &ApplyOptions::default()).unwrap();
    assert_eq!(fs::read(j.root.join("d/x")).unwrap(), b"in");
}

#[test]
fn absolute_symlink_is_rooted_at_the_target_dir() {
    // `l -> /` then `l/etc/passwd`: resolved as if the target dir were `/`, so it lands in
    // root/etc/passwd and never in the host's /etc.
    let j = jail();
    let passwd = fs::read("/etc/passwd").ok();
    let abs_sentinel = j.top.join("sentinel").display().to_string();
    let l = raw_tar(&[
        sym("l", "/"),
        file("l/etc/passwd", b"evil"),
        sym("s", &abs_sentinel),
        file("s/keep", b"evil"),
    ]);
    apply(&l[..], &j.root, &ApplyOptions::default()).unwrap();
    assert_eq!(fs::read(j.root.join("etc/passwd")).unwrap(), b"evil");
    assert_eq!(fs::read("/etc/passwd").ok(), passwd);
    assert_eq!(fs::read(j.top.join("sentinel/keep")).unwrap(), b"keep");
    assert_eq!(
        fs::read(j.root.join(abs_sentinel.trim_start_matches('/')).join("keep")).unwrap(),
        b"evil"
    );
}

#[test]
fn hardlinks_outside_are_refused() {
    let out = |r: &UnsafeReason| matches!(r, UnsafeReason::HardlinkOutside { .. });
    refused(&[hardlink("h", "../sentinel/keep")], out, |_| {});
    refused(&[hardlink("h", "/etc/passwd")], out, |_| {});
    refused(&[hardlink("h", "missing")], out, |_| {});
    // Through a symlink that escapes.
    refused(
        &[sym("l", "../../../sentinel"), hardlink("h", "l/keep")],
        |r| matches!(r, UnsafeReason::SymlinkEscape { .. }),
        |_| {},
    );
}

#[test]
fn device_nodes_are_refused_when_unprivileged() {
    let j = jail();
    let dev = Raw { name: b"null", typeflag: b'3', link: b"", data: b"", mode: 0o666, dev: (1, 3) };
    let err = apply(&raw_tar(&[dev])[..], &j.root, &ApplyOptions::unprivileged()).unwrap_err();
    assert!(matches!(err, LayerError::Unsafe { reason: UnsafeReason::DeviceNotPrivileged, .. }));
    assert!(err.to_string().contains("null"), "{err}");
    assert!(!j.root.join("null").exists());
}

#[test]
fn malformed_whiteouts_are_refused() {
    refused(&[file(".wh..", b"")], |r| *r == UnsafeReason::BadWhiteout, |_| {});
    refused(&[file("d/.wh.", b"")], |r| *r == UnsafeReason::BadWhiteout, |_| {});
}

#[test]
fn file_replacing_a_symlink_does_not_write_through_it() {
    // A lower symlink `f -> /sentinel/keep` replaced by a regular file: the link is removed,
    // its target untouched.
    let j = jail();
    symlink(j.top.join("sentinel/keep"), j.root.join("f")).unwrap();
    apply(&raw_tar(&[file("f", b"new")])[..], &j.root, &ApplyOptions::default()).unwrap();
    assert_eq!(fs::read(j.top.join("sentinel/keep")).unwrap(), b"keep");
    assert_eq!(fs::read(j.root.join("f")).unwrap(), b"new");
}

#[test]
fn truncated_and_corrupt_archives_are_errors() {
    let j = jail();
    let mut t = raw_tar(&[file("f", &[7u8; 3000])]);
    t.truncate(1500);
    assert!(matches!(
        apply(&t[..], &j.root, &ApplyOptions::default()),
        Err(LayerError::ReadArchive { .. })
    ));
    let mut t = raw_tar(&[file("g", b"x")]);
    t[0] = b'h'; // checksum no longer matches
    assert!(matches!(
        apply(&t[..], &j.root, &ApplyOptions::default()),
        Err(LayerError::ReadArchive { .. })
    ));
}

#[test]
fn unprivileged_apply_skips_owners_and_privileged_xattrs_but_keeps_modes() {
    let j = jail();
    let mut w = Vec::new();
    let src = j.top.join("src");
    common::write_file(&src.join("f"), b"x");
    std::os::unix::fs::lchown(src.join("f"), Some(4242), Some(4242)).ok();
    fs::set_permissions(src.join("f"), std::os::unix::fs::PermissionsExt::from_mode(0o4711))
        .unwrap();
    xattr::set(src.join("f"), "user.ok", b"1").unwrap();
    if common::is_root() {
        xattr::set(src.join("f"), "trusted.no", b"1").unwrap();
    }
    strata_layer::LayerWriter::new(strata_layer::Compression::None)
        .write_dir(&src, &mut w)
        .unwrap();
    let r = apply(&w[..], &j.root, &ApplyOptions::unprivileged()).unwrap();
    let md = fs::metadata(j.root.join("f")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(md.mode() & 0o7777, 0o4711);
    assert_eq!(md.uid(), rustix::process::geteuid().as_raw());
    assert_eq!(xattr::get(j.root.join("f"), "user.ok").unwrap().as_deref(), Some(&b"1"[..]));
    if common::is_root() {
        assert_eq!(r.ownership_skipped, 1);
        assert_eq!(r.xattrs_skipped, 1);
        assert!(xattr::get(j.root.join("f"), "trusted.no").unwrap().is_none());
    }
}

/// `export dir:` writes onto a host: device nodes are skipped (and counted) and setuid or
/// setgid bits cleared when asked, whoever runs it.
#[test]
fn a_host_tree_gets_no_devices_and_no_setid_bits_when_asked() {
    use std::os::unix::fs::PermissionsExt;
    let tar = raw_tar(&[
        dir("dev"),
        Raw { name: b"dev/sda", typeflag: b'4', link: b"", data: b"", mode: 0o666, dev: (8, 0) },
        Raw { name: b"dev/mem", typeflag: b'3', link: b"", data: b"", mode: 0o666, dev: (1, 1) },
        Raw { mode: 0o6755, ..file("su", b"x") },
    ]);
    let out = tempfile::tempdir().unwrap();
    let mut opts = ApplyOptions::unprivileged();
    opts.skip_devices = true;
    opts.strip_setid = true;
    let report = apply(&tar[..], out.path(), &opts).unwrap();
    assert_eq!(report.devices_skipped, 2);
    assert!(fs::symlink_metadata(out.path().join("dev/sda")).is_err());
    assert!(fs::symlink_metadata(out.path().join("dev/mem")).is_err());
    let mode = fs::metadata(out.path().join("su")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o755);
}
