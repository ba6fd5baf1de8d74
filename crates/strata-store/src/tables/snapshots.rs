//! Snapshots: a layer unpacked into a directory, once, in overlayfs's own format.
//!
//! A snapshot is what an overlay mount takes as a lowerdir, and what a reader looks into
//! without reading the layer's tar (strata-layer's overlay model says what is inside). The
//! store decides where it lives and that a reader never sees half of one: a snapshot is
//! filled in a work directory and renamed into place, and two writers racing on the same
//! layer both succeed (the first rename wins, the other's copy is dropped). [`Store::gc`]
//! removes a snapshot once its layer is no longer reachable from a root.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use strata_types::Digest;

use crate::error::StoreError;
use crate::store::Store;

/// The store's snapshot table (see the module docs); from [`Store::snapshots`].
#[derive(Debug, Clone, Copy)]
pub struct Snapshots<'a> {
    store: &'a Store,
}

impl Store {
    /// The snapshot table.
    pub fn snapshots(&self) -> Snapshots<'_> {
        Snapshots { store: self }
    }
}

impl Snapshots<'_> {
    fn dir_of(&self, layer: &Digest) -> PathBuf {
        self.store.snapshots_dir().join(layer.hex())
    }

    /// The directory holding the snapshot of `layer` (its diffID), if there is one. A handle
    /// holding a lease pins it first, so gc leaves it while the handle lives.
    pub fn get(&self, layer: &Digest) -> Option<PathBuf> {
        let dir = self.dir_of(layer);
        self.store.pinned_lookup(&[*layer], || dir.is_dir().then_some(dir))
    }

    /// The snapshot of `layer`, made first when missing: `fill` is given an empty directory
    /// on the store's file system to unpack into; once it succeeds the directory becomes the
    /// snapshot (mode 0755). A failing `fill` leaves nothing behind. A handle holding a lease
    /// pins the snapshot, as [`Snapshots::get`] does.
    pub fn ensure<E: From<StoreError>>(
        &self,
        layer: &Digest,
        fill: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<PathBuf, E> {
        if let Some(dir) = self.get(layer) {
            return Ok(dir);
        }
        let work = self.store.work_dir("snapshot-")?;
        fill(work.path())?;
        set_mode_755(work.path())?;
        let (kept, _lock) = work.keep();
        Ok(self.publish(layer, &kept, true)?)
    }

    /// Makes `tree`, a directory inside one of this store's [`crate::WorkDir`]s that holds
    /// exactly `layer`'s files, the snapshot of `layer` by renaming it into place (a COPY's
    /// staging tree: unpacking its layer again would write the same bytes twice). An existing
    /// snapshot wins and `tree` is left where it is.
    pub fn adopt(&self, layer: &Digest, tree: &Path) -> Result<PathBuf, StoreError> {
        if !tree.starts_with(self.store.tmp_dir()) {
            return Err(StoreError::Io {
                path: tree.to_path_buf(),
                source: std::io::Error::other("not inside one of the store's work directories"),
            });
        }
        if let Some(dir) = self.get(layer) {
            return Ok(dir);
        }
        set_mode_755(tree)?;
        self.publish(layer, tree, false)
    }

    /// Renames `tree` into place; when another writer got there first, `tree` is removed
    /// (`discard`) or left.
    fn publish(&self, layer: &Digest, tree: &Path, discard: bool) -> Result<PathBuf, StoreError> {
        let dir = self.dir_of(layer);
        let parent = self.store.snapshots_dir();
        fs::create_dir_all(&parent).map_err(StoreError::io(&parent))?;
        self.store.with_pins(&[*layer], || {
            if let Err(e) = fs::rename(tree, &dir) {
                if discard {
                    let _ = crate::gc::remove_tree(tree);
                }
                if !dir.is_dir() {
                    return Err(StoreError::Io { path: dir, source: e });
                }
            }
            Ok(dir)
        })
    }
}

fn set_mode_755(dir: &Path) -> Result<(), StoreError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(StoreError::io(dir))
}
