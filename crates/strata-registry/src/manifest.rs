//! Manifests as registries serve them: OCI and Docker schema2, images and indexes.
//!
//! strata's store reads OCI types only, so a Docker schema2 manifest is converted: the config
//! keeps its bytes (and digest) with the OCI config media type, Docker layer types map to their
//! OCI equivalents (`rootfs.diff.tar.gzip` -> `tar+gzip`), and the new manifest is written in
//! canonical JSON. Conversion changes the manifest digest; the registry's digest stays
//! available as [`Pulled::source_digest`](crate::Pulled::source_digest).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use strata_store::canonical_json;
use strata_types::Platform;
use strata_types::{
    Digest, MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_LAYER_ZSTD, MEDIA_TYPE_MANIFEST,
};

use crate::client::Endpoint;
use crate::error::RegistryError;

use strata_types::{DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR};
pub(crate) use strata_types::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST as DOCKER_LIST};

/// The `Accept` header of a manifest GET: every type this client can use.
pub(crate) fn accept() -> String {
    [MEDIA_TYPE_MANIFEST, MEDIA_TYPE_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ")
}

/// What a manifest document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    OciManifest,
    OciIndex,
    DockerManifest,
    DockerList,
}

impl Kind {
    fn from_media_type(mt: &str) -> Option<Kind> {
        match mt.split(';').next().unwrap_or_default().trim() {
            MEDIA_TYPE_MANIFEST => Some(Kind::OciManifest),
            MEDIA_TYPE_INDEX => Some(Kind::OciIndex),
            DOCKER_MANIFEST => Some(Kind::DockerManifest),
            DOCKER_LIST => Some(Kind::DockerList),
            _ => None,
        }
    }

    pub fn is_index(self) -> bool {
        matches!(self, Kind::OciIndex | Kind::DockerList)
    }
}

/// A descriptor as found in manifests.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct RawDescriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Value>,
}

/// Any manifest or index, loosely typed.
#[derive(Debug, Deserialize)]
struct RawManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    annotations: Option<Value>,
}

/// A parsed image manifest, in OCI form.
#[derive(Debug, Clone)]
pub(crate) struct OciImage {
    /// The manifest bytes to store (the registry's, or the converted ones).
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub config: BlobRef,
    pub layers: Vec<BlobRef>,
}

/// A blob a manifest needs.
#[derive(Debug, Clone)]
pub(crate) struct BlobRef {
    pub digest: Digest,
    pub size: u64,
}

