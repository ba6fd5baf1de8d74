//! Copying an image between any two places strata knows: the local store (`name:tag`), an OCI
//! layout (`oci:DIR[:REF]`), a `docker save` archive (`docker-archive:FILE[:REF]`) and a
//! registry (`docker://HOST/REPO:TAG`), as `skopeo copy` does.
//!
//! This module is routing, not logic: each leg is done by the crate that owns it. A registry
//! source is pulled by [`strata_registry::pull`] (into the local store, or into a scratch
//! layout when the destination is a file or directory, which is then written by
//! [`crate::export()`]); a registry destination is pushed by [`strata_registry::push`] from
//! wherever the image lives ([`crate::open_local`] reads a layout or an archive without
//! copying it into the store first); local-to-local copies are [`crate::load`] and
//! [`crate::export()`]. What crossed the network is the registry crate's
//! [`TransferReport`]; what was written locally is a [`LocalCopy`]. A dry run contacts the
//! registry only to decide (HEAD requests, the manifest) and writes nothing anywhere. With
//! [`CopyOptions::all`], image indexes are copied whole, with every digest kept.
//!
//! ```no_run
//! use strata_image::{copy, CopyOptions};
//! use strata_registry::{Client, ClientOptions, NoTransferProgress};
//! use strata_store::Store;
//! use strata_types::ImageLocation;
//!
//! let store = Store::init("/tmp/strata-store")?;
//! let client = Client::new(ClientOptions::default())?.with_blob_hints(store.clone());
//! let src: ImageLocation = "app:v2".parse()?;
//! let dst: ImageLocation = "docker://127.0.0.1:5000/app:v2".parse()?;
//! let outcome = copy(&client, &store, &src, &dst, &CopyOptions::default(), &NoTransferProgress)?;
//! let pushed = outcome.transfer.expect("a registry leg");
//! assert_eq!(pushed.uploaded + pushed.present + pushed.mounted, pushed.blobs.len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::blame::{push_image, push_index};
use crate::desc_digest;
use crate::error::ImageError;
use crate::open::{
    open_local_any, open_local_platform, open_pulled, pull_to_scratch, scratch_layout, Opened,
    OpenedImage, OpenedIndex,
};
use crate::{export, layout};
use strata_registry::{pull_all, Client, PullOptions, PushOptions, TransferReport, TransferSink};
use strata_store::oci_spec::image::Descriptor;
use strata_store::Store;
use strata_types::{Digest, ImageLocation, Platform, Reference};

/// How to copy.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CopyOptions {
    /// Blobs moved at the same time on a registry leg (at least 1).
    pub jobs: usize,
    /// Decide and report only: nothing is uploaded, downloaded, written or tagged.
    pub dry_run: bool,
    /// Copy a whole image index (every platform, digests kept, as `skopeo copy --all`) instead
    /// of the host platform's image: registry to registry, to an `oci:` layout or the store, and
    /// from an `oci:` layout or the store whose entry is an index to a registry. Other pairs,
    /// and sources that are a single image, copy as without it.
    pub all: bool,
    /// The platform to copy the image of (`docker pull --platform`). A registry source that
    /// is an index resolves to it (the host's when `None`); a store or `oci:` source that is
    /// an index resolves to it, and is copied whole when `None` (to a registry, an `oci:`
    /// layout or the store; an archive or a directory then needs one, see
    /// [`ImageError::MultiPlatform`]); a single image must be for it.
    pub platform: Option<Platform>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions { jobs: 3, dry_run: false, all: false, platform: None }
    }
}

impl CopyOptions {
    /// Options with `jobs` parallel blob transfers and `dry_run`.
    pub fn new(jobs: usize, dry_run: bool) -> CopyOptions {
        CopyOptions { jobs: jobs.max(1), dry_run, ..CopyOptions::default() }
    }

