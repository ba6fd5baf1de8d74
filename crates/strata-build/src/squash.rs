//! `--squash` and `--squash-all`: the built image's layers made one, once every step is done.
//!
//! Steps are built and cached one layer each as always, so a rebuild still hits the cache
//! step by step; only the image written at the end differs. `--squash` (Docker's and podman's
//! flag) keeps the base image's layers, so they stay shared with other images, and makes the
//! layers the build added one; `--squash-all` (podman's, buildah's `--squash`) makes the whole
//! image one layer. The layer comes from strata-layer's [`squash`](strata_layer::squash):
//! the squashed layers applied onto an empty tree, with explicit whiteouts for the base files
//! they deleted, written by the build's layer writer, so the same layers give the same bytes.
//!
//! History follows buildah (`buildah bud` without `--layers`, which is what podman's
//! `--squash` runs): every entry of the build's steps is kept, marked `empty_layer`, except the
//! last, which carries the one new layer; the base's entries are kept with `--squash` and
//! dropped with `--squash-all` (its layers are no more). Either way as many entries carry a
//! layer as the config lists diffIDs, so `strata inspect` and `docker history` stay truthful.

use serde_json::{json, Value};
use strata_layer::overlay::MergedView;
use strata_layer::{write_layer, ApplyOptions, LayerWriter};
use strata_store::Store;

use crate::error::Result;
use crate::image::{ImageState, LayerRef};
use crate::options::Squash;
use crate::rootfs::view_of_chain;

/// `state` with its layers squashed as `how` says, and the compressed size of the layer
/// written (`None` when there was nothing to squash: no layer after the base, or none at all).
pub(crate) fn squash_image(
    store: &Store,
    writer: &LayerWriter,
    how: Squash,
    mut state: ImageState,
    timestamp: i64,
) -> Result<(ImageState, Option<u64>)> {
    let keep = match how {
        Squash::Off => return Ok((state, None)),
        Squash::NewLayers => state.base_layers.min(state.layers.len()),
        Squash::All => 0,
    };
    let squashed = &state.layers[keep..];
    if squashed.is_empty() {
        return Ok((state, None));
    }
    let digests = squashed.iter().map(LayerRef::digest).collect::<Result<Vec<_>>>()?;
    let lower = match keep {
        0 => MergedView::default(),
        _ => view_of_chain(store, &state.layers[..keep])?,
    };
    let work = store.work_dir("squash-")?;
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree).map_err(|e| crate::BuildError::io("mkdir", &tree, e))?;
    let changes = strata_layer::squash(store, &digests, &lower, &tree, &ApplyOptions::default())?;
    let desc = write_layer(store, writer, &changes, &tree)?;
    let layer = LayerRef { descriptor: desc.descriptor(), diff_id: desc.diff_id, image: None };
    state.layers.truncate(keep);
    state.layers.push(layer);
    let base_history = match how {
        Squash::All => {
            state.history.drain(..state.base_history.min(state.history.len()));
            0
        }
        _ => state.base_history.min(state.history.len()),
    };
    let own = &mut state.history[base_history..];
    for entry in own.iter_mut() {
        if let Some(h) = entry.as_object_mut() {
            h.insert("empty_layer".into(), json!(true));
        }
    }
    match own.last_mut().and_then(Value::as_object_mut) {
        Some(last) => {
            last.remove("empty_layer");
        }
        // `FROM base` alone, squashed whole: one entry for the one layer.
        None => state.push_history(format!("strata build {}", how.flag()), false, timestamp),
    }
    state.base_layers = keep;
    state.base_history = base_history;
    Ok((state, Some(desc.size)))
}
