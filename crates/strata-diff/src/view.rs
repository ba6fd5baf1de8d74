//! The merged filesystem of an image, computed from layer file lists with the rules of
//! image-spec `layer.md` § Applying Changesets: an entry replaces what a lower layer has at its
//! path (two directories merge), `.wh.NAME` removes `NAME` and everything below it, and
//! `.wh..wh..opq` hides every lower child of its directory but not the entries of its own layer.
//!
//! Two ways to ask: [`state`] answers for one path by walking the layers top-down, reading a
//! layer only when no layer above it has decided the path, so a question about a path that an
//! upper layer sets costs nothing below it (and a layer with an unpacked snapshot in the store
//! is first asked with `lstat`, see [`crate::snapshot`]); [`merge`] applies layers bottom-up into the whole
//! tree (for `ls` and the wasted-space count), reporting each file version a later layer
//! replaces or deletes.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::error::DiffError;
use crate::read::{ImageLayers, LayerCache, LayerFiles, Node};
use crate::report::FileKind;
use crate::snapshot::{probe, snapshot_of, Probe};

/// A path's state in an image (or in the view below some layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    /// The path exists; `layer` is the layer whose entry sets it.
    Present { layer: usize, node: Node },
    /// The path does not exist; `removed_by` is the layer whose whiteout, opaque directory or
    /// non-directory ancestor hides it (`None`: no layer ever had it).
    Absent { removed_by: Option<usize> },
}

/// The proper ancestors of `path`, shallowest first.
pub(crate) fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter().enumerate().filter(|(_, &b)| b == b'/').map(move |(i, _)| &path[..i])
}

/// The range of keys strictly below directory `dir` in a bytewise-sorted map.
pub(crate) fn below(dir: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let mut lo = dir.to_vec();
    lo.push(b'/');
    let mut hi = dir.to_vec();
    hi.push(b'/' + 1);
    (Bound::Included(lo), Bound::Excluded(hi))
}

/// Whether `lf` hides `path` of lower layers (without having an entry for it itself).
fn hides(lf: &LayerFiles, path: &[u8]) -> bool {
    if lf.whiteouts.contains(path) {
        return true;
    }
    ancestors(path).any(|a| {
        lf.whiteouts.contains(a)
            || lf.opaque.contains(a)
            || lf.entries.get(a).is_some_and(|n| n.kind != FileKind::Dir)
    })
}

/// The state of `path` in the view made of layers `0..top` of `img`.
pub(crate) fn state(
    cache: &mut LayerCache,
    img: &ImageLayers<'_>,
    top: usize,
    path: &[u8],
) -> Result<State, DiffError> {
    state_at_depth(cache, img, top, path, 0)
}

fn state_at_depth(
    cache: &mut LayerCache,
    img: &ImageLayers<'_>,
    top: usize,
    path: &[u8],
    depth: usize,
) -> Result<State, DiffError> {
    let mut misses = 0;
    for i in (0..top).rev() {
        if !cache.has(img, i) {
            if let Some(snapshot) = snapshot_of(img, i) {
                cache.counts.snapshot_probes += 1;
                match probe(&snapshot, path) {
                    Probe::Nothing => continue,
                    Probe::Hidden => return Ok(State::Absent { removed_by: Some(i) }),
                    Probe::Something => {}
                }
            } else if misses > 0 {
                // A freshly read layer did not decide the path: it is likely deep or absent,
                // so read the next few lower layers on parallel threads (at most one thread's
                // worth of reading may turn out unneeded).
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let batch: Vec<(&ImageLayers<'_>, usize)> = (0..=i)
                    .rev()
                    .filter(|&j| !cache.has(img, j) && snapshot_of(img, j).is_none())
                    .take(threads)
                    .map(|j| (img, j))
                    .collect();
                cache.prefetch(&batch)?;
            }
            misses += 1;
        }
        let lf = cache.get(img, i)?;
        if let Some(node) = lf.entries.get(path) {
            let node = match &node.hardlink {
                Some(target) => link_node(cache, img, i, path, target, depth)?,
                None => node.clone(),
            };
            return Ok(State::Present { layer: i, node });
        }
        if hides(&lf, path) {
            return Ok(State::Absent { removed_by: Some(i) });
        }
    }
    Ok(State::Absent { removed_by: None })
}

/// A hardlink entry of layer `i` takes its target's inode: metadata and content.
fn link_node(
    cache: &mut LayerCache,
    img: &ImageLayers<'_>,
    i: usize,
    path: &[u8],
    target: &[u8],
    depth: usize,
) -> Result<Node, DiffError> {
    let dangling = || DiffError::DanglingHardlink {
        layer: i,
        path: String::from_utf8_lossy(path).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
    };
    if depth > 32 || target == path {
        return Err(dangling());
    }
    // The target precedes the link in the archive: in this layer, or below it.
    match state_at_depth(cache, img, i + 1, target, depth + 1)? {
        State::Present { mut node, .. } if node.kind == FileKind::File => {
            node.hardlink = Some(target.to_vec());
            Ok(node)
        }
        _ => Err(dangling()),
    }
}

/// Every path that may exist below directory `dir` in the view of layers `0..top`: the
/// entries under it of each layer, top-down, until a layer hides everything lower.
pub(crate) fn paths_below(
    cache: &mut LayerCache,
    img: &ImageLayers<'_>,
    top: usize,
    dir: &[u8],
    out: &mut std::collections::BTreeSet<Vec<u8>>,
) -> Result<(), DiffError> {
    for i in (0..top).rev() {
        let lf = cache.get(img, i)?;
        out.extend(lf.entries.range(below(dir)).map(|(k, _)| k.clone()));
        let stops = lf.opaque.contains(dir)
            || lf.entries.get(dir).is_some_and(|n| n.kind != FileKind::Dir)
            || hides(&lf, dir);
        if stops {
            break;
        }
    }
    Ok(())
}

/// A file version leaving the merged tree (replaced or deleted); `set_by` is its layer.
pub(crate) struct Dropped<'a> {
    pub path: &'a [u8],
    pub node: &'a Node,
    pub set_by: usize,
}

