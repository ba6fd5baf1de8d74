//! Layer apply (`strata_layer::apply`) onto a fresh directory, asserting nothing escapes it.
//!
//! Input: one options byte, then the layer (plain tar; gzip and zstd are detected as in
//! production). Bits of the options byte pick `privileged`, `overlay_whiteouts`, an `owner`,
//! and (8) whether every header-shaped block of a plain tar gets a valid checksum first, so
//! mutations reach the fields behind the checksum test. Each run applies into `base/outer/inner`, where `base` also holds a canary file
//! and `outer` nothing but `inner`; afterwards `outer` must still hold only `inner`, `base` only
//! `outer` and the canary, and the metadata (mode, owner, size, link count, mtime, ctime) of
//! `base`, the canary and `outer` must be unchanged: no write, link, chmod or utime reached
//! a path outside the target, whatever the archive says (`..`, absolute names, symlinks and
//! hardlinks pointing out, whiteouts of `..`).
#![no_main]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use strata_layer::{apply, ApplyOptions};

#[path = "tar_checksums.rs"]
mod tar_checksums;

/// Metadata that any touch changes.
fn stamp(p: &Path) -> (u32, u32, u32, u64, u64, i64, i64, i64, i64) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (
        m.mode(),
        m.uid(),
        m.gid(),
        m.size(),
        m.nlink(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `base`, kept for the whole run (a `TempDir` would be dropped at exit anyway).
fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("strata-fuzz-apply-").tempdir().expect("tempdir");
        let base = dir.keep();
        fs::write(base.join("canary"), b"outside the layer's root").expect("canary");
        base
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, layer)) = data.split_first() else { return };
    let base = base();
    let outer = base.join("outer");
    let inner = outer.join("inner");
    fs::create_dir_all(&inner).expect("mkdir");
    let before = (stamp(base), stamp(&base.join("canary")), stamp(&outer));

    let mut opts =
        if flags & 1 != 0 { ApplyOptions::default() } else { ApplyOptions::unprivileged() };
    if flags & 2 != 0 {
        opts = opts.overlay_whiteouts();
    }
    if flags & 4 != 0 {
        opts = opts.owner(1000, 1000);
    }
    let mut layer = layer.to_vec();
    let compressed =
        layer.starts_with(&[0x1f, 0x8b]) || layer.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    if flags & 8 != 0 && !compressed {
        tar_checksums::fix_checksums(&mut layer);
    }
    let _ = apply(&layer[..], &inner, &opts);

    assert_eq!(names(&outer), ["inner"], "apply wrote beside its target");
    assert_eq!(names(base), ["canary", "outer"], "apply wrote outside its target");
    let after = (stamp(base), stamp(&base.join("canary")), stamp(&outer));
    assert_eq!(before, after, "apply touched a path outside its target");
    assert_eq!(fs::read(base.join("canary")).expect("canary"), b"outside the layer's root");

    // The next run starts from nothing. The target may hold read-only dirs: open them up.
    for entry in dirs_under(&inner) {
        let _ = fs::set_permissions(&entry, std::os::unix::fs::PermissionsExt::from_mode(0o755));
    }
    fs::remove_dir_all(&outer).expect("cleaning up the target");
});

/// Directories under `dir` (itself included), without following symlinks.
fn dirs_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}