/// Decides what `bytes` is, from the Content-Type or the document's own `mediaType`.
pub(crate) fn kind_of(
    ep: &Endpoint,
    digest: &Digest,
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<Kind, RegistryError> {
    let raw = parse(ep, digest, bytes)?;
    let from_doc = raw.media_type.as_deref().and_then(Kind::from_media_type);
    let from_header = content_type.and_then(Kind::from_media_type);
    if let Some(kind) = from_doc.or(from_header) {
        return Ok(kind);
    }
    match (&raw.manifests, &raw.config) {
        (Some(_), None) => Ok(Kind::OciIndex),
        (None, Some(_)) if raw.schema_version == Some(2) => Ok(Kind::OciManifest),
        _ => Err(RegistryError::UnsupportedMediaType {
            registry: ep.registry.clone(),
            repository: ep.repository.clone(),
            digest: *digest,
            media_type: raw
                .media_type
                .or(content_type.map(str::to_owned))
                .unwrap_or_else(|| "<none>".to_owned()),
        }),
    }
}

fn parse(ep: &Endpoint, digest: &Digest, bytes: &[u8]) -> Result<RawManifest, RegistryError> {
    serde_json::from_slice(bytes).map_err(|source| RegistryError::InvalidManifest {
        registry: ep.registry.clone(),
        repository: ep.repository.clone(),
        digest: *digest,
        source,
    })
}

fn invalid(ep: &Endpoint, digest: &Digest, what: &str) -> RegistryError {
    RegistryError::InvalidManifest {
        registry: ep.registry.clone(),
        repository: ep.repository.clone(),
        digest: *digest,
        source: serde::de::Error::custom(what),
    }
}

fn descriptor_digest(
    ep: &Endpoint,
    manifest: &Digest,
    d: &RawDescriptor,
) -> Result<Digest, RegistryError> {
    d.digest.parse().map_err(|_| invalid(ep, manifest, &format!("bad digest {:?}", d.digest)))
}

/// Picks the manifest for `platform` from an index: same os and architecture, preferring the
/// same variant (or none) over another variant.
pub(crate) fn select_platform(
    ep: &Endpoint,
    digest: &Digest,
    bytes: &[u8],
    platform: &Platform,
) -> Result<(Digest, Kind), RegistryError> {
    let raw = parse(ep, digest, bytes)?;
    let manifests = raw.manifests.ok_or_else(|| invalid(ep, digest, "index without manifests"))?;
    // Every descriptor's digest MUST be valid (image-spec descriptor.md): an index with one
    // malformed entry is refused whole, whichever entry the platform picks, as copying the
    // index (`index_children`) refuses it.
    for m in &manifests {
        descriptor_digest(ep, digest, m)?;
    }
    let mut best: Option<(u8, &RawDescriptor)> = None;
    for m in &manifests {
        let Some(p) = &m.platform else { continue };
        if p.os != platform.os || p.architecture != platform.architecture {
            continue;
        }
        let score = match (&p.variant, &platform.variant) {
            (a, b) if a == b => 3,
            (None, _) => 2,
            _ => 1,
        };
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, m));
        }
    }
    let Some((_, chosen)) = best else {
        return Err(RegistryError::NoMatchingPlatform {
            registry: ep.registry.clone(),
            repository: ep.repository.clone(),
            platform: platform.to_string(),
            available: manifests
                .iter()
                .filter_map(|m| m.platform.as_ref().map(ToString::to_string))
                .collect(),
        });
    };
    let kind = Kind::from_media_type(&chosen.media_type).unwrap_or(Kind::OciManifest);
    Ok((descriptor_digest(ep, digest, chosen)?, kind))
}

/// The error for an index listed by an index: strata resolves and copies one level only.
pub(crate) fn nested_index(ep: &Endpoint, digest: Digest) -> RegistryError {
    RegistryError::UnsupportedMediaType {
        registry: ep.registry.clone(),
        repository: ep.repository.clone(),
        digest,
        media_type: "nested image index".to_owned(),
    }
}

/// A manifest an index lists, as the index describes it.
#[derive(Debug, Clone)]
pub(crate) struct Child {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

impl Kind {
    /// The media type a document of this kind is pushed with.
    pub fn media_type(self) -> &'static str {
        match self {
            Kind::OciManifest => MEDIA_TYPE_MANIFEST,
            Kind::OciIndex => MEDIA_TYPE_INDEX,
            Kind::DockerManifest => DOCKER_MANIFEST,
            Kind::DockerList => DOCKER_LIST,
        }
    }
}

/// The manifests an index lists, in index order.
pub(crate) fn index_children(
    ep: &Endpoint,
    digest: &Digest,
    bytes: &[u8],
) -> Result<Vec<Child>, RegistryError> {
    let raw = parse(ep, digest, bytes)?;
    let manifests = raw.manifests.ok_or_else(|| invalid(ep, digest, "index without manifests"))?;
    manifests
        .iter()
        .map(|m| {
            Ok(Child {
                digest: descriptor_digest(ep, digest, m)?,
                size: m.size,
                media_type: m.media_type.clone(),
            })
        })
        .collect()
}

