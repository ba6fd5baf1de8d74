//! Entry points for the fuzz targets in `fuzz/` (`cargo fuzz`); not part of the API.
//!
//! The parsers of what a registry sends (the `WWW-Authenticate` challenge, `Range` and
//! `Content-Range`, `Location`, manifest documents) are private: callers only ever see them
//! through [`pull`](crate::pull) and [`push`](crate::push), which need a live registry. A fuzz
//! target needs them one by one, so this hidden module forwards to them with plain inputs (a
//! header value, document bytes) and plain outputs, leaving the crate's own types private.
//! Nothing here is stable or meant for other callers.

use strata_types::{Digest, Platform};

use crate::auth::{self, Challenge};
use crate::client::Endpoint;
use crate::error::RegistryError;
use crate::manifest::{self, Kind};

/// The endpoint every function here resolves against.
fn endpoint(base: &str) -> Endpoint {
    Endpoint {
        registry: "registry.example".to_owned(),
        base: base.to_owned(),
        repository: "team/app".to_owned(),
        unverified_tls: false,
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FuzzChallenge {
    /// `Basic ...`.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`.
    Bearer {
        /// Where to fetch a token.
        realm: String,
        /// The `service` parameter.
        service: Option<String>,
        /// The `scope` parameter.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value; `None` for a scheme the client does not follow.
pub fn parse_challenge(value: &str) -> Option<FuzzChallenge> {
    Some(match auth::parse_challenge(value)? {
        Challenge::Basic => FuzzChallenge::Basic,
        Challenge::Bearer { realm, service, scope } => {
            FuzzChallenge::Bearer { realm, service, scope }
        }
    })
}

/// The next upload offset from an upload session's `Range` header (`0-<last>`).
pub fn upload_range_end(value: &str) -> Option<u64> {
    crate::push::range_end(value)
}

/// The first byte of a resumed download from its `Content-Range` header.
pub fn content_range_start(value: &str) -> Option<u64> {
    crate::pull::parse_content_range_start(value)
}

/// Resolves a `Location` header against a registry whose API is at `base`
/// (`scheme://host[:port]`).
pub fn resolve_location(base: &str, location: &str) -> Result<String, RegistryError> {
    endpoint(base).resolve_location(location)
}

/// What [`manifest_kind`] took a document for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuzzKind {
    /// An OCI image manifest.
    OciManifest,
    /// An OCI image index.
    OciIndex,
    /// A Docker schema2 manifest.
    DockerManifest,
    /// A Docker manifest list.
    DockerList,
}

impl From<Kind> for FuzzKind {
    fn from(k: Kind) -> FuzzKind {
        match k {
            Kind::OciManifest => FuzzKind::OciManifest,
            Kind::OciIndex => FuzzKind::OciIndex,
            Kind::DockerManifest => FuzzKind::DockerManifest,
            Kind::DockerList => FuzzKind::DockerList,
        }
    }
}

impl From<FuzzKind> for Kind {
    fn from(k: FuzzKind) -> Kind {
        match k {
            FuzzKind::OciManifest => Kind::OciManifest,
            FuzzKind::OciIndex => Kind::OciIndex,
            FuzzKind::DockerManifest => Kind::DockerManifest,
            FuzzKind::DockerList => Kind::DockerList,
        }
    }
}

/// Decides what a manifest document is, from its `Content-Type` and its own fields.
pub fn manifest_kind(content_type: Option<&str>, bytes: &[u8]) -> Result<FuzzKind, RegistryError> {
    manifest::kind_of(
        &endpoint("https://registry.example"),
        &Digest::of_bytes(bytes),
        content_type,
        bytes,
    )
    .map(FuzzKind::from)
}

/// An image manifest in OCI form, as a pull would store it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuzzImage {
    /// The manifest bytes to store (converted from Docker's form, or as received).
    pub bytes: Vec<u8>,
    /// The digest the manifest is stored under.
    pub digest: Digest,
    /// The config blob (digest, size).
    pub config: (Digest, u64),
    /// The layer blobs, bottom first.
    pub layers: Vec<(Digest, u64)>,
}

/// Reads an image manifest of `kind` into OCI form (converting Docker schema2).
pub fn manifest_to_oci(kind: FuzzKind, bytes: Vec<u8>) -> Result<FuzzImage, RegistryError> {
    let digest = Digest::of_bytes(&bytes);
    let image =
        manifest::to_oci(&endpoint("https://registry.example"), &digest, kind.into(), bytes)?;
    Ok(FuzzImage {
        bytes: image.bytes,
        digest: image.digest,
        config: (image.config.digest, image.config.size),
        layers: image.layers.iter().map(|l| (l.digest, l.size)).collect(),
    })
}

/// The blobs an image manifest names as written (config first), without conversion.
pub fn manifest_blobs(bytes: &[u8]) -> Result<Vec<(Digest, u64)>, RegistryError> {
    let ep = endpoint("https://registry.example");
    let blobs = manifest::image_blobs(&ep, &Digest::of_bytes(bytes), bytes)?;
    Ok(blobs.into_iter().map(|(b, _)| (b.digest, b.size)).collect())
}

/// The manifests an index lists: (digest, size, media type), in index order.
pub fn index_children(bytes: &[u8]) -> Result<Vec<(Digest, u64, String)>, RegistryError> {
    let ep = endpoint("https://registry.example");
    let children = manifest::index_children(&ep, &Digest::of_bytes(bytes), bytes)?;
    Ok(children.into_iter().map(|c| (c.digest, c.size, c.media_type)).collect())
}

/// The manifest an index holds for `platform`, as a pull picks it.
pub fn select_platform(bytes: &[u8], platform: &Platform) -> Result<Digest, RegistryError> {
    let ep = endpoint("https://registry.example");
    manifest::select_platform(&ep, &Digest::of_bytes(bytes), bytes, platform).map(|(d, _)| d)
}
