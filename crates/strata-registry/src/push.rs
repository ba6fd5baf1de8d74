//! Pushing: for each blob HEAD, else mount, else upload; then the manifest.
//!
//! A push runs in two phases ([`push_blobs`]): it first decides, blob by blob, what the
//! registry needs (HEAD, mount) and verifies every blob it will upload, and only then uploads.
//! A corrupt blob in the store so stops the push before any blob of the image leaves, not
//! merely before the manifest (which the registry would refuse only after the other blobs
//! had been uploaded). A dry run decides only: it reads no blob.
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
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, PoisonError};

use strata_store::{Image, Store, StoreError};
use strata_types::{Digest, Hasher};

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
/// registry, verifies the rest (a mismatch is [`StoreError::DigestMismatch`], before anything
/// is uploaded) and uploads them, then PUTs the manifest. Dry run: HEAD checks only, nothing
/// written (outcomes say what would happen; a predicted mount may still become an upload).
pub fn push(
    client: &Client,
    store: &Store,
    image: &Image,
    dest: &Reference,
    options: &PushOptions,
    events: &dyn TransferSink,
) -> Result<TransferReport, RegistryError> {
    push_fetching(client, store, image, dest, options, events, None)
}

/// Brings a blob the store lacks into it (verified), from wherever the caller knows it
/// lives; one line on failure.
pub type FetchMissing<'a> = &'a (dyn Fn(&Digest) -> Result<(), String> + Sync);

