//! Comparing two container images: config, layers, files, and what a transfer costs.
//!
//! [`diff`] answers "what changed between these two images, where did it come from, and what
//! will it cost to ship?" without extracting anything. Layers are aligned by diffID; the
//! leading layers both images share are their common base, whose merged filesystem is the same
//! on both sides, so the file comparison starts from the layers above it. Those are streamed
//! once (verified against their blob digest and their config diffID, each regular file hashed
//! on the way) into in-memory file lists, and the merged state of each path they name is
//! computed top-down with the whiteout and opaque-directory rules of image-spec `layer.md`.
//! A base layer is read only when an upper layer leaves a path undecided (a path only one side
//! names, or a directory one side clears), so the cost grows with what differs, not with the
//! image: two images that differ in their top layer and touch the same paths read exactly those
//! two layers ([`DiffStats::layers_read`] says what was read). When the store holds a base
//! layer's unpacked snapshot (builds make them), a lookup asks it with `lstat` first and reads
//! the layer's tar only if the layer has an entry at that path, so a new layer that adds files
//! where the base has none reads no base layer at all. Without snapshots such a lookup reads
//! the base's tars newest first (several on parallel threads once one did not decide the path),
//! each at most once. Each changed path is attributed to the layer of B that set it, with that
//! layer's history line.
//!
//! Limits: paths are taken literally, as the tar names them (an entry written "through" a
//! symlinked directory of a lower layer is not resolved the way an extractor would); hardlinks
//! are compared by the link each entry records, so a link-count change of a path that no
//! unshared layer names is not reported.
//!
//! The images may live in different stores (the local store, an `oci:` layout, a scratch
//! layout holding a `docker-archive`), which is why the functions take a [`StoredImage`]: an
//! [`Image`] says what the blobs are, its [`Store`] is where to read them. Nothing is ever
//! written to either store.
//!
//! One image at a time: [`history`] (layers with their history lines, sizes, empty layers),
//! [`ls`] (the merged file tree with the layer each entry comes from) and [`efficiency`] (bytes
//! shipped that a later layer overwrites or deletes, dive's "wasted space").
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use strata_diff::{diff, DiffOptions, StoredImage};
//! use strata_store::Store;
//!
//! let store = Store::open("/var/lib/strata")?;
//! let (v1, v2) = (store.load_image("app:v1")?, store.load_image("app:v2")?);
//! let report = diff(StoredImage::new(&store, &v1), StoredImage::new(&store, &v2),
//!                   &DiffOptions::default())?;
//! for change in &report.files.as_ref().map(|f| f.changes.clone()).unwrap_or_default() {
//!     println!("{:?} {} (layer {:?})", change.change, change.path, change.layer);
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod compare;
mod config;
mod content;
mod error;
mod inventory;
mod read;
mod report;
mod snapshot;
mod view;

use std::collections::HashSet;

use strata_image::OpenedImage;
use strata_store::{Image, Store, StoreError};
use strata_types::Digest;

pub use error::DiffError;
pub use inventory::{efficiency, history, ls, LsOptions};
pub use report::{
    Attribute, ChangeKind, ConfigChange, ContentDiff, ContentSide, DiffStats, Efficiency,
    FileChange, FileChanges, FileKind, FileMeta, FileTotals, HistoryEntry, ImageDiff, ImageSummary,
    LayerComparison, LayerInfo, LsEntry, Sections, SharedLayer, TransferCost, WastedPath,
    FORMAT_VERSION,
};

use read::{ImageLayers, LayerCache};

/// An image and the store holding its blobs.
#[derive(Debug, Clone, Copy)]
pub struct StoredImage<'a> {
    /// Where the blobs are.
    pub store: &'a Store,
    /// The manifest and config.
    pub image: &'a Image,
    /// The name it was opened by, for reports.
    pub name: Option<&'a str>,
}

impl<'a> StoredImage<'a> {
    /// `image`, whose blobs are in `store`.
    pub fn new(store: &'a Store, image: &'a Image) -> StoredImage<'a> {
        StoredImage { store, image, name: None }
    }

    /// Records the name the image was opened by.
    pub fn named(mut self, name: &'a str) -> StoredImage<'a> {
        self.name = Some(name);
        self
    }
}

