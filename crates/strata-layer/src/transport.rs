//! Moving whole images in and out of the store: `import`, `export`, and reading images that
//! live elsewhere (another OCI layout, a `docker save` archive).
//!
//! The store is an OCI image layout, so another layout (`oci:DIR`) is opened as a [`Store`]
//! and copied blob by blob, each verified against its digest and skipped when the destination
//! already has it. A `docker-archive` tarball (Docker's `docker save` format: `manifest.json`
//! naming a config file and one tar per layer) is indexed once, then its members are read by
//! offset; its layers are stored as they are (uncompressed or gzip) and their diffIDs checked
//! against the config before anything is tagged. Export writes the same three forms: an OCI
//! layout, a docker-archive that `docker load` and `skopeo` accept (layers uncompressed, as
//! Docker expects, so each `layer.tar` hashes to its diffID), or `dir:`, the flattened root
//! filesystem made by applying every layer in order with [`apply`](crate::apply).
//!
//! `import` of a directory or a tar turns a tree into a one-layer image, as `docker import`
//! does. To make re-importing an unchanged tree cost a scan and a hash, not a compression and a
//! write, the uncompressed tar is hashed first (its diffID) and looked up in the store's layer
//! index; only a miss compresses and writes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use strata_store::oci_spec::image::{
    ConfigBuilder, Descriptor, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder,
    MediaType, RootFsBuilder,
};
use strata_store::{Image, Store, StoreError};
use strata_types::{Digest, ImageLocation};

use crate::apply::{apply, decompress, ApplyOptions};
use crate::error::{LayerError, Result};
use crate::writer::{Compression, LayerDescriptor, LayerWriter};

fn desc_digest(d: &Descriptor) -> Result<Digest> {
    Ok(Digest::try_from(d.digest()).map_err(StoreError::from)?)
}

/// Settings for [`import_tree`].
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Layer compression (zstd by default).
    pub compression: Compression,
    /// The image's `created` time and the clamp for layer mtimes, in seconds since the epoch
    /// (`SOURCE_DATE_EPOCH`; 0 by default, DESIGN.md decision 7).
    pub epoch: i64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions { compression: Compression::Zstd, epoch: 0 }
    }
}

/// What [`import_tree`] did.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The new image's manifest descriptor (not tagged yet).
    pub manifest: Descriptor,
    /// The layer.
    pub layer: LayerDescriptor,
    /// False when the layer was already in the store: nothing was compressed or written.
    pub layer_written: bool,
}

/// Formats seconds since the epoch as the RFC 3339 UTC time OCI configs use.
pub fn format_created(epoch: i64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm), so no date crate is needed for one format.
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, (secs % 3600) / 60, secs % 60)
}

fn build_err(what: &'static str, e: impl std::fmt::Display) -> LayerError {
    LayerError::Store(StoreError::Serialize { what, source: serde::ser::Error::custom(e) })
}

/// A one-layer image config for `diff_id`, as `docker import` makes it.
fn import_config(diff_id: &Digest, epoch: i64, created_by: &str) -> Result<ImageConfiguration> {
    let strata_types::Platform { os, architecture: arch, .. } = strata_types::Platform::host();
    let created = format_created(epoch);
    let history = HistoryBuilder::default()
        .created(created.clone())
        .created_by(created_by.to_string())
        .comment("imported by strata".to_string())
        .build()
        .map_err(|e| build_err("image history", e))?;
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(vec![diff_id.to_string()])
        .build()
        .map_err(|e| build_err("image rootfs", e))?;
    let config = ConfigBuilder::default()
        .env(vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()])
        .build()
        .map_err(|e| build_err("image config", e))?;
    ImageConfigurationBuilder::default()
        .created(created)
        .architecture(arch.as_str())
        .os(os.as_str())
        .config(config)
        .rootfs(rootfs)
        .history(vec![history])
        .build()
        .map_err(|e| build_err("image configuration", e))
}

