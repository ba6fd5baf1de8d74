//! Pulling: manifest (bounded, hashed in memory), platform choice, then missing blobs streamed
//! into the store through its verifying writer, resuming broken downloads with `Range`.
//!
//! Order matters for the store's consistency: blobs first, each committed only once its bytes
//! hash to the digest the manifest names; then the manifest blob; then the tag. A failure at
//! any point leaves at most verified, unreferenced blobs, which `gc` collects.

use std::io::{Read, Write};

use strata_store::oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest, MediaType};
use strata_store::{Image, Store, StoreError};
use strata_types::Digest;

use crate::client::{header, is_stall_io, Client, Endpoint, Req, Session};
use crate::error::RegistryError;
use crate::manifest::{self, BlobRef};
use crate::{
    knowledge, run_parallel, stall_notice_after, BlobKind, BlobOutcome, BlobReport, PullOptions,
    Reference, Throttle, TransferEvent, TransferReport, TransferSink,
};
use strata_types::Platform;

/// Manifests larger than this are refused (a hostile registry cannot exhaust memory).
pub(crate) const MAX_MANIFEST: u64 = 4 << 20;
/// Config blobs read into memory in a dry run are bounded too.
const MAX_CONFIG: u64 = 16 << 20;

/// The result of [`pull`].
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image as stored (in a dry run: as it would be stored).
    pub image: Image,
    /// What moved.
    pub report: TransferReport,
    /// The digest of the manifest the registry served for the reference (differs from
    /// `image.digest()` when a Docker manifest was converted or an index was resolved).
    pub source_digest: Digest,
}

/// Pulls `reference` into `store` (verified), converts Docker schema2 manifests to OCI when
/// needed, picks the host platform from an index, and tags it in the store as the full
/// reference string `reference.to_string()` (e.g. `127.0.0.1:5000/app:v1`) unless dry_run.
pub fn pull(
    client: &Client,
    store: &Store,
    reference: &Reference,
    options: &PullOptions,
    events: &dyn TransferSink,
) -> Result<Pulled, RegistryError> {
    pull_platform(client, store, reference, &Platform::host(), options, events)
}

/// [`pull`] choosing `platform` from an image index instead of the host's.
pub fn pull_platform(
    client: &Client,
    store: &Store,
    reference: &Reference,
    platform: &Platform,
    options: &PullOptions,
    events: &dyn TransferSink,
) -> Result<Pulled, RegistryError> {
    let (ep, scopes, top) = start_pull(client, store, reference, options)?;
    let source_digest = top.digest;
    let (doc, kind) = image_manifest(client, &ep, &scopes, top, platform)?;
    let image = manifest::to_oci(&ep, &doc.digest, kind, doc.bytes)?;
    let manifest: ImageManifest =
        serde_json::from_slice(&image.bytes).map_err(|source| RegistryError::InvalidManifest {
            registry: ep.registry.clone(),
            repository: ep.repository.clone(),
            digest: image.digest,
            source,
        })?;
    events.event(&TransferEvent::Manifest { digest: image.digest });

    let mut blobs: Vec<(BlobRef, BlobKind)> = vec![(image.config.clone(), BlobKind::Config)];
    let skipped = image.layers.iter().any(|l| options.skip_layers.contains(&l.digest));
    blobs.extend(
        image
            .layers
            .iter()
            .filter(|l| !options.skip_layers.contains(&l.digest))
            .map(|l| (l.clone(), BlobKind::Layer)),
    );
    let session = Session::new(client, &ep, &scopes, options.dry_run, events);
    let mut report = fetch_blobs(&session, store, &blobs, options.jobs)?;
    report.manifest = Some(image.digest);

    let size = image.bytes.len() as u64;
    let descriptor = Descriptor::new(MediaType::ImageManifest, size, image.digest);
    let pulled = if options.dry_run {
        let config_bytes = if store.has_blob(&image.config.digest) {
            store.read_blob(&image.config.digest)?
        } else {
            fetch_blob_to_memory(client, &ep, &scopes, &image.config)?
        };
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|source| {
                StoreError::InvalidBlobJson {
                    digest: image.config.digest,
                    what: "image config",
                    source,
                }
            })?;
        Image { manifest_descriptor: descriptor, manifest, config }
    } else {
        store.put_blob_verified(image.bytes.as_slice(), &image.digest, Some(size))?;
        let stored = store.image(&descriptor)?;
        if skipped {
            // Not whole: kept untagged, for the caller only (gc takes it when unused).
        } else if reference.digest().is_none() {
            store.tag(&reference.to_string(), &descriptor)?;
        } else if let Some(tag) = reference.tag() {
            store.tag(&format!("{}:{tag}", reference.name()), &descriptor)?;
        } else {
            store.set_ref_name(&reference.to_string(), &descriptor)?;
        }
        for (blob, _) in &blobs {
            knowledge::record(client.hints(store), &blob.digest, &ep.location());
        }
        stored
    };
    Ok(Pulled { image: pulled, report, source_digest })
}