    /// The same options copying whole image indexes when `all` (see [`CopyOptions::all`]).
    pub fn with_all(self, all: bool) -> CopyOptions {
        CopyOptions { all, ..self }
    }

    /// The same options resolving registry indexes to `platform` (see
    /// [`CopyOptions::platform`](CopyOptions#structfield.platform)).
    pub fn with_platform(self, platform: Option<Platform>) -> CopyOptions {
        CopyOptions { platform, ..self }
    }

    /// The platform registry indexes resolve to.
    fn platform(&self) -> Platform {
        self.platform.clone().unwrap_or_else(Platform::host)
    }

    /// The options of the registry legs: the push's and the pull's.
    fn registry_options(&self) -> (PushOptions, PullOptions) {
        let jobs = self.jobs.max(1);
        (
            PushOptions { jobs, dry_run: self.dry_run },
            PullOptions { jobs, dry_run: self.dry_run, ..Default::default() },
        )
    }
}

/// What was written on the local side of a copy (the store, an OCI layout, an archive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalCopy {
    /// Blobs (or archive members) written; for a dry run, those that would be.
    pub written: u64,
    /// Blobs the destination already had.
    pub skipped: u64,
    /// Bytes written; for a dry run, the bytes that would be.
    pub bytes: u64,
}

/// What [`copy`] did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CopyOutcome {
    /// The manifest digest of the image copied.
    pub manifest: Digest,
    /// The registry leg (push or pull), when either side is a registry.
    pub transfer: Option<TransferReport>,
    /// The local leg, when the destination is local (or the source is a registry and the
    /// destination a file or directory, written from a scratch layout).
    pub local: Option<LocalCopy>,
    /// Nothing was moved: the figures say what would have been.
    pub dry_run: bool,
}

