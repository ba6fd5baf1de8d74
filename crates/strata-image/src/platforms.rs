//! Multi-platform images: an OCI image index whose manifests carry their platforms.
//!
//! A tag in the store (or in any OCI layout) points at either an image manifest or an image
//! index (image-layout.md `index.json`; image-index.md). Every command that reads *one* image
//! goes through [`image_for_platform`]: an index resolves to the manifest for the platform
//! asked for (the host's when none is given, as `docker run` does), and a plain manifest is
//! taken as it is when no platform is asked for, or checked against its config's `os` and
//! `architecture` when one is. The choice follows image-index.md's `platform` field: same OS
//! and architecture, the same variant preferred (`arm64`'s `v8` is its default, containerd's
//! matcher), an entry without a platform never chosen. What an image is for is read from
//! the index entry, never from the child's config, so choosing a platform reads no blob but
//! the index.
//!
//! [`put_index`] writes the index a multi-platform build tags: one entry per platform, in
//! the order given, each with its `platform` (the variant only where it matters).

use std::collections::HashSet;

use strata_store::oci_spec::image::{
    Arch, Descriptor, ImageIndex, ImageIndexBuilder, MediaType, Os, Platform as OciPlatform,
    PlatformBuilder, SCHEMA_VERSION,
};
use strata_store::{Image, Store, StoreError};
use strata_types::{Digest, Platform};

use crate::error::{ImageError, Result};

/// One platform's image in an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformImage {
    /// The platform the index entry names.
    pub platform: Platform,
    /// The image manifest's descriptor (as listed in the index).
    pub manifest: Descriptor,
}

/// Whether `descriptor` is an image index.
pub fn is_index(descriptor: &Descriptor) -> bool {
    *descriptor.media_type() == MediaType::ImageIndex
}

/// The platforms an index lists, in its order (entries without a platform, such as
/// attestations, are left out). A plain image manifest lists one: its config's.
pub fn platforms(store: &Store, descriptor: &Descriptor) -> Result<Vec<PlatformImage>> {
    if !is_index(descriptor) {
        let image = store.image(descriptor)?;
        return Ok(vec![PlatformImage {
            platform: config_platform(&image),
            manifest: descriptor.clone(),
        }]);
    }
    let index = read_index(store, descriptor)?;
    Ok(index
        .manifests()
        .iter()
        .filter(|m| *m.media_type() == MediaType::ImageManifest)
        .filter_map(|m| {
            let p = m.platform().as_ref()?;
            Some(PlatformImage { platform: from_oci(p), manifest: m.clone() })
        })
        .collect())
}

/// The image `descriptor` is for `platform`: an index's entry for it, or a manifest checked
/// against its config (see the module docs). `None` asks for the host's from an index and
/// takes a manifest as it is. `name` is how the caller names the image in errors.
pub fn image_for_platform(
    store: &Store,
    descriptor: &Descriptor,
    platform: Option<&Platform>,
    name: &str,
) -> Result<Image> {
    if !is_index(descriptor) {
        let image = store.image(descriptor)?;
        if let Some(wanted) = platform {
            let has = config_platform(&image);
            if !has.satisfies(wanted) {
                return Err(ImageError::NoSuchPlatform {
                    image: name.to_string(),
                    platform: wanted.to_string(),
                    available: vec![has.to_string()],
                });
            }
        }
        return Ok(image);
    }
    let wanted = platform.cloned().unwrap_or_else(Platform::host);
    let listed = platforms(store, descriptor)?;
    match pick(&listed, &wanted) {
        Some(chosen) => Ok(store.image(&chosen.manifest)?),
        None => Err(ImageError::NoSuchPlatform {
            image: name.to_string(),
            platform: wanted.to_string(),
            available: listed.iter().map(|p| p.platform.to_string()).collect(),
        }),
    }
}

/// [`Store::resolve`] then [`image_for_platform`].
pub fn load_for_platform(
    store: &Store,
    reference: &str,
    platform: Option<&Platform>,
) -> Result<Image> {
    let descriptor = store.resolve(reference)?;
    image_for_platform(store, &descriptor, platform, reference)
}

/// The entry of `listed` an image for `wanted` is read from: same OS and architecture; the
/// same variant (or the architecture's default) over no variant over another one.
pub fn find_platform<'a>(
    listed: &'a [PlatformImage],
    wanted: &Platform,
) -> Option<&'a PlatformImage> {
    pick(listed, wanted)
}

/// The bytes an image's blobs take, as `docker images` counts them: config and layers, and for
/// an index those of every platform it lists, a blob that several share counted once
/// (manifests and the index itself are not counted).
pub fn image_size(store: &Store, descriptor: &Descriptor) -> Result<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut size = 0;
    for p in platforms(store, descriptor)? {
        let image = store.image(&p.manifest)?;
        let blobs = image.manifest.layers().iter().chain(std::iter::once(image.manifest.config()));
        for blob in blobs {
            if seen.insert(blob.digest().to_string()) {
                size += blob.size();
            }
        }
    }
    Ok(size)
}

fn pick<'a>(listed: &'a [PlatformImage], wanted: &Platform) -> Option<&'a PlatformImage> {
    let mut best: Option<(u8, &PlatformImage)> = None;
    for p in listed {
        if p.platform.os != wanted.os || p.platform.architecture != wanted.architecture {
            continue;
        }
        let score = if p.platform.satisfies(wanted) {
            3
        } else if p.platform.variant.is_none() {
            2
        } else {
            1
        };
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, p));
        }
    }
    best.map(|(_, p)| p)
}

