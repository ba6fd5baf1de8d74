//! The RUN cache: a step whose inputs are unchanged reuses the layer it made last time.
//!
//! A RUN's result depends on the filesystem it starts from, the command, and what the command
//! can see; so its key is the SHA-256 of a canonical JSON document holding exactly that: the
//! diffIDs of the parent chain (content, not history: the same files reached another way hit
//! too), the argv (heredoc bodies included), the environment with the ARGs in scope, user,
//! working directory, network, the `--mount` specs and, for bind mounts from a stage or an
//! image, that source's diffIDs, plus the layer writer settings (timestamp, compression).
//! Secret values and cache-mount contents are not inputs, as in BuildKit. A RUN that
//! bind-mounts the build context is never cached (its inputs would have to be hashed first).
//!
//! Entries live in `<store>/strata/v1/cache-v1/run/<key>` as small JSON files naming the layer
//! blob; an entry whose blob is gone (gc) is a miss. Entries are written atomically (temp file
//! and rename) and a failure to write one never fails a build.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use strata_store::oci_spec::image::{Descriptor, MediaType};
use strata_store::{Digest, Store};

use crate::image::LayerRef;

#[derive(Serialize, Deserialize)]
struct Entry {
    digest: Digest,
    diff_id: Digest,
    size: u64,
    media_type: String,
}

fn entry_path(store: &Store, key: &Digest) -> PathBuf {
    store.meta_dir().join("cache-v1").join("run").join(key.hex())
}

/// The key of a document (canonical JSON, so field order cannot matter).
pub(crate) fn key_of(doc: &serde_json::Value) -> Option<Digest> {
    strata_store::canonical_json(doc).ok().map(|b| Digest::of_bytes(&b))
}

/// The cached layer for `key`, if its blob is still in the store.
pub(crate) fn lookup(store: &Store, key: &Digest) -> Option<(LayerRef, u64)> {
    let bytes = fs::read(entry_path(store, key)).ok()?;
    let e: Entry = serde_json::from_slice(&bytes).ok()?;
    if store.blob_size(&e.digest).ok()? != e.size {
        return None;
    }
    let descriptor = Descriptor::new(MediaType::from(e.media_type.as_str()), e.size, e.digest);
    Some((LayerRef { descriptor, diff_id: e.diff_id }, e.size))
}

/// Remembers `layer` as the result of `key` (best effort).
pub(crate) fn record(store: &Store, key: &Digest, layer: &LayerRef, size: u64) {
    let Ok(digest) = layer.digest() else { return };
    let entry = Entry {
        digest,
        diff_id: layer.diff_id,
        size,
        media_type: layer.descriptor.media_type().to_string(),
    };
    let path = entry_path(store, key);
    let Some(dir) = path.parent() else { return };
    if fs::create_dir_all(dir).is_err() {
        return;
    }
    let Ok(bytes) = serde_json::to_vec(&entry) else { return };
    let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) else { return };
    if tmp.write_all(&bytes).is_ok() {
        let _ = tmp.persist(&path);
    }
}
