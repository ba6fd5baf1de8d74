//! The build cache beyond one store: `--cache-from` imports, `--cache-to` exports, `--push`.
//!
//! A cache travels as an OCI artifact (strata-store's [`CacheIndex`] and its
//! `artifact_manifest`): in a registry (`type=registry`, strata-registry's `push_cache` and
//! `pull_cache`) or in an OCI layout directory (`type=local`). Import reads only the index of
//! each source at the start of the build; entries are merged into the store's cache table one
//! at a time, when a step's key is found in an index and its layer blob has been fetched
//! (verified) into the store. So a layer is downloaded only for a step that hits, but then
//! always, even when no later step reads its files (lazy layers are not done yet). A source
//! that cannot be read (404, not a cache, another format version, a malformed index) is one
//! warning and no entries; an entry whose blob is gone is a warning and a miss: never an
//! error, never a wrong layer.
//!
//! Export happens after the image is built (and pushed): `mode=min` takes the entries of the
//! steps of the target stage and of the stages it is based on (`FROM <stage>`), i.e. the
//! layers of the final image; `mode=max` those of every stage built.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use strata_store::oci_spec::image::Descriptor;

use strata_registry::{Client, RemoteCache};
use strata_store::{CacheEntry, CacheIndex, CacheKey, Store, CACHE_ARTIFACT_TYPE};
use strata_types::{Digest, Reference};

use crate::error::{BuildError, Result};
use crate::options::BuildOptions;
use crate::progress::{BuildEvent, ProgressSink};

/// Which steps `--cache-to` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CacheMode {
    /// The steps whose layers are in the final image (BuildKit's default).
    #[default]
    Min,
    /// Every step of every stage built.
    Max,
}

/// Where a cache is: a registry artifact or an OCI layout directory.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheLocation {
    /// `type=registry,ref=HOST/REPO:TAG` (or just `HOST/REPO:TAG`).
    Registry(Reference),
    /// `type=local,src=DIR` / `dest=DIR`.
    Local(PathBuf),
}

/// A `--cache-from` or `--cache-to` value, in BuildKit's spelling:
/// `type=registry,ref=HOST/REPO:TAG[,mode=min|max][,ignore-error=true]`,
/// `type=local,dest=DIR` / `type=local,src=DIR`, or a bare `HOST/REPO:TAG`. BuildKit's
/// `oci-mediatypes=true` and `image-manifest=true` are accepted: strata always writes an OCI
/// image manifest. `mode` and ours, `mounts=true` (export the contents of the build's
/// `RUN --mount=type=cache` directories too), matter only for export; an import seeds cache
/// mounts from whatever the cache carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    /// Where.
    pub location: CacheLocation,
    /// Which steps an export takes.
    pub mode: CacheMode,
    /// An export that fails is a warning instead of a failed build.
    pub ignore_error: bool,
    /// Export the build's cache-mount contents too (`mounts=true`).
    pub mounts: bool,
}

impl std::fmt::Display for CacheSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            CacheLocation::Registry(r) => write!(f, "type=registry,ref={r}"),
            CacheLocation::Local(d) => write!(f, "type=local,dir={}", d.display()),
        }
    }
}

impl FromStr for CacheSpec {
    type Err = BuildError;

