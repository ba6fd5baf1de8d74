//! Asking a layer's unpacked snapshot, instead of its tar, whether it has anything at a path.
//!
//! Builds unpack every layer they stack on into the store's snapshot table in overlayfs's
//! format (strata-layer's overlay model), made by applying the verified blob and renamed
//! into place whole. When such a snapshot exists, a few `lstat`s tell whether the layer has an entry at a
//! path, hides it, or says nothing about it, which is all a top-down lookup needs to skip a
//! layer; the tar is read only when the layer does have an entry there (the entry's exact
//! metadata and content digest come from the tar, never from the snapshot). The opaque marker
//! is a `trusted.*` xattr that only root can read, so snapshots are used only by root.

use std::path::PathBuf;

use crate::read::ImageLayers;

pub(crate) use strata_layer::overlay::{probe, Probe};

/// The snapshot directory of layer `i`, when there is one and this process may trust what
/// it reads there.
pub(crate) fn snapshot_of(img: &ImageLayers<'_>, i: usize) -> Option<PathBuf> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    img.store.snapshots().get(&img.diff_ids[i])
}