/// Copies the image at `src` to `dst`. `store` is the local store: the source or destination
/// when either is `name:tag`, and where a registry image is pulled to when the destination is
/// the store. `client` is used only when one side is a registry; `events` receives its
/// per-blob progress. Give `client` the local store as its blob hints
/// ([`Client::with_blob_hints`]) so that legs through scratch layouts (an `oci:` or
/// `docker-archive:` source, a registry image written to a file) remember where blobs live
/// (for later cross-repository mounts) and copy blobs the store has instead of downloading.
///
/// A pull into the store tags the image with its full reference (`host/repo:tag`) and, when
/// the destination names another tag, with that too. A registry destination must carry a tag
/// (or a digest). Registry to registry is [`strata_registry::copy`]: only the blobs the
/// destination lacks are downloaded (into a scratch layout) and uploaded, blobs of the same
/// registry are mounted, and the manifest is kept byte for byte (a Docker schema2 manifest
/// too), so the destination serves the source's digest.
///
/// With [`CopyOptions::all`], an image index moves whole: every platform's manifest and blobs,
/// byte for byte, so the index digest at the destination is the source's. A registry source
/// is pulled with [`strata_registry::pull_all`] straight into an `oci:DIR` layout (recorded
/// under its ref, else the source's tag) or the store, or copied to a registry destination by
/// [`strata_registry::copy_all`] (a Docker manifest list too); an `oci:` or store
/// source whose entry is an index is pushed with `push_index`.
///
/// A store or `oci:` source that is an index moves whole without [`CopyOptions::all`] too,
/// unless [`CopyOptions::platform`](CopyOptions#structfield.platform) picks one platform: to a
/// registry by `push_index` (every child manifest before the index), to a layout or the store
/// with the same index digest ([`crate::copy_index`]); an archive or a directory cannot hold
/// it ([`ImageError::MultiPlatform`]).
pub fn copy(
    client: &Client,
    store: &Store,
    src: &ImageLocation,
    dst: &ImageLocation,
    options: &CopyOptions,
    events: &dyn TransferSink,
) -> Result<CopyOutcome, ImageError> {
    let unsupported = |reason| ImageError::Unsupported {
        source_location: src.to_string(),
        destination: dst.to_string(),
        reason,
    };
    if matches!(src, ImageLocation::Dir(_)) {
        return Err(unsupported("dir: is a destination only"));
    }
    let (push_options, pull_options) = options.registry_options();
    if options.all {
        if let Some(outcome) = copy_all(client, store, src, dst, options, events)? {
            return Ok(outcome);
        }
    }
    let local_source = matches!(src, ImageLocation::Store(_) | ImageLocation::Oci { .. });
    if local_source && options.platform.is_none() {
        if let Opened::Index(index) = open_local_any(Some(store), src)? {
            return copy_index_from(client, store, &index, dst, options, events);
        }
    }
    let platform = options.platform.as_ref();
    match (src, dst) {
        (ImageLocation::Registry(from), ImageLocation::Store(name)) => {
            // The pull tags the image with its full reference; another name is a second tag.
            let extra = match name == &from.to_string() {
                true => None,
                false => Some(destination_tag(name)?).filter(|t| *t != from.tag_key()),
            };
            let pulled = strata_registry::pull_platform(
                client,
                store,
                from,
                &options.platform(),
                &pull_options,
                events,
            )?;
            let manifest = desc_digest(&pulled.image.manifest_descriptor)?;
            if let Some(tag) = extra.filter(|_| !options.dry_run) {
                store.tag(&tag, &pulled.image.manifest_descriptor)?;
            }
            Ok(CopyOutcome {
                manifest,
                transfer: Some(pulled.report),
                local: None,
                dry_run: options.dry_run,
            })
        }
        (ImageLocation::Registry(from), ImageLocation::Registry(to)) => {
            // Blob by blob, asking the destination first: what it has is never downloaded,
            // what its registry has elsewhere is mounted; the rest passes through a scratch
            // layout.
            check_pushable(to).map_err(unsupported)?;
            let (_dir, scratch) = scratch_layout()?;
            let platform = options.platform();
            let copied = strata_registry::copy(
                client,
                &scratch,
                from,
                to,
                &platform,
                &push_options,
                events,
            )?;
            Ok(CopyOutcome {
                manifest: copied.manifest,
                transfer: Some(copied.report),
                local: None,
                dry_run: options.dry_run,
            })
        }
        (ImageLocation::Registry(from), _) => {
            // A file or directory is written from a scratch layout.
            let (dir, scratch, pulled) =
                pull_to_scratch(client, from, &options.platform(), &pull_options, events)?;
            let manifest = desc_digest(&pulled.image.manifest_descriptor)?;
            if options.dry_run {
                // Nothing was downloaded, so there is nothing to write or push from.
                return Ok(CopyOutcome {
                    manifest,
                    transfer: Some(pulled.report),
                    local: None,
                    dry_run: true,
                });
            }
            let opened = open_pulled(dir, &scratch, &pulled.image, from)?;
            let (source, pulled_report) = (&opened, pulled.report);
            let local = write_local(store, source, dst, Some(from))?;
            Ok(CopyOutcome {
                manifest,
                transfer: Some(pulled_report),
                local: Some(local),
                dry_run: false,
            })
        }
        (_, ImageLocation::Registry(to)) => {
            check_pushable(to).map_err(unsupported)?;
            let source = open_local_platform(Some(store), src, platform)?;
            let report = push_image(client, &source, to, &push_options, events)?;
            Ok(CopyOutcome {
                manifest: desc_digest(&source.image.manifest_descriptor)?,
                transfer: Some(report),
                local: None,
                dry_run: options.dry_run,
            })
        }
        (_, _) => {
            let source = open_local_platform(Some(store), src, platform)?;
            let manifest = desc_digest(&source.image.manifest_descriptor)?;
            let local = if options.dry_run {
                let image = &source.image;
                let blobs: Vec<_> = image
                    .manifest
                    .layers()
                    .iter()
                    .chain([image.manifest.config(), &image.manifest_descriptor])
                    .cloned()
                    .collect();
                plan_local(store, &blobs, &source.store, dst)?
            } else {
                write_local(store, &source, dst, None)?
            };
            Ok(CopyOutcome {
                manifest,
                transfer: None,
                local: Some(local),
                dry_run: options.dry_run,
            })
        }
    }
}

