//! The build cache as a registry artifact: export with [`push_cache`], import with
//! [`pull_cache`], and the layer of a hit (or its table of contents) fetched with
//! [`RemoteCache::fetch_blob`].
//!
//! The artifact is an OCI image manifest (image-spec manifest.md "Guidelines for Artifact
//! Usage") whose `artifactType` is [`CACHE_ARTIFACT_TYPE`], whose config is the cache index
//! document ([`CacheIndex`], media type [`CACHE_INDEX_MEDIA_TYPE`]) and whose `layers` are the
//! layer blobs the index names. Listing them is what keeps them alive in the registry (its gc
//! follows manifests) and what lets the push be "HEAD, else mount, else upload" blob by blob,
//! exactly as for an image: a layer the image push just sent is present (same repository) or
//! mounted (distribution-spec "Mounting a blob from another repository"), never uploaded twice.
//! The config is not an image config, so registries and tools that only understand images
//! leave the artifact alone; `skopeo inspect --raw` shows the manifest as is.

use serde::Deserialize;
use strata_store::CACHE_INDEX_MEDIA_TYPE;
use strata_store::{CacheIndex, Store, StoreError, CACHE_ARTIFACT_TYPE};
use strata_types::Digest;

use crate::client::{Client, Endpoint, Req, Session};
use crate::error::RegistryError;
use crate::manifest::BlobRef;
use crate::pull::{fetch_blob, fetch_blob_to_memory, fetch_named_manifest};
use crate::push::{
    check_sizes, push_blobs, push_target, put_manifest, ready_blob, FetchMissing, PushBlob,
};
use crate::{
    BlobKind, BlobReport, PushOptions, Reference, TransferEvent, TransferReport, TransferSink,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Pushes `index` as a cache artifact to `dest` (a tag): the index blob, every layer it names
/// (each in `store`; HEAD, else mount, else upload), then the manifest.
pub fn push_cache(
    client: &Client,
    store: &Store,
    index: &CacheIndex,
    dest: &Reference,
    options: &PushOptions,
    events: &dyn TransferSink,
) -> Result<TransferReport, RegistryError> {
    push_cache_fetching(client, store, index, dest, options, events, None)
}

/// [`push_cache`] where layers need not all be in `store`, as
/// [`crate::push_fetching`] does for an image.
pub fn push_cache_fetching(
    client: &Client,
    store: &Store,
    index: &CacheIndex,
    dest: &Reference,
    options: &PushOptions,
    events: &dyn TransferSink,
    fetch: Option<FetchMissing<'_>>,
) -> Result<TransferReport, RegistryError> {
    store.lease()?;
    let index_bytes = index.to_json()?;
    let index_digest = store.put_blob(index_bytes.as_slice())?.digest;
    let mut blobs = vec![PushBlob {
        digest: index_digest,
        size: index_bytes.len() as u64,
        kind: BlobKind::Config,
    }];
    for layer in index.layers() {
        let digest = Digest::try_from(layer.digest()).map_err(StoreError::from)?;
        blobs.push(PushBlob { digest, size: layer.size(), kind: BlobKind::Layer });
    }
    check_sizes(store, &blobs, fetch.is_some())?;
    let manifest_bytes = index.artifact_manifest(&index_digest, index_bytes.len() as u64)?;
    let manifest_digest = Digest::of_bytes(&manifest_bytes);
    // A cache ref without a tag is `:latest`, as BuildKit reads it.
    let target = match (dest.tag(), dest.digest()) {
        (None, None) => strata_types::DEFAULT_TAG.to_owned(),
        _ => push_target(dest, &manifest_digest, "a cache is pushed to a tag, not a digest")?,
    };
    let ep = client.endpoint(dest);
    let scopes = [format!("repository:{}:pull,push", ep.repository)];
    client.prepare(&ep, &scopes)?;
    // Every layer to upload is verified before the first is sent.
    let session = Session::new(client, &ep, &scopes, false, events);
    let ready = |blob: &PushBlob| ready_blob(store, blob, fetch);
    let outcomes = push_blobs(&session, store, &blobs, options.jobs, None, &ready)?;
    let mut report = TransferReport { manifest: Some(manifest_digest), ..Default::default() };
    for (b, outcome) in blobs.iter().zip(outcomes) {
        report.add(BlobReport { digest: b.digest, size: b.size, kind: b.kind, outcome });
    }
    // spec.md "Pushing Manifests": only once every blob it references is in place.
    put_manifest(client, &ep, &scopes, &target, OCI_MANIFEST, &manifest_bytes, &manifest_digest)?;
    events.event(&TransferEvent::Manifest { digest: manifest_digest });
    Ok(report)
}

/// A cache artifact read from a registry: its index, and where to fetch the layers it names.
#[derive(Debug)]
pub struct RemoteCache {
    /// The cache's reference.
    pub reference: Reference,
    /// The entries.
    pub index: CacheIndex,
    ep: Endpoint,
    scopes: [String; 1],
}

/// The fields of the artifact manifest an import looks at.
#[derive(Deserialize)]
struct CacheManifest {
    #[serde(rename = "artifactType")]
    artifact_type: Option<String>,
    config: ManifestConfig,
}

#[derive(Deserialize)]
struct ManifestConfig {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: Digest,
    size: u64,
}

/// Reads the cache artifact `reference` names: the manifest (verified), then its index blob
/// (verified). A manifest that is not a strata cache of a known version is
/// [`RegistryError::NotACache`]; an unknown index version or a malformed index is the store's
/// error. No layer is fetched.
pub fn pull_cache(client: &Client, reference: &Reference) -> Result<RemoteCache, RegistryError> {
    let (ep, scopes, doc) = fetch_named_manifest(client, reference)?;
    let not_a_cache = |found: Option<String>| RegistryError::NotACache {
        reference: reference.to_string(),
        found,
    };
    let manifest: CacheManifest =
        serde_json::from_slice(&doc.bytes).map_err(|_| not_a_cache(None))?;
    // The artifactType names the format; the config media type (the way artifacts were typed
    // before image-spec 1.1 added artifactType) must agree, so a registry that drops unknown
    // fields still leaves a recognisable cache.
    if manifest.config.media_type != CACHE_INDEX_MEDIA_TYPE
        || manifest.artifact_type.as_deref().is_some_and(|t| t != CACHE_ARTIFACT_TYPE)
    {
        return Err(not_a_cache(manifest.artifact_type.or(Some(manifest.config.media_type))));
    }
    let blob = BlobRef { digest: manifest.config.digest, size: manifest.config.size };
    let bytes = fetch_blob_to_memory(client, &ep, &scopes, &blob)?;
    let index = CacheIndex::from_json(&bytes)?;
    Ok(RemoteCache { reference: reference.clone(), index, ep, scopes })
}

impl RemoteCache {
    /// Whether the registry still has blob `digest` in the cache's repository (a HEAD,
    /// spec.md "Checking if content exists in the registry"; nothing is downloaded). A lazy
    /// hit is taken only for a layer that can still be fetched.
    pub fn has_blob(&self, client: &Client, digest: &Digest) -> Result<bool, RegistryError> {
        let req = Req::new("HEAD", self.ep.url(&format!("blobs/{digest}")));
        let resp = client.send(&self.ep, &self.scopes, &req)?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(client.status_error(&self.ep, &req, resp)),
        }
    }

    /// `registry/repository` of the cache, as the store's blob-location records name it: a
    /// push to the same registry can mount a blob from there without reading it.
    pub fn location(&self) -> String {
        self.ep.location()
    }

    /// Brings blob `digest` of `size` bytes (the layer of a hit, or a layer's table of
    /// contents) into `store`, verified (nothing if it is there already). A blob the registry
    /// no longer has is [`RegistryError::BlobNotFound`].
    pub fn fetch_blob(
        &self,
        client: &Client,
        store: &Store,
        digest: &Digest,
        size: u64,
    ) -> Result<(), RegistryError> {
        let blob = BlobRef { digest: *digest, size };
        let events = &crate::NoTransferProgress;
        let session = Session::new(client, &self.ep, &self.scopes, false, events);
        fetch_blob(&session, store, &blob, BlobKind::Layer)?;
        Ok(())
    }
}