/// A `Write` that only hashes and counts.
struct HashSink {
    hasher: Sha256,
    len: u64,
}

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Imports a directory, or a tar archive (plain, gzip or zstd) of a root filesystem, as a
/// one-layer image. A tar is first applied into a scratch directory inside the store (safely:
/// see [`apply`]) so that the layer is written in strata's deterministic form.
pub fn import_tree(store: &Store, source: &Path, opts: &ImportOptions) -> Result<Imported> {
    let meta = std::fs::metadata(source).map_err(|e| LayerError::io("stat", source, e))?;
    let scratch;
    let tree: &Path = if meta.is_dir() {
        source
    } else {
        std::fs::create_dir_all(store.tmp_dir())
            .map_err(|e| LayerError::io("mkdir", store.tmp_dir(), e))?;
        scratch = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(store.tmp_dir())
            .map_err(|e| LayerError::io("mkdir", store.tmp_dir(), e))?;
        let file = File::open(source).map_err(|e| LayerError::io("open", source, e))?;
        apply(file, scratch.path(), &ApplyOptions::default())?;
        scratch.path()
    };
    let writer = LayerWriter::new(opts.compression).epoch(opts.epoch);
    let changeset = crate::Changeset::from_snapshot(crate::scan(tree)?);
    // Pass 1: the diffID alone (tar, no compression, no writes).
    let mut sink = HashSink { hasher: Sha256::new(), len: 0 };
    LayerWriter::new(Compression::None).epoch(opts.epoch).write(&changeset, tree, &mut sink)?;
    let diff_id = Digest::from_sha256(sink.hasher.finalize().into());
    let key = layer_index_key(opts.compression);
    let (layer, layer_written) = match store.find_layer(&diff_id, key)? {
        Some(known) => (
            LayerDescriptor {
                digest: known.digest,
                diff_id,
                size: known.size,
                uncompressed_size: sink.len,
                media_type: opts.compression.media_type(),
            },
            false,
        ),
        None => {
            let desc = crate::write_layer(store, &writer, &changeset, tree)?;
            store.record_layer(&diff_id, key, &desc.digest, desc.size)?;
            (desc, true)
        }
    };
    // The source path stays out of the config: the same tree imported from another directory
    // must give the same image (DESIGN.md decision 7).
    let config = import_config(&layer.diff_id, opts.epoch, "strata import")?;
    let manifest = store.put_image(&config, &[layer_descriptor(&layer)?])?;
    Ok(Imported { manifest, layer, layer_written })
}