/// [`push`] of an image whose layers need not all be in `store`: a layer the store lacks is
/// never read when the registry has it or mounts it (from a repository the store's
/// blob-location records name); otherwise `fetch` brings it into the store first, before any
/// upload starts (a build's lazy cache hits: the layer stayed in the cache's repository).
/// Without `fetch`, every blob must be in the store, as for [`push`].
pub fn push_fetching(
    client: &Client,
    store: &Store,
    image: &Image,
    dest: &Reference,
    options: &PushOptions,
    events: &dyn TransferSink,
    fetch: Option<FetchMissing<'_>>,
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
    check_sizes(store, &blobs, fetch.is_some())?;
    let session = Session::new(client, &ep, &scopes, options.dry_run, events);
    let ready = |blob: &PushBlob| ready_blob(store, blob, fetch);
    let outcomes = push_blobs(&session, store, &blobs, options.jobs, None, &ready)?;
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

/// Checks that every blob is stored with its size; with `absent_ok`, a layer the store lacks
/// passes (it will be mounted or fetched).
pub(crate) fn check_sizes(
    store: &Store,
    blobs: &[PushBlob],
    absent_ok: bool,
) -> Result<(), RegistryError> {
    for b in blobs {
        if absent_ok && b.kind == BlobKind::Layer && !store.has_blob(&b.digest) {
            continue;
        }
        let found = store.blob_size(&b.digest)?;
        if found != b.size {
            return Err(
                StoreError::SizeMismatch { digest: b.digest, expected: b.size, found }.into()
            );
        }
    }
    Ok(())
}

/// Makes a blob that is to be uploaded ready: verified when stored, else fetched.
pub(crate) fn ready_blob(
    store: &Store,
    blob: &PushBlob,
    fetch: Option<FetchMissing<'_>>,
) -> Result<(), RegistryError> {
    match fetch {
        Some(fetch) if !store.has_blob(&blob.digest) => fetch(&blob.digest)
            .map_err(|why| RegistryError::SourceFetch { digest: blob.digest, why }),
        _ => Ok(store.verify_blob(&blob.digest)?),
    }
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

/// What the deciding phase of a push found for one blob.
enum Decision {
    /// Nothing to send: the registry has it, or mounted it (in a dry run: what would happen).
    Settled(BlobOutcome),
    /// The registry lacks it: upload it, in the session a declined mount opened, if any (its
    /// `BlobStart` event was sent with the mount request).
    Upload(Option<Upload>),
}

/// Sends `blobs` (each in `store`, or brought there by `ready`) to `s`'s repository in two
/// phases, `jobs` blobs at a time, and returns their outcomes in order.
///
/// First every blob is decided: `HEAD` (spec.md "Checking if content exists in the
/// registry"), else a mount from `mount_from` or the repository the hints store remembers
/// ("Mounting a blob from another repository"). Each blob left to upload is then made ready
/// by `ready` (re-hashed against its digest, or fetched verified), and only when all are
/// ready does the first upload start. A corrupt blob so stops the push before any byte of
/// any blob is sent, not only before the manifest; upload sessions a declined mount opened
/// are cancelled ("Canceling an upload"). A blob the registry has or mounts is never read:
/// its bytes there are the registry's, checked against the digest when they were pushed
/// (skopeo and docker skip such blobs alike), so a local copy that rotted since does not
/// stop a push that sends nothing of it; `strata fsck` finds it. A mount links a blob the
/// registry already holds into the repository; it moves no bytes, so it is done while
/// deciding. The upload still hashes what it sends ([`SentHash`]): a blob that changes
/// after it was verified fails its upload, naming it.
pub(crate) fn push_blobs(
    s: &Session<'_>,
    store: &Store,
    blobs: &[PushBlob],
    jobs: usize,
    mount_from: Option<&str>,
    ready: &(dyn Fn(&PushBlob) -> Result<(), RegistryError> + Sync),
) -> Result<Vec<BlobOutcome>, RegistryError> {
    let decisions = run_parallel(blobs, jobs, |blob| decide(s, store, blob, mount_from))?;
    let mut outcomes: Vec<Option<BlobOutcome>> = Vec::with_capacity(blobs.len());
    let mut uploads = Vec::new();
    for (i, decision) in decisions.into_iter().enumerate() {
        match decision {
            Decision::Settled(outcome) => outcomes.push(Some(outcome)),
            Decision::Upload(pending) => {
                outcomes.push(None);
                uploads.push((i, Mutex::new(pending)));
            }
        }
    }
    if let Err(e) = run_parallel(&uploads, jobs, |(i, _)| ready(&blobs[*i])) {
        for (_, pending) in uploads {
            let pending = pending.into_inner().unwrap_or_else(PoisonError::into_inner);
            if let Some(up) = pending {
                cancel(s, up);
            }
        }
        return Err(e);
    }
    let uploaded = run_parallel(&uploads, jobs, |(i, pending)| {
        let blob = &blobs[*i];
        let pending = pending.lock().unwrap_or_else(PoisonError::into_inner).take();
        if pending.is_none() {
            s.events.event(&TransferEvent::BlobStart {
                digest: blob.digest,
                size: blob.size,
                kind: blob.kind,
            });
        }
        upload(s, store, blob, pending)?;
        Ok(settle(s, store, blob, BlobOutcome::Uploaded))
    })?;
    for ((i, _), outcome) in uploads.iter().zip(uploaded) {
        outcomes[*i] = Some(outcome);
    }
    Ok(outcomes.into_iter().map(|o| o.unwrap_or(BlobOutcome::Uploaded)).collect())
}

/// Records where `blob` now lives and reports it done (not in a dry run); returns `outcome`.
fn settle(s: &Session<'_>, store: &Store, blob: &PushBlob, outcome: BlobOutcome) -> BlobOutcome {
    if !s.dry_run {
        knowledge::record(s.client.hints(store), &blob.digest, &s.ep.location());
        s.events.event(&TransferEvent::BlobDone { digest: blob.digest, outcome: outcome.clone() });
    }
    outcome
}

/// The deciding phase for one blob: `HEAD`, else a mount (tried, not in a dry run), else it
/// must be uploaded. Reads nothing of the blob.
fn decide(
    s: &Session<'_>,
    store: &Store,
    blob: &PushBlob,
    mount_from: Option<&str>,
) -> Result<Decision, RegistryError> {
    let Session { client, ep, scopes, dry_run, events } = *s;
    if blob_exists(s, &blob.digest)? {
        return Ok(Decision::Settled(settle(s, store, blob, BlobOutcome::Present)));
    }
    let mount_from = mount_from.map(str::to_owned).or_else(|| {
        knowledge::mount_source(client.hints(store), &blob.digest, &ep.registry, &ep.repository)
    });
    if dry_run {
        return Ok(Decision::Settled(match mount_from {
            Some(from) => BlobOutcome::Mounted { from },
            None => BlobOutcome::Uploaded,
        }));
    }
    let Some(from) = mount_from else { return Ok(Decision::Upload(None)) };
    events.event(&TransferEvent::BlobStart {
        digest: blob.digest,
        size: blob.size,
        kind: blob.kind,
    });
    let mut mount_scopes = scopes.to_vec();
    mount_scopes.push(format!("repository:{from}:pull"));
    let url = ep.url(&format!("blobs/uploads/?mount={}&from={from}", blob.digest));
    let req = Req::new("POST", url);
    let resp = client.send(ep, &mount_scopes, &req)?;
    match resp.status().as_u16() {
        201 => Ok(Decision::Settled(settle(s, store, blob, BlobOutcome::Mounted { from }))),
        202 => Ok(Decision::Upload(Some(Upload::from_response(ep, &resp)?))),
        _ => Err(client.status_error(ep, &req, resp)),
    }
}

/// Best effort: tells the registry to drop an upload session (spec.md "Canceling an upload",
/// `DELETE` on the session URL) instead of leaving it to its purge timer.
fn cancel(s: &Session<'_>, up: Upload) {
    let req = Req::new("DELETE", up.url).not_idempotent();
    let _ = s.client.send(s.ep, s.scopes, &req);
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
    let Session { client, ep, .. } = *s;
    let file = store.open_blob(&blob.digest)?;
    let sent = SentHash::new(&file, blob);
    let mut attempt = 0;
    let mut fresh = true;
    let failed = loop {
        match upload_attempt(s, &file, blob, &mut upload, fresh, throttle, &sent) {
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
    // Drop what the registry holds of this upload; not at a registry that just stalled:
    // that would be a second wait.
    let stalled = matches!(failed, RegistryError::Stalled { .. });
    if let (Some(up), false) = (upload, stalled) {
        cancel(s, up);
    }
    if digest_invalid(&failed) {
        // The registry hashed other bytes than the digest: if the blob changed under the
        // upload in a way the sending side did not see (a resend), say which blob it is.
        store.verify_blob(&blob.digest)?;
    }
    Err(failed)
}

/// Whether the registry refused an upload's bytes as not matching its digest (spec.md error
/// code `DIGEST_INVALID`).
fn digest_invalid(e: &RegistryError) -> bool {
    matches!(e, RegistryError::UnexpectedStatus { status: 400, body, .. } if body.contains("DIGEST_INVALID"))
}

/// The bytes of one blob as they are read for sending, hashed in file order across the
/// requests of its upload (a resent range is hashed once). The read that would hand over the
/// blob's last bytes fails instead when the whole does not hash to the digest, so a blob
/// that changed after it was verified never completes an upload: the request breaks off
/// and the error is the store's [`StoreError::DigestMismatch`], naming the blob.
struct SentHash<'a> {
    file: &'a File,
    digest: Digest,
    size: u64,
    state: Mutex<SentState>,
}

struct SentState {
    hasher: Hasher,
    /// Bytes hashed so far (the blob's first `pos`).
    pos: u64,
    /// What the whole hashes to, once `pos` reached the size.
    found: Option<Digest>,
}

impl<'a> SentHash<'a> {
    fn new(file: &'a File, blob: &PushBlob) -> SentHash<'a> {
        let state = SentState { hasher: Hasher::new(), pos: 0, found: None };
        SentHash { file, digest: blob.digest, size: blob.size, state: Mutex::new(state) }
    }

    /// Takes the `bytes` read at `offset` into the hash; refuses them if they end the blob
    /// and it does not hash to its digest. A gap before `offset` (an upload resumed past
    /// what was hashed) is read from the file first.
    fn check(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if offset > st.pos {
            let mut gap = vec![0; usize::try_from(offset - st.pos).unwrap_or(usize::MAX)];
            self.file.read_exact_at(&mut gap, st.pos)?;
            st.hasher.update(&gap);
            st.pos = offset;
        }
        let end = offset + bytes.len() as u64;
        if end > st.pos {
            let skip = usize::try_from(st.pos - offset).unwrap_or(usize::MAX);
            st.hasher.update(&bytes[skip..]);
            st.pos = end;
            if st.pos >= self.size {
                st.found = Some(std::mem::take(&mut st.hasher).finish());
            }
        }
        match st.found {
            Some(found) if end >= self.size && found != self.digest => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                StoreError::DigestMismatch { expected: self.digest, found },
            )),
            _ => Ok(()),
        }
    }

    /// Hashes what was not sent (the registry held it already) and checks the whole.
    fn finish(&self) -> Result<(), RegistryError> {
        match self.check(self.size, &[]) {
            Ok(()) => Ok(()),
            Err(_) if self.failed() => Err(self.mismatch()),
            Err(source) => Err(StoreError::SourceRead { source }.into()),
        }
    }

    /// The store's error for bytes sent that are not the blob's.
    fn mismatch(&self) -> RegistryError {
        let found = self.state.lock().unwrap_or_else(PoisonError::into_inner).found;
        let found = found.unwrap_or(Digest::of_bytes(&[]));
        StoreError::DigestMismatch { expected: self.digest, found }.into()
    }

    /// Whether the bytes read add up to another digest than the blob's.
    fn failed(&self) -> bool {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.found.is_some_and(|found| found != self.digest)
    }
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
    sent: &SentHash<'_>,
) -> Result<(), RegistryError> {
    let Session { client, ep, scopes, .. } = *session;
    let check = |offset: u64, bytes: &[u8]| sent.check(offset, bytes);
    // A request whose body the check broke off failed because of the blob, not the network.
    let send = |req: &Req<'_>| match client.send(ep, scopes, req) {
        Err(_) if sent.failed() => Err(sent.mismatch()),
        other => other,
    };
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
            .body(Payload::File {
                file,
                offset: 0,
                len: blob.size,
                progress: &progress,
                check: &check,
            })
            .not_idempotent();
        let resp = send(&req)?;
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
            .body(Payload::File { file, offset, len, progress: &progress, check: &check })
            .not_idempotent();
        let resp = send(&req)?;
        if resp.status().as_u16() != 202 {
            return Err(client.status_error(ep, &req, resp));
        }
        s.update(ep, &resp)?;
        offset = match header(&resp, "Range").and_then(range_end) {
            Some(next) if next > start => next,
            _ => offset + len,
        };
    }
    // The whole blob was hashed on its way out, or is now: never commit other bytes.
    sent.finish()?;
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
