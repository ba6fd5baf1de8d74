//! Garbage collection: mark from the roots, sweep the rest.
//!
//! Roots are every entry of `index.json` (tagged or not), the target of every tag record
//! (`<root>/strata/v1/tags-v1/`, the copy of the tags that rebuilds a lost `index.json`), every
//! digest listed in the files under
//! `<root>/strata/v1/roots/` (one per line; `#` starts a comment; a build in progress or a
//! tool that wants blobs kept untagged lists them there), and the digests the caller passes. Marking follows descriptors inside
//! manifests and indexes (`config`, `layers`, `manifests`, `subject`, `blobs`), OCI and Docker
//! media types alike, so content copied in by other tools is understood too. A root of unknown
//! type that turns out to be a JSON manifest or index is followed the same way.
//!
//! The sweep deletes unmarked blobs, snapshot directories `<root>/strata/v1/snapshots/<hex>`
//! whose name is neither a marked blob nor a diffID of a marked image config, and temp entries
//! in `<root>/strata/v1/tmp/` that nobody holds an `flock` on and that are over a minute old,
//! and index entries that name a deleted blob: the layer index, the build cache
//! (`<root>/strata/v1/cache-v1/`), which is not a root, so it lives exactly as long as the
//! layers it points at are reachable, and strata-registry's records of where a blob was seen
//! (`<root>/strata/v1/registry-v1/blobs/<hex>`), and layer tables of contents
//! (`<root>/strata/v1/layer-tocs-v1/<hex>`), whose blob stays as long as its layer is part of a
//! kept image. The lost+found list is not a root: it records what was lost, it does not keep
//! what survived. A cache mount's recorded layer chain (`--cache-to ...,mounts=true`) is kept
//! by a roots file of its own, `roots/cache-mount.<name>`, replaced with the chain.
//!
//! gc runs while builds, pulls and imports run. Every writer holds a lease (the `lease`
//! module: `<root>/strata/v1/leases/<name>`, one per live [`Store`] handle that wrote,
//! listing the digests it has written or pinned), and the digests of every live lease are
//! roots too, followed like the others: a build's untagged layers, the manifest of its base
//! image, the snapshots (by diffID) and cache entries it uses. A lease whose file nobody
//! holds an `flock` on belongs to a dead process: gc deletes it, and what only it named is
//! swept in the same run.
//!
//! The protocol that keeps a blob written but not yet tagged from being swept:
//!
//! 1. gc takes the index lock (`strata/v1/lock`), so tags cannot change under it, then
//!    `strata/v1/gc.lock` exclusively, and holds both to the end of the run.
//! 2. A writer takes `gc.lock` shared around "append the digest to my lease, then rename the
//!    blob into place (or find it already there)"; the same for a pin of something that
//!    exists (a snapshot, a cache entry's layer, a base image's manifest): record, then check.
//! 3. gc reads the leases only once it holds `gc.lock`, lists and deletes blobs after that.
//!
//! So every blob present when gc lists `blobs/` is either named by a lease gc has read, or
//! reachable from a tag, or garbage; and a writer whose record comes after the sweep finds a
//! deleted blob missing (a blob writer then renames its own copy in; a lookup reports a
//! miss). Writers never hold `gc.lock` while taking the index lock, so the two cannot
//! deadlock. A writer waits at most one gc run, and only at those points.
//!
//! Temp entries are swept without a grace period: every entry of `<root>/strata/v1/tmp/` is
//! `flock`ed by its creator before it is used (blob temp files, work directories, atomic
//! writes' temp files, lease files being made, snapshots gc is deleting), so an unlocked one
//! belongs to a dead process. A writer sweeps them too, when it takes its lease.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::blob::{remove_file_if_exists, write_atomic};
use crate::error::StoreError;
use crate::image::descriptor_digest;
use crate::store::Store;
use strata_types::{Digest, DigestParseError};
use strata_types::{MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};