    fn from_str(spec: &str) -> Result<CacheSpec> {
        let bad = |why: String| BuildError::InvalidCacheSpec { spec: spec.to_string(), why };
        let reference = |r: &str| -> Result<Reference> {
            let parsed: Reference =
                r.parse().map_err(|e| bad(format!("{r:?} is not an image reference: {e}")))?;
            if parsed.domain().is_none() {
                return Err(bad(format!("{r:?} names no registry: write HOST/REPO:TAG")));
            }
            Ok(parsed)
        };
        if !spec.contains('=') {
            let location = CacheLocation::Registry(reference(spec)?);
            let (mode, ignore_error, mounts) = (CacheMode::Min, false, false);
            return Ok(CacheSpec { location, mode, ignore_error, mounts });
        }
        let (mut kind, mut reference_text, mut dir) = (None, None, None);
        let (mut mode, mut ignore_error, mut mounts) = (CacheMode::Min, false, false);
        for field in spec.split(',') {
            match field.split_once('=') {
                Some(("type", v)) => kind = Some(v),
                Some(("ref", v)) => reference_text = Some(v),
                Some(("src" | "dest", v)) if !v.is_empty() => dir = Some(PathBuf::from(v)),
                Some(("mode", "min")) => mode = CacheMode::Min,
                Some(("mode", "max")) => mode = CacheMode::Max,
                Some(("ignore-error", v)) => {
                    ignore_error = v.parse().map_err(|_| bad(format!("ignore-error={v}")))?
                }
                Some(("mounts", v)) => {
                    mounts = v.parse().map_err(|_| bad(format!("mounts={v} (true or false)")))?
                }
                Some(("oci-mediatypes" | "image-manifest", "true")) => {}
                _ => return Err(bad(format!("unknown or invalid field {field:?}"))),
            }
        }
        let location = match (kind, reference_text, dir) {
            (Some("registry") | None, Some(r), None) => CacheLocation::Registry(reference(r)?),
            (Some("local"), None, Some(d)) => CacheLocation::Local(d),
            (Some("registry") | None, _, _) => {
                return Err(bad("type=registry needs ref=HOST/REPO:TAG and no src/dest".into()))
            }
            (Some("local"), _, _) => {
                return Err(bad("type=local needs src=DIR or dest=DIR and no ref".into()))
            }
            (Some(other), _, _) => {
                return Err(bad(format!("type={other} (strata knows registry and local)")))
            }
        };
        Ok(CacheSpec { location, mode, ignore_error, mounts })
    }
}

/// A client for `reference`'s registry, with the build's registry settings.
pub(crate) fn client_for(
    opts: &BuildOptions,
    reference: &Reference,
) -> std::result::Result<Client, strata_registry::RegistryError> {
    let mut options = opts.registry.clone();
    if !opts.tls_verify {
        options.insecure.push(reference.domain().unwrap_or_default().to_string());
    }
    Client::new(options)
}

/// One readable `--cache-from` source.
enum Source {
    Registry { client: Box<Client>, cache: Box<RemoteCache> },
    Local { dir: PathBuf },
}

/// A layer taken from source `.0` without its blob: its cache key (none for a base layer)
/// and entry.
type Pending = (usize, Option<CacheKey>, CacheEntry);

/// What `--cache-from` brought: every readable source's entries (the first source naming a
/// key wins), merged into the store on first use.
///
/// Lazy layers: a hit whose layer has a table of contents in the source (and that the source
/// still has: one HEAD) is taken without downloading the layer. It stays *pending* until a
/// step reads its files ([`Imported::fetch_pending`]: a RUN, a COPY `--from` it, the image
/// stored locally); until then a COPY or WORKDIR on top of it resolves paths in a stand-in
/// tree made from the table of contents, and a push to the same registry mounts the blob
/// from the cache's repository (its location is recorded for that).
#[derive(Default)]
pub(crate) struct Imported {
    sources: Vec<(String, Source)>,
    entries: BTreeMap<CacheKey, (usize, CacheEntry)>,
    /// Cache-mount chains, by cache id (the first source naming an id wins).
    mounts: BTreeMap<String, (usize, Vec<CacheEntry>)>,
    /// Layer tables of contents, by diffID.
    tocs: BTreeMap<Digest, (usize, Descriptor)>,
    /// Hits taken without their layer, by diffID: source, key (none for a base layer),
    /// entry.
    pending: Mutex<BTreeMap<Digest, Pending>>,
    /// Base layers a cache keeps, by blob digest: source and the layer (with its diffID).
    base_layers: BTreeMap<Digest, (usize, CacheEntry)>,
    /// Of those, the ones this build can take without downloading them (see
    /// [`Imported::base_layers_to_skip`]), decided once.
    skippable: std::sync::OnceLock<BTreeSet<Digest>>,
}

