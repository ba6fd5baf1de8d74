//! The step cache: a step whose inputs are unchanged reuses the layer it made last time.
//!
//! A step's result depends on the filesystem it starts from and on what it reads, so its key
//! is the SHA-256 of the versioned prefix [`KEY_PREFIX`] followed by a canonical JSON document
//! holding exactly that, never times or history (DESIGN.md decision 6):
//! - every key: the step kind, the diffIDs of the parent chain (content: the same files
//!   reached another way hit too) and the layer writer settings (timestamp, compression with
//!   its parameters: `LayerWriter::compression_id`);
//! - RUN: the argv (heredoc bodies included), the environment with the ARGs in scope, user,
//!   working directory, network, the `--mount` specs, and for bind mounts the content of what
//!   is mounted (a stage's or image's diffIDs; for the context, the digest of the mounted
//!   tree: paths, types, modes, owners, link targets, bytes). Secret values and cache-mount
//!   contents never enter a key, as in BuildKit;
//! - COPY/ADD: the instruction as expanded (sources, dest, every flag: chown, chmod, from,
//!   exclude, parents, link, checksum, unpack), WORKDIR when the dest is relative (USER does
//!   not matter: files are owned by `--chown` or 0:0), and per source: for the context, each
//!   expanded match and the digest of its tree ([`crate::context_hash`]: relative paths, types,
//!   modes, link targets, bytes and the mtime the layer keeps, i.e. clamped to the timestamp,
//!   never raw mtimes; owners are left out because they never reach the layer); `--from`: the
//!   stage's or image's diffIDs; ADD URLs: `--checksum` if given, else the fetched bytes;
//!   heredocs: their content;
//! - WORKDIR that creates its directory: the path and the USER owning it.
//!
//! Entries live in `<store>/strata/v1/cache-v1/<kind>/<key>` as small JSON files naming the
//! layer blob; an entry whose blob is gone (gc) is a miss and `Store::gc` removes it. Entries
//! are written atomically (temp file and rename) and a failure to write one never fails a
//! build. A change of the key format must bump [`KEY_PREFIX`] (and the directory), so an old
//! entry can never be a wrong hit.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use strata_store::oci_spec::image::{Descriptor, MediaType};
use strata_store::Store;
use strata_types::Digest;

use crate::image::LayerRef;

#[derive(Serialize, Deserialize)]
struct Entry {
    digest: Digest,
    diff_id: Digest,
    size: u64,
    media_type: String,
}

/// Hashed in front of every key document; bump it with any change of the key format.
pub(crate) const KEY_PREFIX: &str = "cache-v1";

/// The kinds of cached steps (subdirectories of `cache-v1/`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Run,
    Copy,
    Workdir,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Run => "run",
            Kind::Copy => "copy",
            Kind::Workdir => "workdir",
        }
    }
}

fn entry_path(store: &Store, kind: Kind, key: &Digest) -> PathBuf {
    store.meta_dir().join(KEY_PREFIX).join(kind.dir()).join(key.hex())
}

/// The key of a document: the prefix, a NUL, then canonical JSON (field order cannot matter).
pub(crate) fn key_of(doc: &serde_json::Value) -> Option<Digest> {
    let json = strata_store::canonical_json(doc).ok()?;
    let mut bytes = Vec::with_capacity(json.len() + KEY_PREFIX.len() + 1);
    bytes.extend_from_slice(KEY_PREFIX.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&json);
    Some(Digest::of_bytes(&bytes))
}

/// The cached layer for `key`, if its blob is still in the store.
pub(crate) fn lookup(store: &Store, kind: Kind, key: &Digest) -> Option<(LayerRef, u64)> {
    let bytes = fs::read(entry_path(store, kind, key)).ok()?;
    let e: Entry = serde_json::from_slice(&bytes).ok()?;
    if store.blob_size(&e.digest).ok()? != e.size {
        return None;
    }
    let descriptor = Descriptor::new(MediaType::from(e.media_type.as_str()), e.size, e.digest);
    Some((LayerRef { descriptor, diff_id: e.diff_id }, e.size))
}

/// Remembers `layer` as the result of `key` (best effort).
pub(crate) fn record(store: &Store, kind: Kind, key: &Digest, layer: &LayerRef, size: u64) {
    let Ok(digest) = layer.digest() else { return };
    let entry = Entry {
        digest,
        diff_id: layer.diff_id,
        size,
        media_type: layer.descriptor.media_type().to_string(),
    };
    let path = entry_path(store, kind, key);
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
