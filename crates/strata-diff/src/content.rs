//! One file's content in A and B (`diff --file PATH`): a unified line diff when both sides
//! are text, sizes and digests otherwise.

use similar::TextDiff;

use crate::error::DiffError;
use crate::read::{extract_file, ImageLayers, LayerCache};
use crate::report::{lossy, ContentDiff, ContentSide, FileKind};
use crate::view::{self, State};

/// Files above this size are compared by digest only.
const TEXT_LIMIT: u64 = 16 << 20;

/// Where the bytes of `path` come from in `img`: (layer holding the data, its path there,
/// size, digest). Hardlinks are followed to the entry that carries the bytes.
fn locate(
    cache: &mut LayerCache,
    img: &ImageLayers<'_>,
    path: &[u8],
) -> Result<Option<(usize, Vec<u8>, ContentSide)>, DiffError> {
    let mut top = img.len();
    let mut at = path.to_vec();
    for _ in 0..32 {
        let State::Present { layer, node } = view::state(cache, img, top, &at)? else {
            return Ok(None);
        };
        if node.kind != FileKind::File {
            return Ok(None);
        }
        let raw = cache.get(img, layer)?;
        match raw.entries.get(&at).and_then(|n| n.hardlink.clone()) {
            Some(target) => {
                top = layer + 1;
                at = target;
            }
            None => {
                let side = ContentSide { size: node.size, digest: node.digest, layer };
                return Ok(Some((layer, at, side)));
            }
        }
    }
    Ok(None)
}

fn bytes_of(
    img: &ImageLayers<'_>,
    found: &Option<(usize, Vec<u8>, ContentSide)>,
) -> Result<Option<Vec<u8>>, DiffError> {
    match found {
        Some((layer, path, side)) if side.size <= TEXT_LIMIT => {
            let bytes = extract_file(img, *layer, path, TEXT_LIMIT)?;
            // The first, verified read recorded the digest; the bytes must match it.
            let ok = bytes
                .as_ref()
                .is_some_and(|b| Some(strata_types::Digest::of_bytes(b)) == side.digest);
            if !ok {
                let digest = img.digest(*layer)?;
                return Err(DiffError::LayerRead {
                    layer: *layer,
                    digest,
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} changed between two reads of the layer", lossy(path)),
                    ),
                });
            }
            Ok(bytes)
        }
        _ => Ok(None),
    }
}

fn as_text(b: &Option<Vec<u8>>) -> Option<&str> {
    b.as_deref().filter(|b| !b.contains(&0)).and_then(|b| std::str::from_utf8(b).ok())
}

pub(crate) fn compare(
    cache: &mut LayerCache,
    a: &ImageLayers<'_>,
    b: &ImageLayers<'_>,
    path: &[u8],
) -> Result<ContentDiff, DiffError> {
    let fa = locate(cache, a, path)?;
    let fb = locate(cache, b, path)?;
    let side = |f: &Option<(usize, Vec<u8>, ContentSide)>| f.as_ref().map(|(_, _, s)| s.clone());
    let (sa, sb) = (side(&fa), side(&fb));
    let identical = match (&sa, &sb) {
        (Some(x), Some(y)) => x.digest == y.digest,
        (None, None) => true,
        _ => false,
    };
    let mut out =
        ContentDiff { path: lossy(path), a: sa, b: sb, identical, text: false, unified: None };
    let (ba, bb) = (bytes_of(a, &fa)?, bytes_of(b, &fb)?);
    // A missing side counts as empty text, as `diff -N` does.
    let ta = if fa.is_none() { Some("") } else { as_text(&ba) };
    let tb = if fb.is_none() { Some("") } else { as_text(&bb) };
    if let (Some(ta), Some(tb)) = (ta, tb) {
        out.text = fa.is_some() || fb.is_some();
        if out.text {
            let unified = if identical {
                String::new()
            } else {
                TextDiff::from_lines(ta, tb)
                    .unified_diff()
                    .context_radius(3)
                    .header(&format!("a/{}", out.path), &format!("b/{}", out.path))
                    .to_string()
            };
            out.unified = Some(unified);
        }
    }
    Ok(out)
}
