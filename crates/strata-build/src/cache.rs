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
//! Entries live in the store's build-cache index (`Store::cache_get`/`cache_put`), which
//! names the layer blob; an entry whose blob is gone (gc) is a miss. A failure to write one
//! never fails a build. A change of the key format must bump [`KEY_PREFIX`], so an old entry
//! can never be a wrong hit.

use strata_store::{CacheEntry, CacheKey, Store};
use strata_types::Digest;

pub(crate) use strata_store::CacheKind as Kind;

use crate::image::LayerRef;

/// Hashed in front of every key document; bump it with any change of the key format.
pub(crate) const KEY_PREFIX: &str = "cache-v1";

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
    let e = store.cache_get(&CacheKey { kind, digest: *key })?;
    let size = e.layer.size();
    Some((LayerRef { descriptor: e.layer, diff_id: e.diff_id, image: None }, size))
}

/// Remembers `layer` as the result of `key` (best effort: a failure costs a rebuild later).
pub(crate) fn record(store: &Store, kind: Kind, key: &Digest, layer: &LayerRef) {
    let entry = CacheEntry { layer: layer.descriptor.clone(), diff_id: layer.diff_id };
    let _ = store.cache_put(&CacheKey { kind, digest: *key }, &entry);
}