/// The image manifest `top` is, or the one for `platform` when `top` is an index (fetched and
/// verified), with its kind. A nested index is refused.
pub(crate) fn image_manifest(
    client: &Client,
    ep: &Endpoint,
    scopes: &[String],
    top: Fetched,
    platform: &Platform,
) -> Result<(Fetched, manifest::Kind), RegistryError> {
    let kind = manifest::kind_of(ep, &top.digest, top.content_type.as_deref(), &top.bytes)?;
    if !kind.is_index() {
        return Ok((top, kind));
    }
    let (child, _) = manifest::select_platform(ep, &top.digest, &top.bytes, platform)?;
    let doc = fetch_manifest(client, ep, scopes, &child.to_string(), Some(&child))?;
    let kind = manifest::kind_of(ep, &doc.digest, doc.content_type.as_deref(), &doc.bytes)?;
    if kind.is_index() {
        return Err(manifest::nested_index(ep, doc.digest));
    }
    Ok((doc, kind))
}

/// Brings one blob into `store`: present already, copied from the client's hints store
/// (verified), or downloaded (verified). A dry run only decides.
pub(crate) fn fetch_blob(
    s: &Session<'_>,
    store: &Store,
    blob: &BlobRef,
    kind: BlobKind,
) -> Result<BlobOutcome, RegistryError> {
    let Session { client, ep, scopes, dry_run, events } = *s;
    let hints = client.hints(store);
    let local = !std::ptr::eq(hints, store) && hints.has_blob(&blob.digest);
    if !dry_run {
        // Pinned in the pull's lease before the check: a concurrent gc cannot take a blob
        // found present before the manifest that will name it is stored.
        store.pin(&[blob.digest])?;
    }
    if store.has_blob(&blob.digest) || (local && dry_run) {
        events
            .event(&TransferEvent::BlobDone { digest: blob.digest, outcome: BlobOutcome::Present });
        return Ok(BlobOutcome::Present);
    }
    if local {
        // The hints store (the user's main store) has it: copy it, verified, instead of
        // downloading. A copy that fails (e.g. the local blob rotted) falls back to the wire.
        let copied = hints
            .open_blob(&blob.digest)
            .and_then(|file| store.put_blob_verified(file, &blob.digest, Some(blob.size)));
        if copied.is_ok() {
            events.event(&TransferEvent::BlobDone {
                digest: blob.digest,
                outcome: BlobOutcome::Present,
            });
            return Ok(BlobOutcome::Present);
        }
    }
    if dry_run {
        return Ok(BlobOutcome::Downloaded);
    }
    events.event(&TransferEvent::BlobStart { digest: blob.digest, size: blob.size, kind });
    download_blob(client, ep, scopes, store, blob, events)?;
    knowledge::record(client.hints(store), &blob.digest, &ep.location());
    events
        .event(&TransferEvent::BlobDone { digest: blob.digest, outcome: BlobOutcome::Downloaded });
    Ok(BlobOutcome::Downloaded)
}

