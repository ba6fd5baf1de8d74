//! Images and tags: manifests, configs, and the names in `index.json`.
//!
//! An image is an OCI image manifest blob pointing at a config blob and layer blobs
//! (manifest.md). [`Store::put_image`] writes the config and manifest for layers already in the
//! store; [`Store::tag`] names the manifest in `index.json`. The tag is stored as the
//! `org.opencontainers.image.ref.name` annotation holding `name:tag` (e.g. `app:v1`), which is
//! exactly the string skopeo and umoci match when given `oci:$STORE:app:v1` or
//! `--image $STORE:app:v1`: both split the transport argument at the first `:` after the
//! directory and compare the rest with the annotation verbatim. The annotation grammar of
//! annotations.md (`component ("/" component)*` with `:` allowed as a separator) admits such
//! values.
//!
//! Reading is strict: [`Store::image`] accepts only the OCI manifest, config and layer media
//! types this store writes (tar, tar+gzip, tar+zstd), verifies every blob it reads against its
//! digest and size, and names the blob at fault otherwise.

use std::collections::{BTreeSet, HashMap};

use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageManifest, ImageManifestBuilder, MediaType, SCHEMA_VERSION,
};

use crate::error::StoreError;
use crate::index::REF_NAME_ANNOTATION;
use crate::store::Store;
use strata_types::Digest;
use strata_types::Reference;

use strata_types::{MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};

const LAYER_TYPES: &str = "an OCI layer type (tar, tar+gzip or tar+zstd)";

/// Whether `mt` is one of the layer media types this store reads and writes.
fn is_supported_layer(mt: &MediaType) -> bool {
    strata_types::is_supported_layer(mt.as_ref())
}

/// An image read from the store: its manifest, config, and the descriptor that named it.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// The descriptor of the manifest blob (as found in `index.json` or built by the caller).
    pub manifest_descriptor: Descriptor,
    /// The parsed manifest.
    pub manifest: ImageManifest,
    /// The parsed config.
    pub config: ImageConfiguration,
}

impl Image {
    /// The manifest's digest, i.e. the image's identity.
    pub fn digest(&self) -> Result<Digest, StoreError> {
        Ok(Digest::try_from(self.manifest_descriptor.digest())?)
    }

    /// The layer blob digests, bottom layer first.
    pub fn layer_digests(&self) -> Result<Vec<Digest>, StoreError> {
        self.manifest.layers().iter().map(|l| Ok(Digest::try_from(l.digest())?)).collect()
    }
}

/// The descriptor's digest as a store digest (sha256 only).
pub(crate) fn descriptor_digest(d: &Descriptor) -> Result<Digest, StoreError> {
    Ok(Digest::try_from(d.digest())?)
}

impl Store {
    /// Writes `config` and a manifest listing `layers` (which must already be in the store, with
    /// the sizes given) and returns the manifest's descriptor. Does not tag it.
    ///
    /// The config's `rootfs.diff_ids` must have one entry per layer. JSON is written in
    /// canonical form (see [`Store::put_json`]), so the same image always gets the same digest.
    pub fn put_image(
        &self,
        config: &ImageConfiguration,
        layers: &[Descriptor],
    ) -> Result<Descriptor, StoreError> {
        self.check_layers(layers)?;
        let config_blob = self.put_json(config)?;
        self.put_manifest(config, config_blob.digest, config_blob.size, layers)
    }

    /// Like [`Store::put_image`] for a config blob already in the store, kept byte for byte
    /// (e.g. read from another tool's archive, whose digest must not change).
    pub fn put_image_with_config(
        &self,
        config_digest: &Digest,
        config_size: u64,
        layers: &[Descriptor],
    ) -> Result<Descriptor, StoreError> {
        self.put_image_with_remote_layers(config_digest, config_size, layers, &Default::default())
    }

    /// [`Store::put_image_with_config`] where the layers `remote` (blob digests) are not in the
    /// store: they live in a registry, and the caller pushes the image there without them (a
    /// build's lazy cache layers). Such an image is not whole here: it must not be tagged.
    pub fn put_image_with_remote_layers(
        &self,
        config_digest: &Digest,
        config_size: u64,
        layers: &[Descriptor],
        remote: &std::collections::BTreeSet<Digest>,
    ) -> Result<Descriptor, StoreError> {
        let local: Vec<Descriptor> = layers
            .iter()
            .filter(|l| descriptor_digest(l).map_or(true, |d| !remote.contains(&d)))
            .cloned()
            .collect();
        self.check_layers(&local)?;
        self.check_size(config_digest, config_size)?;
        let bytes = self.read_blob(config_digest)?;
        let config: ImageConfiguration = serde_json::from_slice(&bytes).map_err(|source| {
            StoreError::InvalidBlobJson { digest: *config_digest, what: "image config", source }
        })?;
        self.put_manifest(&config, *config_digest, config_size, layers)
    }

