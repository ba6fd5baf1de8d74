//! Removing mountpoint stubs from the rootfs after a step.
//!
//! A mountpoint the image lacks must be created before mounting on it, and in an overlay
//! that creation lands in the upperdir (copying up the parent directory too). After the step
//! such a stub is removed when it is still what we created (an empty directory or an empty
//! file). For an overlay, a parent directory that is now empty in the upperdir, carries no
//! opaque/redirect marker, and matches its lower copy in mode and owner was only copied up to
//! hold the stub, so it goes too: the upperdir then holds only the command's changes.
//! (A command that only touched such a directory's mtime loses that change; nothing else can.)

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The rootfs whose stubs are to be removed.
pub(crate) enum StubRoot {
    /// An overlay: stubs are in `upper`; `lowers_top_first` tell copied-up parents apart.
    Overlay { upper: PathBuf, lowers_top_first: Vec<PathBuf> },
    /// A plain directory.
    Dir(PathBuf),
}

fn rel(container_path: &str) -> &str {
    container_path.trim_start_matches('/')
}

/// Removes the `stubs` (container paths, parents before children) that are still empty.
/// Best effort: whatever cannot be removed stays.
pub(crate) fn remove_stubs(root: &StubRoot, stubs: &[String]) {
    let base = match root {
        StubRoot::Overlay { upper, .. } => upper,
        StubRoot::Dir(d) => d,
    };
    let mut parents: BTreeSet<String> = BTreeSet::new();
    for stub in stubs.iter().rev() {
        let p = base.join(rel(stub));
        let removed = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => fs::remove_dir(&p).is_ok(),
            Ok(m) if m.is_file() && m.len() == 0 => fs::remove_file(&p).is_ok(),
            _ => false,
        };
        if removed {
            if let Some(parent) = parent_of(stub) {
                parents.insert(parent);
            }
        }
    }
    let StubRoot::Overlay { upper, lowers_top_first } = root else {
        return;
    };
    // deepest first, so that a removed directory can free its own parent
    while let Some(dir) =
        parents.iter().max_by_key(|p| (p.matches('/').count(), (*p).clone())).cloned()
    {
        parents.remove(&dir);
        if stubs.contains(&dir) {
            continue;
        }
        if only_copied_up(upper, lowers_top_first, &dir)
            && fs::remove_dir(upper.join(rel(&dir))).is_ok()
        {
            if let Some(parent) = parent_of(&dir) {
                parents.insert(parent);
            }
        }
    }
}

/// Modification times of the directories that may receive stubs (the parents of
/// `candidates`, container paths), taken before a step on a plain-directory rootfs.
pub(crate) struct DirTimes(Vec<(String, libc::timespec)>);

impl DirTimes {
    /// Records the mtimes of the existing, non-symlink parent directories of `candidates`.
    pub(crate) fn record(dir: &Path, candidates: &[String]) -> DirTimes {
        let mut out: Vec<(String, libc::timespec)> = Vec::new();
        for c in candidates {
            let parent = parent_of(c).unwrap_or_else(|| "/".to_string());
            if out.iter().any(|(p, _)| *p == parent) {
                continue;
            }
            if let Ok(m) = fs::symlink_metadata(dir.join(rel(&parent))) {
                if m.is_dir() {
                    let ts = libc::timespec { tv_sec: m.mtime(), tv_nsec: m.mtime_nsec() };
                    out.push((parent, ts));
                }
            }
        }
        DirTimes(out)
    }

    /// Puts back the recorded mtime of each parent of a stub that is gone again, so that
    /// creating and removing the stub leaves no trace a copy-and-compare diff would see.
    pub(crate) fn restore(&self, dir: &Path, stubs: &[String]) {
        for (parent, ts) in &self.0 {
            let touched = stubs.iter().any(|s| {
                parent_of(s).unwrap_or_else(|| "/".to_string()) == *parent
                    && fs::symlink_metadata(dir.join(rel(s))).is_err()
            });
            if !touched {
                continue;
            }
            let Ok(p) = CString::new(dir.join(rel(parent)).as_os_str().as_bytes()) else {
                continue;
            };
            let times = [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }, *ts];
            // SAFETY: valid C string and a two-element timespec array.
            unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    p.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
        }
    }
}

fn parent_of(container_path: &str) -> Option<String> {
    let parent = Path::new(container_path).parent()?;
    (parent != Path::new("/")).then(|| parent.to_string_lossy().into_owned())
}