impl<'a> From<&'a OpenedImage> for StoredImage<'a> {
    fn from(s: &'a OpenedImage) -> StoredImage<'a> {
        StoredImage { store: &s.store, image: &s.image, name: s.name.as_deref() }
    }
}

/// What [`diff`] compares and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiffOptions {
    /// Ignore timestamps: the config's `created` and file mtimes. Layers then count only
    /// through the files they hold (two builds of one recipe at different times are equal).
    /// Nothing else is ignored.
    pub semantic: bool,
    /// The sections to compute.
    pub sections: Sections,
    /// Compare this file's content too ([`ImageDiff::file_content`]), and restrict the file
    /// section to it and what is below it.
    pub file: Option<String>,
}

impl DiffOptions {
    /// Sets [`DiffOptions::semantic`].
    pub fn semantic(mut self, yes: bool) -> Self {
        self.semantic = yes;
        self
    }

    /// Sets [`DiffOptions::sections`].
    pub fn sections(mut self, sections: Sections) -> Self {
        self.sections = sections;
        self
    }

    /// Sets [`DiffOptions::file`].
    pub fn file(mut self, path: impl Into<String>) -> Self {
        self.file = Some(path.into());
        self
    }
}

fn digest_of(d: &strata_store::oci_spec::image::Descriptor) -> Result<Digest, DiffError> {
    Ok(Digest::try_from(d.digest()).map_err(StoreError::from)?)
}

fn summary(x: &StoredImage<'_>) -> Result<ImageSummary, DiffError> {
    let m = &x.image.manifest;
    Ok(ImageSummary {
        name: x.name.map(str::to_owned),
        digest: digest_of(&x.image.manifest_descriptor)?,
        config_digest: digest_of(m.config())?,
        layers: m.layers().len(),
        size: m.layers().iter().map(|l| l.size()).sum::<u64>()
            + m.config().size()
            + x.image.manifest_descriptor.size(),
    })
}

/// Blobs of B that A does not have.
fn transfer(a: &StoredImage<'_>, b: &StoredImage<'_>) -> Result<TransferCost, DiffError> {
    let (ma, mb) = (&a.image.manifest, &b.image.manifest);
    let mut have: HashSet<Digest> = HashSet::new();
    for d in ma.layers().iter().chain([ma.config(), &a.image.manifest_descriptor]) {
        have.insert(digest_of(d)?);
    }
    let mut cost = TransferCost { blobs: 0, bytes: 0, layers: 0, layer_bytes: 0 };
    let mut counted = HashSet::new();
    for (i, d) in mb.layers().iter().chain([mb.config(), &b.image.manifest_descriptor]).enumerate()
    {
        let digest = digest_of(d)?;
        if have.contains(&digest) || !counted.insert(digest) {
            continue;
        }
        cost.blobs += 1;
        cost.bytes += d.size();
        if i < mb.layers().len() {
            cost.layers += 1;
            cost.layer_bytes += d.size();
        }
    }
    Ok(cost)
}

fn compare_layers(
    a: &ImageLayers<'_>,
    b: &ImageLayers<'_>,
    cache: &LayerCache,
    history_a: &[Option<String>],
    history_b: &[Option<String>],
    k: usize,
) -> Result<LayerComparison, DiffError> {
    let mut used_a = vec![false; a.len()];
    let mut shared = Vec::new();
    let mut only_in_b = Vec::new();
    for j in 0..b.len() {
        let info = inventory::layer_info(b, cache, j, history_b.get(j).cloned().flatten())?;
        let matched = (0..a.len()).find(|&i| !used_a[i] && a.diff_ids[i] == b.diff_ids[j]);
        match matched {
            Some(i) => {
                used_a[i] = true;
                shared.push(SharedLayer { index_a: i, index_b: j, layer: info });
            }
            None => only_in_b.push(info),
        }
    }
    let mut only_in_a = Vec::new();
    for (i, used) in used_a.iter().enumerate() {
        if !used {
            only_in_a.push(inventory::layer_info(
                a,
                cache,
                i,
                history_a.get(i).cloned().flatten(),
            )?);
        }
    }
    let first_divergence = (k < a.len().max(b.len())).then_some(k);
    Ok(LayerComparison { shared, only_in_a, only_in_b, first_divergence })
}

