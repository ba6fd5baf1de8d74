//! Root filesystems without copying: the snapshots of a chain and their merged view.
//!
//! Every layer of a chain is unpacked once into its snapshot (the store's snapshot table) in
//! overlayfs's own format (strata-layer's overlay model), so the snapshot dirs of a chain can
//! be handed to an overlay mount as lowerdirs as they are (DESIGN.md decision 4), and a
//! [`MergedView`] over them answers "what is at this path in the image", which is all COPY,
//! ADD, WORKDIR and `--chown` need from the parent image: nothing is copied to look.

use std::fs;
use std::path::{Path, PathBuf};

use strata_layer::overlay::{self, MergedView};
use strata_layer::{apply_blob, ApplyOptions, Changeset};
use strata_store::Store;

use crate::error::{BuildError, Result};
use crate::image::LayerRef;

/// Makes sure the snapshot of `layer` exists and returns its directory: unpacked from its
/// blob (checked against its diffID), with OCI whiteouts turned into overlay ones.
pub(crate) fn ensure_snapshot(store: &Store, layer: &LayerRef) -> Result<PathBuf> {
    store.snapshots().ensure(&layer.diff_id, |dir| {
        let digest = layer.digest()?;
        let opts = ApplyOptions::default().overlay_whiteouts();
        let report = apply_blob(store, &digest, dir, &opts).map_err(|e| {
            // A corrupt base blob is reported as such, whatever the tar reader or the
            // decompressor made of its bytes (nothing was published: `dir` is dropped).
            match layer.image.as_deref().map(|image| store.verify_blob_of(&digest, image)) {
                Some(Err(corrupt @ strata_store::StoreError::CorruptBlob { .. })) => corrupt.into(),
                _ => BuildError::from(e),
            }
        })?;
        if let Some(found) = report.diff_id {
            if found != layer.diff_id {
                return Err(BuildError::DiffIdMismatch {
                    layer: digest,
                    expected: layer.diff_id,
                    found,
                });
            }
        }
        Ok(())
    })
}

/// The merged view of a chain, its snapshots made first where missing.
pub(crate) fn view_of_chain(store: &Store, chain: &[LayerRef]) -> Result<MergedView> {
    let dirs = chain.iter().map(|l| ensure_snapshot(store, l)).collect::<Result<Vec<_>>>()?;
    Ok(MergedView::new(dirs))
}

/// Makes `tree` the snapshot of `layer` by renaming it into place, when `tree` holds exactly
/// that layer's files: a COPY/ADD staging tree, which has no whiteouts, whose mtimes
/// [`overlay::clamp_mtimes`] has clamped the way the layer writer clamps them (whole seconds, at most
/// the build's epoch), so the result cannot be told from a snapshot unpacked from the blob,
/// whichever a later step sees. This saves unpacking, i.e. writing the layer's bytes a second
/// time. `tree` must be inside a work directory of the store. An existing snapshot wins;
/// `tree` is then left alone.
pub(crate) fn adopt_snapshot(store: &Store, layer: &LayerRef, tree: &Path) -> Result<PathBuf> {
    if let Some(dir) = store.snapshots().get(&layer.diff_id) {
        return Ok(dir);
    }
    Ok(store.snapshots().adopt(&layer.diff_id, tree)?)
}

/// Makes `upper`, the overlay upperdir a RUN's `changeset` (and layer) was read from, the
/// snapshot of `layer` by renaming it into place, when strata-layer's overlay model can make
/// it exactly what unpacking the blob would give ([`overlay::snapshot_from_upper`]): a RUN's
/// result is then written once, not a second time from the blob. `None` when it cannot (the
/// caller unpacks); an error while converting is such a case too, since the upper is thrown
/// away with its work directory and the blob is the truth. An existing snapshot wins.
pub(crate) fn adopt_upper(
    store: &Store,
    layer: &LayerRef,
    upper: &Path,
    changeset: &Changeset,
    epoch: i64,
) -> Result<Option<PathBuf>> {
    if let Some(dir) = store.snapshots().get(&layer.diff_id) {
        return Ok(Some(dir));
    }
    match overlay::snapshot_from_upper(upper, changeset, epoch) {
        Ok(true) => Ok(Some(store.snapshots().adopt(&layer.diff_id, upper)?)),
        Ok(false) | Err(_) => Ok(None),
    }
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| BuildError::io("chmod", path, e))
}

/// Resolves `user[:group]` to numeric ids with the image's `/etc/passwd` and `/etc/group`.
/// A name without a group takes the user's primary group (as buildah does); a numeric uid
/// without a group uses the same number as gid (as Docker documents).
pub(crate) fn resolve_owner(view: &MergedView, spec: &str) -> Result<(u32, u32)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) => {
            let passwd = view.read(Path::new("etc/passwd")).unwrap_or_default();
            lookup(&passwd, user, 2, 3).ok_or_else(|| BuildError::UnknownUser {
                kind: "user",
                name: user.to_string(),
                file: "passwd",
            })?
        }
    };
    let gid = match group {
        None | Some("") => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let groups = view.read(Path::new("etc/group")).unwrap_or_default();
                lookup(&groups, g, 2, 2).map(|(gid, _)| gid).ok_or_else(|| {
                    BuildError::UnknownUser { kind: "group", name: g.to_string(), file: "group" }
                })?
            }
        },
    };
    Ok((uid, gid))
}

/// Finds `name` in a colon-separated database and returns fields `a` and `b` as numbers.
fn lookup(db: &[u8], name: &str, a: usize, b: usize) -> Option<(u32, u32)> {
    String::from_utf8_lossy(db).lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.first() == Some(&name) {
            Some((f.get(a)?.trim().parse().ok()?, f.get(b)?.trim().parse().ok()?))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_resolve_through_passwd_and_group() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("etc")).unwrap();
        fs::write(t.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nbob:x:1000:1001::/:\n")
            .unwrap();
        fs::write(t.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let view = MergedView::new(vec![t.path().to_path_buf()]);
        assert_eq!(resolve_owner(&view, "bob").unwrap(), (1000, 1001));
        assert_eq!(resolve_owner(&view, "bob:staff").unwrap(), (1000, 50));
        assert_eq!(resolve_owner(&view, "7").unwrap(), (7, 7));
        assert_eq!(resolve_owner(&view, "7:8").unwrap(), (7, 8));
        assert!(matches!(resolve_owner(&view, "eve"), Err(BuildError::UnknownUser { .. })));
    }
}
