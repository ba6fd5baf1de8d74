//! Asking a layer's unpacked snapshot, instead of its tar, whether it has anything at a path.
//!
//! Builds unpack every layer they stack on into `<store>/strata/v1/snapshots/<diffID>` in
//! overlayfs's format (a deletion is a character device 0/0, an opaque directory carries
//! `trusted.overlay.opaque=y`), made by applying the verified blob and renamed into place
//! whole. When such a snapshot exists, a few `lstat`s tell whether the layer has an entry at a
//! path, hides it, or says nothing about it, which is all a top-down lookup needs to skip a
//! layer; the tar is read only when the layer does have an entry there (the entry's exact
//! metadata and content digest come from the tar, never from the snapshot). The opaque marker
//! is a `trusted.*` xattr that only root can read, so snapshots are used only by root.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::read::ImageLayers;
use crate::view::ancestors;

/// What a snapshot says about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// The layer neither has nor hides the path: look lower.
    Nothing,
    /// The layer hides it (whiteout, opaque or non-directory ancestor).
    Hidden,
    /// The layer has something there: read its tar.
    Something,
}

/// The snapshot directory of layer `i`, when there is one and this process may trust what
/// it reads there.
pub(crate) fn snapshot_of(img: &ImageLayers<'_>, i: usize) -> Option<PathBuf> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    img.store.snapshots().get(&img.diff_ids[i])
}

fn is_whiteout(md: &std::fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    let mut buf = [0u8; 4];
    matches!(rustix::fs::lgetxattr(path, "trusted.overlay.opaque", &mut buf[..]), Ok(1) if buf[0] == b'y')
}

/// Probes `path` in snapshot `root`.
pub(crate) fn probe(root: &Path, path: &[u8]) -> Probe {
    let at = |p: &[u8]| root.join(OsStr::from_bytes(p));
    let mut opaque_above = false;
    for a in ancestors(path) {
        let full = at(a);
        match std::fs::symlink_metadata(&full) {
            Err(_) => return Probe::Nothing,
            Ok(md) if is_whiteout(&md) || !md.is_dir() => return Probe::Hidden,
            Ok(_) => opaque_above |= is_opaque(&full),
        }
    }
    match std::fs::symlink_metadata(at(path)) {
        Ok(md) if is_whiteout(&md) => Probe::Hidden,
        Ok(_) => Probe::Something,
        Err(_) if opaque_above => Probe::Hidden,
        Err(_) => Probe::Nothing,
    }
}