/// What a gc run removed and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs deleted, sorted.
    pub removed: Vec<Digest>,
    /// Total size of the deleted blobs.
    pub bytes_freed: u64,
    /// Blobs still present after the run.
    pub blobs_kept: usize,
    /// Snapshot directories deleted.
    pub snapshots_removed: usize,
    /// Stale temp files or directories deleted.
    pub temp_entries_removed: usize,
    /// Layer index entries dropped because their blob is gone.
    pub layer_index_removed: usize,
    /// Build cache entries (`strata/v1/cache-v1/*/*`) dropped because their blob is gone.
    pub build_cache_removed: usize,
    /// Records of where a blob was seen in registries (`strata/v1/registry-v1/blobs/<hex>`,
    /// strata-registry's mount hints) dropped because the blob is gone.
    pub blob_locations_removed: usize,
    /// Layer table-of-contents records (`strata/v1/layer-tocs-v1/<hex>`) dropped because
    /// their blob is gone.
    pub layer_tocs_removed: usize,
    /// Leases of dead processes deleted (`strata/v1/leases/*` nobody held a lock on).
    pub leases_removed: usize,
    /// Live leases whose digests were kept as roots.
    pub leases_live: usize,
}

/// A descriptor found inside a manifest or index.
#[derive(Debug, Clone)]
pub(crate) struct ChildRef {
    pub(crate) media_type: String,
    pub(crate) digest: Result<Digest, DigestParseError>,
    pub(crate) size: u64,
}

/// Media types whose blobs are JSON listing further descriptors.
pub(crate) fn is_manifest_like(media_type: &str) -> bool {
    matches!(
        media_type,
        MEDIA_TYPE_MANIFEST
            | MEDIA_TYPE_INDEX
            | "application/vnd.docker.distribution.manifest.v2+json"
            | "application/vnd.docker.distribution.manifest.list.v2+json"
    )
}

/// The descriptors a manifest or index refers to; an error if `bytes` is not JSON.
/// Descriptor fields are read loosely, so one odd entry does not hide the others.
pub(crate) fn children_of(bytes: &[u8]) -> Result<Vec<ChildRef>, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_slice(bytes)?;
    let mut out = Vec::new();
    let mut push = |d: &serde_json::Value| {
        let Some(digest) = d.get("digest").and_then(|v| v.as_str()) else { return };
        out.push(ChildRef {
            media_type: d.get("mediaType").and_then(|v| v.as_str()).unwrap_or_default().to_owned(),
            digest: digest.parse(),
            size: d.get("size").and_then(|v| v.as_u64()).unwrap_or_default(),
        });
    };
    for key in ["config", "subject"] {
        if let Some(d) = value.get(key) {
            push(d);
        }
    }
    for key in ["layers", "manifests", "blobs"] {
        if let Some(list) = value.get(key).and_then(|v| v.as_array()) {
            list.iter().for_each(&mut push);
        }
    }
    Ok(out)
}

