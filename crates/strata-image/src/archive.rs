//! `docker-archive`: Docker's `docker save` format (`manifest.json` naming a config file and
//! one tar per layer).
//!
//! Reading indexes the tarball once, then reads its members by offset; layers are stored as
//! they are (uncompressed or gzip) and their diffIDs checked against the config before
//! anything is tagged. Writing makes an archive that `docker load` and `skopeo` accept: layers
//! uncompressed, as Docker expects, so each `layer.tar` hashes to its diffID.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use strata_layer::{decompress, LayerError};
use strata_store::oci_spec::image::{Descriptor, ImageConfiguration, MediaType};
use strata_store::{Image, Store, StoreError};
use strata_types::Digest;

use crate::config::build_err;
use crate::desc_digest;
use crate::error::{ImageError, Result};
use crate::export::ExportReport;
use crate::import::HashSink;
use crate::open::OpenedImage;

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
    let file = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut members = HashMap::new();
    let entries = archive.entries().map_err(|e| ImageError::io("read", path, e))?;
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
    let &(offset, size) = members.get(key).ok_or_else(|| ImageError::ArchiveMissing {
        archive: archive.to_path_buf(),
        member: name.to_string(),
    })?;
    file.seek(SeekFrom::Start(offset)).map_err(|e| ImageError::io("seek", archive, e))?;
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
    let mut file = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
    let mut manifest_bytes = Vec::new();
    member(&mut file, &members, path, "manifest.json")?
        .read_to_end(&mut manifest_bytes)
        .map_err(|e| ImageError::io("read", path, e))?;
    let manifests: Vec<ArchiveManifest> =
        serde_json::from_slice(&manifest_bytes).map_err(|_| ImageError::ArchiveFormat {
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
            return Err(ImageError::AmbiguousSource {
                location: format!("docker-archive:{}", path.display()),
                images: manifests.len(),
            })
        }
    }
    .ok_or_else(|| ImageError::ArchiveMissing {
        archive: path.to_path_buf(),
        member: format!("an image tagged {}", reference.unwrap_or("")),
    })?;

    let mut config_bytes = Vec::new();
    member(&mut file, &members, path, &chosen.config)?
        .read_to_end(&mut config_bytes)
        .map_err(|e| ImageError::io("read", path, e))?;
    let config: ImageConfiguration =
        serde_json::from_slice(&config_bytes).map_err(|_| ImageError::ArchiveFormat {
            archive: path.to_path_buf(),
            problem: "the image config is not valid JSON of an image config",
        })?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != chosen.layers.len() {
        return Err(ImageError::ArchiveFormat {
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
            .map_err(|source| ImageError::ReadBlob { digest: put.digest, source })?;
        let media_type = match &head[..n] {
            [0x1f, 0x8b, ..] => MediaType::ImageLayerGzip,
            [0x28, 0xb5, 0x2f, 0xfd] => MediaType::ImageLayerZstd,
            _ => MediaType::ImageLayer,
        };
        let found = if media_type == MediaType::ImageLayer {
            put.digest
        } else {
            let blob = store.open_blob(&put.digest)?;
            let mut reader = decompress(blob).map_err(|e| ImageError::io("read", path, e))?;
            let mut sink = HashSink { hasher: Sha256::new(), len: 0 };
            io::copy(&mut reader, &mut sink).map_err(|e| ImageError::io("read", path, e))?;
            Digest::from_sha256(sink.hasher.finalize().into())
        };
        if found != expected {
            return Err(ImageError::DiffIdMismatch { layer: i, expected, found });
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
pub(crate) fn write_docker_archive(
    source: &OpenedImage,
    path: &Path,
    tag: Option<&str>,
) -> Result<ExportReport> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let out =
        tempfile::NamedTempFile::new_in(parent).map_err(|e| ImageError::io("create", parent, e))?;
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
            tempfile::tempfile_in(parent).map_err(|e| ImageError::io("create", parent, e))?;
        let blob = source.store.open_blob_verified(&digest)?;
        let mut reader =
            decompress(blob).map_err(|e| ImageError::read_stored_blob(&source.store, digest, e))?;
        let mut tee = TeeHash { inner: &mut scratch, hasher: Sha256::new(), len: 0 };
        io::copy(&mut reader, &mut tee)
            .map_err(|e| ImageError::read_stored_blob(&source.store, digest, e))?;
        let (diff_id, size) = (Digest::from_sha256(tee.hasher.finalize().into()), tee.len);
        if let Some(expected) = diff_ids.get(i).and_then(|d| d.parse::<Digest>().ok()) {
            if expected != diff_id {
                return Err(ImageError::DiffIdMismatch { layer: i, expected, found: diff_id });
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
    fn docker_tags_get_latest() {
        assert_eq!(docker_tag("app"), "app:latest");
        assert_eq!(docker_tag("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(docker_tag("app:v1"), "app:v1");
    }
}