impl Imported {
    /// Reads the index of every source of `opts.cache_from`; one that cannot be read is a
    /// warning.
    pub fn load(opts: &BuildOptions, progress: &dyn ProgressSink) -> Imported {
        let mut imported = Imported::default();
        for spec in &opts.cache_from {
            let read = match &spec.location {
                CacheLocation::Registry(r) => client_for(opts, r)
                    .and_then(|client| {
                        let cache = strata_registry::pull_cache(&client, r)?;
                        let index = cache.index.clone();
                        let (client, cache) = (Box::new(client), Box::new(cache));
                        Ok((index, Source::Registry { client, cache }))
                    })
                    .map_err(|e| strata_types::chain(&e)),
                CacheLocation::Local(dir) => read_layout_index(dir)
                    .map(|index| (index, Source::Local { dir: dir.clone() }))
                    .map_err(|e| strata_types::chain(&e)),
            };
            match read {
                Ok((index, source)) => {
                    let n = imported.sources.len();
                    for (k, e) in index.entries {
                        imported.entries.entry(k).or_insert((n, e));
                    }
                    for (id, chain) in index.mounts {
                        imported.mounts.entry(id).or_insert((n, chain));
                    }
                    for (diff_id, layer) in &index.base_layers {
                        let Ok(digest) = Digest::try_from(layer.digest()) else { continue };
                        let entry = CacheEntry { layer: layer.clone(), diff_id: *diff_id };
                        imported.base_layers.entry(digest).or_insert((n, entry));
                    }
                    for (diff_id, toc) in index.tocs {
                        imported.tocs.entry(diff_id).or_insert((n, toc));
                    }
                    imported.sources.push((spec.to_string(), source));
                }
                Err(why) => progress.event(&BuildEvent::Warning {
                    message: format!("cache {spec} not imported, building without it: {why}"),
                }),
            }
        }
        imported
    }

    /// The imported entry for `key` with its layer now in `store` and the entry in the
    /// store's cache table; `None` when no source has it or its blob cannot be fetched (a
    /// warning then).
    pub fn take(
        &self,
        store: &Store,
        key: &CacheKey,
        progress: &dyn ProgressSink,
    ) -> Option<CacheEntry> {
        let (n, entry) = self.entries.get(key)?;
        let (name, _) = &self.sources[*n];
        let digest = Digest::try_from(entry.layer.digest()).ok()?;
        if !store.has_blob(&digest) && self.tocs.contains_key(&entry.diff_id) {
            // Lazy: taken if the source still has it, fetched when a step reads it.
            return match self.source_has(*n, &digest) {
                Ok(true) => {
                    if let Source::Registry { cache, .. } = &self.sources[*n].1 {
                        let _ = store.record_blob_location(&digest, &cache.location());
                    }
                    let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                    pending.insert(entry.diff_id, (*n, Some(*key), entry.clone()));
                    Some(entry.clone())
                }
                Ok(false) | Err(_) => {
                    progress.event(&BuildEvent::Warning {
                        message: format!(
                            "cache {name}: layer {digest} not available, rebuilding the step"
                        ),
                    });
                    None
                }
            };
        }
        if let Err(why) = self.fetch(*n, store, entry) {
            progress.event(&BuildEvent::Warning {
                message: format!(
                    "cache {name}: layer {} not available, rebuilding the step: {why}",
                    entry.layer.digest()
                ),
            });
            return None;
        }
        // Best effort, as any cache write: the hit stands for this build either way.
        let _ = store.cache_put(key, entry);
        Some(entry.clone())
    }