/// The key under which the store's layer index records a compressed form of a diffID.
fn layer_index_key(c: Compression) -> &'static str {
    match c {
        Compression::None => "tar",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

/// An OCI descriptor for a written layer.
pub fn layer_descriptor(layer: &LayerDescriptor) -> Result<Descriptor> {
    let media_type = MediaType::from(layer.media_type);
    Ok(Descriptor::new(media_type, layer.size, layer.digest))
}

/// Where an image was found, and the store that holds its blobs.
#[derive(Debug)]
pub struct SourceImage {
    /// The store (the local one, or an opened `oci:` layout, or a scratch layout holding a
    /// `docker-archive`'s blobs).
    pub store: Store,
    /// The image.
    pub image: Image,
    /// The name it was found under, if any (`app:v1`).
    pub name: Option<String>,
    /// Keeps a scratch layout alive as long as the image is used.
    _scratch: Option<tempfile::TempDir>,
}

/// Opens the image at `location` for reading. `local` is this process's store, needed for
/// `name:tag` locations only. A `docker-archive` is unpacked into a scratch layout first (its
/// layers verified against the config's diffIDs); a registry location is not handled here.
pub fn open_source(local: Option<&Store>, location: &ImageLocation) -> Result<SourceImage> {
    match location {
        ImageLocation::Store(reference) => {
            let local = local.ok_or_else(|| LayerError::UnsupportedLocation {
                location: format!("{location} (no local store)"),
            })?;
            let image = local.load_image(reference)?;
            Ok(SourceImage {
                store: local.clone(),
                image,
                name: Some(reference.clone()),
                _scratch: None,
            })
        }
        ImageLocation::Oci { dir, reference } => {
            let store = Store::open(dir)?;
            let (descriptor, name) = select_in_layout(&store, reference.as_deref(), location)?;
            let image = store.image(&descriptor)?;
            Ok(SourceImage { store, image, name, _scratch: None })
        }
        ImageLocation::DockerArchive { path, reference } => {
            let scratch = tempfile::Builder::new()
                .prefix("strata-archive-")
                .tempdir()
                .map_err(|e| LayerError::io("mkdir", std::env::temp_dir(), e))?;
            let store = Store::init(scratch.path())?;
            let (image, name) = read_docker_archive(path, reference.as_deref(), &store)?;
            Ok(SourceImage { store, image, name, _scratch: Some(scratch) })
        }
        ImageLocation::Registry(_) | ImageLocation::Dir(_) => {
            Err(LayerError::UnsupportedLocation { location: location.to_string() })
        }
    }
}

/// Picks the image a reference names in a layout, or the only image when none is given.
fn select_in_layout(
    store: &Store,
    reference: Option<&str>,
    location: &ImageLocation,
) -> Result<(Descriptor, Option<String>)> {
    if let Some(r) = reference {
        return Ok((store.resolve(r)?, Some(r.to_string())));
    }
    let index = store.read_index()?;
    match index.manifests().as_slice() {
        [one] => {
            let name = one
                .annotations()
                .as_ref()
                .and_then(|a| a.get(strata_store::REF_NAME_ANNOTATION))
                .cloned();
            Ok((one.clone(), name))
        }
        many => {
            Err(LayerError::AmbiguousSource { location: location.to_string(), images: many.len() })
        }
    }
}

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
    let path = from.blob_path(&digest);
    let mut reader = decompress(from.open_blob_verified(&digest)?)
        .map_err(|e| LayerError::io("read", &path, e))?;
    let writer = LayerWriter::new(target);
    let mut blob = to.blob_writer()?;
    let mut enc = writer.compressor(&mut blob).map_err(|e| LayerError::io("compress", &path, e))?;
    io::copy(&mut reader, &mut enc).map_err(|e| LayerError::io("recompress", &path, e))?;
    enc.finish().map_err(|e| LayerError::io("compress", &path, e))?;
    let put = blob.commit()?;
    Ok(Descriptor::new(MediaType::from(target.media_type()), put.size, put.digest))
}

/// Copies the image at `location` into `store` and returns it (untagged). The local store as
/// a source is a no-op read.
pub fn load(store: &Store, location: &ImageLocation) -> Result<(Image, CopyReport)> {
    let source = open_source(Some(store), location)?;
    if matches!(location, ImageLocation::Store(_)) {
        return Ok((source.image, CopyReport::default()));
    }
    let (manifest, report) = copy_image(&source.store, &source.image, store, None)?;
    debug_assert_eq!(manifest, source.image.manifest_descriptor);
    Ok((source.image, report))
}

/// One image in a `docker save` archive's `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
struct ArchiveManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Byte ranges of the regular files in a tar, by normalized name.
fn index_tar(path: &Path) -> Result<HashMap<String, (u64, u64)>> {
    let file = File::open(path).map_err(|e| LayerError::io("open", path, e))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut members = HashMap::new();
    let entries = archive.entries().map_err(|e| LayerError::io("read", path, e))?;
    for (i, entry) in entries.enumerate() {
        let entry = entry.map_err(|e| LayerError::ReadArchive { index: i as u64, source: e })?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| LayerError::ReadArchive { index: i as u64, source: e })?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        members.insert(name, (entry.raw_file_position(), entry.size()));
    }
    Ok(members)
}