/// The config and layers an image manifest (OCI or Docker schema2) names, as written: no
/// conversion, so that the manifest's bytes and digest stay valid.
pub(crate) fn image_blobs(
    ep: &Endpoint,
    digest: &Digest,
    bytes: &[u8],
) -> Result<Vec<(BlobRef, crate::BlobKind)>, RegistryError> {
    let raw = parse(ep, digest, bytes)?;
    if raw.schema_version != Some(2) {
        return Err(invalid(ep, digest, "schemaVersion is not 2"));
    }
    let config = raw.config.ok_or_else(|| invalid(ep, digest, "manifest without config"))?;
    let blob = |d: &RawDescriptor| -> Result<BlobRef, RegistryError> {
        Ok(BlobRef { digest: descriptor_digest(ep, digest, d)?, size: d.size })
    };
    let mut out = vec![(blob(&config)?, crate::BlobKind::Config)];
    for l in raw.layers.unwrap_or_default() {
        out.push((blob(&l)?, crate::BlobKind::Layer));
    }
    Ok(out)
}

/// Reads an image manifest (OCI or Docker schema2) into OCI form.
pub(crate) fn to_oci(
    ep: &Endpoint,
    digest: &Digest,
    kind: Kind,
    bytes: Vec<u8>,
) -> Result<OciImage, RegistryError> {
    let raw = parse(ep, digest, &bytes)?;
    if raw.schema_version != Some(2) {
        return Err(invalid(ep, digest, "schemaVersion is not 2"));
    }
    let config = raw.config.ok_or_else(|| invalid(ep, digest, "manifest without config"))?;
    let layers = raw.layers.unwrap_or_default();
    let unsupported = |d: Digest, mt: &str| RegistryError::UnsupportedMediaType {
        registry: ep.registry.clone(),
        repository: ep.repository.clone(),
        digest: d,
        media_type: mt.to_owned(),
    };
    let blob = |d: &RawDescriptor| -> Result<BlobRef, RegistryError> {
        Ok(BlobRef { digest: descriptor_digest(ep, digest, d)?, size: d.size })
    };
    match kind {
        Kind::OciManifest => {
            let config_ref = blob(&config)?;
            if config.media_type != MEDIA_TYPE_CONFIG {
                return Err(unsupported(config_ref.digest, &config.media_type));
            }
            let mut refs = Vec::new();
            for l in &layers {
                let r = blob(l)?;
                if ![MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_ZSTD]
                    .contains(&l.media_type.as_str())
                {
                    return Err(unsupported(r.digest, &l.media_type));
                }
                refs.push(r);
            }
            Ok(OciImage { bytes, digest: *digest, config: config_ref, layers: refs })
        }
        Kind::DockerManifest => {
            let config_ref = blob(&config)?;
            if config.media_type != DOCKER_CONFIG && config.media_type != MEDIA_TYPE_CONFIG {
                return Err(unsupported(config_ref.digest, &config.media_type));
            }
            let mut oci_layers = Vec::new();
            let mut refs = Vec::new();
            for l in &layers {
                let r = blob(l)?;
                let media_type = match l.media_type.as_str() {
                    DOCKER_LAYER_GZIP | MEDIA_TYPE_LAYER_GZIP => MEDIA_TYPE_LAYER_GZIP,
                    DOCKER_LAYER_TAR | MEDIA_TYPE_LAYER_TAR => MEDIA_TYPE_LAYER_TAR,
                    MEDIA_TYPE_LAYER_ZSTD => MEDIA_TYPE_LAYER_ZSTD,
                    other => return Err(unsupported(r.digest, other)),
                };
                let mut d = l.clone();
                d.media_type = media_type.to_owned();
                d.platform = None;
                oci_layers.push(d);
                refs.push(r);
            }
            let mut oci_config = config.clone();
            oci_config.media_type = MEDIA_TYPE_CONFIG.to_owned();
            oci_config.platform = None;
            let mut doc = serde_json::Map::new();
            doc.insert("schemaVersion".into(), Value::from(2));
            doc.insert("mediaType".into(), Value::from(MEDIA_TYPE_MANIFEST));
            doc.insert("config".into(), to_value(ep, digest, &oci_config)?);
            doc.insert("layers".into(), to_value(ep, digest, &oci_layers)?);
            if let Some(a) = raw.annotations {
                doc.insert("annotations".into(), a);
            }
            let bytes = canonical_json(&Value::Object(doc))?;
            let converted = Digest::of_bytes(&bytes);
            Ok(OciImage { bytes, digest: converted, config: config_ref, layers: refs })
        }
        Kind::OciIndex | Kind::DockerList => {
            Err(invalid(ep, digest, "expected an image manifest, found an index"))
        }
    }
}

