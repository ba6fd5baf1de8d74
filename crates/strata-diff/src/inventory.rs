//! One image at a time: its history, its file tree (`ls`) and its wasted space.

use std::collections::BTreeMap;

use crate::error::DiffError;
use crate::read::{cheap_uncompressed_size, ImageLayers, LayerCache};
use crate::report::{
    lossy, Efficiency, FileKind, FileMeta, HistoryEntry, LayerInfo, LsEntry, WastedPath,
};
use crate::view::{self, Dropped};
use crate::StoredImage;

pub(crate) fn layer_info(
    img: &ImageLayers<'_>,
    cache: &LayerCache,
    i: usize,
    created_by: Option<String>,
) -> Result<LayerInfo, DiffError> {
    let d = &img.descriptors[i];
    let uncompressed_size = cache
        .peek(img, i)
        .map(|l| l.uncompressed_size)
        .or_else(|| cheap_uncompressed_size(img.store, d));
    Ok(LayerInfo {
        index: i,
        diff_id: img.diff_ids[i],
        digest: img.digest(i)?,
        media_type: d.media_type().to_string(),
        size: d.size(),
        uncompressed_size,
        created_by,
    })
}

/// The image's history, each non-empty entry with the layer it made. Reads no layer.
pub fn history(image: StoredImage<'_>) -> Result<Vec<HistoryEntry>, DiffError> {
    let img = ImageLayers::new(image.store, image.image)?;
    let cache = LayerCache::default();
    let mut next = 0;
    let mut out = Vec::new();
    for h in image.image.config.history().iter().flatten() {
        let empty = h.empty_layer().unwrap_or(false);
        let layer = if !empty && next < img.len() {
            next += 1;
            Some(layer_info(&img, &cache, next - 1, h.created_by().clone())?)
        } else {
            None
        };
        out.push(HistoryEntry {
            created: h.created().clone(),
            created_by: h.created_by().clone(),
            comment: h.comment().clone(),
            empty_layer: empty,
            layer,
        });
    }
    // Layers the history does not describe (images made without history).
    for i in next..img.len() {
        out.push(HistoryEntry {
            created: None,
            created_by: None,
            comment: None,
            empty_layer: false,
            layer: Some(layer_info(&img, &cache, i, None)?),
        });
    }
    Ok(out)
}

/// What [`ls`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LsOptions {
    /// Only this path and what is below it (relative or absolute: `/etc` = `etc`).
    pub path: Option<String>,
    /// The filesystem as it is after this layer (zero-based), as `docker run` of the image
    /// built up to that step would see it; `None`: the whole image.
    pub layer: Option<usize>,
}

impl LsOptions {
    /// Lists `path` (and below) only.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Shows the filesystem after layer `n`.
    pub fn layer(mut self, n: usize) -> Self {
        self.layer = Some(n);
        self
    }
}

/// The image's file tree (after [`LsOptions::layer`], else after the last layer), each entry
/// with the layer whose entry sets it. Reads the layers up to that one.
pub fn ls(image: StoredImage<'_>, opts: &LsOptions) -> Result<Vec<LsEntry>, DiffError> {
    let img = ImageLayers::new(image.store, image.image)?;
    if img.len() == 0 {
        return Ok(Vec::new());
    }
    let last = opts.layer.unwrap_or(img.len() - 1);
    if last >= img.len() {
        return Err(DiffError::NoSuchLayer { index: last, layers: img.len() });
    }
    let mut cache = LayerCache::default();
    let tree = view::merge(&mut cache, &img, last, |_| {})?;
    let filter = opts.path.as_deref().and_then(|p| crate::read::normalize(p.as_bytes()));
    Ok(tree
        .iter()
        .filter(|(p, _)| match &filter {
            Some(f) => *p == f || (p.starts_with(f) && p.get(f.len()) == Some(&b'/')),
            None => true,
        })
        .map(|(p, (node, layer))| LsEntry {
            path: lossy(p),
            meta: FileMeta::from_node(node),
            layer: *layer,
        })
        .collect())
}

/// Bytes shipped and then overwritten or deleted by a later layer, with the `worst` paths.
/// Reads every layer.
pub fn efficiency(image: StoredImage<'_>, worst: usize) -> Result<Efficiency, DiffError> {
    let img = ImageLayers::new(image.store, image.image)?;
    let mut total_bytes = 0;
    let mut wasted: BTreeMap<Vec<u8>, (u64, Vec<usize>)> = BTreeMap::new();
    if img.len() > 0 {
        let mut cache = LayerCache::default();
        for i in 0..img.len() {
            let lf = cache.get(&img, i)?;
            total_bytes += lf
                .entries
                .values()
                .filter(|n| n.kind == FileKind::File && n.hardlink.is_none())
                .map(|n| n.size)
                .sum::<u64>();
        }
        view::merge(&mut cache, &img, img.len() - 1, |d: Dropped<'_>| {
            if d.node.kind == FileKind::File && d.node.hardlink.is_none() {
                let e = wasted.entry(d.path.to_vec()).or_default();
                e.0 += d.node.size;
                e.1.push(d.set_by);
            }
        })?;
    }
    let wasted_bytes = wasted.values().map(|(b, _)| b).sum::<u64>();
    let mut rows: Vec<WastedPath> = wasted
        .into_iter()
        .filter(|(_, (b, _))| *b > 0)
        .map(|(p, (b, layers))| WastedPath { path: lossy(&p), wasted_bytes: b, layers })
        .collect();
    rows.sort_by(|x, y| y.wasted_bytes.cmp(&x.wasted_bytes).then_with(|| x.path.cmp(&y.path)));
    rows.truncate(worst);
    let score = if total_bytes == 0 { 1.0 } else { 1.0 - wasted_bytes as f64 / total_bytes as f64 };
    Ok(Efficiency { total_bytes, wasted_bytes, score, worst: rows })
}