    /// Whether source `n` still has blob `digest` (nothing downloaded).
    fn source_has(&self, n: usize, digest: &Digest) -> std::result::Result<bool, String> {
        match &self.sources[n].1 {
            Source::Registry { client, cache } => {
                cache.has_blob(client, digest).map_err(|e| strata_types::chain(&e))
            }
            Source::Local { dir } => Store::open(dir)
                .map(|layout| layout.has_blob(digest))
                .map_err(|e| strata_types::chain(&e)),
        }
    }

    /// Whether the layer `diff_id` was taken from a cache without its blob (so far).
    pub fn is_pending(&self, diff_id: &Digest) -> bool {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).contains_key(diff_id)
    }

    /// Brings the layer `diff_id` into `store` if it was taken without its blob, verified, and
    /// merges its entry into the store's cache. A source that no longer gives it is an error
    /// now: the build stands on that layer.
    pub fn fetch_pending(&self, store: &Store, diff_id: &Digest) -> Result<()> {
        let taken = self.pending.lock().unwrap_or_else(|p| p.into_inner()).get(diff_id).cloned();
        let Some((n, key, entry)) = taken else { return Ok(()) };
        self.fetch(n, store, &entry).map_err(|why| BuildError::CacheLayerFetch {
            cache: self.sources[n].0.clone(),
            layer: entry.layer.digest().to_string(),
            why,
        })?;
        // Best effort, as any cache write.
        if let Some(key) = key {
            let _ = store.cache_put(&key, &entry);
        }
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(diff_id);
        Ok(())
    }

    /// [`Imported::fetch_pending`] by the layer's blob digest (one line on failure): what a
    /// push calls for a pending layer the registry neither has nor mounts.
    pub fn fetch_pending_blob(
        &self,
        store: &Store,
        digest: &Digest,
    ) -> std::result::Result<(), String> {
        let diff_id = {
            let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending
                .iter()
                .find(|(_, (_, _, e))| e.layer.digest().as_ref() == digest.to_string())
                .map(|(d, _)| *d)
        };
        match diff_id {
            Some(d) => self.fetch_pending(store, &d).map_err(|e| strata_types::chain(&e)),
            None => Err("no cache of this build has it".to_string()),
        }
    }

    /// The layers (blob digests) of registry bases this build need not download: kept by an
    /// imported cache with a table of contents, not in `store`, and still in the cache's
    /// source (one HEAD each, the first time this is asked).
    pub fn base_layers_to_skip(&self, store: &Store) -> &BTreeSet<Digest> {
        self.skippable.get_or_init(|| {
            self.base_layers
                .iter()
                .filter(|(digest, (n, e))| {
                    self.tocs.contains_key(&e.diff_id)
                        && !store.has_blob(digest)
                        && self.source_has(*n, digest).unwrap_or(false)
                })
                .map(|(digest, _)| *digest)
                .collect()
        })
    }

    /// Takes layer `digest` of a base pulled without it (see
    /// [`Imported::base_layers_to_skip`]) as pending, after checking that the image says the
    /// diffID the cache does; false if the cache does not keep it as a base layer or the
    /// diffIDs differ (then the caller needs the layer another way).
    pub fn take_base_layer(&self, store: &Store, digest: &Digest, diff_id: &Digest) -> bool {
        let Some((n, entry)) = self.base_layers.get(digest) else { return false };
        if entry.diff_id != *diff_id {
            return false;
        }
        if let Source::Registry { cache, .. } = &self.sources[*n].1 {
            let _ = store.record_blob_location(digest, &cache.location());
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.insert(*diff_id, (*n, None, entry.clone()));
        true
    }

    /// The table of contents of layer `diff_id` an imported cache carries, in `store` now
    /// (verified), and recorded as that layer's.
    pub fn toc(&self, store: &Store, diff_id: &Digest) -> Option<Descriptor> {
        let (n, toc) = self.tocs.get(diff_id)?;
        self.fetch_blob(*n, store, toc).ok()?;
        store.set_layer_toc(diff_id, toc).ok()?;
        Some(toc.clone())
    }

    /// Brings the layer of `entry` from source `n` into `store`, verified.
    fn fetch(
        &self,
        n: usize,
        store: &Store,
        entry: &CacheEntry,
    ) -> std::result::Result<(), String> {
        self.fetch_blob(n, store, &entry.layer)
    }

    /// Brings blob `desc` (a layer or a table of contents) from source `n` into `store`,
    /// verified; nothing when it is there already.
    fn fetch_blob(
        &self,
        n: usize,
        store: &Store,
        desc: &Descriptor,
    ) -> std::result::Result<(), String> {
        let digest = Digest::try_from(desc.digest()).map_err(|e| strata_types::chain(&e))?;
        if store.has_blob(&digest) {
            return Ok(());
        }
        match &self.sources[n].1 {
            Source::Registry { client, cache } => cache
                .fetch_blob(client, store, &digest, desc.size())
                .map_err(|e| strata_types::chain(&e)),
            Source::Local { dir } => fetch_layout_blob(store, dir, &digest, desc.size())
                .map_err(|e| strata_types::chain(&e)),
        }
    }

    /// Fills the directory `dir` of cache mount `id`, just created on this runner, from the
    /// chain an imported cache carries for `id`; whether it did. A chain that cannot be
    /// fetched or applied is a warning and an empty mount (whatever was applied is removed),
    /// as a cache mount may always start empty.
    pub fn seed_mount(
        &self,
        store: &Store,
        id: &str,
        dir: &Path,
        progress: &dyn ProgressSink,
    ) -> bool {
        let Some((n, chain)) = self.mounts.get(id) else { return false };
        let seeded = chain.iter().try_for_each(|e| self.fetch(*n, store, e)).and_then(|()| {
            crate::mount_cache::seed(store, id, dir, chain).map_err(|e| strata_types::chain(&e))
        });
        match seeded {
            Ok(()) => true,
            Err(why) => {
                progress.event(&BuildEvent::Warning {
                    message: format!(
                        "cache {}: cache mount {id:?} not seeded, it starts empty: {why}",
                        self.sources[*n].0
                    ),
                });
                empty_dir(dir);
                let _ = store.clear_cache_mount_state(id);
                false
            }
        }
    }
}

