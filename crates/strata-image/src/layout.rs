//! Copying an image's blobs from one OCI layout (or the store) to another, verifying each and
//! skipping those the destination has, recompressing layers on request.

use strata_layer::decompress;
use strata_layer::{Compression, LayerWriter};
use strata_store::oci_spec::image::{Descriptor, ImageManifest, MediaType};
use strata_store::{Image, Store, StoreError};
use strata_types::{ImageLocation, Platform};

use crate::desc_digest;
use crate::error::{ImageError, Result};
use crate::open::{open_local, open_local_any, open_local_platform, Opened};
use crate::platforms::read_index;

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
    let copy_one = |desc: &Descriptor, report: &mut CopyReport| copy_blob(from, desc, to, report);
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
                copy_one(layer, &mut report)?;
                layers.push(layer.clone());
            }
        }
    }
    copy_one(image.manifest.config(), &mut report)?;
    if !changed {
        copy_one(&image.manifest_descriptor, &mut report)?;
        return Ok((image.manifest_descriptor.clone(), report));
    }
    let config = image.manifest.config();
    let manifest = to.put_image_with_config(&desc_digest(config)?, config.size(), &layers)?;
    Ok((manifest, report))
}

/// Every blob an image index reaches, children before what refers to them and the index
/// last: for each manifest it lists, the config, the layers and the manifest (a nested index
/// likewise). Manifests are read loosely as OCI manifests, so entries that are not images
/// (attestations, artifacts) are walked too.
pub fn index_blobs(store: &Store, index: &Descriptor) -> Result<Vec<Descriptor>> {
    let mut out = Vec::new();
    for entry in read_index(store, index)?.manifests() {
        match entry.media_type() {
            MediaType::ImageIndex => out.extend(index_blobs(store, entry)?),
            _ => out.extend(index_blobs_of_manifest(store, entry)?),
        }
    }
    out.push(index.clone());
    Ok(out)
}

/// [`copy_image`] for an image index: every blob it reaches ([`index_blobs`]) copied byte for
/// byte, children first and the index last, so the destination holds the same index under
/// the same digest. With `recompress`, each platform's image is copied by [`copy_image`]
/// (possibly getting a new manifest) and, when one changed, a new index lists the new
/// manifests with the same platforms and annotations. Does not tag.
pub fn copy_index(
    from: &Store,
    index: &Descriptor,
    to: &Store,
    recompress: Option<Compression>,
) -> Result<(Descriptor, CopyReport)> {
    let mut report = CopyReport::default();
    let Some(target) = recompress else {
        for desc in index_blobs(from, index)? {
            copy_blob(from, &desc, to, &mut report)?;
        }
        return Ok((index.clone(), report));
    };
    let mut document = read_index(from, index)?;
    let mut manifests = Vec::with_capacity(document.manifests().len());
    let mut changed = false;
    for entry in document.manifests() {
        let copied = match entry.media_type() {
            MediaType::ImageManifest if entry.platform().is_some() => {
                let image = from.image(entry)?;
                let (manifest, r) = copy_image(from, &image, to, Some(target))?;
                report.copied += r.copied;
                report.skipped += r.skipped;
                report.recompressed += r.recompressed;
                report.bytes += r.bytes;
                manifest
            }
            MediaType::ImageIndex => {
                let (nested, r) = copy_index(from, entry, to, Some(target))?;
                report.copied += r.copied;
                report.skipped += r.skipped;
                report.recompressed += r.recompressed;
                report.bytes += r.bytes;
                nested
            }
            _ => {
                // Not an image of a platform (an attestation, say): as it is.
                for desc in index_blobs_of_manifest(from, entry)? {
                    copy_blob(from, &desc, to, &mut report)?;
                }
                entry.clone()
            }
        };
        let mut listed = entry.clone();
        if copied.digest() != entry.digest() {
            changed = true;
            listed.set_digest(copied.digest().clone());
            listed.set_size(copied.size());
        }
        manifests.push(listed);
    }
    if !changed {
        copy_blob(from, index, to, &mut report)?;
        return Ok((index.clone(), report));
    }
    document.set_manifests(manifests);
    let put = to.put_json(&document)?;
    report.copied += 1;
    report.bytes += put.size;
    Ok((Descriptor::new(MediaType::ImageIndex, put.size, put.digest), report))
}

/// A manifest's config, layers and itself, read loosely (see [`index_blobs`]).
fn index_blobs_of_manifest(store: &Store, manifest: &Descriptor) -> Result<Vec<Descriptor>> {
    let digest = desc_digest(manifest)?;
    let bytes = store.read_blob(&digest)?;
    let parsed: ImageManifest = serde_json::from_slice(&bytes).map_err(|source| {
        ImageError::Store(StoreError::InvalidBlobJson { digest, what: "image manifest", source })
    })?;
    let mut out = vec![parsed.config().clone()];
    out.extend(parsed.layers().iter().cloned());
    out.push(manifest.clone());
    Ok(out)
}

/// Copies one blob, verified, unless `to` has it.
fn copy_blob(from: &Store, desc: &Descriptor, to: &Store, report: &mut CopyReport) -> Result<()> {
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
        .map_err(|e| ImageError::read_stored_blob(from, digest, e))?;
    let mut blob = to.blob_writer()?;
    LayerWriter::new(target)
        .compress_stream(&mut reader, &mut blob)
        .map_err(|e| ImageError::read_stored_blob(from, digest, e))?;
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

/// [`load`] keeping a multi-platform image whole: an index in an `oci:` layout is copied
/// into `store` with every platform ([`copy_index`]) unless `platform` picks one, which is
/// then loaded as [`load`] does (checked against the platform). Returns the descriptor of
/// what was loaded, untagged.
pub fn load_platform(
    store: &Store,
    location: &ImageLocation,
    platform: Option<&Platform>,
) -> Result<(Descriptor, CopyReport)> {
    if platform.is_none() {
        if let Opened::Index(index) = open_local_any(Some(store), location)? {
            if matches!(location, ImageLocation::Store(_)) {
                return Ok((index.descriptor, CopyReport::default()));
            }
            return copy_index(&index.store, &index.descriptor, store, None);
        }
    }
    let source = open_local_platform(Some(store), location, platform)?;
    if matches!(location, ImageLocation::Store(_)) {
        return Ok((source.image.manifest_descriptor, CopyReport::default()));
    }
    let (manifest, report) = copy_image(&source.store, &source.image, store, None)?;
    Ok((manifest, report))
}