/// [`fetch_blob`] for each of `blobs`, `options.jobs` at a time, reported in their order (the
/// report's `manifest` is left for the caller).
pub(crate) fn fetch_blobs(
    s: &Session<'_>,
    store: &Store,
    blobs: &[(BlobRef, BlobKind)],
    jobs: usize,
) -> Result<TransferReport, RegistryError> {
    let outcomes = run_parallel(blobs, jobs, |(blob, kind)| fetch_blob(s, store, blob, *kind))?;
    let mut report = TransferReport { dry_run: s.dry_run, ..TransferReport::default() };
    for ((blob, kind), outcome) in blobs.iter().zip(outcomes) {
        report.add(BlobReport { digest: blob.digest, size: blob.size, kind: *kind, outcome });
    }
    Ok(report)
}

/// A manifest as received and verified.
pub(crate) struct Fetched {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub content_type: Option<String>,
}

/// The start of every pull: the store's writer lease unless a dry run (blobs are
/// unreferenced between their download and the tag, so it is held for the whole pull and a
/// concurrent gc cannot sweep them), the endpoint with its pull scope prepared, and the
/// manifest `reference` names (its digest, else its tag, else the default tag), fetched and
/// verified.
pub(crate) fn start_pull(
    client: &Client,
    store: &Store,
    reference: &Reference,
    options: &PullOptions,
) -> Result<(Endpoint, [String; 1], Fetched), RegistryError> {
    if !options.dry_run {
        store.lease()?;
    }
    fetch_named_manifest(client, reference)
}

/// The endpoint of `reference` with its pull scope prepared, and the manifest it names (its
/// digest, else its tag, else the default tag), fetched and verified.
pub(crate) fn fetch_named_manifest(
    client: &Client,
    reference: &Reference,
) -> Result<(Endpoint, [String; 1], Fetched), RegistryError> {
    let ep = client.endpoint(reference);
    let scopes = [format!("repository:{}:pull", ep.repository)];
    client.prepare(&ep, &scopes)?;
    let wanted = match (reference.digest(), reference.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_owned(),
        (None, None) => strata_types::DEFAULT_TAG.to_owned(),
    };
    let top = fetch_manifest(client, &ep, &scopes, &wanted, reference.digest())?;
    Ok((ep, scopes, top))
}

/// GET `/v2/<name>/manifests/<reference>` (spec.md "Pulling manifests"), bounded by
/// [`MAX_MANIFEST`], verified against `expected` (a digest reference) or the registry's
/// `Docker-Content-Digest`; by tag without either, the digest is computed from the bytes.
pub(crate) fn fetch_manifest(
    client: &Client,
    ep: &Endpoint,
    scopes: &[String],
    reference: &str,
    expected: Option<&Digest>,
) -> Result<Fetched, RegistryError> {
    let req = Req::new("GET", ep.url(&format!("manifests/{reference}")))
        .header("Accept", manifest::accept());
    let too_large = || RegistryError::ManifestTooLarge {
        registry: ep.registry.clone(),
        repository: ep.repository.clone(),
        reference: reference.to_owned(),
        limit: MAX_MANIFEST,
    };
    let mut attempt = 0;
    let (bytes, content_type, announced) = loop {
        attempt += 1;
        let resp = client.send(ep, scopes, &req)?;
        match resp.status().as_u16() {
            200 => {}
            404 => {
                return Err(RegistryError::ManifestNotFound {
                    registry: ep.registry.clone(),
                    repository: ep.repository.clone(),
                    reference: reference.to_owned(),
                })
            }
            _ => return Err(client.status_error(ep, &req, resp)),
        }
        if content_length(&resp).is_some_and(|n| n > MAX_MANIFEST) {
            return Err(too_large());
        }
        let content_type = header(&resp, "Content-Type").map(str::to_owned);
        let announced = header(&resp, "Docker-Content-Digest").map(str::to_owned);
        let mut bytes = Vec::new();
        let read = resp.into_body().into_reader().take(MAX_MANIFEST + 1).read_to_end(&mut bytes);
        match read {
            Ok(_) if bytes.len() as u64 > MAX_MANIFEST => return Err(too_large()),
            Ok(_) => break (bytes, content_type, announced),
            Err(e) if is_stall_io(&e) => return Err(client.stalled(ep, req.method, &req.url)),
            Err(_) if attempt <= client.retries() => client.pause(attempt),
            Err(source) => {
                return Err(RegistryError::BodyRead {
                    registry: ep.registry.clone(),
                    repository: ep.repository.clone(),
                    what: format!("manifest {reference}"),
                    source,
                })
            }
        }
    };
    let digest = Digest::of_bytes(&bytes);
    let mismatch = |expected: Digest| RegistryError::DigestMismatch {
        registry: ep.registry.clone(),
        repository: ep.repository.clone(),
        expected,
        found: digest,
    };
    if let Some(expected) = expected {
        if *expected != digest {
            return Err(mismatch(*expected));
        }
    } else if let Some(Ok(announced)) = announced.as_deref().map(str::parse::<Digest>) {
        if announced != digest {
            return Err(mismatch(announced));
        }
    }
    Ok(Fetched { bytes, digest, content_type })
}