/// Compares `a` (the old image) with `b` (the new one).
///
/// Reads the two configs and, for the file section, the layers above the common base (plus
/// what is needed to decide the paths they name; see the crate docs). Every layer read is
/// verified: a blob whose bytes do not match its digest is
/// [`StoreError::CorruptBlob`] (in [`DiffError::Store`]),
/// naming the image by [`StoredImage::name`] (else its digest); a tar that does not match the
/// config's diffID is [`DiffError::DiffIdMismatch`].
pub fn diff(
    a: StoredImage<'_>,
    b: StoredImage<'_>,
    opts: &DiffOptions,
) -> Result<ImageDiff, DiffError> {
    diff_unnamed(a, b, opts).map_err(|e| name_corrupt_blob(e, &[&a, &b]))
}

/// A corrupt blob, reported against the image (of `images`) that has it.
fn name_corrupt_blob(e: DiffError, images: &[&StoredImage<'_>]) -> DiffError {
    use strata_store::StoreError;
    let (digest, found) = match &e {
        DiffError::CorruptBlob { digest, found, .. } => (*digest, *found),
        DiffError::Store(StoreError::DigestMismatch { expected, found }) => (*expected, *found),
        _ => return e,
    };
    for img in images {
        let m = img.image;
        let mut blobs = vec![m.manifest_descriptor.digest(), m.manifest.config().digest()];
        blobs.extend(m.manifest.layers().iter().map(|l| l.digest()));
        if !blobs.iter().any(|d| Digest::try_from(*d).is_ok_and(|d| d == digest)) {
            continue;
        }
        let name = match (img.name, m.digest()) {
            (Some(name), _) => name.to_owned(),
            (None, Ok(d)) => d.to_string(),
            (None, Err(_)) => continue,
        };
        return DiffError::Store(StoreError::CorruptBlob { digest, found, image: name });
    }
    e
}

fn diff_unnamed(
    a: StoredImage<'_>,
    b: StoredImage<'_>,
    opts: &DiffOptions,
) -> Result<ImageDiff, DiffError> {
    let la = ImageLayers::new(a.store, a.image)?;
    let lb = ImageLayers::new(b.store, b.image)?;
    let k = la.diff_ids.iter().zip(&lb.diff_ids).take_while(|(x, y)| x == y).count();
    let (history_a, history_b) = (config::layer_history(a.image), config::layer_history(b.image));
    let mut cache = LayerCache::default();
    let sections = opts.sections;

    let config = if sections.config {
        let (ca, cb) =
            (config::raw_config(a.store, a.image)?, config::raw_config(b.store, b.image)?);
        Some(config::compare(&ca, &cb, opts.semantic))
    } else {
        None
    };
    let file_filter =
        opts.file.as_deref().map(|p| read::normalize(p.as_bytes()).unwrap_or_default());
    let files = if sections.files {
        Some(compare::compare(
            &mut cache,
            &la,
            &lb,
            k,
            opts.semantic,
            file_filter.as_deref(),
            &history_b,
        )?)
    } else {
        None
    };
    let file_content = match &file_filter {
        Some(path) => Some(content::compare(&mut cache, &la, &lb, path)?),
        None => None,
    };
    // After the file section, so sizes of the layers it read are known.
    let (layers, transfer) = if sections.layers {
        (
            Some(compare_layers(&la, &lb, &cache, &history_a, &history_b, k)?),
            Some(transfer(&a, &b)?),
        )
    } else {
        (None, None)
    };

    let layers_differ = la.diff_ids != lb.diff_ids;
    let identical = config.as_ref().is_none_or(Vec::is_empty)
        && files.as_ref().is_none_or(|f| f.changes.is_empty())
        && file_content.as_ref().is_none_or(|c| c.identical)
        && !(layers.is_some() && layers_differ && !(opts.semantic && files.is_some()));
    let mut distinct: HashSet<Digest> = la.diff_ids.iter().copied().collect();
    distinct.extend(lb.diff_ids.iter().copied());
    Ok(ImageDiff {
        version: FORMAT_VERSION,
        a: summary(&a)?,
        b: summary(&b)?,
        semantic: opts.semantic,
        identical,
        config,
        layers,
        transfer,
        files,
        file_content,
        stats: DiffStats {
            layers_total: distinct.len(),
            layers_read: cache.counts.layers,
            bytes_read: cache.counts.compressed_bytes,
            snapshot_probes: cache.counts.snapshot_probes,
        },
    })
}
