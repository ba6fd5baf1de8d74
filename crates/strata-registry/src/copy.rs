//! Registry to registry: one image moves without passing through a local copy of what the
//! destination already has.
//!
//! For each blob the source manifest names: `HEAD` at the destination (present: nothing
//! moves, nothing is downloaded); else a cross-repository mount when the blob is known to live
//! in another repository of the destination's registry (always so when source and destination
//! share a registry: spec.md "Mounting a blob from another repository"); only when both fail is
//! the blob downloaded (verified, into a scratch store, or copied from the client's hints
//! store) and uploaded, every such download done before the first upload starts. The manifest is then `PUT` byte for byte with its own media type, so
//! the destination serves the source's digest (a Docker schema2 manifest stays one, as with
//! `skopeo copy`). An index source is resolved to the host platform's image, as by [`pull`].
//!
//! [`pull`]: crate::pull

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use strata_store::Store;
use strata_types::Digest;

use crate::client::{Client, Endpoint, Session};
use crate::error::RegistryError;
use crate::index::{blobs_of, fetch_children, Doc};
use crate::manifest::{self, BlobRef};
use crate::pull::{fetch_blob, image_manifest, start_pull};
use crate::push::{push_blobs, push_target, put_manifest, PushBlob};
use crate::{
    BlobKind, BlobOutcome, BlobReport, PullOptions, PushOptions, Reference, TransferEvent,
    TransferReport, TransferSink,
};
use strata_types::Platform;

/// The result of [`copy`].
#[derive(Debug, Clone)]
pub struct Copied {
    /// The manifest (or, from [`copy_all`], index) the destination now serves: the source's,
    /// byte for byte.
    pub manifest: Digest,
    /// Its media type (OCI or Docker schema2 image manifest; OCI index or Docker manifest
    /// list).
    pub media_type: &'static str,
    /// Its size in bytes.
    pub size: u64,
    /// One line per blob with how it reached the destination (present, mounted, uploaded);
    /// `downloaded` counts the blobs that had to be fetched from the source first, and `bytes`
    /// both the bytes downloaded and those uploaded.
    pub report: TransferReport,
}

/// Copies the image `from` names (`platform`'s, when it names an index; see
/// [`Platform::host`]) to `to` (a tag or the same digest), moving only the blobs the
/// destination lacks. `scratch` receives the
/// blobs that must be downloaded to be uploaded (it may be a temporary store; the client's
/// hints store, when set, supplies blobs it holds instead of the wire). Dry run: manifests are
/// fetched and the destination is asked with `HEAD`; nothing is written anywhere.
pub fn copy(
    client: &Client,
    scratch: &Store,
    from: &Reference,
    to: &Reference,
    platform: &Platform,
    options: &PushOptions,
    events: &dyn TransferSink,
) -> Result<Copied, RegistryError> {
    let (src, src_scopes, top) = start_pull(client, scratch, from, &pull_options(options))?;
    let (doc, kind) = image_manifest(client, &src, &src_scopes, top, platform)?;
    events.event(&TransferEvent::Manifest { digest: doc.digest });
    let legs = Legs::open(client, scratch, src, src_scopes, to, &doc.digest, options)?;
    let blobs = manifest::image_blobs(&legs.src, &doc.digest, &doc.bytes)?;
    let mut report = legs.copy_blobs(&blobs, events)?;
    report.manifest = Some(doc.digest);
    if !options.dry_run {
        // spec.md "Pushing Manifests": only after every blob it references is in place.
        legs.put(&legs.target, kind.media_type(), &doc.bytes, &doc.digest, events)?;
    }
    let size = doc.bytes.len() as u64;
    Ok(Copied { manifest: doc.digest, media_type: kind.media_type(), size, report })
}

/// Copies what `from` names whole to `to`, keeping every digest, as `skopeo copy --all`: for
/// an image index or Docker manifest list, every manifest it lists and all their blobs (a blob
/// shared by several moves once, and only if the destination lacks it, as in [`copy`]), then
/// each manifest under its digest, then the index under `to`'s tag; a single image manifest is
/// copied like [`copy`] does. A nested index is refused. Dry run: nothing is written.
pub fn copy_all(
    client: &Client,
    scratch: &Store,
    from: &Reference,
    to: &Reference,
    options: &PushOptions,
    events: &dyn TransferSink,
) -> Result<Copied, RegistryError> {
    let (src, src_scopes, top) = start_pull(client, scratch, from, &pull_options(options))?;
    let top_kind = manifest::kind_of(&src, &top.digest, top.content_type.as_deref(), &top.bytes)?;
    events.event(&TransferEvent::Manifest { digest: top.digest });
    let children = fetch_children(client, &src, &src_scopes, &top, top_kind, events)?;
    let legs = Legs::open(client, scratch, src, src_scopes, to, &top.digest, options)?;
    let top = Doc { digest: top.digest, kind: top_kind, bytes: top.bytes };
    let blobs = blobs_of(&legs.src, &top, &children)?;
    let mut report = legs.copy_blobs(&blobs, events)?;
    report.manifest = Some(top.digest);
    if !options.dry_run {
        // An index's manifests before it (spec.md "Pushing Manifests").
        for child in &children {
            let target = child.digest.to_string();
            legs.put(&target, child.kind.media_type(), &child.bytes, &child.digest, events)?;
        }
        legs.put(&legs.target, top_kind.media_type(), &top.bytes, &top.digest, events)?;
    }
    let size = top.bytes.len() as u64;
    Ok(Copied { manifest: top.digest, media_type: top_kind.media_type(), size, report })
}