fn member<'a>(
    file: &'a mut File,
    members: &HashMap<String, (u64, u64)>,
    archive: &Path,
    name: &str,
) -> Result<io::Take<&'a mut File>> {
    let key = name.trim_start_matches("./");
    let &(offset, size) = members.get(key).ok_or_else(|| LayerError::ArchiveMissing {
        archive: archive.to_path_buf(),
        member: name.to_string(),
    })?;
    file.seek(SeekFrom::Start(offset)).map_err(|e| LayerError::io("seek", archive, e))?;
    Ok(file.take(size))
}

/// Reads the image selected by `reference` (a `RepoTags` entry; the only image when `None`)
/// from a `docker save` archive into `store`: config as-is, each layer as stored in the
/// archive (its media type from its first bytes), every layer's uncompressed digest checked
/// against the config's `rootfs.diff_ids`. Returns the image (untagged) and its tag, if any.
pub fn read_docker_archive(
    path: &Path,
    reference: Option<&str>,
    store: &Store,
) -> Result<(Image, Option<String>)> {
    let members = index_tar(path)?;
    let mut file = File::open(path).map_err(|e| LayerError::io("open", path, e))?;
    let mut manifest_bytes = Vec::new();
    member(&mut file, &members, path, "manifest.json")?
        .read_to_end(&mut manifest_bytes)
        .map_err(|e| LayerError::io("read", path, e))?;
    let manifests: Vec<ArchiveManifest> =
        serde_json::from_slice(&manifest_bytes).map_err(|_| LayerError::ArchiveFormat {
            archive: path.to_path_buf(),
            problem: "manifest.json is not a docker-archive manifest list",
        })?;
    let chosen = match reference {
        Some(r) => manifests.iter().find(|m| {
            m.repo_tags.iter().flatten().any(|t| {
                t == r
                    || t.strip_prefix("docker.io/library/") == Some(r)
                    || t.strip_prefix("docker.io/") == Some(r)
            })
        }),
        None if manifests.len() == 1 => manifests.first(),
        None => {
            return Err(LayerError::AmbiguousSource {
                location: format!("docker-archive:{}", path.display()),
                images: manifests.len(),
            })
        }
    }
    .ok_or_else(|| LayerError::ArchiveMissing {
        archive: path.to_path_buf(),
        member: format!("an image tagged {}", reference.unwrap_or("")),
    })?;

    let mut config_bytes = Vec::new();
    member(&mut file, &members, path, &chosen.config)?
        .read_to_end(&mut config_bytes)
        .map_err(|e| LayerError::io("read", path, e))?;
    let config: ImageConfiguration =
        serde_json::from_slice(&config_bytes).map_err(|_| LayerError::ArchiveFormat {
            archive: path.to_path_buf(),
            problem: "the image config is not valid JSON of an image config",
        })?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != chosen.layers.len() {
        return Err(LayerError::ArchiveFormat {
            archive: path.to_path_buf(),
            problem: "the number of layers differs from the config's rootfs.diff_ids",
        });
    }
    let mut layers = Vec::with_capacity(chosen.layers.len());
    for (i, name) in chosen.layers.iter().enumerate() {
        let expected: Digest = diff_ids[i].parse().map_err(StoreError::from)?;
        // Store the member as it is, hashing it, then check its uncompressed digest.
        let put = store.put_blob(member(&mut file, &members, path, name)?)?;
        let mut head = [0u8; 4];
        let n = store
            .open_blob(&put.digest)?
            .read(&mut head)
            .map_err(|e| LayerError::io("read", store.blob_path(&put.digest), e))?;
        let media_type = match &head[..n] {
            [0x1f, 0x8b, ..] => MediaType::ImageLayerGzip,
            [0x28, 0xb5, 0x2f, 0xfd] => MediaType::ImageLayerZstd,
            _ => MediaType::ImageLayer,
        };
        let found = if media_type == MediaType::ImageLayer {
            put.digest
        } else {
            let blob = store.open_blob(&put.digest)?;
            let mut reader = decompress(blob).map_err(|e| LayerError::io("read", path, e))?;
            let mut sink = HashSink { hasher: Sha256::new(), len: 0 };
            io::copy(&mut reader, &mut sink).map_err(|e| LayerError::io("read", path, e))?;
            Digest::from_sha256(sink.hasher.finalize().into())
        };
        if found != expected {
            return Err(LayerError::DiffIdMismatch { layer: i, expected, found });
        }
        layers.push(Descriptor::new(media_type, put.size, put.digest));
    }
    let config_put = store.put_blob(config_bytes.as_slice())?;
    let manifest = store.put_image_with_config(&config_put.digest, config_put.size, &layers)?;
    let image = store.image(&manifest)?;
    let name =
        reference.map(str::to_string).or_else(|| chosen.repo_tags.iter().flatten().next().cloned());
    Ok((image, name))
}