/// The merged tree after layers `0..=last`, path -> (node, layer that set it); `on_drop` sees
/// every version replaced or deleted on the way.
pub(crate) fn merge(
    cache: &mut LayerCache,
    img: &ImageLayers<'_>,
    last: usize,
    mut on_drop: impl FnMut(Dropped<'_>),
) -> Result<BTreeMap<Vec<u8>, (Node, usize)>, DiffError> {
    let mut tree: BTreeMap<Vec<u8>, (Node, usize)> = BTreeMap::new();
    let remove_below = |tree: &mut BTreeMap<Vec<u8>, (Node, usize)>,
                        dir: &[u8],
                        on_drop: &mut dyn FnMut(Dropped<'_>)| {
        let gone: Vec<Vec<u8>> = tree.range(below(dir)).map(|(k, _)| k.clone()).collect();
        for k in gone {
            if let Some((node, set_by)) = tree.remove(&k) {
                on_drop(Dropped { path: &k, node: &node, set_by });
            }
        }
    };
    for i in 0..=last {
        let lf = cache.get(img, i)?;
        for w in &lf.whiteouts {
            remove_below(&mut tree, w, &mut on_drop);
            if let Some((node, set_by)) = tree.remove(w) {
                on_drop(Dropped { path: w, node: &node, set_by });
            }
        }
        for d in &lf.opaque {
            remove_below(&mut tree, d, &mut on_drop);
        }
        // Plain entries first: a hardlink's target may sort after it.
        let (plain, links): (Vec<_>, Vec<_>) =
            lf.entries.iter().partition(|(_, n)| n.hardlink.is_none());
        for (path, node) in plain.into_iter().chain(links) {
            if let Some((old, set_by)) = tree.get(path) {
                let was_dir = old.kind == FileKind::Dir;
                if !(was_dir && node.kind == FileKind::Dir) {
                    let (old, set_by) = (old.clone(), *set_by);
                    on_drop(Dropped { path, node: &old, set_by });
                }
                if was_dir && node.kind != FileKind::Dir {
                    remove_below(&mut tree, path, &mut on_drop);
                }
            }
            let node = match &node.hardlink {
                Some(target) => match tree.get(target.as_slice()) {
                    Some((t, _)) if t.kind == FileKind::File => {
                        let mut n = t.clone();
                        n.hardlink = Some(target.clone());
                        n
                    }
                    _ => {
                        return Err(DiffError::DanglingHardlink {
                            layer: i,
                            path: String::from_utf8_lossy(path).into_owned(),
                            target: String::from_utf8_lossy(target).into_owned(),
                        })
                    }
                },
                None => node.clone(),
            };
            tree.insert(path.clone(), (node, i));
        }
    }
    Ok(tree)
}