/// The `rootfs.diff_ids` of an image config, ignoring anything malformed.
fn diff_ids_of(bytes: &[u8]) -> Vec<Digest> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else { return Vec::new() };
    value
        .pointer("/rootfs/diff_ids")
        .and_then(|v| v.as_array())
        .map(|ids| ids.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

impl Store {
    /// Writes the gc roots file `<root>/strata/v1/roots/<name>` atomically, listing `digests`
    /// one per line (replacing any previous list). `name` must be a plain file name of
    /// `[A-Za-z0-9._-]` not starting with `.`.
    pub fn set_gc_roots(&self, name: &str, digests: &[Digest]) -> Result<(), StoreError> {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err(StoreError::InvalidRootsName { name: name.to_owned() });
        }
        let dir = self.roots_dir();
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        let mut text = String::new();
        for d in digests {
            text.push_str(&d.to_string());
            text.push('\n');
        }
        self.ensure_meta_dirs()?;
        write_atomic(&self.tmp_dir(), &dir.join(name), text.as_bytes())
    }

    /// Every digest listed in the roots files, with an error naming file and line for a bad one.
    pub fn gc_roots(&self) -> Result<Vec<Digest>, StoreError> {
        let dir = self.roots_dir();
        let Some(entries) = read_dir_if_exists(&dir)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(StoreError::io(&dir))?;
            let path = entry.path();
            if !entry.file_type().map_err(StoreError::io(&path))?.is_file() {
                continue;
            }
            let text = fs::read_to_string(&path).map_err(StoreError::io(&path))?;
            out.extend(parse_roots(&path, &text)?);
        }
        Ok(out)
    }

    /// Deletes every blob, snapshot and stale temp entry not reachable from `index.json`, the
    /// roots files, a live lease of another handle, or `extra_roots`, and the leases of dead
    /// processes; see the module docs of `gc` for the rules. Runs while other handles write:
    /// they wait for it only where they publish a blob or pin something.
    ///
    /// This handle's own lease does not count: what it wrote and left untagged is garbage to
    /// its own gc (a caller done building collects through the handle it built with). To
    /// collect while a build runs on this handle, run gc through another handle (another
    /// [`Store::open`] of the root, as `strata gc` is).
    ///
    /// Fails without deleting anything if a reachable manifest is corrupt (its references
    /// cannot be known) or a roots file or live lease is malformed.
    pub fn gc(&self, extra_roots: &[Digest]) -> Result<GcReport, StoreError> {
        let _lock = self.lock()?;
        let _exclusive = self.exclusive_gc_lock()?;
        let mut report = GcReport::default();
        let leases = self.read_leases()?;
        report.leases_removed = leases.dead;
        report.leases_live = leases.live;
        let mut pending = self.image_roots()?;
        pending
            .extend(leases.roots.into_iter().chain(extra_roots.iter().copied()).map(|d| (d, None)));
        let (mut marked, mut snapshot_keys) = self.mark(pending)?;
        // A kept layer keeps its table of contents (recorded by the layer's diffID).
        marked.extend(
            snapshot_keys
                .iter()
                .filter_map(|d| self.layer_toc(d))
                .filter_map(|toc| Digest::try_from(toc.digest()).ok()),
        );
        for digest in self.list_blobs()? {
            if marked.contains(&digest) {
                report.blobs_kept += 1;
                continue;
            }
            let path = self.blob_path(&digest);
            let size = fs::metadata(&path).map(|m| m.len()).unwrap_or_default();
            if remove_file_if_exists(&path)? {
                report.removed.push(digest);
                report.bytes_freed += size;
            }
        }
        snapshot_keys.extend(marked.iter().copied());
        report.snapshots_removed = self.sweep_snapshots(&snapshot_keys)?;
        report.temp_entries_removed = self.sweep_dead_temp()?;
        report.layer_index_removed = self.sweep_layer_index()?;
        report.build_cache_removed = crate::tables::sweep_build_cache(self)?;
        report.blob_locations_removed = crate::tables::sweep_blob_locations(self)?;
        report.layer_tocs_removed = crate::tables::sweep_layer_tocs(self)?;
        Ok(report)
    }

    /// What tagged and rooted images start from: every manifest `index.json` and the tag
    /// records name (with their media types) and every digest of the roots files.
    fn image_roots(&self) -> Result<Vec<(Digest, Option<String>)>, StoreError> {
        let index = self.read_index()?;
        let mut pending: Vec<(Digest, Option<String>)> = Vec::new();
        for m in index.manifests() {
            pending.push((descriptor_digest(m)?, Some(m.media_type().to_string())));
        }
        // Tag records name the same targets as index.json unless a crash came between the two
        // writes; either way their targets stay, so a rebuilt index.json names only blobs.
        for r in self.read_tag_records()?.records {
            if let Ok(d) = descriptor_digest(&r.descriptor) {
                pending.push((d, Some(r.descriptor.media_type().to_string())));
            }
        }
        pending.extend(self.gc_roots()?.into_iter().map(|d| (d, None)));
        Ok(pending)
    }

    /// Every stored blob reachable from `pending` (digest, media type if known), and the
    /// diffIDs of the configs reached (their snapshots stay too).
    fn mark(
        &self,
        mut pending: Vec<(Digest, Option<String>)>,
    ) -> Result<(BTreeSet<Digest>, BTreeSet<Digest>), StoreError> {
        let mut marked = BTreeSet::new();
        let mut snapshot_keys = BTreeSet::new();
        while let Some((digest, media_type)) = pending.pop() {
            if !marked.insert(digest) || !self.has_blob(&digest) {
                continue;
            }
            let follow = match media_type.as_deref() {
                Some(mt) => is_manifest_like(mt),
                None => self.looks_like_json(&digest)?,
            };
            if follow {
                let bytes = self.read_blob(&digest)?;
                // An unknown-typed root that is not JSON after all is simply kept.
                let Ok(children) = children_of(&bytes) else { continue };
                for child in children {
                    let Ok(child_digest) = child.digest else { continue };
                    if child.media_type == MEDIA_TYPE_CONFIG
                        || child.media_type == "application/vnd.docker.container.image.v1+json"
                    {
                        if let Ok(config) = self.read_blob(&child_digest) {
                            snapshot_keys.extend(diff_ids_of(&config));
                        }
                    }
                    let known = (!child.media_type.is_empty()).then_some(child.media_type);
                    pending.push((child_digest, known));
                }
            }
        }
        Ok((marked, snapshot_keys))
    }

    /// Every blob reachable from tagged, untagged-kept (`<none>`) and rooted images: what gc
    /// keeps whatever else runs.
    pub(crate) fn image_blobs(&self) -> Result<BTreeSet<Digest>, StoreError> {
        Ok(self.mark(self.image_roots()?)?.0)
    }

    /// Whether a blob starts with `{` (after whitespace): worth parsing as a manifest.
    fn looks_like_json(&self, digest: &Digest) -> Result<bool, StoreError> {
        use std::io::Read;
        let mut head = [0u8; 64];
        let mut file = self.open_blob(digest)?;
        let n = file.read(&mut head).map_err(StoreError::io(self.blob_path(digest)))?;
        Ok(head[..n].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'))
    }

    fn sweep_snapshots(&self, keep: &BTreeSet<Digest>) -> Result<usize, StoreError> {
        let dir = self.snapshots_dir();
        let Some(entries) = read_dir_if_exists(&dir)? else { return Ok(0) };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(StoreError::io(&dir))?;
            let name = entry.file_name();
            // Only names this store gave out are its to delete.
            let Some(digest) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) else {
                continue;
            };
            if keep.contains(&digest) {
                continue;
            }
            // Move it out of sight first, so nobody sees a half-deleted snapshot, locked (as
            // every tmp entry is) so that no writer's sweep deletes it under us.
            let doomed = self.tmp_dir().join(format!("gc-snapshot-{}", digest.hex()));
            let path = entry.path();
            let lock = File::open(&path).map_err(StoreError::io(&path))?;
            flock(&lock, FlockOperation::LockExclusive)
                .map_err(|e| StoreError::Io { path: path.clone(), source: e.into() })?;
            remove_tree(&doomed)?;
            fs::rename(&path, &doomed).map_err(StoreError::io(&path))?;
            remove_tree(&doomed)?;
            drop(lock);
            removed += 1;
        }
        Ok(removed)
    }
}

/// `remove_dir_all` that also copes with directories lacking write or search permission, as
/// unpacked layers often have (`chmod 555` dirs).
pub(crate) fn remove_tree(path: &Path) -> Result<(), StoreError> {
    match fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    make_writable(path);
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io { path: path.to_owned(), source: e }),
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&d) else { continue };
        if !meta.is_dir() {
            continue;
        }
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(&d) {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
}

/// `read_dir`, where a missing directory (nothing written there yet) is `None`, not an error.
pub(crate) fn read_dir_if_exists(dir: &std::path::Path) -> Result<Option<fs::ReadDir>, StoreError> {
    match fs::read_dir(dir) {
        Ok(e) => Ok(Some(e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io { path: dir.to_path_buf(), source: e }),
    }
}

/// The digests of a roots file's `text`, one per line, `#` starting a comment; an error
/// names `path` and the line of a bad one.
pub(crate) fn parse_roots(path: &Path, text: &str) -> Result<Vec<Digest>, StoreError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let d = line.parse().map_err(|source| StoreError::InvalidRootsLine {
            path: path.to_path_buf(),
            line: i + 1,
            source,
        })?;
        out.push(d);
    }
    Ok(out)
}
