//! Registry to registry: one image moves without passing through a local copy of what the
//! destination already has.
//!
//! For each blob the source manifest names: `HEAD` at the destination (present: nothing
//! moves, nothing is downloaded); else a cross-repository mount when the blob is known to live
//! in another repository of the destination's registry (always so when source and destination
//! share a registry: spec.md "Mounting a blob from another repository"); only when both fail is
//! the blob downloaded (verified, into a scratch store, or copied from the client's hints
//! store) and uploaded. The manifest is then `PUT` byte for byte with its own media type, so
//! the destination serves the source's digest (a Docker schema2 manifest stays one, as with
//! `skopeo copy`). An index source is resolved to the host platform's image, as by [`pull`].
//!
//! [`pull`]: crate::pull

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use strata_store::{Digest, Store};

use crate::client::Client;
use crate::error::RegistryError;
use crate::manifest::{self, Platform};
use crate::pull::{fetch_blob, image_manifest, start_pull};
use crate::push::{push_blob, push_blob_fetching, push_target, put_manifest, PushBlob};
use crate::{
    knowledge, run_parallel, BlobOutcome, BlobReport, PullOptions, PushOptions, Reference,
    TransferEvent, TransferReport, TransferSink,
};

/// The result of [`copy`].
#[derive(Debug, Clone)]
pub struct Copied {
    /// The manifest the destination now serves: the source's, byte for byte.
    pub manifest: Digest,
    /// Its media type (OCI or Docker schema2 image manifest).
    pub media_type: &'static str,
    /// Its size in bytes.
    pub size: u64,
    /// One line per blob with how it reached the destination (present, mounted, uploaded);
    /// `downloaded` counts the blobs that had to be fetched from the source first, and `bytes`
    /// both the bytes downloaded and those uploaded.
    pub report: TransferReport,
}

/// Copies the image `from` names (the host platform's, when it names an index) to `to` (a tag
/// or the same digest), moving only the blobs the destination lacks. `scratch` receives the
/// blobs that must be downloaded to be uploaded (it may be a temporary store; the client's
/// hints store, when set, supplies blobs it holds instead of the wire). Dry run: manifests are
/// fetched and the destination is asked with `HEAD`; nothing is written anywhere.
pub fn copy(
    client: &Client,
    scratch: &Store,
    from: &Reference,
    to: &Reference,
    options: &PushOptions,
    events: &dyn TransferSink,
) -> Result<Copied, RegistryError> {
    let pull_options = PullOptions { jobs: options.jobs, dry_run: options.dry_run };
    let (src, src_scopes, top) = start_pull(client, scratch, from, &pull_options)?;
    let (doc, kind) = image_manifest(client, &src, &src_scopes, top, &Platform::host())?;
    events.event(&TransferEvent::Manifest { digest: doc.digest });
    let target =
        push_target(to, &doc.digest, "the digest differs from the source's manifest digest")?;
    let dest = client.endpoint(to);
    let scope = if options.dry_run { "pull" } else { "pull,push" };
    let dest_scopes = [format!("repository:{}:{scope}", dest.repository)];
    client.prepare(&dest, &dest_scopes)?;

    let blobs = manifest::image_blobs(&src, &doc.digest, &doc.bytes)?;
    let hints = client.hints(scratch);
    let same_registry = src.registry == dest.registry && src.repository != dest.repository;
    if !options.dry_run {
        // What the source manifest names, its registry holds: the mount step finds it here.
        for (blob, _) in &blobs {
            knowledge::record(hints, &blob.digest, &src.location());
        }
    }
    let (downloaded, downloaded_bytes) = (AtomicUsize::new(0), AtomicU64::new(0));
    let count_download = |size: u64| {
        downloaded.fetch_add(1, Ordering::Relaxed);
        downloaded_bytes.fetch_add(size, Ordering::Relaxed);
    };
    let outcomes = run_parallel(&blobs, options.jobs, |(blob, kind)| {
        let push = PushBlob { digest: blob.digest, size: blob.size, kind: *kind };
        if options.dry_run {
            let predicted = push_blob(client, &dest, &dest_scopes, scratch, &push, true, events)?;
            return Ok(match predicted {
                BlobOutcome::Uploaded if same_registry => {
                    BlobOutcome::Mounted { from: src.repository.clone() }
                }
                BlobOutcome::Uploaded => {
                    if !hints.has_blob(&blob.digest) {
                        count_download(blob.size);
                    }
                    BlobOutcome::Uploaded
                }
                other => other,
            });
        }
        let fetch = || {
            let got = fetch_blob(client, &src, &src_scopes, scratch, blob, *kind, false, events)?;
            if got == BlobOutcome::Downloaded {
                count_download(blob.size);
            }
            Ok(())
        };
        push_blob_fetching(client, &dest, &dest_scopes, scratch, &push, false, events, &fetch)
    })?;

    let mut report = TransferReport {
        manifest: Some(doc.digest),
        dry_run: options.dry_run,
        ..TransferReport::default()
    };
    for ((blob, kind), outcome) in blobs.iter().zip(outcomes) {
        report.add(BlobReport { digest: blob.digest, size: blob.size, kind: *kind, outcome });
    }
    report.downloaded += downloaded.into_inner();
    report.bytes += downloaded_bytes.into_inner();
    let media_type = kind.media_type();
    if !options.dry_run {
        // spec.md "Pushing Manifests": only after every blob it references is in place.
        put_manifest(client, &dest, &dest_scopes, &target, media_type, &doc.bytes, &doc.digest)?;
        events.event(&TransferEvent::Manifest { digest: doc.digest });
    }
    Ok(Copied { manifest: doc.digest, media_type, size: doc.bytes.len() as u64, report })
}
