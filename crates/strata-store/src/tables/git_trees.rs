//! Git trees: a git build context checked out once per commit.
//!
//! `strata build https://host/repo.git#main` resolves the ref with one `git ls-remote` and
//! then needs the tree of that commit. The checkout is kept here under a key the caller
//! derives from the commit (and whatever else changes the tree, such as keeping `.git`), so a
//! second build of the same commit reads it without cloning again, and, since it is the same
//! directory with the same inodes, the context's stat-hash cache knows every file. A tree is
//! filled in a work directory and renamed into place, so a reader never sees half of one and
//! two builds racing on one commit both succeed. Trees are a cache of what the remote holds:
//! gc leaves them and they are removed by hand (as cache mounts are).

use std::fs;
use std::path::{Path, PathBuf};

use strata_types::Digest;

use crate::error::StoreError;
use crate::store::Store;

/// The store's git tree table (see the module docs); from [`Store::git_trees`].
#[derive(Debug, Clone, Copy)]
pub struct GitTrees<'a> {
    store: &'a Store,
}

impl Store {
    /// The git tree table.
    pub fn git_trees(&self) -> GitTrees<'_> {
        GitTrees { store: self }
    }
}

impl GitTrees<'_> {
    fn dir(&self) -> PathBuf {
        self.store.meta_dir().join("git-trees-v1")
    }

    /// The tree kept under `key`, if there is one.
    pub fn get(&self, key: &Digest) -> Option<PathBuf> {
        let dir = self.dir().join(key.hex());
        dir.is_dir().then_some(dir)
    }

    /// The tree kept under `key`, made first when missing: `fill` is given an empty
    /// directory on the store's file system to check out into; once it succeeds the
    /// directory is kept under `key`. A failing `fill` leaves nothing behind.
    pub fn ensure<E: From<StoreError>>(
        &self,
        key: &Digest,
        fill: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<PathBuf, E> {
        if let Some(dir) = self.get(key) {
            return Ok(dir);
        }
        let work = self.store.work_dir("git-tree-")?;
        fill(work.path())?;
        let (kept, _lock) = work.keep();
        let parent = self.dir();
        fs::create_dir_all(&parent).map_err(StoreError::io(&parent))?;
        let dir = parent.join(key.hex());
        if let Err(e) = fs::rename(&kept, &dir) {
            // Another build got there first: its tree is the same commit's.
            let _ = crate::gc::remove_tree(&kept);
            if !dir.is_dir() {
                return Err(StoreError::Io { path: dir, source: e }.into());
            }
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_filled_once_and_found_after() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::init(t.path().join("s")).unwrap();
        let key = Digest::of_bytes(b"commit");
        assert!(store.git_trees().get(&key).is_none());
        let dir = store
            .git_trees()
            .ensure(&key, |d| fs::write(d.join("f"), "x").map_err(StoreError::io(d)))
            .unwrap();
        assert_eq!(fs::read_to_string(dir.join("f")).unwrap(), "x");
        let again =
            store.git_trees().ensure::<StoreError>(&key, |_| panic!("filled twice")).unwrap();
        assert_eq!(again, dir);
        // A failed fill keeps nothing.
        let other = Digest::of_bytes(b"other");
        let failed = store.git_trees().ensure(&other, |d| {
            Err(StoreError::Io { path: d.to_path_buf(), source: std::io::Error::other("no") })
        });
        assert!(failed.is_err() && store.git_trees().get(&other).is_none());
    }
}