/// A store or `oci:` index copied whole (no platform chosen): pushed with `push_index`
/// (children first), or written to the store or an `oci:` layout with every platform, the
/// index digest kept. An archive or a directory holds one image: [`ImageError::MultiPlatform`].
fn copy_index_from(
    client: &Client,
    store: &Store,
    index: &OpenedIndex,
    dst: &ImageLocation,
    options: &CopyOptions,
    events: &dyn TransferSink,
) -> Result<CopyOutcome, ImageError> {
    let manifest = desc_digest(&index.descriptor)?;
    let outcome =
        |transfer, local| CopyOutcome { manifest, transfer, local, dry_run: options.dry_run };
    match dst {
        ImageLocation::Registry(to) => {
            check_pushable(to).map_err(|reason| ImageError::Unsupported {
                source_location: index.display_name(),
                destination: dst.to_string(),
                reason,
            })?;
            let (push_options, _) = options.registry_options();
            let report = push_index(client, index, to, &push_options, events)?;
            Ok(outcome(Some(report), None))
        }
        ImageLocation::Store(_) | ImageLocation::Oci { .. } if options.dry_run => {
            let blobs = layout::index_blobs(&index.store, &index.descriptor)?;
            Ok(outcome(None, Some(plan_local(store, &blobs, &index.store, dst)?)))
        }
        ImageLocation::Store(name) => {
            let tag = destination_tag(name)?;
            let (descriptor, report) =
                layout::copy_index(&index.store, &index.descriptor, store, None)?;
            store.tag(&tag, &descriptor)?;
            let local = LocalCopy {
                written: report.copied as u64,
                skipped: report.skipped as u64,
                bytes: report.bytes,
            };
            Ok(outcome(None, Some(local)))
        }
        _ => {
            let report = export::export_index(index, dst, &export::ExportOptions::default())?;
            let local = LocalCopy { written: report.items, skipped: 0, bytes: report.bytes };
            Ok(outcome(None, Some(local)))
        }
    }
}