/// Writes an image index listing `images` (each manifest already in the store) with their
/// platforms, in the order given, and returns its descriptor. Two entries for the same
/// platform are refused: a pull could not tell them apart.
pub fn put_index(store: &Store, images: &[PlatformImage]) -> Result<Descriptor> {
    let mut seen = HashSet::new();
    let mut manifests = Vec::with_capacity(images.len());
    for p in images {
        if !seen.insert(p.platform.to_string()) {
            return Err(ImageError::DuplicatePlatform { platform: p.platform.to_string() });
        }
        let digest = Digest::try_from(p.manifest.digest()).map_err(StoreError::from)?;
        let mut d = Descriptor::new(MediaType::ImageManifest, p.manifest.size(), digest);
        d.set_platform(Some(to_oci(&p.platform)?));
        manifests.push(d);
    }
    let index: ImageIndex = ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(|e| StoreError::Serialize {
            what: "image index",
            source: serde::ser::Error::custom(e),
        })?;
    let put = store.put_json(&index)?;
    Ok(Descriptor::new(MediaType::ImageIndex, put.size, put.digest))
}

/// `descriptor`'s manifest or index rewritten with `annotations` added to its own
/// (`docker buildx build --annotation`; a key given twice takes the later value): the new
/// blob's descriptor, of the same media type. An empty map gives `descriptor` back.
pub fn annotate(
    store: &Store,
    descriptor: &Descriptor,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Descriptor> {
    if annotations.is_empty() {
        return Ok(descriptor.clone());
    }
    let merge = |own: Option<&std::collections::HashMap<String, String>>| {
        let mut all = own.cloned().unwrap_or_default();
        all.extend(annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
        Some(all)
    };
    let put = if is_index(descriptor) {
        let mut index = read_index(store, descriptor)?;
        index.set_annotations(merge(index.annotations().as_ref()));
        store.put_json(&index)?
    } else {
        let digest = Digest::try_from(descriptor.digest()).map_err(StoreError::from)?;
        let bytes = store.read_blob(&digest)?;
        let mut manifest: strata_store::oci_spec::image::ImageManifest =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::InvalidBlobJson {
                digest,
                what: "image manifest",
                source,
            })?;
        manifest.set_annotations(merge(manifest.annotations().as_ref()));
        store.put_json(&manifest)?
    };
    Ok(Descriptor::new(descriptor.media_type().clone(), put.size, put.digest))
}

/// The platform an image's config says it is for.
pub fn config_platform(image: &Image) -> Platform {
    let c = &image.config;
    let variant = c.variant().as_deref().filter(|v| !v.is_empty());
    Platform::new(&c.os().to_string(), &c.architecture().to_string(), variant)
}

/// The image index `descriptor` names, read and checked against its size.
pub fn read_index(store: &Store, descriptor: &Descriptor) -> Result<ImageIndex> {
    let digest = Digest::try_from(descriptor.digest()).map_err(StoreError::from)?;
    let bytes = store.read_blob(&digest)?;
    if bytes.len() as u64 != descriptor.size() {
        return Err(StoreError::SizeMismatch {
            digest,
            expected: descriptor.size(),
            found: bytes.len() as u64,
        }
        .into());
    }
    serde_json::from_slice(&bytes).map_err(|source| {
        ImageError::Store(StoreError::InvalidBlobJson { digest, what: "image index", source })
    })
}

fn from_oci(p: &OciPlatform) -> Platform {
    let variant = p.variant().as_deref().filter(|v| !v.is_empty());
    Platform::new(&p.os().to_string(), &p.architecture().to_string(), variant)
}

fn to_oci(p: &Platform) -> Result<OciPlatform> {
    let mut b = PlatformBuilder::default()
        .os(Os::from(p.os.as_str()))
        .architecture(Arch::from(p.architecture.as_str()));
    if let Some(v) = &p.variant {
        b = b.variant(v.clone());
    }
    b.build().map_err(|e| {
        ImageError::Store(StoreError::Serialize {
            what: "index platform",
            source: serde::ser::Error::custom(e),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: &str) -> PlatformImage {
        let d = Digest::of_bytes(p.as_bytes());
        PlatformImage {
            platform: p.parse().unwrap(),
            manifest: Descriptor::new(MediaType::ImageManifest, 1, d),
        }
    }

    #[test]
    fn picks_same_variant_then_none_then_other() {
        let listed = [entry("linux/arm/v6"), entry("linux/arm64"), entry("linux/amd64")];
        let want = |s: &str| s.parse::<Platform>().unwrap();
        assert_eq!(pick(&listed, &want("linux/arm64/v8")).unwrap().platform, want("linux/arm64"));
        assert_eq!(pick(&listed, &want("linux/arm/v6")).unwrap().platform, want("linux/arm/v6"));
        // Another variant is better than nothing only when nothing closer is listed.
        assert_eq!(pick(&listed, &want("linux/arm/v7")).unwrap().platform, want("linux/arm/v6"));
        assert!(pick(&listed, &want("linux/riscv64")).is_none());
        assert!(pick(&listed, &want("windows/amd64")).is_none());
    }
}