/// Removes everything below `dir`, best effort.
fn empty_dir(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        let _ = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

/// Exports `index` to `spec`'s location. Layers taken from an imported cache without their
/// blob are mounted from there when the registry can (never read), else fetched first; an
/// OCI layout gets every blob, so they are fetched.
pub(crate) fn export(
    store: &Store,
    opts: &BuildOptions,
    index: &CacheIndex,
    spec: &CacheSpec,
    imported: &Imported,
) -> Result<()> {
    match &spec.location {
        CacheLocation::Registry(r) => {
            let err = |e| BuildError::CacheExport { cache: spec.to_string(), source: Box::new(e) };
            let client = client_for(opts, r).map_err(err)?;
            let fetch = |d: &Digest| imported.fetch_pending_blob(store, d);
            strata_registry::push_cache_fetching(
                &client,
                store,
                index,
                r,
                &Default::default(),
                &strata_registry::NoTransferProgress,
                Some(&fetch),
            )
            .map_err(err)?;
            Ok(())
        }
        CacheLocation::Local(dir) => {
            let layers = index.entries.values().map(|e| &e.diff_id);
            for d in layers.chain(index.base_layers.keys()) {
                imported.fetch_pending(store, d)?;
            }
            write_layout(store, dir, index)
        }
    }
}

/// The ref name the cache artifact has in a `type=local` layout's `index.json`.
const LAYOUT_REF: &str = "cache";

/// The cache index of the OCI layout at `dir` (opened as a store: the store is an OCI
/// layout): its `index.json`'s manifest whose `artifactType` is ours, that manifest's config.
fn read_layout_index(dir: &Path) -> Result<CacheIndex> {
    let invalid = |why: String| BuildError::InvalidCacheLayout { dir: dir.to_path_buf(), why };
    let layout = Store::open(dir)?;
    let index = layout.read_index()?;
    let desc = index
        .manifests()
        .iter()
        .find(|d| {
            d.artifact_type().as_ref().map(ToString::to_string).as_deref()
                == Some(CACHE_ARTIFACT_TYPE)
        })
        .ok_or_else(|| invalid(format!("index.json lists no {CACHE_ARTIFACT_TYPE} manifest")))?;
    let digest = Digest::try_from(desc.digest()).map_err(strata_store::StoreError::from)?;
    let manifest: strata_store::oci_spec::image::ImageManifest =
        serde_json::from_slice(&layout.read_blob(&digest)?).map_err(|e| invalid(e.to_string()))?;
    let config =
        Digest::try_from(manifest.config().digest()).map_err(strata_store::StoreError::from)?;
    Ok(CacheIndex::from_json(&layout.read_blob(&config)?)?)
}

/// Copies blob `digest` of `size` bytes from the layout at `dir` into `store`, verified.
fn fetch_layout_blob(store: &Store, dir: &Path, digest: &Digest, size: u64) -> Result<()> {
    let layout = Store::open(dir)?;
    store.put_blob_verified(layout.open_blob(digest)?, digest, Some(size))?;
    Ok(())
}

/// Writes `index` as a cache artifact into the OCI layout at `dir` (created if missing,
/// through the store, which is an OCI layout): the layer blobs it lacks, the index, the
/// artifact's manifest, and `index.json` naming it as [`LAYOUT_REF`] with our
/// `artifactType` (image-spec image-layout.md: `index.json` is the layout's entry point).
fn write_layout(store: &Store, dir: &Path, index: &CacheIndex) -> Result<()> {
    use strata_store::oci_spec::image::{Descriptor, MediaType};
    let layout = Store::init(dir)?;
    for layer in index.layers() {
        let digest = Digest::try_from(layer.digest()).map_err(strata_store::StoreError::from)?;
        if !layout.has_blob(&digest) {
            layout.put_blob_verified(store.open_blob(&digest)?, &digest, Some(layer.size()))?;
        }
    }
    let index_json = index.to_json()?;
    let index_blob = layout.put_blob(index_json.as_slice())?;
    let manifest = index.artifact_manifest(&index_blob.digest, index_blob.size)?;
    let put = layout.put_blob(manifest.as_slice())?;
    let mut desc = Descriptor::new(MediaType::ImageManifest, put.size, put.digest);
    desc.set_artifact_type(Some(MediaType::Other(CACHE_ARTIFACT_TYPE.to_string())));
    layout.set_ref_name(LAYOUT_REF, &desc)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_specs_in_buildkit_spelling() {
        let s: CacheSpec = "type=registry,ref=127.0.0.1:5000/app:cache,mode=max".parse().unwrap();
        assert!(matches!(s.location, CacheLocation::Registry(_)));
        assert_eq!(s.mode, CacheMode::Max);
        let s: CacheSpec = "127.0.0.1:5000/app:cache".parse().unwrap();
        assert_eq!(s.mode, CacheMode::Min);
        let s: CacheSpec = "type=local,dest=/tmp/c".parse().unwrap();
        assert_eq!(s.location, CacheLocation::Local("/tmp/c".into()));
        let s: CacheSpec = "type=local,dest=/tmp/c,mounts=true".parse().unwrap();
        assert!(s.mounts);
        for bad in [
            "app:cache",
            "type=gha",
            "type=local",
            "type=registry,ref=r.io/a,mode=all",
            "type=local,dest=/c,mounts=yes",
        ] {
            assert!(bad.parse::<CacheSpec>().is_err(), "{bad}");
        }
    }
}
