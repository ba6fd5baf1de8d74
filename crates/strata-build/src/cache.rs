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
//!   tree: paths, types, modes, owners, link targets, bytes), and `--add-host`, `--ulimit`,
//!   `--shm-size` and `--security=insecure` when given. Secret values and cache-mount
//!   contents never enter a key, as in BuildKit;
//! - COPY/ADD: the instruction as expanded (sources, dest, every flag: chown, chmod, from,
//!   exclude, parents, link, checksum, unpack), WORKDIR when the dest is relative (USER does
//!   not matter: files are owned by `--chown` or 0:0), and per source: for the context, each
//!   expanded match and the digest of its tree ([`crate::context_hash`]: relative paths, types,
//!   modes, link targets, bytes and the mtime the layer keeps, i.e. clamped to the timestamp,
//!   never raw mtimes; owners are left out because they never reach the layer); `--from`: the
//!   stage's or image's diffIDs; ADD URLs: `--checksum` if given, else the fetched bytes;
//!   ADD of a git URL: the commit its ref resolves to (`git`; the ref, subdirectory and
//!   `--keep-git-dir` are in the instruction); heredocs: their content;
//! - WORKDIR that creates its directory: the path and the USER owning it.
//!
//! Entries live in the store's build-cache index (`Store::cache_get`/`cache_put`), which
//! names the layer blob; an entry whose blob is gone (gc) is a miss. A failure to write one
//! never fails a build. A change of the key format must bump [`KEY_PREFIX`], so an old entry
//! can never be a wrong hit.

use strata_store::{CacheEntry, CacheInputs, CacheKey, Store};
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

/// A step's cache key and what went into it, field by field (to explain a miss).
pub(crate) struct StepKey {
    /// The key; `None` when the step cannot be cached.
    pub digest: Option<Digest>,
    /// The key document's fields as digests.
    pub inputs: CacheInputs,
}

impl StepKey {
    /// The key of `doc` and its fields' digests.
    pub fn of(doc: serde_json::Map<String, serde_json::Value>) -> StepKey {
        let digest_of = |v: &serde_json::Value| {
            strata_store::canonical_json(v).ok().map(|j| Digest::of_bytes(&j))
        };
        let fields = doc
            .iter()
            .map(|(name, value)| {
                let digests = match value {
                    serde_json::Value::Array(items) => items.iter().filter_map(digest_of).collect(),
                    other => digest_of(other).into_iter().collect(),
                };
                (name.clone(), digests)
            })
            .collect();
        StepKey { digest: key_of(&serde_json::Value::Object(doc)), inputs: CacheInputs { fields } }
    }
}

/// What a step position is, for [`Store::cache_note_step`]: the context, the recipe, the
/// platform, the stage and the step. The same recipe built again from the same place finds
/// what its step made last time.
pub(crate) fn locator(context: &std::path::Path, recipe: &std::path::Path, at: &str) -> Digest {
    let canonical = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.into());
    let text = format!(
        "step-locator-v1\0{}\0{}\0{at}",
        canonical(context).display(),
        canonical(recipe).display()
    );
    Digest::of_bytes(text.as_bytes())
}

