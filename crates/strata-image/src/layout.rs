//! Copying an image's blobs from one OCI layout (or the store) to another, verifying each and
//! skipping those the destination has, recompressing layers on request.

use strata_layer::decompress;
use strata_layer::{Compression, LayerWriter};
use strata_store::oci_spec::image::{Descriptor, MediaType};
use strata_store::{Image, Store};
use strata_types::ImageLocation;

use crate::desc_digest;
use crate::error::{ImageError, Result};
use crate::open::open_local;

/// What [`copy_image`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Blobs copied.
    pub copied: usize,
    /// Blobs the destination already had.
    pub skipped: usize,
    /// Layers recompressed on the way.
    pub recompressed: usize,
    /// Bytes written to the destination.
    pub bytes: u64,
}

/// The compression a layer media type names.
pub fn compression_of(media_type: &MediaType) -> Option<Compression> {
    match media_type {
        MediaType::ImageLayer => Some(Compression::None),
        MediaType::ImageLayerGzip => Some(Compression::Gzip),
        MediaType::ImageLayerZstd => Some(Compression::Zstd),
        _ => None,
    }
}

/// Copies an image's blobs (layers, config, manifest) from `from` to `to`, verifying each and
/// skipping those `to` already has. Does not tag. Returns the manifest in `to`: the same one,
/// unless `recompress` asks for layers in another compression (as `skopeo copy
/// --dest-compress-format` does), in which case those layers get new digests and the image a
/// new manifest; the config (and so the diffIDs) is unchanged.
pub fn copy_image(
    from: &Store,
    image: &Image,
    to: &Store,
    recompress: Option<Compression>,
) -> Result<(Descriptor, CopyReport)> {
    let mut report = CopyReport::default();
    let copy_blob = |desc: &Descriptor, report: &mut CopyReport| -> Result<()> {
        let digest = desc_digest(desc)?;
        if to.has_blob(&digest) {
            report.skipped += 1;
            return Ok(());
        }
        let reader = from.open_blob(&digest)?;
        let put = to.put_blob_verified(reader, &digest, Some(desc.size()))?;
        report.copied += 1;
        report.bytes += put.size;
        Ok(())
    };
    let mut layers = Vec::with_capacity(image.manifest.layers().len());
    let mut changed = false;
    for layer in image.manifest.layers() {
        match recompress {
            Some(target) if compression_of(layer.media_type()) != Some(target) => {
                layers.push(recompress_layer(from, layer, to, target)?);
                report.recompressed += 1;
                report.bytes += layers.last().map(|d: &Descriptor| d.size()).unwrap_or(0);
                changed = true;
            }
            _ => {
                copy_blob(layer, &mut report)?;
                layers.push(layer.clone());
            }
        }
    }
    copy_blob(image.manifest.config(), &mut report)?;
    if !changed {
        copy_blob(&image.manifest_descriptor, &mut report)?;
        return Ok((image.manifest_descriptor.clone(), report));
    }
    let config = image.manifest.config();
    let manifest = to.put_image_with_config(&desc_digest(config)?, config.size(), &layers)?;
    Ok((manifest, report))
}

/// Decompresses `layer` from `from` and writes it into `to` compressed as `target`.
fn recompress_layer(
    from: &Store,
    layer: &Descriptor,
    to: &Store,
    target: Compression,
) -> Result<Descriptor> {
    let digest = desc_digest(layer)?;
    let mut reader = decompress(from.open_blob_verified(&digest)?)
        .map_err(|source| ImageError::ReadBlob { digest, source })?;
    let mut blob = to.blob_writer()?;
    LayerWriter::new(target)
        .compress_stream(&mut reader, &mut blob)
        .map_err(|source| ImageError::ReadBlob { digest, source })?;
    let put = blob.commit()?;
    Ok(Descriptor::new(MediaType::from(target.media_type()), put.size, put.digest))
}

/// Copies the image at `location` into `store` and returns it (untagged). The local store as
/// a source is a no-op read.
pub fn load(store: &Store, location: &ImageLocation) -> Result<(Image, CopyReport)> {
    let source = open_local(Some(store), location)?;
    if matches!(location, ImageLocation::Store(_)) {
        return Ok((source.image, CopyReport::default()));
    }
    let (manifest, report) = copy_image(&source.store, &source.image, store, None)?;
    debug_assert_eq!(manifest, source.image.manifest_descriptor);
    Ok((source.image, report))
}