    fn check_layers(&self, layers: &[Descriptor]) -> Result<(), StoreError> {
        for layer in layers {
            let digest = descriptor_digest(layer)?;
            if !is_supported_layer(layer.media_type()) {
                return Err(StoreError::UnsupportedMediaType {
                    digest,
                    found: layer.media_type().to_string(),
                    expected: LAYER_TYPES,
                });
            }
            self.check_size(&digest, layer.size())?;
        }
        Ok(())
    }

    fn put_manifest(
        &self,
        config: &ImageConfiguration,
        config_digest: Digest,
        config_size: u64,
        layers: &[Descriptor],
    ) -> Result<Descriptor, StoreError> {
        let diff_ids = config.rootfs().diff_ids().len();
        if diff_ids != layers.len() {
            return Err(StoreError::LayerCountMismatch {
                config: config_digest,
                diff_ids,
                layers: layers.len(),
            });
        }
        let config_desc = Descriptor::new(MediaType::ImageConfig, config_size, config_digest);
        let manifest = ImageManifestBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageManifest)
            .config(config_desc)
            .layers(layers.to_vec())
            .build()
            .map_err(|e| StoreError::Serialize {
                what: "image manifest",
                source: serde::ser::Error::custom(e),
            })?;
        let put = self.put_json(&manifest)?;
        Ok(Descriptor::new(MediaType::ImageManifest, put.size, put.digest))
    }

    /// Fails unless the blob exists with exactly `size` bytes.
    fn check_size(&self, digest: &Digest, size: u64) -> Result<(), StoreError> {
        let found = self.blob_size(digest)?;
        if found != size {
            return Err(StoreError::SizeMismatch { digest: *digest, expected: size, found });
        }
        Ok(())
    }

    /// Reads a blob, verifying digest and the descriptor's size.
    fn read_described(&self, desc: &Descriptor) -> Result<(Digest, Vec<u8>), StoreError> {
        let digest = descriptor_digest(desc)?;
        let bytes = self.read_blob(&digest)?;
        if bytes.len() as u64 != desc.size() {
            return Err(StoreError::SizeMismatch {
                digest,
                expected: desc.size(),
                found: bytes.len() as u64,
            });
        }
        Ok((digest, bytes))
    }

    /// Points tag `name` (`name` or `name:tag`; `latest` if no tag) at `manifest`, replacing any
    /// previous target. The manifest blob must be in the store with the descriptor's size.
    /// Serialized with other updaters by the store lock; `index.json` is replaced atomically.
    pub fn tag(&self, name: &str, manifest: &Descriptor) -> Result<(), StoreError> {
        self.set_ref_name(&tag_key(name)?, manifest)
    }

    /// Names `manifest` in `index.json` with the `org.opencontainers.image.ref.name` annotation
    /// set to `ref_name` exactly as given (image-layout.md: a ref is
    /// `component ("/" component)*`, components of alphanumerics joined by `-._:@+` or `--`).
    /// This is what exports to another tool's layout need: `oci:DIR:base` must be found by
    /// skopeo as `base`, not `base:latest`. [`Store::tag`] normalizes to `name:tag` first.
    pub fn set_ref_name(&self, name: &str, manifest: &Descriptor) -> Result<(), StoreError> {
        if !valid_ref_name(name) {
            return Err(StoreError::InvalidLocation {
                input: name.to_owned(),
                reason: "not a valid org.opencontainers.image.ref.name",
            });
        }
        let key = name.to_owned();
        let digest = descriptor_digest(manifest)?;
        if !matches!(manifest.media_type(), MediaType::ImageManifest | MediaType::ImageIndex) {
            return Err(StoreError::UnsupportedMediaType {
                digest,
                found: manifest.media_type().to_string(),
                expected: "an OCI image manifest or index",
            });
        }
        self.check_size(&digest, manifest.size())?;
        let mut entry = manifest.clone();
        let mut annotations = entry.annotations().clone().unwrap_or_default();
        annotations.insert(REF_NAME_ANNOTATION.to_owned(), key.clone());
        entry.set_annotations(Some(annotations));
        self.update_index(|index| {
            let mut named = index.manifests().iter().filter(|m| ref_name(m) == Some(key.as_str()));
            if named.next() == Some(&entry) && named.next().is_none() {
                // Already so: the index stays as it is (and is not rewritten).
                return Ok(());
            }
            let mut manifests = index.manifests().clone();
            manifests.retain(|m| ref_name(m) != Some(key.as_str()));
            manifests.push(entry);
            index.set_manifests(manifests);
            Ok(())
        })
    }

    /// Removes tag `name` and returns the descriptor it pointed at (the image's blobs stay until
    /// [`Store::gc`]).
    pub fn untag(&self, name: &str) -> Result<Descriptor, StoreError> {
        let key = tag_key(name)?;
        self.update_index(|index| {
            let mut manifests = index.manifests().clone();
            let Some(pos) = find_tag(&manifests, &key, name) else {
                return Err(StoreError::ImageNotFound { reference: key.clone() });
            };
            let removed = manifests.remove(pos);
            index.set_manifests(manifests);
            Ok(removed)
        })
    }

    /// Every tag in `index.json` with its descriptor, sorted by name. Entries without a
    /// `ref.name` annotation (e.g. written by other tools) are not tags and are left out.
    pub fn tags(&self) -> Result<Vec<(String, Descriptor)>, StoreError> {
        let index = self.read_index()?;
        let mut out: Vec<(String, Descriptor)> = index
            .manifests()
            .iter()
            .filter_map(|m| ref_name(m).map(|n| (n.to_owned(), m.clone())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Finds the manifest a user's reference means:
    ///
    /// - `name` (meaning `name:latest`) or `name:tag`: a tag in `index.json` (failing that, an
    ///   entry whose `ref.name` is exactly the string given, as other tools may write);
    /// - `name@sha256:<hex>` or `sha256:<hex>`: that manifest, if in `index.json` or in `blobs/`;
    /// - a hex prefix of at least 4 characters, optionally after `sha256:`, of a manifest
    ///   digest in `index.json` or of a dangling image ([`Store::keep_dangling`]; a tag of
    ///   the same name wins). Several matches are an
    ///   [`StoreError::AmbiguousReference`] listing them.
    pub fn resolve(&self, reference: &str) -> Result<Descriptor, StoreError> {
        if let Some(hex) = reference.strip_prefix("sha256:") {
            if hex.len() < 64 && is_hex_prefix(hex) {
                return self.resolve_prefix(hex, reference);
            }
            let digest: Digest = reference.parse()?;
            return self.resolve_digest(&digest, reference);
        }
        let parsed: Reference = reference.parse()?;
        if let Some(digest) = parsed.digest() {
            return self.resolve_digest(digest, reference);
        }
        let key = parsed.tag_key();
        let index = self.read_index()?;
        if let Some(pos) = find_tag(index.manifests(), &key, reference) {
            return Ok(index.manifests()[pos].clone());
        }
        if parsed.tag().is_none() && is_hex_prefix(reference) {
            return self.resolve_prefix(reference, reference);
        }
        Err(StoreError::ImageNotFound { reference: reference.to_owned() })
    }

    fn resolve_digest(&self, digest: &Digest, reference: &str) -> Result<Descriptor, StoreError> {
        let index = self.read_index()?;
        for m in index.manifests() {
            if descriptor_digest(m).ok().as_ref() == Some(digest) {
                return Ok(m.clone());
            }
        }
        match self.untagged_descriptor(digest) {
            Err(StoreError::BlobNotFound { .. }) => {
                Err(StoreError::ImageNotFound { reference: reference.to_owned() })
            }
            other => other,
        }
    }

    /// The descriptor of a manifest or index blob that is present but not (necessarily) in
    /// `index.json`, typed by its own `mediaType` field (required for both since image-spec
    /// 1.1).
    pub(crate) fn untagged_descriptor(&self, digest: &Digest) -> Result<Descriptor, StoreError> {
        let bytes = self.read_blob(digest)?;
        #[derive(serde::Deserialize)]
        struct Typed {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
        }
        let typed: Typed = serde_json::from_slice(&bytes).map_err(|source| {
            StoreError::InvalidBlobJson { digest: *digest, what: "image manifest", source }
        })?;
        let media_type = match typed.media_type.as_deref() {
            Some(MEDIA_TYPE_MANIFEST) => MediaType::ImageManifest,
            Some(MEDIA_TYPE_INDEX) => MediaType::ImageIndex,
            other => {
                return Err(StoreError::UnsupportedMediaType {
                    digest: *digest,
                    found: other.unwrap_or("<none>").to_owned(),
                    expected: "an OCI image manifest or index",
                })
            }
        };
        Ok(Descriptor::new(media_type, bytes.len() as u64, *digest))
    }

    fn resolve_prefix(&self, hex: &str, reference: &str) -> Result<Descriptor, StoreError> {
        let index = self.read_index()?;
        let mut found: Vec<(Digest, Option<&Descriptor>)> = Vec::new();
        let mut seen = BTreeSet::new();
        for m in index.manifests() {
            if let Ok(d) = descriptor_digest(m) {
                if d.hex().starts_with(hex) && seen.insert(d) {
                    found.push((d, Some(m)));
                }
            }
        }
        // Dangling images (built without a tag) are named by their ID too, as in Docker.
        for d in self.dangling_list()? {
            if d.hex().starts_with(hex) && seen.insert(d) && self.has_blob(&d) {
                found.push((d, None));
            }
        }
        match found.as_slice() {
            [] => Err(StoreError::ImageNotFound { reference: reference.to_owned() }),
            [(_, Some(m))] => Ok((*m).clone()),
            [(d, None)] => self.untagged_descriptor(d),
            many => Err(StoreError::AmbiguousReference {
                reference: reference.to_owned(),
                candidates: many.iter().map(|(d, _)| *d).collect(),
            }),
        }
    }

    /// Reads and checks an image: the manifest must be an OCI image manifest whose config and
    /// layers have supported media types; manifest and config are verified against their digests
    /// and sizes. Layer blobs are not read (use [`Store::open_blob_verified`]).
    ///
    /// A handle holding a lease ([`Store::lease`]) pins the manifest first, so a concurrent
    /// gc keeps the image whole (manifest, config, layers) while the handle lives, even if
    /// its tag goes meanwhile: a build's base stays while the build runs.
    pub fn image(&self, manifest: &Descriptor) -> Result<Image, StoreError> {
        let manifest_digest = descriptor_digest(manifest)?;
        self.with_pins(&[manifest_digest], || Ok(()))?;
        let unsupported = |digest, found: &MediaType, expected| StoreError::UnsupportedMediaType {
            digest,
            found: found.to_string(),
            expected,
        };
        if *manifest.media_type() != MediaType::ImageManifest {
            return Err(unsupported(manifest_digest, manifest.media_type(), MEDIA_TYPE_MANIFEST));
        }
        let (_, bytes) = self.read_described(manifest)?;
        let parsed: ImageManifest = serde_json::from_slice(&bytes).map_err(|source| {
            StoreError::InvalidBlobJson { digest: manifest_digest, what: "image manifest", source }
        })?;
        if let Some(mt) = parsed.media_type() {
            if *mt != MediaType::ImageManifest {
                return Err(unsupported(manifest_digest, mt, MEDIA_TYPE_MANIFEST));
            }
        }
        let config_desc = parsed.config();
        let config_digest = descriptor_digest(config_desc)?;
        if *config_desc.media_type() != MediaType::ImageConfig {
            return Err(unsupported(config_digest, config_desc.media_type(), MEDIA_TYPE_CONFIG));
        }
        for layer in parsed.layers() {
            let digest = descriptor_digest(layer)?;
            if !is_supported_layer(layer.media_type()) {
                return Err(unsupported(digest, layer.media_type(), LAYER_TYPES));
            }
        }
        let (_, config_bytes) = self.read_described(config_desc)?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|source| {
                StoreError::InvalidBlobJson { digest: config_digest, what: "image config", source }
            })?;
        Ok(Image { manifest_descriptor: manifest.clone(), manifest: parsed, config })
    }

    /// [`Store::resolve`] then [`Store::image`].
    pub fn load_image(&self, reference: &str) -> Result<Image, StoreError> {
        self.image(&self.resolve(reference)?)
    }
}

/// The ref grammar of image-layout.md (`index.json` § annotations).
fn valid_ref_name(r: &str) -> bool {
    r.split('/').all(|component| {
        let b = component.as_bytes();
        let sep = |c: u8| matches!(c, b'-' | b'.' | b'_' | b':' | b'@' | b'+');
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || sep(c))
            && !b.windows(2).any(|w| sep(w[0]) && sep(w[1]) && w != b"--")
    })
}