/// What [`export`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Blobs written (or files, for `dir:`).
    pub items: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Writes `source` to `dest`: `oci:DIR[:REF]` (blobs copied, tagged `REF` or the source name
/// or `latest`; layers recompressed when `compression` asks for it), `docker-archive:FILE[:REF]`
/// (loadable by `docker load`; layers always uncompressed), or `dir:PATH` (the flattened root
/// filesystem; PATH must be absent or empty).
pub fn export(
    source: &SourceImage,
    dest: &ImageLocation,
    compression: Option<Compression>,
) -> Result<ExportReport> {
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
            })
        }
        ImageLocation::DockerArchive { path, reference } => {
            let tag = reference.clone().or_else(|| source.name.clone());
            write_docker_archive(source, path, tag.as_deref())
        }
        ImageLocation::Dir(path) => flatten(source, path),
        ImageLocation::Store(_) | ImageLocation::Registry(_) => {
            Err(LayerError::UnsupportedLocation { location: dest.to_string() })
        }
    }
}

/// Applies every layer in order onto `path`, checking each layer's diffID against the config.
pub fn flatten(source: &SourceImage, path: &Path) -> Result<ExportReport> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(LayerError::DestinationNotEmpty { path: path.to_path_buf() });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|e| LayerError::io("mkdir", path, e))?
        }
        Err(e) => return Err(LayerError::io("read", path, e)),
    }
    let diff_ids = source.image.config.rootfs().diff_ids();
    let mut report = ExportReport::default();
    for (i, layer) in source.image.manifest.layers().iter().enumerate() {
        let digest = desc_digest(layer)?;
        let blob = source.store.open_blob_verified(&digest)?;
        let applied = apply(blob, path, &ApplyOptions::default())?;
        let expected: Option<Digest> = diff_ids.get(i).and_then(|d| d.parse().ok());
        if let (Some(expected), Some(found)) = (expected, applied.diff_id) {
            if expected != found {
                return Err(LayerError::DiffIdMismatch { layer: i, expected, found });
            }
        }
        report.items += applied.entries;
        report.bytes += applied.bytes;
    }
    Ok(report)
}

/// Appends a regular-file member with fixed metadata (root-owned, 0644, mtime 0), so the
/// archive's bytes depend only on the image.
fn append_member<W: Write>(
    builder: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    builder.append_data(&mut header, name, data)
}

fn append_dir<W: Write>(builder: &mut tar::Builder<W>, name: &str) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    header.set_mode(0o755);
    header.set_mtime(0);
    builder.append_data(&mut header, name, io::empty())
}

