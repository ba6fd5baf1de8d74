//! Layer tables of contents: which blob lists a layer's entries (strata-layer's listing of its
//! unpacked tree, without file bytes), by the layer's diffID. strata-build makes one per layer
//! a `--cache-to` exports, and takes them from a `--cache-from` index, so that a runner can
//! stand a layer in by its listing until a step reads the layer's files.

use std::fs;
use std::path::PathBuf;

use oci_spec::image::{Descriptor, MediaType};
use strata_types::Digest;

use crate::blob::{remove_file_if_exists, write_atomic};
use crate::error::StoreError;
use crate::gc::read_dir_if_exists;
use crate::store::Store;
use crate::tables::cache_index::LAYER_TOC_MEDIA_TYPE;

/// Versioned directory of the table under `strata/v1/`.
const DIR: &str = "layer-tocs-v1";

impl Store {
    fn toc_path(&self, diff_id: &Digest) -> PathBuf {
        self.meta_dir().join(DIR).join(diff_id.hex())
    }

    /// The table of contents of the layer `diff_id`, when one is recorded and its blob is
    /// stored with the recorded size.
    pub fn layer_toc(&self, diff_id: &Digest) -> Option<Descriptor> {
        let text = fs::read_to_string(self.toc_path(diff_id)).ok()?;
        let (digest, size) = text.trim().split_once(' ')?;
        let (digest, size): (Digest, u64) = (digest.parse().ok()?, size.parse().ok()?);
        (self.blob_size(&digest).ok()? == size).then(|| {
            Descriptor::new(MediaType::Other(LAYER_TOC_MEDIA_TYPE.to_string()), size, digest)
        })
    }

    /// Records `toc` (a stored blob) as the table of contents of the layer `diff_id`.
    pub fn set_layer_toc(&self, diff_id: &Digest, toc: &Descriptor) -> Result<(), StoreError> {
        let path = self.toc_path(diff_id);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
        }
        self.ensure_meta_dirs()?;
        let text = format!("{} {}\n", toc.digest(), toc.size());
        write_atomic(&self.tmp_dir(), &path, text.as_bytes())
    }
}

/// Removes the records whose table of contents is no longer stored (gc keeps the table of
/// every layer it keeps). Files with other names are left alone.
pub(crate) fn sweep_layer_tocs(store: &Store) -> Result<usize, StoreError> {
    let dir = store.meta_dir().join(DIR);
    let Some(entries) = read_dir_if_exists(&dir)? else { return Ok(0) };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(StoreError::io(&dir))?;
        let Some(diff_id) = entry.file_name().to_str().and_then(|n| Digest::from_hex(n).ok())
        else {
            continue;
        };
        if store.layer_toc(&diff_id).is_none() && remove_file_if_exists(&entry.path())? {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_toc_is_known_while_its_blob_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path()).unwrap();
        let diff_id = Digest::of_bytes(b"layer tar");
        assert!(store.layer_toc(&diff_id).is_none());
        let put = store.put_blob(&b"entry d 755 0 0 0 0 0 0 - - - etc\n"[..]).unwrap();
        let toc =
            Descriptor::new(MediaType::Other(LAYER_TOC_MEDIA_TYPE.into()), put.size, put.digest);
        store.set_layer_toc(&diff_id, &toc).unwrap();
        assert_eq!(store.layer_toc(&diff_id), Some(toc));
        std::fs::remove_file(dir.path().join("blobs/sha256").join(put.digest.hex())).unwrap();
        assert!(store.layer_toc(&diff_id).is_none(), "a toc whose blob is gone is none");
    }
}
