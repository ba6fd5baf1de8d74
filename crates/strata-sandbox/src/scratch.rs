//! Scratch directories: `strata-sandbox-XXXX` in the system temp dir, one per run, holding
//! the root mountpoint, bind copies and the generated `/etc/hosts` and `resolv.conf`.
//!
//! A run removes its own on the way out; a process killed with SIGKILL cannot. So each one
//! carries an exclusive `flock` (on the directory itself) for as long as its run lives, and
//! [`sweep_scratch_dirs`] removes every one nobody holds: the leftovers of dead processes,
//! never a live run's. The lock is taken right after the directory is made; a sweep that
//! got in between takes the lock itself and removes the directory, which the creator then
//! sees (the path no longer names its directory) and makes another.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::error::SandboxError;

/// The name every scratch directory starts with.
const PREFIX: &str = "strata-sandbox-";

/// A run's scratch directory, locked while it lives and removed on drop.
#[derive(Debug)]
pub(crate) struct Scratch {
    // Field order matters: the directory is removed before the lock is released.
    dir: tempfile::TempDir,
    _lock: File,
}

impl Scratch {
    /// Makes a new, locked scratch directory in the system temp dir.
    pub(crate) fn new() -> Result<Scratch, SandboxError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SandboxError::Io { action: "creating a temp dir in", path, source }
        };
        let tmp = std::env::temp_dir();
        loop {
            let dir = tempfile::Builder::new().prefix(PREFIX).tempdir().map_err(io(&tmp))?;
            let lock = File::open(dir.path()).map_err(io(dir.path()))?;
            flock(&lock, FlockOperation::LockExclusive).map_err(|e| SandboxError::Io {
                action: "locking",
                path: dir.path().to_path_buf(),
                source: e.into(),
            })?;
            if same_file(dir.path(), &lock) {
                return Ok(Scratch { dir, _lock: lock });
            }
        }
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn same_file(path: &Path, file: &File) -> bool {
    match (fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes the scratch directories of dead runs (`strata-sandbox-*` in the system temp dir,
/// owned by this user, that nobody holds a lock on) and returns the ones removed. Best
/// effort: a directory that cannot be removed (another user's, or busy) is left.
pub fn sweep_scratch_dirs() -> Vec<PathBuf> {
    let tmp = std::env::temp_dir();
    let Ok(entries) = fs::read_dir(&tmp) else { return Vec::new() };
    let euid = rustix::process::geteuid().as_raw();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if !meta.is_dir() || meta.uid() != euid {
            continue;
        }
        let Ok(lock) = File::open(&path) else { continue };
        if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue;
        }
        if same_file(&path, &lock) && remove_tree(&path) {
            removed.push(path);
        }
    }
    removed
}

/// `remove_dir_all`, first making directories writable (a RUN may have left read-only ones).
fn remove_tree(path: &Path) -> bool {
    if fs::remove_dir_all(path).is_ok() {
        return true;
    }
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        if fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
            let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o700));
            if let Ok(entries) = fs::read_dir(&d) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    fs::remove_dir_all(path).is_ok()
}
