//! Pushing: for each blob HEAD, else mount, else upload; then the manifest.
//!
//! The upload flow is the one of the distribution spec (spec.md "Pushing blobs"): `POST
//! /v2/<name>/blobs/uploads/` opens a session whose URL comes back in `Location` (absolute or
//! relative; every response may move it). A blob up to [`Client::with_chunking`]'s threshold is
//! sent in one `PUT <location>?digest=<digest>`; a larger one in `PATCH` chunks ("Pushing a blob
//! in chunks") with `Content-Range: <first>-<last>` (inclusive), each at least the
//! `OCI-Chunk-Min-Length` the registry announced, then an empty closing `PUT ?digest=`. A broken
//! upload resumes: `GET <location>` answers `204` with `Range: 0-<last>` telling how much the
//! registry holds, and the next chunk starts after it; a session the registry has forgotten
//! starts over. A blob known to live in another repository of the same registry is first
//! offered for mounting ("Mounting a blob from another repository": `POST
//! ...uploads/?mount=<digest>&from=<repo>`): `201` means done without moving a byte, `202` means
//! the registry declined and opened an ordinary upload session instead, which is then used.

use std::fs::File;

use strata_store::{Image, Store, StoreError};
use strata_types::Digest;

use crate::client::{header, Client, Endpoint, Payload, Req, Session};
use crate::error::RegistryError;
use crate::{
    knowledge, run_parallel, stall_notice_after, BlobKind, BlobOutcome, BlobReport, PushOptions,
    Reference, Throttle, TransferEvent, TransferReport, TransferSink,
};

/// A blob of the image to push.
pub(crate) struct PushBlob {
    pub digest: Digest,
    pub size: u64,
    pub kind: BlobKind,
}

/// Pushes `image` (all of whose blobs are in `store`) to `dest` (must have a tag or digest).
/// Skips blobs the registry has (HEAD), mounts blobs known to live in another repo of the same
/// registry, uploads the rest, then PUTs the manifest. Dry run: HEAD checks only, nothing
/// written (outcomes say what would happen; a predicted mount may still become an upload).
pub fn push(
    client: &Client,
    store: &Store,
    image: &Image,
    dest: &Reference,
    options: &PushOptions,
    events: &dyn TransferSink,
) -> Result<TransferReport, RegistryError> {
    let manifest_digest = image.digest()?;
    let target =
        push_target(dest, &manifest_digest, "the digest differs from the image's manifest digest")?;
    if !options.dry_run {
        // An untagged image's blobs must not be swept by a concurrent gc while they are read.
        store.lease()?;
    }
    let manifest_bytes = store.read_blob(&manifest_digest)?;
    let ep = client.endpoint(dest);
    let scope = if options.dry_run { "pull" } else { "pull,push" };
    let scopes = [format!("repository:{}:{scope}", ep.repository)];
    client.prepare(&ep, &scopes)?;

    let mut blobs = Vec::new();
    let config = image.manifest.config();
    blobs.push(PushBlob {
        digest: Digest::try_from(config.digest()).map_err(StoreError::from)?,
        size: config.size(),
        kind: BlobKind::Config,
    });
    for layer in image.manifest.layers() {
        blobs.push(PushBlob {
            digest: Digest::try_from(layer.digest()).map_err(StoreError::from)?,
            size: layer.size(),
            kind: BlobKind::Layer,
        });
    }
    for b in &blobs {
        let found = store.blob_size(&b.digest)?;
        if found != b.size {
            return Err(
                StoreError::SizeMismatch { digest: b.digest, expected: b.size, found }.into()
            );
        }
    }

    let outcomes = run_parallel(&blobs, options.jobs, |blob| {
        push_blob(&Session::new(client, &ep, &scopes, options.dry_run, events), store, blob)
    })?;
    let mut report = TransferReport {
        manifest: Some(manifest_digest),
        dry_run: options.dry_run,
        ..TransferReport::default()
    };
    for (b, outcome) in blobs.iter().zip(outcomes) {
        report.add(BlobReport { digest: b.digest, size: b.size, kind: b.kind, outcome });
    }
    if options.dry_run {
        return Ok(report);
    }

    // spec.md "Pushing Manifests": only after every blob it references is in place.
    let media_type = image
        .manifest
        .media_type()
        .as_ref()
        .unwrap_or(image.manifest_descriptor.media_type())
        .to_string();
    put_manifest(client, &ep, &scopes, &target, &media_type, &manifest_bytes, &manifest_digest)?;
    events.event(&TransferEvent::Manifest { digest: manifest_digest });
    Ok(report)
}