/// The `--all` legs: whole indexes, digests kept ([`strata_registry::pull_all`],
/// [`strata_registry::copy_all`], [`strata_registry::push_index`]). `None` when the pair (or a single-image source) is copied
/// the ordinary way.
fn copy_all(
    client: &Client,
    store: &Store,
    src: &ImageLocation,
    dst: &ImageLocation,
    options: &CopyOptions,
    events: &dyn TransferSink,
) -> Result<Option<CopyOutcome>, ImageError> {
    let unsupported = |reason| ImageError::Unsupported {
        source_location: src.to_string(),
        destination: dst.to_string(),
        reason,
    };
    let (push_options, pull_options) = options.registry_options();
    let outcome = |manifest, transfer| CopyOutcome {
        manifest,
        transfer: Some(transfer),
        local: None,
        dry_run: options.dry_run,
    };
    match (src, dst) {
        (ImageLocation::Registry(from), ImageLocation::Registry(to)) => {
            // Blob by blob as a single-image copy; no layout holds the index, so a Docker
            // manifest list moves as well as an OCI index.
            check_pushable(to).map_err(unsupported)?;
            let (_dir, scratch) = scratch_layout()?;
            let copied =
                strata_registry::copy_all(client, &scratch, from, to, &push_options, events)?;
            Ok(Some(outcome(copied.manifest, copied.report)))
        }
        (ImageLocation::Registry(from), ImageLocation::Oci { dir, reference }) => {
            let name = reference
                .clone()
                .unwrap_or_else(|| from.tag().unwrap_or(strata_types::DEFAULT_TAG).to_owned());
            // A dry run writes nothing, not even an empty layout.
            let (_scratch, layout) = match (options.dry_run, Store::open(dir)) {
                (true, Ok(existing)) => (None, existing),
                (true, Err(_)) => {
                    let (d, s) = scratch_layout()?;
                    (Some(d), s)
                }
                (false, _) => (None, Store::init(dir)?),
            };
            let pulled = pull_all(client, &layout, from, Some(&name), &pull_options, events)?;
            Ok(Some(outcome(desc_digest(&pulled.descriptor)?, pulled.report)))
        }
        (ImageLocation::Registry(from), ImageLocation::Store(name)) => {
            let extra = match name == &from.to_string() {
                true => None,
                false => Some(destination_tag(name)?).filter(|t| *t != from.tag_key()),
            };
            let pulled = pull_all(client, store, from, None, &pull_options, events)?;
            if let Some(tag) = extra.filter(|_| !options.dry_run) {
                store.tag(&tag, &pulled.descriptor)?;
            }
            Ok(Some(outcome(desc_digest(&pulled.descriptor)?, pulled.report)))
        }
        (ImageLocation::Oci { .. } | ImageLocation::Store(_), ImageLocation::Registry(to)) => {
            check_pushable(to).map_err(unsupported)?;
            // A single image (or an ambiguous layout) is for the ordinary path.
            let Ok(Opened::Index(index)) = open_local_any(Some(store), src) else {
                return Ok(None);
            };
            let pushed = push_index(client, &index, to, &push_options, events)?;
            Ok(Some(outcome(desc_digest(&index.descriptor)?, pushed)))
        }
        _ => Ok(None),
    }
}

/// A registry destination needs a tag or a digest to PUT the manifest under.
fn check_pushable(to: &Reference) -> Result<(), &'static str> {
    if to.tag().is_none() && to.digest().is_none() {
        return Err("a registry destination needs a tag (docker://HOST/REPO:TAG)");
    }
    if to.domain().is_none() {
        return Err("a registry destination needs a registry host (docker://HOST/REPO:TAG)");
    }
    Ok(())
}

/// The tag key a `name[:tag]` destination in the store is written under.
fn destination_tag(name: &str) -> Result<String, ImageError> {
    let invalid = || ImageError::InvalidDestinationName { name: name.to_string() };
    let reference: Reference = name.parse().map_err(|_| invalid())?;
    if reference.digest().is_some() {
        return Err(invalid());
    }
    Ok(reference.tag_key())
}

/// Writes `source` to a local destination: into the store (verified, tagged when named) or
/// out to a layout, an archive or a directory. `pulled_from` names the registry reference a
/// scratch image came from, so that an `oci:DIR` without a ref is tagged with its tag.
fn write_local(
    store: &Store,
    source: &OpenedImage,
    dst: &ImageLocation,
    pulled_from: Option<&Reference>,
) -> Result<LocalCopy, ImageError> {
    match dst {
        ImageLocation::Store(name) => {
            let tag = destination_tag(name)?;
            let (manifest, report) = layout::copy_image(&source.store, &source.image, store, None)?;
            store.tag(&tag, &manifest)?;
            Ok(LocalCopy {
                written: report.copied as u64,
                skipped: report.skipped as u64,
                bytes: report.bytes,
            })
        }
        ImageLocation::Oci { dir, reference: None } if pulled_from.is_some() => {
            let reference =
                pulled_from.and_then(|r| r.tag()).unwrap_or(strata_types::DEFAULT_TAG).to_string();
            let dst = ImageLocation::Oci { dir: dir.clone(), reference: Some(reference) };
            let report = export::export(source, &dst, &export::ExportOptions::default())?;
            Ok(LocalCopy { written: report.items, skipped: 0, bytes: report.bytes })
        }
        _ => {
            let report = export::export(source, dst, &export::ExportOptions::default())?;
            Ok(LocalCopy { written: report.items, skipped: 0, bytes: report.bytes })
        }
    }
}