fn to_value<T: Serialize>(ep: &Endpoint, digest: &Digest, v: &T) -> Result<Value, RegistryError> {
    serde_json::to_value(v).map_err(|source| RegistryError::InvalidManifest {
        registry: ep.registry.clone(),
        repository: ep.repository.clone(),
        digest: *digest,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        Endpoint {
            registry: "r:1".into(),
            base: "http://r:1".into(),
            repository: "app".into(),
            unverified_tls: false,
        }
    }

    #[test]
    fn docker_manifests_convert_to_oci_keeping_blobs() {
        let cfg = Digest::of_bytes(b"{}");
        let layer = Digest::of_bytes(b"layer");
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"{DOCKER_CONFIG}","size":2,"digest":"{cfg}"}},
            "layers":[{{"mediaType":"{DOCKER_LAYER_GZIP}","size":5,"digest":"{layer}"}}]}}"#
        );
        let d = Digest::of_bytes(doc.as_bytes());
        let kind = kind_of(&ep(), &d, Some(DOCKER_MANIFEST), doc.as_bytes()).unwrap();
        assert_eq!(kind, Kind::DockerManifest);
        let oci = to_oci(&ep(), &d, kind, doc.into_bytes()).unwrap();
        assert_ne!(oci.digest, d);
        assert_eq!(oci.digest, Digest::of_bytes(&oci.bytes));
        let parsed: strata_store::oci_spec::image::ImageManifest =
            serde_json::from_slice(&oci.bytes).unwrap();
        assert_eq!(parsed.config().digest().to_string(), cfg.to_string());
        assert_eq!(parsed.layers()[0].media_type().to_string(), MEDIA_TYPE_LAYER_GZIP);
        assert_eq!(oci.layers[0].digest, layer);
    }

    #[test]
    fn index_picks_the_platform_and_lists_others_when_missing() {
        let a = Digest::of_bytes(b"a");
        let b = Digest::of_bytes(b"b");
        let doc = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"{MEDIA_TYPE_MANIFEST}","size":1,"digest":"{a}","platform":{{"os":"linux","architecture":"arm","variant":"v6"}}}},
            {{"mediaType":"{MEDIA_TYPE_MANIFEST}","size":1,"digest":"{b}","platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}}]}}"#
        );
        let d = Digest::of_bytes(doc.as_bytes());
        assert_eq!(kind_of(&ep(), &d, None, doc.as_bytes()).unwrap(), Kind::OciIndex);
        let want = |arch: &str, v: Option<&str>| Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: v.map(Into::into),
        };
        let (got, _) =
            select_platform(&ep(), &d, doc.as_bytes(), &want("arm", Some("v7"))).unwrap();
        assert_eq!(got, b);
        let err = select_platform(&ep(), &d, doc.as_bytes(), &want("amd64", None)).unwrap_err();
        assert!(err.to_string().contains("linux/arm/v6"), "{err}");
    }

    #[test]
    fn malformed_and_foreign_manifests_are_refused() {
        let d = Digest::of_bytes(b"x");
        let err = kind_of(&ep(), &d, Some(MEDIA_TYPE_MANIFEST), b"{not json").unwrap_err();
        assert!(matches!(err, RegistryError::InvalidManifest { .. }), "{err}");
        let doc = br#"{"schemaVersion":1,"name":"x"}"#;
        let err = kind_of(&ep(), &d, Some("application/json"), doc).unwrap_err();
        assert!(matches!(err, RegistryError::UnsupportedMediaType { .. }), "{err}");
    }
}