/// Where a push to `dest` puts the manifest whose digest is `digest`: under `dest`'s tag, else
/// its digest. Refused with [`RegistryError::InvalidDestination`] when `dest` has neither, or
/// names another digest (`mismatch` is then the reason given).
pub(crate) fn push_target(
    dest: &Reference,
    digest: &Digest,
    mismatch: &'static str,
) -> Result<String, RegistryError> {
    let invalid =
        |reason| RegistryError::InvalidDestination { reference: dest.to_string(), reason };
    let target = match (dest.tag(), dest.digest()) {
        (Some(tag), _) => tag.to_owned(),
        (None, Some(d)) => d.to_string(),
        (None, None) => return Err(invalid("a push destination needs a tag or a digest")),
    };
    if dest.digest().is_some_and(|d| d != digest) {
        return Err(invalid(mismatch));
    }
    Ok(target)
}

/// PUT `/v2/<name>/manifests/<target>` (spec.md "Pushing Manifests") with `media_type` as
/// Content-Type; a `Docker-Content-Digest` in the answer must be `digest`.
pub(crate) fn put_manifest(
    client: &Client,
    ep: &Endpoint,
    scopes: &[String],
    target: &str,
    media_type: &str,
    bytes: &[u8],
    digest: &Digest,
) -> Result<(), RegistryError> {
    let req = Req::new("PUT", ep.url(&format!("manifests/{target}")))
        .header("Content-Type", media_type.to_owned())
        .body(Payload::Bytes(bytes));
    let resp = client.send(ep, scopes, &req)?;
    if !resp.status().is_success() {
        return Err(client.status_error(ep, &req, resp));
    }
    if let Some(found) = header(&resp, "Docker-Content-Digest") {
        if found.parse::<Digest>().ok() != Some(*digest) {
            return Err(RegistryError::PushedDigestMismatch {
                registry: ep.registry.clone(),
                repository: ep.repository.clone(),
                expected: *digest,
                found: found.to_owned(),
            });
        }
    }
    Ok(())
}

pub(crate) fn push_blob(
    s: &Session<'_>,
    store: &Store,
    blob: &PushBlob,
) -> Result<BlobOutcome, RegistryError> {
    push_blob_from(s, store, blob, &BlobSource::default())
}

/// Where a blob [`push_blob_from`] sends may come from besides `store`.
#[derive(Default)]
pub(crate) struct BlobSource<'a> {
    /// A repository of the destination's registry known to hold the blob (tried for a mount
    /// before the hints store's records).
    pub mount_from: Option<&'a str>,
    /// Brings the blob into `store`; called only once the registry turned out to lack it and
    /// no mount took it (`None`: `store` holds it already).
    pub fetch: Option<&'a dyn Fn() -> Result<(), RegistryError>>,
}

/// [`push_blob`] for a blob that may be mounted from a known repository, or that `store`
/// may not hold yet (see [`BlobSource`]).
pub(crate) fn push_blob_from(
    s: &Session<'_>,
    store: &Store,
    blob: &PushBlob,
    source: &BlobSource<'_>,
) -> Result<BlobOutcome, RegistryError> {
    let Session { client, ep, scopes, dry_run, events } = *s;
    let done = |outcome: BlobOutcome| {
        if !dry_run {
            knowledge::record(client.hints(store), &blob.digest, &ep.location());
            events
                .event(&TransferEvent::BlobDone { digest: blob.digest, outcome: outcome.clone() });
        }
        Ok(outcome)
    };
    if blob_exists(s, &blob.digest)? {
        return done(BlobOutcome::Present);
    }
    let mount_from = source.mount_from.map(str::to_owned).or_else(|| {
        knowledge::mount_source(client.hints(store), &blob.digest, &ep.registry, &ep.repository)
    });
    if dry_run {
        return Ok(match mount_from {
            Some(from) => BlobOutcome::Mounted { from },
            None => BlobOutcome::Uploaded,
        });
    }
    events.event(&TransferEvent::BlobStart {
        digest: blob.digest,
        size: blob.size,
        kind: blob.kind,
    });
    let mut pending = None;
    if let Some(from) = mount_from {
        let mut mount_scopes = scopes.to_vec();
        mount_scopes.push(format!("repository:{from}:pull"));
        let url = ep.url(&format!("blobs/uploads/?mount={}&from={from}", blob.digest));
        let req = Req::new("POST", url);
        let resp = client.send(ep, &mount_scopes, &req)?;
        match resp.status().as_u16() {
            201 => return done(BlobOutcome::Mounted { from }),
            202 => pending = Some(Upload::from_response(ep, &resp)?),
            _ => return Err(client.status_error(ep, &req, resp)),
        }
    }
    if let Some(fetch) = source.fetch {
        fetch()?;
    }
    upload(s, store, blob, pending)?;
    done(BlobOutcome::Uploaded)
}