/// What [`write_local`] would write, without writing: of `blobs` (in `from`), those the
/// destination store or layout lacks, or every one for an archive or a directory.
fn plan_local(
    store: &Store,
    blobs: &[Descriptor],
    from: &Store,
    dst: &ImageLocation,
) -> Result<LocalCopy, ImageError> {
    let target = match dst {
        ImageLocation::Store(name) => {
            destination_tag(name)?;
            Some(store.clone())
        }
        ImageLocation::Oci { dir, .. } => Store::open(dir).ok(),
        _ => None,
    };
    let mut plan = LocalCopy::default();
    for desc in blobs {
        let digest = desc_digest(desc)?;
        if target.as_ref().is_some_and(|t| t.has_blob(&digest)) {
            plan.skipped += 1;
        } else {
            plan.written += 1;
            plan.bytes += from.blob_size(&digest).unwrap_or(desc.size());
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::{import_tree, ImportOptions};
    use strata_registry::{ClientOptions, NoTransferProgress};

    /// A store holding `app:v1`, a one-layer image of a small tree.
    fn store_with_image(dir: &std::path::Path) -> (Store, Digest) {
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/motd"), "hello\n").unwrap();
        let store = Store::init(dir.join("store")).unwrap();
        let imported = import_tree(&store, &tree, &ImportOptions::default()).unwrap();
        store.tag("app:v1", &imported.manifest).unwrap();
        (store, desc_digest(&imported.manifest).unwrap())
    }

    fn run(store: &Store, src: &str, dst: &str, dry_run: bool) -> Result<CopyOutcome, ImageError> {
        let client = Client::new(ClientOptions::default()).unwrap();
        let options = CopyOptions::new(2, dry_run);
        copy(
            &client,
            store,
            &src.parse().unwrap(),
            &dst.parse().unwrap(),
            &options,
            &NoTransferProgress,
        )
    }

    #[test]
    fn local_copies_route_through_the_layer_transport() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, digest) = store_with_image(tmp.path());
        let layout = tmp.path().join("layout");
        let oci = format!("oci:{}:v1", layout.display());

        // A dry run plans three blobs (layer, config, manifest) and writes nothing.
        let plan = run(&store, "app:v1", &oci, true).unwrap();
        assert!(plan.dry_run && plan.transfer.is_none());
        assert_eq!(plan.local.as_ref().map(|l| (l.written, l.skipped)), Some((3, 0)));
        assert!(!layout.exists());

        let out = run(&store, "app:v1", &oci, false).unwrap();
        assert_eq!(out.manifest, digest);
        assert_eq!(out.local.map(|l| l.written), Some(3));
        // Back into the store under another name: every blob already there, one more tag.
        let back = run(&store, &oci, "copy:v2", false).unwrap();
        assert_eq!(back.local.map(|l| (l.written, l.skipped)), Some((0, 3)));
        assert_eq!(desc_digest(&store.resolve("copy:v2").unwrap()).unwrap(), digest);
    }

    #[test]
    fn impossible_pairs_are_errors_before_any_transfer() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = store_with_image(tmp.path());
        let err = run(&store, "dir:/tmp/x", "app:v2", false).unwrap_err();
        assert!(matches!(err, ImageError::Unsupported { .. }), "{err}");
        // A registry destination needs a tag; nothing is contacted to find that out.
        let err = run(&store, "app:v1", "docker://127.0.0.1:9/app", false).unwrap_err();
        assert!(err.to_string().contains("needs a tag"), "{err}");
        // A store destination must be a name, not a digest.
        let err = run(
            &store,
            "app:v1",
            &format!("app@{}", "sha256:".to_owned() + &"a".repeat(64)),
            false,
        )
        .unwrap_err();
        assert!(matches!(err, ImageError::InvalidDestinationName { .. }), "{err}");
    }
}