fn content_length(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    header(resp, "Content-Length").and_then(|v| v.trim().parse().ok())
}

/// A `404` for blob `digest` in `ep`'s repository.
fn blob_not_found(ep: &Endpoint, digest: Digest) -> RegistryError {
    RegistryError::BlobNotFound {
        registry: ep.registry.clone(),
        repository: ep.repository.clone(),
        digest,
    }
}

fn blob_error(ep: &Endpoint, digest: &Digest, e: StoreError) -> RegistryError {
    match e {
        StoreError::DigestMismatch { expected, found } => RegistryError::DigestMismatch {
            registry: ep.registry.clone(),
            repository: ep.repository.clone(),
            expected,
            found,
        },
        StoreError::SizeMismatch { expected, found, .. } => RegistryError::SizeMismatch {
            registry: ep.registry.clone(),
            repository: ep.repository.clone(),
            digest: *digest,
            expected,
            found,
            what: "sent",
        },
        other => RegistryError::Store(other),
    }
}

/// GET `/v2/<name>/blobs/<digest>` into a [`strata_store::BlobWriter`]; a broken transfer
/// resumes with `Range: bytes=<have>-` (a registry answering 200 instead of 206 restarts it).
/// The blob is committed only if it has the descriptor's size and digest. A stall is not
/// resumed (see the client's module doc); while one lasts, `Stalled` events say so.
fn download_blob(
    client: &Client,
    ep: &Endpoint,
    scopes: &[String],
    store: &Store,
    blob: &BlobRef,
    events: &dyn TransferSink,
) -> Result<(), RegistryError> {
    let throttle = Throttle::new(events, blob.digest);
    throttle.watch(stall_notice_after(client.stall_timeout()), || {
        download_blob_reporting(client, ep, scopes, store, blob, &throttle)
    })
}

