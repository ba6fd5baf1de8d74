//! Work directories: scratch space on the store's file system, safe from a concurrent gc.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::StoreError;
use crate::store::Store;

/// A temp directory under the store's `strata/v1/tmp/`, on the store's file system (so what
/// is made in it can be renamed into the store), `flock`ed for as long as it lives so that a
/// concurrent [`Store::gc`] leaves it alone; removed on drop. A killed process's work
/// directories are unlocked and removed by the next writer's lease or gc.
#[derive(Debug)]
pub struct WorkDir {
    // Field order matters: the lock is released after the directory is removed.
    dir: tempfile::TempDir,
    _lock: fs::File,
}

impl WorkDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives the directory up: it is no longer removed on drop (the store then owns it, e.g.
    /// after renaming it into place). The lock comes along, to be dropped once it is.
    pub(crate) fn keep(self) -> (PathBuf, fs::File) {
        (self.dir.keep(), self._lock)
    }
}

impl Store {
    /// A new work directory named `<prefix>XXXX` (see [`WorkDir`]).
    pub fn work_dir(&self, prefix: &str) -> Result<WorkDir, StoreError> {
        let root = self.tmp_dir();
        fs::create_dir_all(&root).map_err(StoreError::io(&root))?;
        let (dir, lock) = crate::blob::locked_temp_dir(&root, prefix)?;
        Ok(WorkDir { dir, _lock: lock })
    }
}