/// HEAD `/v2/<name>/blobs/<digest>` (spec.md "Checking if content exists in the registry").
fn blob_exists(s: &Session<'_>, digest: &Digest) -> Result<bool, RegistryError> {
    let Session { client, ep, scopes, .. } = *s;
    let req = Req::new("HEAD", ep.url(&format!("blobs/{digest}")));
    let resp = client.send(ep, scopes, &req)?;
    match resp.status().as_u16() {
        200 => Ok(true),
        404 => Ok(false),
        _ => Err(client.status_error(ep, &req, resp)),
    }
}

/// An upload session (spec.md "Pushing blobs"): its current URL and the registry's minimum
/// chunk length.
struct Upload {
    url: String,
    min_chunk: u64,
}

impl Upload {
    fn from_response(
        ep: &Endpoint,
        resp: &ureq::http::Response<ureq::Body>,
    ) -> Result<Upload, RegistryError> {
        let location = header(resp, "Location").unwrap_or_default();
        let url = ep.resolve_location(location)?;
        let min_chunk =
            header(resp, "OCI-Chunk-Min-Length").and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        Ok(Upload { url, min_chunk })
    }

    /// Follows a new `Location`, if the response has one.
    fn update(
        &mut self,
        ep: &Endpoint,
        resp: &ureq::http::Response<ureq::Body>,
    ) -> Result<(), RegistryError> {
        if let Some(location) = header(resp, "Location").filter(|l| !l.is_empty()) {
            self.url = ep.resolve_location(location)?;
        }
        Ok(())
    }

    /// The session URL with `key=value` added to its query.
    fn url_with(&self, key: &str, value: &str) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}{key}={value}", self.url)
    }
}

/// Uploads a blob, resuming a broken transfer up to the client's retry count (a stall is not
/// resumed: see the client's module doc); while a stall lasts, `Stalled` events say so.
fn upload(
    s: &Session<'_>,
    store: &Store,
    blob: &PushBlob,
    upload: Option<Upload>,
) -> Result<(), RegistryError> {
    let throttle = Throttle::new(s.events, blob.digest);
    throttle.watch(stall_notice_after(s.client.stall_timeout()), || {
        upload_reporting(s, store, blob, upload, &throttle)
    })
}

fn upload_reporting(
    s: &Session<'_>,
    store: &Store,
    blob: &PushBlob,
    mut upload: Option<Upload>,
    throttle: &Throttle<'_>,
) -> Result<(), RegistryError> {
    let Session { client, ep, scopes, .. } = *s;
    // Verified before the first byte leaves: a corrupt blob is never sent (the registry
    // would only find out at the final PUT, after the whole upload).
    store.verify_blob(&blob.digest)?;
    let file = store.open_blob(&blob.digest)?;
    let mut attempt = 0;
    let mut fresh = true;
    let failed = loop {
        match upload_attempt(s, &file, blob, &mut upload, fresh, throttle) {
            Ok(()) => {
                throttle.report(blob.size, true);
                return Ok(());
            }
            Err(e) if !resumable(&e) => break e,
            Err(e) => {
                attempt += 1;
                if attempt > client.retries() {
                    break RegistryError::UploadFailed {
                        registry: ep.registry.clone(),
                        repository: ep.repository.clone(),
                        digest: blob.digest,
                        attempts: attempt,
                        source: Box::new(e),
                    };
                }
                client.pause(attempt);
                fresh = false;
            }
        }
    };
    // Best effort: tell the registry to drop what it holds of this upload (spec.md "Canceling
    // an upload", DELETE on the session URL) instead of leaving it to its purge timer. Not to
    // a registry that just stalled: that would be a second wait.
    let stalled = matches!(failed, RegistryError::Stalled { .. });
    if let (Some(up), false) = (upload, stalled) {
        let req = Req::new("DELETE", up.url).not_idempotent();
        let _ = client.send(ep, scopes, &req);
    }
    Err(failed)
}

/// Errors after which asking the registry where the upload stands may help.
fn resumable(e: &RegistryError) -> bool {
    match e {
        RegistryError::Transport { .. } | RegistryError::BodyRead { .. } => true,
        // A 400 that says the digest is wrong will say so again: the bytes are what they are.
        RegistryError::UnexpectedStatus { status: 400, body, .. } => {
            !body.contains("DIGEST_INVALID")
        }
        RegistryError::UnexpectedStatus { status, .. } => {
            *status >= 500 || matches!(status, 404 | 416 | 429)
        }
        _ => false,
    }
}