/// Why the step at `locator` with `key` missed, against the entry that step position made
/// last (one line, for `--progress plain`): which inputs differ, with the context files
/// whose content changed when the sources did.
pub(crate) fn explain_miss(
    store: &Store,
    locator: &Digest,
    key: &StepKey,
    kind: Kind,
    changed: &crate::context_hash::FileCount,
) -> String {
    let Some(digest) = key.digest else { return "this step cannot be cached".into() };
    let Some(last) = store.cache_step(locator) else {
        return "not built from this context and recipe before".into();
    };
    let gone = "its cached layer is gone (gc, prune or rmi removed it)";
    if last == (CacheKey { kind, digest }) {
        return gone.into();
    }
    if !store.cache_entry_exists(&last) {
        return format!("its inputs changed, and {gone}, so which input is unknown");
    }
    let Some(before) = store.cache_inputs(&last) else {
        return "its inputs changed (the earlier result recorded no details)".into();
    };
    let now = &key.inputs.fields;
    let mut differ: Vec<&str> = now
        .keys()
        .chain(before.fields.keys())
        .filter(|f| now.get(*f) != before.fields.get(*f))
        .map(String::as_str)
        .collect();
    differ.sort_by_key(|f| (FIELD_ORDER.iter().position(|o| o == f).unwrap_or(usize::MAX), *f));
    differ.dedup();
    if differ.is_empty() {
        return "its cached layer is gone".into();
    }
    let only_parent = differ == ["parent"];
    let mut reasons: Vec<String> = differ
        .into_iter()
        .filter(|f| only_parent || *f != "parent")
        .map(|f| match f {
            "sources" if changed.changed_total > 0 => {
                let shown = &changed.changed;
                let more = changed.changed_total.saturating_sub(shown.len() as u64);
                let more = if more > 0 { format!(" and {more} more") } else { String::new() };
                format!("source files changed: {}{more}", shown.join(", "))
            }
            "sources" => "its sources changed (new, removed or renamed files, or modes)".into(),
            "spec" | "argv" | "heredocs" => "the instruction changed".into(),
            "from" => "the --from stage or image changed".into(),
            "bind_inputs" => "the content of a bind mount changed".into(),
            "mounts" => "its --mount options changed".into(),
            "env" => "the environment or build args changed".into(),
            "user" => "USER changed".into(),
            "cwd" | "workdir" => "WORKDIR changed".into(),
            "path" | "owner" => "the directory or its owner changed".into(),
            "network" => "the network mode changed".into(),
            "extra_hosts" => "--add-host changed".into(),
            "git" => "a git source's ref names another commit".into(),
            "ulimits" => "--ulimit changed".into(),
            "shm_size" => "--shm-size changed".into(),
            "insecure" => "RUN --security=insecure changed".into(),
            "timestamp" => "the timestamp (SOURCE_DATE_EPOCH or --timestamp) changed".into(),
            "platform" => "the platform changed".into(),
            "compression" => "the layer compression changed".into(),
            "parent" => "an earlier step changed (the layers below differ)".into(),
            other => format!("{other} changed"),
        })
        .collect();
    reasons.dedup();
    reasons.join("; ")
}

/// The order reasons are given in: what the user edits first, the parent chain last.
const FIELD_ORDER: [&str; 24] = [
    "kind",
    "spec",
    "argv",
    "heredocs",
    "sources",
    "git",
    "from",
    "bind_inputs",
    "mounts",
    "env",
    "user",
    "cwd",
    "workdir",
    "path",
    "owner",
    "network",
    "extra_hosts",
    "ulimits",
    "shm_size",
    "insecure",
    "timestamp",
    "platform",
    "compression",
    "parent",
];

/// The cached layer for `key`, if its blob is still in the store.
pub(crate) fn lookup(store: &Store, kind: Kind, key: &Digest) -> Option<(LayerRef, u64)> {
    let e = store.cache_get(&CacheKey { kind, digest: *key })?;
    let size = e.layer.size();
    Some((LayerRef { descriptor: e.layer, diff_id: e.diff_id, image: None }, size))
}

/// Remembers `layer` as the result of `key` with what went into it, and that the step at
/// `locator` made it (best effort: a failure costs a rebuild or a less explained miss).
pub(crate) fn record(store: &Store, kind: Kind, key: &StepKey, locator: &Digest, layer: &LayerRef) {
    let Some(digest) = key.digest else { return };
    let entry = CacheEntry { layer: layer.descriptor.clone(), diff_id: layer.diff_id };
    let key_ = CacheKey { kind, digest };
    if store.cache_put_with_inputs(&key_, &entry, Some(&key.inputs)).is_ok() {
        let _ = store.cache_note_step(locator, &key_);
    }
}