fn download_blob_reporting(
    client: &Client,
    ep: &Endpoint,
    scopes: &[String],
    store: &Store,
    blob: &BlobRef,
    throttle: &Throttle<'_>,
) -> Result<(), RegistryError> {
    let size_error = |found: u64, what: &'static str| RegistryError::SizeMismatch {
        registry: ep.registry.clone(),
        repository: ep.repository.clone(),
        digest: blob.digest,
        expected: blob.size,
        found,
        what,
    };
    let mut writer = store.blob_writer()?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut attempt = 0;
    loop {
        let offset = writer.written();
        let mut req = Req::new("GET", ep.url(&format!("blobs/{}", blob.digest)));
        if offset > 0 {
            req = req.header("Range", format!("bytes={offset}-"));
        }
        let resp = client.send(ep, scopes, &req)?;
        let status = resp.status().as_u16();
        match status {
            200 => {
                if offset > 0 {
                    // The registry ignored Range: start over.
                    writer = store.blob_writer()?;
                }
                if let Some(n) = content_length(&resp) {
                    if n != blob.size {
                        return Err(size_error(n, "announced"));
                    }
                }
            }
            206 if offset > 0 => {
                let range = header(&resp, "Content-Range").unwrap_or_default().to_owned();
                if parse_content_range_start(&range) != Some(offset) {
                    return Err(RegistryError::InvalidHeader {
                        registry: ep.registry.clone(),
                        header: "Content-Range",
                        value: range,
                    });
                }
            }
            404 => return Err(blob_not_found(ep, blob.digest)),
            _ => return Err(client.status_error(ep, &req, resp)),
        }
        let mut reader = resp.into_body().into_reader();
        let broken = loop {
            match reader.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => {
                    if writer.written() + n as u64 > blob.size {
                        return Err(size_error(writer.written() + n as u64, "sent"));
                    }
                    writer.write_all(&buf[..n]).map_err(|source| StoreError::Io {
                        path: writer.temp_path().to_owned(),
                        source,
                    })?;
                    throttle.report(writer.written(), false);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        match broken {
            None if writer.written() == blob.size => break,
            None => return Err(size_error(writer.written(), "sent")),
            Some(e) if is_stall_io(&e) => return Err(client.stalled(ep, req.method, &req.url)),
            Some(source) => {
                attempt += 1;
                if attempt > client.retries() {
                    return Err(RegistryError::BodyRead {
                        registry: ep.registry.clone(),
                        repository: ep.repository.clone(),
                        what: format!("blob {}", blob.digest),
                        source,
                    });
                }
                client.pause(attempt);
            }
        }
    }
    throttle.report(writer.written(), true);
    writer
        .commit_verified(&blob.digest, Some(blob.size))
        .map_err(|e| blob_error(ep, &blob.digest, e))?;
    Ok(())
}

/// A small blob (a config in a dry run) into memory, verified.
pub(crate) fn fetch_blob_to_memory(
    client: &Client,
    ep: &Endpoint,
    scopes: &[String],
    blob: &BlobRef,
) -> Result<Vec<u8>, RegistryError> {
    let req = Req::new("GET", ep.url(&format!("blobs/{}", blob.digest)));
    let resp = client.send(ep, scopes, &req)?;
    match resp.status().as_u16() {
        200 => {}
        404 => return Err(blob_not_found(ep, blob.digest)),
        _ => return Err(client.status_error(ep, &req, resp)),
    }
    let limit = blob.size.min(MAX_CONFIG);
    let mut bytes = Vec::new();
    resp.into_body().into_reader().take(limit + 1).read_to_end(&mut bytes).map_err(|source| {
        if is_stall_io(&source) {
            return client.stalled(ep, req.method, &req.url);
        }
        RegistryError::BodyRead {
            registry: ep.registry.clone(),
            repository: ep.repository.clone(),
            what: format!("blob {}", blob.digest),
            source,
        }
    })?;
    let found = Digest::of_bytes(&bytes);
    if bytes.len() as u64 != blob.size || found != blob.digest {
        return Err(RegistryError::DigestMismatch {
            registry: ep.registry.clone(),
            repository: ep.repository.clone(),
            expected: blob.digest,
            found,
        });
    }
    Ok(bytes)
}

/// `bytes 100-199/200` -> 100.
pub(crate) fn parse_content_range_start(v: &str) -> Option<u64> {
    let v = v.trim();
    let v = v.strip_prefix("bytes").map(str::trim_start).unwrap_or(v);
    v.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_range_start() {
        assert_eq!(super::parse_content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(super::parse_content_range_start("5-9/*"), Some(5));
        assert_eq!(super::parse_content_range_start("bytes */200"), None);
    }
}