fn upload_attempt(
    session: &Session<'_>,
    file: &File,
    blob: &PushBlob,
    upload: &mut Option<Upload>,
    fresh: bool,
    throttle: &Throttle<'_>,
) -> Result<(), RegistryError> {
    let Session { client, ep, scopes, .. } = *session;
    let mut offset = 0;
    let known = match upload.take() {
        Some(up) if fresh => Some(up),
        Some(mut up) => match upload_status(session, &mut up)? {
            Some(at) => {
                offset = at;
                Some(up)
            }
            None => None,
        },
        None => None,
    };
    let s = match known {
        Some(up) => upload.insert(up),
        None => {
            offset = 0;
            upload.insert(start_upload(session)?)
        }
    };
    if offset > blob.size {
        // The registry claims more than the blob has: start over next attempt.
        *upload = None;
        return Err(RegistryError::InvalidHeader {
            registry: ep.registry.clone(),
            header: "Range",
            value: format!("0-{}", offset - 1),
        });
    }
    let digest = blob.digest.to_string();
    if offset == 0 && blob.size <= client.monolithic_max {
        // spec.md "Pushing a blob monolithically" (POST then PUT).
        let progress = |sent: u64| throttle.report(sent, false);
        let req = Req::new("PUT", s.url_with("digest", &digest))
            .header("Content-Type", "application/octet-stream")
            .body(Payload::File { file, offset: 0, len: blob.size, progress: &progress })
            .not_idempotent();
        let resp = client.send(ep, scopes, &req)?;
        return match resp.status().as_u16() {
            201 | 204 | 200 => Ok(()),
            _ => Err(client.status_error(ep, &req, resp)),
        };
    }
    let chunk = client.chunk_size.max(s.min_chunk).max(1);
    while offset < blob.size {
        let len = chunk.min(blob.size - offset);
        let start = offset;
        let progress = move |sent: u64| throttle.report(start + sent, false);
        let req = Req::new("PATCH", s.url.clone())
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", format!("{}-{}", offset, offset + len - 1))
            .body(Payload::File { file, offset, len, progress: &progress })
            .not_idempotent();
        let resp = client.send(ep, scopes, &req)?;
        if resp.status().as_u16() != 202 {
            return Err(client.status_error(ep, &req, resp));
        }
        s.update(ep, &resp)?;
        offset = match header(&resp, "Range").and_then(range_end) {
            Some(next) if next > start => next,
            _ => offset + len,
        };
    }
    let req = Req::new("PUT", s.url_with("digest", &digest)).body(Payload::None);
    let resp = client.send(ep, scopes, &req)?;
    match resp.status().as_u16() {
        201 | 204 | 200 => Ok(()),
        _ => Err(client.status_error(ep, &req, resp)),
    }
}

/// POST `/v2/<name>/blobs/uploads/`: a new session.
fn start_upload(s: &Session<'_>) -> Result<Upload, RegistryError> {
    let Session { client, ep, scopes, .. } = *s;
    let req = Req::new("POST", ep.url("blobs/uploads/"));
    let resp = client.send(ep, scopes, &req)?;
    if resp.status().as_u16() != 202 {
        return Err(client.status_error(ep, &req, resp));
    }
    Upload::from_response(ep, &resp)
}

/// GET `<location>`, the session's status (spec.md "Pushing a blob in chunks"; endpoint end-13,
/// `GET /v2/<name>/blobs/uploads/<reference>` -> `204` with `Range: 0-<last>`): how many bytes
/// the registry holds. `None` when the session is gone (404, or 400 for a state the registry no
/// longer accepts, as distribution answers after a chunk that broke half-way).
fn upload_status(session: &Session<'_>, up: &mut Upload) -> Result<Option<u64>, RegistryError> {
    let Session { client, ep, scopes, .. } = *session;
    let req = Req::new("GET", up.url.clone());
    let resp = client.send(ep, scopes, &req)?;
    match resp.status().as_u16() {
        204 | 200 => {
            up.update(ep, &resp)?;
            Ok(Some(header(&resp, "Range").and_then(range_end).unwrap_or(0)))
        }
        400 | 404 => Ok(None),
        _ => Err(client.status_error(ep, &req, resp)),
    }
}

/// `0-<last>` -> `last + 1`, the next offset (`0--1`, as distribution writes for an empty
/// upload, -> 0). Accepts a `bytes=` prefix.
pub(crate) fn range_end(v: &str) -> Option<u64> {
    let v = v.trim();
    let v = v.strip_prefix("bytes=").unwrap_or(v);
    let (_, last) = v.split_once('-')?;
    let last: i64 = last.trim().parse().ok()?;
    // A registry claiming a last byte of i64::MAX is lying; the header is not a range then.
    Some(u64::try_from(last.checked_add(1)?).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn range_headers() {
        assert_eq!(super::range_end("0-99"), Some(100));
        assert_eq!(super::range_end("0--1"), Some(0));
        assert_eq!(super::range_end("bytes=0-4"), Some(5));
        assert_eq!(super::range_end("junk"), None);
    }
}
