//! Registry bases on demand: `FROM host/repo:tag` and `FROM docker://host/repo:tag`, once
//! strata-image's `resolve` has decided (by the pull policy) that the registry is asked.
//!
//! A pulled image is kept in the store tagged with its full reference (`host/repo:tag`), so
//! the next build finds it without the network; `--pull=always` asks the registry every
//! build, which costs a manifest request when nothing changed because the store already has
//! every blob. A reference is pulled once per build: stages that start (in parallel) from the same base
//! wait on one entry, so one of them pulls and the others reuse its result. A registry's
//! client is made on its first pull only, so a build that pulls nothing never reads
//! credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use strata_image::PlatformImage;
use strata_registry::{
    BlobKind, BlobOutcome, Client, PullOptions, Reference, TransferEvent, TransferSink,
};
use strata_store::oci_spec::image::Descriptor;
use strata_store::{Image, Store};
use strata_types::Platform;

use crate::error::{BuildError, Result};
use crate::options::BuildOptions;
use crate::progress::{BuildEvent, ProgressSink, PullBlobKind, PullBlobOutcome};

/// The registry references a build has resolved, and the clients it pulls with.
#[derive(Default)]
pub(crate) struct RegistryBases {
    /// One client per registry host, made on its first pull.
    clients: Mutex<HashMap<String, Arc<Client>>>,
    /// One slot per reference; its lock is held while the reference is being decided.
    resolved: Mutex<HashMap<String, Arc<Mutex<Option<Descriptor>>>>>,
}

impl RegistryBases {
    /// `reference` pulled from its registry into the store, once per build: stages that
    /// ask for the same reference at the same time share one pull.
    pub fn image(
        &self,
        store: &Store,
        opts: &BuildOptions,
        progress: &dyn ProgressSink,
        reference: &Reference,
        platform: &Platform,
        skip: &std::collections::BTreeSet<strata_types::Digest>,
    ) -> Result<Image> {
        let key = format!("{reference} {platform}");
        let slot = {
            let mut resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(resolved.entry(key).or_default())
        };
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(descriptor) = slot.as_ref() {
            return Ok(store.image(descriptor)?);
        }
        let image = self.pull(store, opts, progress, reference, platform, skip)?;
        *slot = Some(image.manifest_descriptor.clone());
        Ok(image)
    }

    fn pull(
        &self,
        store: &Store,
        opts: &BuildOptions,
        progress: &dyn ProgressSink,
        reference: &Reference,
        platform: &Platform,
        skip: &std::collections::BTreeSet<strata_types::Digest>,
    ) -> Result<Image> {
        let err = |source| BuildError::Pull {
            reference: reference.to_string(),
            source: Box::new(source),
        };
        let host = reference.domain().unwrap_or_default().to_string();
        let client = {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            match clients.get(&host) {
                Some(c) => Arc::clone(c),
                None => {
                    let mut options = opts.registry.clone();
                    if !opts.tls_verify {
                        options.insecure.push(host.clone());
                    }
                    let c = Arc::new(Client::new(options).map_err(err)?);
                    clients.insert(host, Arc::clone(&c));
                    c
                }
            }
        };
        progress.event(&BuildEvent::PullStart { reference: reference.to_string() });
        // What the tag held before: the pull re-points it at this platform's image.
        let before = store.resolve(&reference.to_string()).ok();
        let pulled = strata_registry::pull_platform(
            &client,
            store,
            reference,
            platform,
            &PullOptions { skip_layers: skip.clone(), ..PullOptions::default() },
            &PullEvents::new(reference, progress),
        )
        .map_err(err)?;
        if store.missing_blobs(&pulled.image.manifest_descriptor).is_ok_and(|m| m.is_empty()) {
            keep_other_platforms(store, reference, before, &pulled.image, platform)?;
        }
        progress.event(&BuildEvent::PullDone {
            reference: reference.to_string(),
            digest: pulled.image.manifest_descriptor.digest().to_string(),
            blobs_downloaded: pulled.report.downloaded,
            blobs_present: pulled.report.present,
            bytes: pulled.report.bytes,
        });
        Ok(pulled.image)
    }
}

/// After a pull for `platform` re-pointed the tag of `reference`, keeps the images the tag
/// held for other platforms: the tag then names a local index of all of them, so a build for
/// amd64 and arm64 from the same base does not pull one over the other on every build.
fn keep_other_platforms(
    store: &Store,
    reference: &Reference,
    before: Option<Descriptor>,
    pulled: &Image,
    platform: &Platform,
) -> Result<()> {
    let Some(before) = before.filter(|b| *b != pulled.manifest_descriptor) else {
        return Ok(());
    };
    // Only what is whole is kept: a platform whose blobs are gone is dropped.
    let Ok(held) = strata_image::platforms::platforms(store, &before) else { return Ok(()) };
    let mut images: Vec<PlatformImage> = held
        .into_iter()
        .filter(|p| !p.platform.satisfies(platform) && !platform.satisfies(&p.platform))
        .filter(|p| store.missing_blobs(&p.manifest).is_ok_and(|m| m.is_empty()))
        .collect();
    if images.is_empty() {
        return Ok(());
    }
    images.push(PlatformImage {
        platform: platform.clone(),
        manifest: pulled.manifest_descriptor.clone(),
    });
    let index = strata_image::put_index(store, &images)?;
    store.tag(&reference.to_string(), &index)?;
    Ok(())
}

/// The registry's transfer events of one base's pull, as [`BuildEvent`]s for the build's
/// sink: the per-blob progress `strata pull` shows, inside a build.
struct PullEvents<'a> {
    reference: String,
    sink: &'a dyn ProgressSink,
    /// Sizes of the blobs started, for the progress events.
    sizes: Mutex<HashMap<String, u64>>,
}

impl<'a> PullEvents<'a> {
    fn new(reference: &Reference, sink: &'a dyn ProgressSink) -> PullEvents<'a> {
        PullEvents { reference: reference.to_string(), sink, sizes: Mutex::default() }
    }
}

impl TransferSink for PullEvents<'_> {
    fn event(&self, event: &TransferEvent) {
        let reference = self.reference.clone();
        let mut sizes = self.sizes.lock().unwrap_or_else(|p| p.into_inner());
        let e = match event {
            TransferEvent::BlobStart { digest, size, kind } => {
                sizes.insert(digest.to_string(), *size);
                let kind = match kind {
                    BlobKind::Layer => PullBlobKind::Layer,
                    BlobKind::Config => PullBlobKind::Config,
                    BlobKind::Manifest => PullBlobKind::Manifest,
                };
                BuildEvent::PullBlobStart {
                    reference,
                    digest: digest.to_string(),
                    kind,
                    size: *size,
                }
            }
            TransferEvent::BlobProgress { digest, done } => {
                let digest = digest.to_string();
                let size = sizes.get(&digest).copied().unwrap_or(*done);
                BuildEvent::PullBlobProgress { reference, digest, done: *done, size }
            }
            TransferEvent::BlobDone { digest, outcome } => {
                let outcome = match outcome {
                    BlobOutcome::Downloaded => PullBlobOutcome::Downloaded,
                    _ => PullBlobOutcome::Present,
                };
                BuildEvent::PullBlobDone { reference, digest: digest.to_string(), outcome }
            }
            _ => return,
        };
        drop(sizes);
        self.sink.event(&e);
    }
}
