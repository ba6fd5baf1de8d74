//! `export`: a stored image written as an OCI layout, a docker-archive, or `dir:`, the
//! flattened root filesystem made by applying every layer in order.

use std::io;
use std::path::Path;

use strata_layer::Compression;
use strata_layer::{apply_blob, ApplyOptions};
use strata_store::Store;
use strata_types::{Digest, ImageLocation};

use crate::archive::write_docker_archive;
use crate::desc_digest;
use crate::error::{ImageError, Result};
use crate::layout::{copy_image, copy_index};
use crate::open::{Opened, OpenedImage, OpenedIndex};

/// What [`export`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Blobs written (or files, for `dir:`).
    pub items: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Device nodes of the image not created (`dir:` without [`ExportOptions::devices`]).
    pub devices_skipped: u64,
}

/// How [`export`] writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportOptions {
    /// For `oci:`, recompress layers to this (e.g. gzip for tools without zstd).
    pub compression: Option<Compression>,
    /// For `dir:`, create the image's device nodes on the host (root only). Without it
    /// they are skipped and counted: a `/dev/sda` of an image is a real disk on the host.
    /// Setuid and setgid bits are kept only when the caller is root either way.
    pub devices: bool,
}

impl ExportOptions {
    /// The same options recompressing `oci:` layers.
    pub fn compression(self, compression: Option<Compression>) -> Self {
        ExportOptions { compression, ..self }
    }

    /// The same options creating device nodes in `dir:`.
    pub fn devices(self, devices: bool) -> Self {
        ExportOptions { devices, ..self }
    }
}

/// Writes `source` to `dest`: `oci:DIR[:REF]` (blobs copied, tagged `REF` or the source name
/// or `latest`; layers recompressed when `compression` asks for it), `docker-archive:FILE[:REF]`
/// (loadable by `docker load`; layers always uncompressed), or `dir:PATH` (the flattened root
/// filesystem; PATH must be absent or empty; see [`flatten`]).
///
/// Every blob is verified as it is read; when the export fails and one of the image's blobs
/// is corrupt, the error is that ([`strata_store::StoreError::CorruptBlob`], naming the
/// image), whatever the reader made of its bytes, and `oci:DIR` has no ref for it.
pub fn export(
    source: &OpenedImage,
    dest: &ImageLocation,
    opts: &ExportOptions,
) -> Result<ExportReport> {
    export_unblamed(source, dest, opts).map_err(|e| match e {
        ImageError::DestinationNotEmpty { .. }
        | ImageError::UnsupportedLocation { .. }
        | ImageError::MultiPlatform { .. } => e,
        e => blame_corrupt_blob(source, e),
    })
}

/// After a failed read of `source`: [`strata_store::StoreError::CorruptBlob`] for the first
/// of its blobs (manifest, config, layers) whose bytes do not hash to their name, else `err`.
pub(crate) fn blame_corrupt_blob(source: &OpenedImage, err: ImageError) -> ImageError {
    let image = &source.image;
    let name = source.display_name();
    let mut blobs = vec![image.digest().ok(), desc_digest(image.manifest.config()).ok()];
    blobs.extend(image.manifest.layers().iter().map(|l| desc_digest(l).ok()));
    for digest in blobs.into_iter().flatten() {
        if let Err(e @ strata_store::StoreError::CorruptBlob { .. }) =
            source.store.verify_blob_of(&digest, &name)
        {
            return e.into();
        }
    }
    err
}

fn export_unblamed(
    source: &OpenedImage,
    dest: &ImageLocation,
    opts: &ExportOptions,
) -> Result<ExportReport> {
    let compression = opts.compression;
    match dest {
        ImageLocation::Oci { dir, reference } => {
            let out = Store::init(dir)?;
            let (manifest, copied) = copy_image(&source.store, &source.image, &out, compression)?;
            let tag = reference
                .clone()
                .or_else(|| source.name.clone())
                .unwrap_or_else(|| "latest".into());
            // The ref exactly as given: OCI tools match `oci:DIR:REF` verbatim.
            out.set_ref_name(&tag, &manifest)?;
            Ok(ExportReport {
                items: (copied.copied + copied.recompressed) as u64,
                bytes: copied.bytes,
                devices_skipped: 0,
            })
        }
        ImageLocation::DockerArchive { path, reference } => {
            let tag = reference.clone().or_else(|| source.name.clone());
            write_docker_archive(source, path, tag.as_deref())
        }
        ImageLocation::Dir(path) => flatten(source, path, opts),
        ImageLocation::Store(_) | ImageLocation::Registry(_) => {
            Err(ImageError::UnsupportedLocation { location: dest.to_string() })
        }
    }
}

