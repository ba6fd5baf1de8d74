//! Removing mountpoint stubs from the rootfs after a step.
//!
//! A mountpoint the image lacks must be created before mounting on it, and in an overlay
//! that creation lands in the upperdir (copying up the parent directory too). After the step
//! such a stub is removed when it is still what we created (an empty directory or an empty
//! file). A parent directory copied up only to hold a stub is the caller's to drop: telling
//! it from one the command changed needs the lower layers' view, which is strata-layer's
//! overlay model (`overlay::drop_copy_ups`), not this crate's.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

/// The rootfs whose stubs are to be removed.
pub(crate) enum StubRoot {
    /// An overlay: stubs are in `upper`.
    Overlay { upper: PathBuf },
    /// A plain directory.
    Dir(PathBuf),
}

fn rel(container_path: &str) -> &str {
    container_path.trim_start_matches('/')
}

/// The directory `rel` below `root`, opened without following any symlink or leaving
/// `root`'s mount: the step may have replaced a stub's parent with a symlink to anywhere
/// (BuildKit's CVE-2024-23652 was a cleaner that followed one), and nothing here may act on
/// what such a link names.
pub(crate) fn open_dir_beneath(root: &Path, rel: &str) -> Option<OwnedFd> {
    let dir =
        rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .ok()?;
    let rel = rel.trim_matches('/');
    if rel.is_empty() {
        return Some(dir);
    }
    crate::sys::openat2_retrying(
        &dir,
        rel,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
    )
    .ok()
}

/// The parent directory of `rel` below `root` (see [`open_dir_beneath`]) and the last name.
fn parent_and_name<'a>(root: &Path, rel: &'a str) -> Option<(OwnedFd, &'a OsStr)> {
    let p = Path::new(rel.trim_matches('/'));
    let name = p.file_name()?;
    let parent = p.parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    Some((open_dir_beneath(root, &parent)?, name))
}

fn lstat_at(dir: &OwnedFd, name: &OsStr) -> Option<Stat> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()
}

/// Removes the `stubs` (container paths, parents before children) that are still empty.
/// Best effort: whatever cannot be removed stays.
pub(crate) fn remove_stubs(root: &StubRoot, stubs: &[String]) {
    let base = match root {
        StubRoot::Overlay { upper, .. } => upper,
        StubRoot::Dir(d) => d,
    };
    for stub in stubs.iter().rev() {
        let Some((dir, name)) = parent_and_name(base, rel(stub)) else { continue };
        match lstat_at(&dir, name) {
            Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR).is_ok()
            }
            Some(st)
                if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                    && st.st_size == 0 =>
            {
                rustix::fs::unlinkat(&dir, name, AtFlags::empty()).is_ok()
            }
            _ => false,
        };
    }
}

/// Modification times of the directories that may receive stubs (the parents of
/// `candidates`, container paths), taken before a step on a plain-directory rootfs.
pub(crate) struct DirTimes(Vec<(String, rustix::fs::Timespec)>);

impl DirTimes {
    /// Records the mtimes of the existing, non-symlink parent directories of `candidates`.
    pub(crate) fn record(dir: &Path, candidates: &[String]) -> DirTimes {
        let mut out: Vec<(String, rustix::fs::Timespec)> = Vec::new();
        for c in candidates {
            let parent = parent_of(c).unwrap_or_else(|| "/".to_string());
            if out.iter().any(|(p, _)| *p == parent) {
                continue;
            }
            if let Some(fd) = open_dir_beneath(dir, rel(&parent)) {
                if let Ok(st) = rustix::fs::fstat(&fd) {
                    let ts = rustix::fs::Timespec {
                        tv_sec: st.st_mtime as _,
                        tv_nsec: st.st_mtime_nsec as _,
                    };
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
                    && parent_and_name(dir, rel(s)).is_some_and(|(d, n)| lstat_at(&d, n).is_none())
            });
            if !touched {
                continue;
            }
            let Some(fd) = open_dir_beneath(dir, rel(parent)) else { continue };
            let times = rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
                last_modification: *ts,
            };
            let _ = rustix::fs::utimensat(&fd, "", &times, AtFlags::EMPTY_PATH);
        }
    }
}

fn parent_of(container_path: &str) -> Option<String> {
    let parent = Path::new(container_path).parent()?;
    (parent != Path::new("/")).then(|| parent.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;

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
}
