//! Whole multi-platform images: an image index, every manifest it lists and all their blobs,
//! copied byte for byte, as `skopeo copy --all` does.
//!
//! [`pull`](crate::pull) resolves an index to one platform and may convert a Docker manifest,
//! which is right for running an image but loses the others and changes digests. Here nothing
//! is chosen and nothing is rewritten: [`pull_all`] stores the index and each child manifest
//! exactly as the registry served them (each verified against the digest that names it), so
//! the index digest in the store is the registry's, and [`push_index`] sends them back the
//! same way. Pushing follows the order the distribution spec requires ("Pushing Manifests": a
//! manifest's blobs before it, an index's manifests before it): every child's blobs first
//! (HEAD, else mount, else upload, as [`push`](crate::push) does; a blob shared by several
//! children moves once), then each child manifest under its digest with its own media type,
//! then the index under the tag with its media type (OCI index or Docker manifest list).
//! A plain image manifest is accepted too and copied the same way (one "child": itself).
//!
//! The store side is an OCI layout (the user's store, a scratch layout, or an `oci:DIR`); its
//! `index.json` records OCI types only, so [`pull_all`] refuses a Docker manifest list or a
//! top-level Docker manifest (plain [`pull`](crate::pull) converts those instead).

use std::collections::BTreeSet;

use strata_store::oci_spec::image::{Descriptor, MediaType};
use strata_store::{Store, StoreError};
use strata_types::Digest;

use crate::client::{Client, Endpoint, Session};
use crate::error::RegistryError;
use crate::manifest::{self, BlobRef, Kind};
use crate::pull::{fetch_blobs, fetch_manifest, start_pull, Fetched};
use crate::push::{push_blobs, push_target, put_manifest, PushBlob};
use crate::{
    knowledge, BlobKind, BlobReport, PullOptions, PushOptions, Reference, TransferEvent,
    TransferReport, TransferSink,
};

/// The result of [`pull_all`].
#[derive(Debug, Clone)]
pub struct PulledIndex {
    /// The top-level document (an OCI index, or an OCI manifest when the reference named a
    /// single image) as recorded in the store's `index.json`; its digest is the registry's.
    pub descriptor: Descriptor,
    /// The digests of the manifests the index lists, in index order (empty for a single
    /// image).
    pub manifests: Vec<Digest>,
    /// What moved: every blob of every child, each once.
    pub report: TransferReport,
}

/// A manifest document to move, with its bytes.
pub(crate) struct Doc {
    pub digest: Digest,
    pub kind: Kind,
    pub bytes: Vec<u8>,
}

/// The manifests the index `top` lists, each fetched and verified against its digest and the
/// size the index gives (none when `top` is not an index). A nested index is refused.
pub(crate) fn fetch_children(
    client: &Client,
    ep: &Endpoint,
    scopes: &[String],
    top: &Fetched,
    top_kind: Kind,
    events: &dyn TransferSink,
) -> Result<Vec<Doc>, RegistryError> {
    let mut children = Vec::new();
    if !top_kind.is_index() {
        return Ok(children);
    }
    for child in manifest::index_children(ep, &top.digest, &top.bytes)? {
        let doc =
            fetch_manifest(client, ep, scopes, &child.digest.to_string(), Some(&child.digest))?;
        if doc.bytes.len() as u64 != child.size {
            return Err(RegistryError::SizeMismatch {
                registry: ep.registry.clone(),
                repository: ep.repository.clone(),
                digest: child.digest,
                expected: child.size,
                found: doc.bytes.len() as u64,
                what: "sent",
            });
        }
        let kind = manifest::kind_of(ep, &doc.digest, Some(&child.media_type), &doc.bytes)?;
        if kind.is_index() {
            return Err(manifest::nested_index(ep, doc.digest));
        }
        events.event(&TransferEvent::Manifest { digest: doc.digest });
        children.push(Doc { digest: doc.digest, kind, bytes: doc.bytes });
    }
    Ok(children)
}

/// Every blob of the images `top` stands for (its `children` when it is an index, else
/// itself), each once, in document order (config, then layers).
pub(crate) fn blobs_of(
    ep: &Endpoint,
    top: &Doc,
    children: &[Doc],
) -> Result<Vec<(BlobRef, BlobKind)>, RegistryError> {
    let docs = if top.kind.is_index() { children } else { std::slice::from_ref(top) };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for doc in docs {
        for (blob, kind) in manifest::image_blobs(ep, &doc.digest, &doc.bytes)? {
            if seen.insert(blob.digest) {
                out.push((blob, kind));
            }
        }
    }
    Ok(out)
}