/// Writes a `docker save`-format archive: `manifest.json`, `<config-hex>.json`,
/// `<diffid-hex>/layer.tar` (uncompressed), and `repositories` when tagged.
fn write_docker_archive(
    source: &SourceImage,
    path: &Path,
    tag: Option<&str>,
) -> Result<ExportReport> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let out =
        tempfile::NamedTempFile::new_in(parent).map_err(|e| LayerError::io("create", parent, e))?;
    let werr = |e: io::Error| LayerError::Write { path: path.to_path_buf(), source: e };
    let mut builder = tar::Builder::new(io::BufWriter::new(out));
    builder.sparse(false);
    let image = &source.image;
    let config_digest = desc_digest(image.manifest.config())?;
    let config_name = format!("{}.json", config_digest.hex());
    let config_bytes = source.store.read_blob(&config_digest)?;
    let mut report = ExportReport::default();
    let mut layer_names = Vec::new();
    let diff_ids = image.config.rootfs().diff_ids();
    for (i, layer) in image.manifest.layers().iter().enumerate() {
        let digest = desc_digest(layer)?;
        // The tar header needs the size first: decompress into a scratch file while hashing.
        let mut scratch =
            tempfile::tempfile_in(parent).map_err(|e| LayerError::io("create", parent, e))?;
        let blob = source.store.open_blob_verified(&digest)?;
        let mut reader = decompress(blob)
            .map_err(|e| LayerError::io("read", source.store.blob_path(&digest), e))?;
        let mut tee = TeeHash { inner: &mut scratch, hasher: Sha256::new(), len: 0 };
        io::copy(&mut reader, &mut tee)
            .map_err(|e| LayerError::io("read", source.store.blob_path(&digest), e))?;
        let (diff_id, size) = (Digest::from_sha256(tee.hasher.finalize().into()), tee.len);
        if let Some(expected) = diff_ids.get(i).and_then(|d| d.parse::<Digest>().ok()) {
            if expected != diff_id {
                return Err(LayerError::DiffIdMismatch { layer: i, expected, found: diff_id });
            }
        }
        scratch.seek(SeekFrom::Start(0)).map_err(werr)?;
        let dir = diff_id.hex();
        let name = format!("{dir}/layer.tar");
        if !layer_names.contains(&name) {
            append_dir(&mut builder, &format!("{dir}/")).map_err(werr)?;
            append_member(&mut builder, &name, size, scratch).map_err(werr)?;
            report.items += 1;
            report.bytes += size;
        }
        layer_names.push(name);
    }
    append_member(&mut builder, &config_name, config_bytes.len() as u64, config_bytes.as_slice())
        .map_err(werr)?;
    let repo_tags = tag.map(|t| vec![docker_tag(t)]);
    let manifest = vec![ArchiveManifest {
        config: config_name,
        repo_tags: repo_tags.clone(),
        layers: layer_names.clone(),
    }];
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| build_err("docker-archive manifest", e))?;
    append_member(
        &mut builder,
        "manifest.json",
        manifest_bytes.len() as u64,
        manifest_bytes.as_slice(),
    )
    .map_err(werr)?;
    if let (Some(t), Some(top)) = (repo_tags.as_ref().and_then(|t| t.first()), layer_names.last()) {
        if let Some((repo, tag)) = t.rsplit_once(':') {
            let top_id = top.trim_end_matches("/layer.tar");
            let repos = serde_json::json!({ repo: { tag: top_id } });
            let bytes = serde_json::to_vec(&repos)
                .map_err(|e| build_err("docker-archive repositories", e))?;
            append_member(&mut builder, "repositories", bytes.len() as u64, bytes.as_slice())
                .map_err(werr)?;
        }
    }
    let file =
        builder.into_inner().map_err(werr)?.into_inner().map_err(|e| werr(e.into_error()))?;
    file.as_file().sync_all().map_err(werr)?;
    file.persist(path).map_err(|e| werr(e.error))?;
    report.items += 2;
    report.bytes += config_bytes.len() as u64 + manifest_bytes.len() as u64;
    Ok(report)
}

/// `name` or `name:tag` as Docker writes `RepoTags` (tag defaults to `latest`).
fn docker_tag(t: &str) -> String {
    let last = t.rsplit('/').next().unwrap_or(t);
    if last.contains(':') {
        t.to_string()
    } else {
        format!("{t}:latest")
    }
}

struct TeeHash<'a, W: Write> {
    inner: &'a mut W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for TeeHash<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(format_created(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_created(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_created(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn docker_tags_get_latest() {
        assert_eq!(docker_tag("app"), "app:latest");
        assert_eq!(docker_tag("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(docker_tag("app:v1"), "app:v1");
    }
}