/// [`export`] of a multi-platform image kept whole: to `oci:DIR[:REF]` the index with every
/// platform's manifest, config and layers (children first, the index last, then the ref in
/// DIR's `index.json`; see [`copy_index`]). An archive or a directory holds one image, so
/// those destinations are [`ImageError::MultiPlatform`]: pick one with
/// [`OpenedIndex::image`] and [`export`] it.
///
/// As with [`export`], when the export fails and a blob of the index is corrupt, the error
/// is that ([`strata_store::StoreError::CorruptBlob`]), naming the index and the platforms
/// whose images use the blob (`app:v1 (linux/arm64)`), and `oci:DIR` has no ref for it.
pub fn export_index(
    source: &OpenedIndex,
    dest: &ImageLocation,
    opts: &ExportOptions,
) -> Result<ExportReport> {
    export_index_unblamed(source, dest, opts).map_err(|e| match e {
        ImageError::MultiPlatform { .. } | ImageError::UnsupportedLocation { .. } => e,
        e => source.find_corrupt_blob().map_or(e, ImageError::from),
    })
}

fn export_index_unblamed(
    source: &OpenedIndex,
    dest: &ImageLocation,
    opts: &ExportOptions,
) -> Result<ExportReport> {
    match dest {
        ImageLocation::Oci { dir, reference } => {
            let out = Store::init(dir)?;
            let (index, copied) =
                copy_index(&source.store, &source.descriptor, &out, opts.compression)?;
            let tag = reference
                .clone()
                .or_else(|| source.name.clone())
                .unwrap_or_else(|| "latest".into());
            out.set_ref_name(&tag, &index)?;
            Ok(ExportReport {
                items: (copied.copied + copied.recompressed) as u64,
                bytes: copied.bytes,
                devices_skipped: 0,
            })
        }
        ImageLocation::DockerArchive { .. } | ImageLocation::Dir(_) => {
            Err(ImageError::MultiPlatform {
                image: source.display_name(),
                platforms: source.platform_names(),
            })
        }
        ImageLocation::Store(_) | ImageLocation::Registry(_) => {
            Err(ImageError::UnsupportedLocation { location: dest.to_string() })
        }
    }
}

/// [`export`] or [`export_index`], as `source` is.
pub fn export_opened(
    source: &Opened,
    dest: &ImageLocation,
    opts: &ExportOptions,
) -> Result<ExportReport> {
    match source {
        Opened::Image(image) => export(image, dest, opts),
        Opened::Index(index) => export_index(index, dest, opts),
    }
}

/// Applies every layer in order onto `path`, checking each layer's diffID against the config.
/// This writes onto the host: device nodes only with [`ExportOptions::devices`], setuid and
/// setgid bits only for root.
pub fn flatten(source: &OpenedImage, path: &Path, opts: &ExportOptions) -> Result<ExportReport> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ImageError::DestinationNotEmpty { path: path.to_path_buf() });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|e| ImageError::io("mkdir", path, e))?
        }
        Err(e) => return Err(ImageError::io("read", path, e)),
    }
    let diff_ids = source.image.config.rootfs().diff_ids();
    let mut report = ExportReport::default();
    for (i, layer) in source.image.manifest.layers().iter().enumerate() {
        let digest = desc_digest(layer)?;
        let applied = apply_blob(
            &source.store,
            &digest,
            path,
            &ApplyOptions::default().host_tree(opts.devices),
        )?;
        let expected: Option<Digest> = diff_ids.get(i).and_then(|d| d.parse().ok());
        if let (Some(expected), Some(found)) = (expected, applied.diff_id) {
            if expected != found {
                return Err(ImageError::DiffIdMismatch { layer: i, expected, found });
            }
        }
        report.items += applied.entries;
        report.bytes += applied.bytes;
        report.devices_skipped += applied.devices_skipped;
    }
    Ok(report)
}