/// Pushes the image index `top` (a blob in `store`, as are the manifests it lists and all
/// their blobs) to `dest` (which must carry a tag or `top`'s digest), keeping every digest:
/// all blobs first (HEAD, mount, upload), then each child manifest by digest
/// (`PUT /v2/<name>/manifests/<digest>` with the child's media type), then the index under the
/// tag with its own media type. `top` may also be a single image manifest, pushed likewise.
/// Dry run: HEAD checks only. The report's `manifest` is `top`.
pub fn push_index(
    client: &Client,
    store: &Store,
    top: &Digest,
    dest: &Reference,
    options: &PushOptions,
    events: &dyn TransferSink,
) -> Result<TransferReport, RegistryError> {
    let target = push_target(dest, top, "the digest differs from the index's digest")?;
    if !options.dry_run {
        store.lease()?;
    }
    let ep = client.endpoint(dest);
    let scope = if options.dry_run { "pull" } else { "pull,push" };
    let scopes = [format!("repository:{}:{scope}", ep.repository)];
    let top_bytes = store.read_blob(top)?;
    let top_kind = manifest::kind_of(&ep, top, None, &top_bytes)?;
    let mut children = Vec::new();
    if top_kind.is_index() {
        for child in manifest::index_children(&ep, top, &top_bytes)? {
            let bytes = store.read_blob(&child.digest)?;
            if bytes.len() as u64 != child.size {
                return Err(StoreError::SizeMismatch {
                    digest: child.digest,
                    expected: child.size,
                    found: bytes.len() as u64,
                }
                .into());
            }
            let kind = manifest::kind_of(&ep, &child.digest, Some(&child.media_type), &bytes)?;
            if kind.is_index() {
                return Err(manifest::nested_index(&ep, child.digest));
            }
            children.push(Doc { digest: child.digest, kind, bytes });
        }
    }
    let top_doc = Doc { digest: *top, kind: top_kind, bytes: top_bytes };
    let blobs: Vec<PushBlob> = blobs_of(&ep, &top_doc, &children)?
        .into_iter()
        .map(|(b, kind)| PushBlob { digest: b.digest, size: b.size, kind })
        .collect();
    for b in &blobs {
        let found = store.blob_size(&b.digest)?;
        if found != b.size {
            return Err(
                StoreError::SizeMismatch { digest: b.digest, expected: b.size, found }.into()
            );
        }
    }
    client.prepare(&ep, &scopes)?;
    // Every child's blobs are decided and verified before the first is uploaded.
    let session = Session::new(client, &ep, &scopes, options.dry_run, events);
    let verify = |blob: &PushBlob| Ok(store.verify_blob(&blob.digest)?);
    let outcomes = push_blobs(&session, store, &blobs, options.jobs, None, &verify)?;
    let mut report =
        TransferReport { manifest: Some(*top), dry_run: options.dry_run, ..Default::default() };
    for (b, outcome) in blobs.iter().zip(outcomes) {
        report.add(BlobReport { digest: b.digest, size: b.size, kind: b.kind, outcome });
    }
    if options.dry_run {
        return Ok(report);
    }
    for child in &children {
        let target = child.digest.to_string();
        let media_type = child.kind.media_type();
        put_manifest(client, &ep, &scopes, &target, media_type, &child.bytes, &child.digest)?;
        events.event(&TransferEvent::Manifest { digest: child.digest });
    }
    put_manifest(client, &ep, &scopes, &target, top_kind.media_type(), &top_doc.bytes, top)?;
    events.event(&TransferEvent::Manifest { digest: *top });
    Ok(report)
}

/// Pulls the image index `reference` names with every manifest it lists and all their blobs
/// into `store`, each verified and kept byte for byte (no platform choice, no conversion), and
/// records the index in `index.json`: under `name` exactly as given (an `oci:DIR:REF` ref) when
/// set, else under the full reference as [`pull`](crate::pull) tags. A reference naming a
/// single OCI image manifest is copied the same way. A Docker manifest list (or top-level
/// Docker manifest) is refused with [`RegistryError::UnsupportedMediaType`]. Dry run: the
/// manifests are fetched (into memory) and nothing is written.
pub fn pull_all(
    client: &Client,
    store: &Store,
    reference: &Reference,
    name: Option<&str>,
    options: &PullOptions,
    events: &dyn TransferSink,
) -> Result<PulledIndex, RegistryError> {
    let (ep, scopes, top) = start_pull(client, store, reference, options)?;
    let top_kind = manifest::kind_of(&ep, &top.digest, top.content_type.as_deref(), &top.bytes)?;
    let media_type = match top_kind {
        Kind::OciIndex => MediaType::ImageIndex,
        Kind::OciManifest => MediaType::ImageManifest,
        Kind::DockerList | Kind::DockerManifest => {
            return Err(RegistryError::UnsupportedMediaType {
                registry: ep.registry.clone(),
                repository: ep.repository.clone(),
                digest: top.digest,
                media_type: top_kind.media_type().to_owned(),
            })
        }
    };
    events.event(&TransferEvent::Manifest { digest: top.digest });
    let children = fetch_children(client, &ep, &scopes, &top, top_kind, events)?;
    let top_doc = Doc { digest: top.digest, kind: top_kind, bytes: top.bytes };
    let blobs = blobs_of(&ep, &top_doc, &children)?;
    let session = Session::new(client, &ep, &scopes, options.dry_run, events);
    let mut report = fetch_blobs(&session, store, &blobs, options.jobs)?;
    report.manifest = Some(top.digest);
    let descriptor = Descriptor::new(media_type, top_doc.bytes.len() as u64, top.digest);
    let manifests = children.iter().map(|c| c.digest).collect();
    if options.dry_run {
        return Ok(PulledIndex { descriptor, manifests, report });
    }
    // Children before the index, the index before its name: a failure leaves only verified,
    // unreferenced blobs.
    for child in &children {
        store.put_blob_verified(
            child.bytes.as_slice(),
            &child.digest,
            Some(child.bytes.len() as u64),
        )?;
    }
    let size = top_doc.bytes.len() as u64;
    store.put_blob_verified(top_doc.bytes.as_slice(), &top.digest, Some(size))?;
    match (name, reference.digest(), reference.tag()) {
        (Some(name), _, _) => store.set_ref_name(name, &descriptor)?,
        (None, None, _) => store.tag(&reference.to_string(), &descriptor)?,
        (None, Some(_), Some(tag)) => {
            store.tag(&format!("{}:{tag}", reference.name()), &descriptor)?
        }
        (None, Some(_), None) => store.set_ref_name(&reference.to_string(), &descriptor)?,
    }
    for (blob, _) in &blobs {
        knowledge::record(client.hints(store), &blob.digest, &ep.location());
    }
    Ok(PulledIndex { descriptor, manifests, report })
}