fn pull_options(options: &PushOptions) -> PullOptions {
    PullOptions { jobs: options.jobs, dry_run: options.dry_run, ..Default::default() }
}

/// Both ends of a registry-to-registry copy, with their scopes prepared.
struct Legs<'a> {
    client: &'a Client,
    scratch: &'a Store,
    options: &'a PushOptions,
    src: Endpoint,
    src_scopes: [String; 1],
    dest: Endpoint,
    dest_scopes: [String; 1],
    /// Where the top manifest goes: `to`'s tag, else its digest.
    target: String,
}

impl<'a> Legs<'a> {
    fn open(
        client: &'a Client,
        scratch: &'a Store,
        src: Endpoint,
        src_scopes: [String; 1],
        to: &Reference,
        top: &Digest,
        options: &'a PushOptions,
    ) -> Result<Legs<'a>, RegistryError> {
        let target = push_target(to, top, "the digest differs from the source's manifest digest")?;
        let dest = client.endpoint(to);
        let scope = if options.dry_run { "pull" } else { "pull,push" };
        let dest_scopes = [format!("repository:{}:{scope}", dest.repository)];
        client.prepare(&dest, &dest_scopes)?;
        Ok(Legs { client, scratch, options, src, src_scopes, dest, dest_scopes, target })
    }

    /// Moves each blob the destination lacks: `HEAD` there, else mount, else download (or
    /// copy from the hints store) and upload. The report's `downloaded` counts the blobs that
    /// were fetched from the source (in a dry run: would be), and `bytes` includes them.
    fn copy_blobs(
        &self,
        blobs: &[(BlobRef, BlobKind)],
        events: &dyn TransferSink,
    ) -> Result<TransferReport, RegistryError> {
        let (client, scratch, dry_run) = (self.client, self.scratch, self.options.dry_run);
        let (src, dest) = (&self.src, &self.dest);
        let hints = client.hints(scratch);
        // What the source manifest names, its repository holds: a mount source when the
        // destination is another repository of the same registry.
        let same_registry = src.registry == dest.registry && src.repository != dest.repository;
        let mount_from = same_registry.then_some(src.repository.as_str());
        let (downloaded, downloaded_bytes) = (AtomicUsize::new(0), AtomicU64::new(0));
        let count_download = |size: u64| {
            downloaded.fetch_add(1, Ordering::Relaxed);
            downloaded_bytes.fetch_add(size, Ordering::Relaxed);
        };
        let push: Vec<PushBlob> = blobs
            .iter()
            .map(|(blob, kind)| PushBlob { digest: blob.digest, size: blob.size, kind: *kind })
            .collect();
        // Every blob the destination lacks is downloaded (verified) before the first upload.
        let fetch = |push: &PushBlob| {
            let blob = BlobRef { digest: push.digest, size: push.size };
            let session = Session::new(client, src, &self.src_scopes, false, events);
            if fetch_blob(&session, scratch, &blob, push.kind)? == BlobOutcome::Downloaded {
                count_download(blob.size);
            }
            Ok(())
        };
        let session = Session::new(client, dest, &self.dest_scopes, dry_run, events);
        let outcomes = push_blobs(&session, scratch, &push, self.options.jobs, mount_from, &fetch)?;
        for (blob, outcome) in push.iter().zip(&outcomes) {
            if dry_run && *outcome == BlobOutcome::Uploaded && !hints.has_blob(&blob.digest) {
                // It would have to be downloaded first.
                count_download(blob.size);
            }
        }
        let mut report = TransferReport { dry_run, ..TransferReport::default() };
        for ((blob, kind), outcome) in blobs.iter().zip(outcomes) {
            report.add(BlobReport { digest: blob.digest, size: blob.size, kind: *kind, outcome });
        }
        report.downloaded += downloaded.into_inner();
        report.bytes += downloaded_bytes.into_inner();
        Ok(report)
    }

    /// PUTs one manifest or index at the destination.
    fn put(
        &self,
        target: &str,
        media_type: &str,
        bytes: &[u8],
        digest: &Digest,
        events: &dyn TransferSink,
    ) -> Result<(), RegistryError> {
        put_manifest(
            self.client,
            &self.dest,
            &self.dest_scopes,
            target,
            media_type,
            bytes,
            digest,
        )?;
        events.event(&TransferEvent::Manifest { digest: *digest });
        Ok(())
    }
}
