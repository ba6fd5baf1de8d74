//! `import`: a directory or a tar made into a one-layer image, as `docker import` does.
//!
//! To make re-importing an unchanged tree cost a scan and a hash, not a compression and a
//! write, the uncompressed tar is hashed first (its diffID) and looked up in the store's layer
//! index; only a miss compresses and writes.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};
use strata_layer::{apply, ApplyOptions};
use strata_layer::{Compression, LayerDescriptor, LayerWriter};
use strata_store::oci_spec::image::Descriptor;
use strata_store::Store;
use strata_types::Digest;

use crate::config::import_config;
use crate::error::{ImageError, Result};

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

/// `$SOURCE_DATE_EPOCH` as seconds since the epoch: `None` when unset or empty (as
/// BuildKit and `docker buildx` treat an empty one), an error when it is not a number.
/// The default timestamp of imports and builds (DESIGN.md decision 7).
pub fn source_date_epoch() -> Result<Option<i64>> {
    let Some(value) = std::env::var_os("SOURCE_DATE_EPOCH") else { return Ok(None) };
    let value = value.to_string_lossy();
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| ImageError::InvalidSourceDateEpoch { value: value.to_string() })
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

/// A `Write` that only hashes and counts.
pub(crate) struct HashSink {
    pub(crate) hasher: Sha256,
    pub(crate) len: u64,
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
    let meta = std::fs::metadata(source).map_err(|e| ImageError::io("stat", source, e))?;
    let scratch;
    let tree: &Path = if meta.is_dir() {
        source
    } else {
        scratch = store.work_dir("import-")?;
        let file = File::open(source).map_err(|e| ImageError::io("open", source, e))?;
        apply(file, scratch.path(), &ApplyOptions::default())?;
        scratch.path()
    };
    let writer = LayerWriter::new(opts.compression).epoch(opts.epoch);
    let changeset = strata_layer::Changeset::of_dir(tree)?;
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
                times: Default::default(),
            },
            false,
        ),
        None => {
            let desc = strata_layer::write_layer(store, &writer, &changeset, tree)?;
            store.record_layer(&diff_id, key, &desc.digest, desc.size)?;
            (desc, true)
        }
    };
    // The source path stays out of the config: the same tree imported from another directory
    // must give the same image (DESIGN.md decision 7).
    let config = import_config(&layer.diff_id, opts.epoch, "strata import")?;
    let manifest = store.put_image(&config, &[layer.descriptor()])?;
    Ok(Imported { manifest, layer, layer_written })
}

/// The key under which the store's layer index records a compressed form of a diffID.
fn layer_index_key(c: Compression) -> &'static str {
    c.name()
}