fn only_copied_up(upper: &Path, lowers_top_first: &[PathBuf], dir: &str) -> bool {
    let up = upper.join(rel(dir));
    let Ok(meta) = fs::symlink_metadata(&up) else { return false };
    if !meta.is_dir() || fs::read_dir(&up).map_or(true, |mut d| d.next().is_some()) {
        return false;
    }
    let markers = [
        "trusted.overlay.opaque",
        "user.overlay.opaque",
        "trusted.overlay.redirect",
        "user.overlay.redirect",
    ];
    if markers.iter().any(|name| has_xattr(&up, name)) {
        return false;
    }
    let lower = lowers_top_first.iter().find_map(|l| fs::symlink_metadata(l.join(rel(dir))).ok());
    match lower {
        Some(l) => {
            l.is_dir() && l.mode() == meta.mode() && l.uid() == meta.uid() && l.gid() == meta.gid()
        }
        None => false,
    }
}

fn has_xattr(path: &Path, name: &str) -> bool {
    let (Ok(p), Ok(n)) = (CString::new(path.as_os_str().as_bytes()), CString::new(name)) else {
        return false;
    };
    // SAFETY: valid C strings; a NULL buffer of size 0 only asks for the value's size.
    unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_stubs_removed_when_empty_kept_when_used() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("proc")).unwrap();
        fs::create_dir_all(r.join("cache/go")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(r.join("etc/hosts"), b"").unwrap();
        fs::create_dir_all(r.join("used")).unwrap();
        fs::write(r.join("used/file"), b"data").unwrap();
        let stubs: Vec<String> = ["/proc", "/cache", "/cache/go", "/etc/hosts", "/used"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        remove_stubs(&StubRoot::Dir(r.to_path_buf()), &stubs);
        assert!(!r.join("proc").exists());
        assert!(!r.join("cache").exists());
        assert!(!r.join("etc/hosts").exists());
        assert!(r.join("etc").is_dir(), "not a stub, stays");
        assert!(r.join("used/file").is_file());
    }

    #[test]
    fn parent_mtimes_are_restored_after_stub_removal() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir(r.join("etc")).unwrap();
        let old = libc::timespec { tv_sec: 1_000_000, tv_nsec: 123 };
        for d in [r.to_path_buf(), r.join("etc")] {
            let c = CString::new(d.as_os_str().as_bytes()).unwrap();
            let t = [old, old];
            assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) }, 0);
        }
        let stubs: Vec<String> = ["/proc", "/etc/hosts"].iter().map(|s| s.to_string()).collect();
        let times = DirTimes::record(r, &stubs);
        fs::create_dir(r.join("proc")).unwrap();
        fs::write(r.join("etc/hosts"), b"").unwrap();
        remove_stubs(&StubRoot::Dir(r.to_path_buf()), &stubs);
        times.restore(r, &stubs);
        for d in [r.to_path_buf(), r.join("etc")] {
            let m = fs::metadata(&d).unwrap();
            assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000, 123), "{}", d.display());
        }
    }

    #[test]
    fn copied_up_parent_removed_only_when_unchanged() {
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        fs::create_dir_all(lower.path().join("etc")).unwrap();
        fs::create_dir_all(lower.path().join("root")).unwrap();
        fs::create_dir_all(upper.path().join("etc")).unwrap();
        fs::write(upper.path().join("etc/resolv.conf"), b"").unwrap();
        fs::create_dir_all(upper.path().join("root/.cache")).unwrap();
        fs::write(upper.path().join("root/keep"), b"x").unwrap();
        // a dir present only in upper (the command created it) is not a copy-up
        fs::create_dir_all(upper.path().join("new/stub")).unwrap();
        let root = StubRoot::Overlay {
            upper: upper.path().to_path_buf(),
            lowers_top_first: vec![lower.path().to_path_buf()],
        };
        let stubs: Vec<String> = ["/etc/resolv.conf", "/root/.cache", "/new/stub"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        remove_stubs(&root, &stubs);
        assert!(!upper.path().join("etc").exists(), "copy-up for the stub only");
        assert!(upper.path().join("root/keep").exists());
        assert!(!upper.path().join("root/.cache").exists());
        assert!(upper.path().join("new").is_dir(), "no lower copy: the command's");
    }
}
