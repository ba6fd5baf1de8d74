//! Squashing: the top layers of a chain made into one changeset.
//!
//! `docker build --squash` and buildah's squash turn the layers a build added into one layer
//! (or, squashing all, the whole image into one). The squashed layer must hold exactly what the
//! merged tree of those layers differs by from the layers kept below it, in the OCI changeset
//! format (`layer.md`): files as they end up, and a `.wh.` whiteout for every lower file a
//! squashed layer deleted and no later one put back.
//!
//! [`squash`] applies the squashed layers in order onto an empty directory with the ordinary
//! [`apply`](crate::apply) rules (a later layer replaces, a whiteout removes what an earlier
//! squashed layer made, an opaque marker clears what earlier squashed layers put in its
//! directory), so the directory ends up holding the upper half of the merged tree: everything
//! the squashed layers leave behind, nothing of the layers below. What the directory cannot
//! hold is what the squashed layers took away from below; [`ApplyReport`](crate::ApplyReport)
//! names every whiteout and opaque marker, and the [`MergedView`] of the kept layers says which
//! of those named something that exists there. The cost is the squashed layers' bytes plus
//! a look-up per deletion, never a scan of the layers below.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use strata_store::Store;
use strata_types::Digest;

use crate::apply::{apply_blob, ApplyOptions};
use crate::changeset::{Change, Changeset};
use crate::error::{LayerError, Result};
use crate::overlay::{normalize, MergedView};
use crate::scan::scan;

/// Applies the layer blobs `layers` (bottom first) from `store` onto `tree`, an empty
/// directory, and returns the one changeset equivalent to all of them over `lower`, the merged
/// view of the layers kept below (empty when the whole image is squashed). Write the result
/// with [`LayerWriter::write`](crate::LayerWriter::write) and `tree` as the source.
///
/// Deletions become explicit whiteouts, never opaque directories (the build's RUN layers
/// record deletions the same way): a lower path a squashed layer deleted and none put back
/// gets `.wh.NAME`; a directory deleted (or made opaque) and created again gets a whiteout for
/// each lower child it no longer has. A deleted path that `lower` does not have gives nothing.
pub fn squash(
    store: &Store,
    layers: &[Digest],
    lower: &MergedView,
    tree: &Path,
    opts: &ApplyOptions,
) -> Result<Changeset> {
    let mut deleted: BTreeSet<PathBuf> = BTreeSet::new();
    let mut opaque: BTreeSet<PathBuf> = BTreeSet::new();
    for digest in layers {
        let report = apply_blob(store, digest, tree, opts)?;
        deleted.extend(report.whiteout_paths.iter().map(|p| normalize(p)));
        opaque.extend(report.opaque_paths.iter().map(|p| normalize(p)));
    }
    let mut changes: BTreeMap<PathBuf, Change> = scan(tree)?
        .into_entries()
        .into_iter()
        .map(|e| (e.path.clone(), Change::Added(e)))
        .collect();
    for path in &deleted {
        match fs::symlink_metadata(tree.join(path)) {
            // Deleted, then made again: a directory hides what it had below.
            Ok(md) if md.is_dir() => hide_lower(tree, lower, path, &mut changes)?,
            // Replaced by something else: the entry replaces the lower one.
            Ok(_) => {}
            Err(_) if covered(tree, &deleted, path) => {}
            Err(_) => {
                if lower.find(path).is_some() {
                    make_parents(tree, lower, path)?;
                    changes.insert(path.clone(), Change::Deleted(path.clone()));
                }
            }
        }
    }
    for dir in &opaque {
        if fs::symlink_metadata(tree.join(dir)).is_ok_and(|m| m.is_dir()) {
            hide_lower(tree, lower, dir, &mut changes)?;
        }
    }
    Ok(Changeset::from_changes(changes.into_values().collect()))
}

/// Whether a proper ancestor of `path` hides it already: deleted itself, or replaced in
/// `tree` by something that is not a directory.
fn covered(tree: &Path, deleted: &BTreeSet<PathBuf>, path: &Path) -> bool {
    path.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()).any(|a| {
        match fs::symlink_metadata(tree.join(a)) {
            Ok(md) => !md.is_dir(),
            Err(_) => deleted.contains(a),
        }
    })
}

/// Whiteouts for every child `lower` has below `dir` that `tree` no longer has, down through
/// directories both have.
fn hide_lower(
    tree: &Path,
    lower: &MergedView,
    dir: &Path,
    changes: &mut BTreeMap<PathBuf, Change>,
) -> Result<()> {
    if !lower.metadata(dir).is_some_and(|m| m.is_dir()) {
        return Ok(());
    }
    for (name, real) in lower.list(dir)? {
        let child = dir.join(name);
        match fs::symlink_metadata(tree.join(&child)) {
            Err(_) => {
                changes.insert(child.clone(), Change::Deleted(child));
            }
            Ok(md) if md.is_dir() && fs::symlink_metadata(&real).is_ok_and(|m| m.is_dir()) => {
                hide_lower(tree, lower, &child, changes)?
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Creates the missing parent directories of `path` in `tree` with the metadata `lower` gives
/// them (mode, owner, mtime), so a whiteout's directory entry says what the image has.
fn make_parents(tree: &Path, lower: &MergedView, path: &Path) -> Result<()> {
    let mut missing: Vec<&Path> = path
        .ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .take_while(|a| fs::symlink_metadata(tree.join(a)).is_err())
        .collect();
    missing.reverse();
    for rel in missing {
        let abs = tree.join(rel);
        let md = lower.metadata(rel).ok_or_else(|| {
            LayerError::io("lstat", &abs, std::io::Error::from(std::io::ErrorKind::NotFound))
        })?;
        fs::create_dir(&abs).map_err(|e| LayerError::io("mkdir", &abs, e))?;
        std::os::unix::fs::lchown(&abs, Some(md.uid()), Some(md.gid()))
            .map_err(|e| LayerError::io("chown", &abs, e))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&abs, fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(|e| LayerError::io("chmod", &abs, e))?;
        let t = rustix::fs::Timespec { tv_sec: md.mtime(), tv_nsec: md.mtime_nsec() };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &abs,
            &rustix::fs::Timestamps { last_access: t, last_modification: t },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| LayerError::io("utimensat", &abs, e.into()))?;
    }
    Ok(())
}