pub(crate) fn tag_key(name: &str) -> Result<String, StoreError> {
    let parsed: Reference = name.parse()?;
    if parsed.digest().is_some() {
        return Err(StoreError::UnexpectedDigest { reference: name.to_owned() });
    }
    Ok(parsed.tag_key())
}

/// The entry tagged `key` (`name:tag`), else one whose annotation is exactly `as_written`: tools
/// like skopeo may record a bare tag (`oci:DIR:x` stores `x`), which users then name as written.
fn find_tag(manifests: &[Descriptor], key: &str, as_written: &str) -> Option<usize> {
    manifests
        .iter()
        .position(|m| ref_name(m) == Some(key))
        .or_else(|| manifests.iter().position(|m| ref_name(m) == Some(as_written)))
}

/// The `ref.name` annotation of an `index.json` entry.
pub(crate) fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a: &HashMap<String, String>| a.get(REF_NAME_ANNOTATION))
        .map(String::as_str)
}

fn is_hex_prefix(s: &str) -> bool {
    (4..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod ref_name_tests {
    use super::valid_ref_name;

    #[test]
    fn ref_names_follow_image_layout() {
        for ok in ["base", "app:v1", "r.example/team/app:1.0", "a--b", "x@y+z"] {
            assert!(valid_ref_name(ok), "{ok}");
        }
        for bad in ["", "a b", ":x", "x:", "a//b", "a..b", "/a"] {
            assert!(!valid_ref_name(bad), "{bad}");
        }
    }
}
