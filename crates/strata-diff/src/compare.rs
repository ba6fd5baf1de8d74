//! The file section of a diff: which paths differ between the flattened filesystems, found
//! from the layers the two images do not share.
//!
//! With a common base of `k` layers (equal diffIDs at positions `0..k`), the merged state of
//! that base is the same in both images, so a path can only differ if a layer above the base
//! (in A or in B) mentions it: its entry, a whiteout of it, or an ancestor that a whiteout,
//! opaque marker or non-directory entry clears. The candidates are therefore the paths those
//! upper layers name, plus, for each clearing operation, the paths below it that a lower layer
//! has (looked up only when the cleared path was a directory below). For each candidate the
//! state in A and in B is found top-down ([`view::state`]); a base layer is read only when an
//! upper layer has not decided the path, and at most once per diff. Two images that differ in
//! their top layers and touch the same paths read exactly those layers.

use std::collections::BTreeSet;

use crate::error::DiffError;
use crate::read::{ImageLayers, LayerCache, Node};
use crate::report::{
    lossy, Attribute, ChangeKind, FileChange, FileChanges, FileKind, FileMeta, FileTotals,
};
use crate::view::{self, State};

/// What differs between two nodes (`semantic`: mtimes not compared).
pub(crate) fn attributes(a: &Node, b: &Node, semantic: bool) -> Vec<Attribute> {
    let mut out = Vec::new();
    if a.kind != b.kind {
        out.push(Attribute::Type);
    }
    if a.digest != b.digest {
        out.push(Attribute::Content);
    }
    if a.size != b.size {
        out.push(Attribute::Size);
    }
    if a.mode != b.mode {
        out.push(Attribute::Mode);
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        out.push(Attribute::Owner);
    }
    if a.link != b.link {
        out.push(Attribute::LinkTarget);
    }
    if a.hardlink != b.hardlink {
        out.push(Attribute::Hardlink);
    }
    if a.xattrs != b.xattrs {
        out.push(Attribute::Xattrs);
    }
    if a.device != b.device {
        out.push(Attribute::Device);
    }
    if !semantic && a.mtime != b.mtime {
        out.push(Attribute::Mtime);
    }
    out
}

/// Paths the layers `k..` of `img` name (entries and whiteouts), and the paths they clear
/// wholesale (whiteouts, opaque directories, non-directory entries): the base's children of
/// a cleared path vanish from this image's view.
fn upper_paths(
    cache: &mut LayerCache,
    img: &ImageLayers<'_>,
    k: usize,
    named: &mut BTreeSet<Vec<u8>>,
) -> Result<BTreeSet<Vec<u8>>, DiffError> {
    let mut cleared = BTreeSet::new();
    for i in k..img.len() {
        let lf = cache.get(img, i)?;
        named.extend(lf.entries.keys().cloned());
        named.extend(lf.whiteouts.iter().cloned());
        cleared.extend(lf.whiteouts.iter().cloned());
        cleared.extend(lf.opaque.iter().cloned());
        cleared.extend(
            lf.entries.iter().filter(|(_, n)| n.kind != FileKind::Dir).map(|(p, _)| p.clone()),
        );
    }
    Ok(cleared)
}

/// Whether `cleared` hides the base's children of `dir` (it clears `dir` or an ancestor).
fn hidden_by(cleared: &BTreeSet<Vec<u8>>, dir: &[u8]) -> bool {
    cleared.contains(dir) || view::ancestors(dir).any(|a| cleared.contains(a))
}

/// Adds the base's paths below each directory one side clears and the other does not: those
/// are the only base paths whose state can differ without an upper layer naming them.
fn cleared_subtrees(
    cache: &mut LayerCache,
    base: &ImageLayers<'_>,
    k: usize,
    mine: &BTreeSet<Vec<u8>>,
    theirs: &BTreeSet<Vec<u8>>,
    out: &mut BTreeSet<Vec<u8>>,
) -> Result<(), DiffError> {
    for dir in mine {
        if hidden_by(theirs, dir) {
            continue;
        }
        if let State::Present { node, .. } = view::state(cache, base, k, dir)? {
            if node.kind == FileKind::Dir {
                view::paths_below(cache, base, k, dir, out)?;
            }
        }
    }
    Ok(())
}

/// Whether `path` is `filter` or below it.
fn within(path: &[u8], filter: &[u8]) -> bool {
    path == filter || (path.starts_with(filter) && path.get(filter.len()) == Some(&b'/'))
}

/// The file changes from A to B; `k` is the number of shared base layers.
pub(crate) fn compare(
    cache: &mut LayerCache,
    a: &ImageLayers<'_>,
    b: &ImageLayers<'_>,
    k: usize,
    semantic: bool,
    only: Option<&[u8]>,
    history_b: &[Option<String>],
) -> Result<FileChanges, DiffError> {
    let upper: Vec<(&ImageLayers<'_>, usize)> =
        (k..a.len()).map(|i| (a, i)).chain((k..b.len()).map(|i| (b, i))).collect();
    cache.prefetch(&upper)?;
    let mut paths = BTreeSet::new();
    let cleared_a = upper_paths(cache, a, k, &mut paths)?;
    let cleared_b = upper_paths(cache, b, k, &mut paths)?;
    cleared_subtrees(cache, a, k, &cleared_a, &cleared_b, &mut paths)?;
    cleared_subtrees(cache, b, k, &cleared_b, &cleared_a, &mut paths)?;
    if let Some(filter) = only {
        paths.retain(|p| within(p, filter));
        paths.insert(filter.to_vec());
    }
    let mut changes = Vec::new();
    let mut totals = FileTotals::default();
    for path in paths {
        let sa = view::state(cache, a, a.len(), &path)?;
        let sb = view::state(cache, b, b.len(), &path)?;
        let (na, nb, layer) = match (&sa, &sb) {
            (State::Absent { .. }, State::Absent { .. }) => continue,
            (State::Present { node, .. }, State::Absent { removed_by }) => {
                (Some(node), None, *removed_by)
            }
            (State::Absent { .. }, State::Present { layer, node }) => {
                (None, Some(node), Some(*layer))
            }
            (State::Present { node: x, .. }, State::Present { node: y, layer }) => {
                (Some(x), Some(y), Some(*layer))
            }
        };
        let (change, changed) = match (na, nb) {
            (Some(x), Some(y)) => {
                let attrs = attributes(x, y, semantic);
                if attrs.is_empty() {
                    continue;
                }
                totals.modified += 1;
                (ChangeKind::Modified, attrs)
            }
            (None, Some(y)) => {
                totals.added += 1;
                totals.added_bytes += if y.hardlink.is_none() { y.size } else { 0 };
                (ChangeKind::Added, Vec::new())
            }
            (Some(x), None) => {
                totals.removed += 1;
                totals.removed_bytes += if x.hardlink.is_none() { x.size } else { 0 };
                (ChangeKind::Removed, Vec::new())
            }
            (None, None) => continue,
        };
        changes.push(FileChange {
            path: lossy(&path),
            change,
            changed,
            a: na.map(FileMeta::from_node),
            b: nb.map(FileMeta::from_node),
            layer,
            created_by: layer.and_then(|l| history_b.get(l).cloned().flatten()),
        });
    }
    Ok(FileChanges { changes, totals })
}
