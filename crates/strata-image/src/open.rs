//! Opening an image wherever it lives, without copying it into the store first.
//!
//! The store is an OCI image layout, so another layout (`oci:DIR`) is opened as a [`Store`]
//! and read in place; a `docker-archive` tarball is unpacked into a scratch layout (its
//! layers verified against the config's diffIDs); a registry image is pulled into a scratch
//! layout ([`crate::open`]).

use strata_store::oci_spec::image::Descriptor;
use strata_store::{Image, Store};
use strata_types::ImageLocation;

use crate::archive::read_docker_archive;
use crate::desc_digest;
use crate::error::{ImageError, Result};
use crate::platforms::{
    config_platform, find_platform, image_for_platform, is_index, load_for_platform, platforms,
    read_index, PlatformImage,
};
use strata_registry::{Client, PullOptions, TransferReport, TransferSink};
use strata_store::oci_spec::image::ImageIndex;
use strata_types::{Platform, Reference};

/// An image opened for reading, and the store (or layout) holding its blobs. An image that
/// needed a scratch layout (a `docker-archive`, a registry image) keeps it until dropped.
#[derive(Debug)]
pub struct OpenedImage {
    /// The store (the local one, or an opened `oci:` layout, or a scratch layout holding a
    /// `docker-archive`'s blobs).
    pub store: Store,
    /// The image.
    pub image: Image,
    /// The name it was found under, if any (`app:v1`).
    pub name: Option<String>,
    /// The platform it was chosen for when `name` names a multi-platform image (an index);
    /// messages name the image as `app:v1 (linux/arm64)` then.
    pub platform: Option<Platform>,
    /// Keeps a scratch layout alive as long as the image is used.
    pub(crate) _scratch: Option<tempfile::TempDir>,
}

impl OpenedImage {
    /// The image's config as stored, as JSON: with the fields the OCI types drop, such as
    /// Docker's `Healthcheck`, `Shell` and `OnBuild` (read them with
    /// [`RunConfig::from_json`](crate::config::RunConfig::from_json)).
    pub fn raw_config(&self) -> Result<serde_json::Value> {
        let digest = desc_digest(self.image.manifest.config())?;
        let bytes = self.store.read_blob(&digest)?;
        serde_json::from_slice(&bytes).map_err(|source| {
            ImageError::Store(strata_store::StoreError::InvalidBlobJson {
                digest,
                what: "image config",
                source,
            })
        })
    }
}

/// Opens the image at a local `location` for reading: the store (`local`, needed for
/// `name:tag` locations only), an `oci:` layout (read in place) or a `docker-archive`
/// (unpacked into a scratch layout first, its layers verified against the config's
/// diffIDs). A registry location needs [`open`].
///
/// A multi-platform image (an index) opens as the host's image; [`open_local_platform`]
/// picks another.
pub fn open_local(local: Option<&Store>, location: &ImageLocation) -> Result<OpenedImage> {
    open_local_platform(local, location, None)
}

/// [`open_local`] for `platform`: an index resolves to that platform's image, a single image
/// must be for it (see [`image_for_platform`]); `None` is the host's from an index and any
/// single image.
pub fn open_local_platform(
    local: Option<&Store>,
    location: &ImageLocation,
    platform: Option<&Platform>,
) -> Result<OpenedImage> {
    let named = location.to_string();
    match location {
        ImageLocation::Store(reference) => {
            let local = local.ok_or_else(|| ImageError::UnsupportedLocation {
                location: format!("{location} (no local store)"),
            })?;
            let image = load_for_platform(local, reference, platform)?;
            let from_index = is_index(&local.resolve(reference)?);
            Ok(OpenedImage {
                store: local.clone(),
                platform: from_index.then(|| config_platform(&image)),
                image,
                name: Some(reference.clone()),
                _scratch: None,
            })
        }
        ImageLocation::Oci { dir, reference } => {
            let store = Store::open(dir)?;
            let (descriptor, name) = select_in_layout(&store, reference.as_deref(), location)?;
            let image = image_for_platform(&store, &descriptor, platform, &named)?;
            let platform = is_index(&descriptor).then(|| config_platform(&image));
            Ok(OpenedImage { store, image, name, platform, _scratch: None })
        }
        ImageLocation::DockerArchive { path, reference } => {
            let scratch = tempfile::Builder::new()
                .prefix("strata-archive-")
                .tempdir()
                .map_err(|e| ImageError::io("mkdir", std::env::temp_dir(), e))?;
            let store = Store::init(scratch.path())?;
            let (image, name) = read_docker_archive(path, reference.as_deref(), &store)?;
            // An archive holds single images; one for another platform is refused.
            let image = image_for_platform(&store, &image.manifest_descriptor, platform, &named)?;
            Ok(OpenedImage { store, image, name, platform: None, _scratch: Some(scratch) })
        }
        ImageLocation::Registry(_) | ImageLocation::Dir(_) => {
            Err(ImageError::UnsupportedLocation { location: location.to_string() })
        }
    }
}

/// A multi-platform image (an OCI image index) opened for reading, in the store or layout
/// holding it and its platforms' blobs.
#[derive(Debug)]
pub struct OpenedIndex {
    /// The store or layout holding the index and its images.
    pub store: Store,
    /// The index's descriptor.
    pub descriptor: Descriptor,
    /// The index document.
    pub index: ImageIndex,
    /// The platforms it lists, in its order.
    pub platforms: Vec<PlatformImage>,
    /// The name it was found under, if any (`app:v1`).
    pub name: Option<String>,
}

impl OpenedIndex {
    /// The image for `platform` (the host's when `None`), or [`ImageError::NoSuchPlatform`]
    /// listing the platforms the index has.
    pub fn image(&self, platform: Option<&Platform>) -> Result<OpenedImage> {
        let name = self.name.clone().unwrap_or_else(|| self.descriptor.digest().to_string());
        let image = image_for_platform(&self.store, &self.descriptor, platform, &name)?;
        Ok(OpenedImage {
            store: self.store.clone(),
            platform: Some(config_platform(&image)),
            image,
            name: self.name.clone(),
            _scratch: None,
        })
    }

    /// The entry for `platform` if the index lists one (the same choice as [`Self::image`]).
    pub fn find(&self, platform: &Platform) -> Option<&PlatformImage> {
        find_platform(&self.platforms, platform)
    }

    /// The platforms as `OS/ARCH[/VARIANT]` strings, in the index's order.
    pub fn platform_names(&self) -> Vec<String> {
        self.platforms.iter().map(|p| p.platform.to_string()).collect()
    }

    /// How the index is named in messages: its name, else its digest.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.descriptor.digest().to_string())
    }
}

/// What a location names: one image, or a multi-platform image (an index) kept whole.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per command, never in a collection
pub enum Opened {
    /// A single image.
    Image(OpenedImage),
    /// An image index.
    Index(OpenedIndex),
}

/// Opens what a local `location` names without choosing a platform: an index in the store or
/// an `oci:` layout is [`Opened::Index`] (for commands that keep it whole, such as an export
/// to `oci:` or `inspect`); anything else opens as [`open_local`] does.
pub fn open_local_any(local: Option<&Store>, location: &ImageLocation) -> Result<Opened> {
    let (store, descriptor, name) = match location {
        ImageLocation::Store(reference) => {
            let local = local.ok_or_else(|| ImageError::UnsupportedLocation {
                location: format!("{location} (no local store)"),
            })?;
            (local.clone(), local.resolve(reference)?, Some(reference.clone()))
        }
        ImageLocation::Oci { dir, reference } => {
            let store = Store::open(dir)?;
            let (descriptor, name) = select_in_layout(&store, reference.as_deref(), location)?;
            (store, descriptor, name)
        }
        _ => return Ok(Opened::Image(open_local(local, location)?)),
    };
    if is_index(&descriptor) {
        let index = read_index(&store, &descriptor)?;
        let platforms = platforms(&store, &descriptor)?;
        return Ok(Opened::Index(OpenedIndex { store, descriptor, index, platforms, name }));
    }
    let image = store.image(&descriptor)?;
    Ok(Opened::Image(OpenedImage { store, image, name, platform: None, _scratch: None }))
}

/// Picks the image a reference names in a layout, or the only image when none is given.
fn select_in_layout(
    store: &Store,
    reference: Option<&str>,
    location: &ImageLocation,
) -> Result<(Descriptor, Option<String>)> {
    if let Some(r) = reference {
        return Ok((store.resolve(r)?, Some(r.to_string())));
    }
    let index = store.read_index()?;
    match index.manifests().as_slice() {
        [one] => {
            let name = one
                .annotations()
                .as_ref()
                .and_then(|a| a.get(strata_store::REF_NAME_ANNOTATION))
                .cloned();
            Ok((one.clone(), name))
        }
        many => {
            Err(ImageError::AmbiguousSource { location: location.to_string(), images: many.len() })
        }
    }
}

/// Opens the image at `location` for reading, wherever it lives. `local` is the local store
/// (needed for `name:tag`). A registry image is pulled with `client` into a scratch OCI layout
/// in the temp directory, so the local store is only read (give `client` the local store as
/// blob hints, [`Client::with_blob_hints`], so that blobs it has are copied, not downloaded);
/// the returned [`TransferReport`] says what crossed the network (`None` for local images).
pub fn open(
    client: &Client,
    local: Option<&Store>,
    location: &ImageLocation,
    events: &dyn TransferSink,
) -> Result<(OpenedImage, Option<TransferReport>), ImageError> {
    open_platform(client, local, location, None, events)
}

/// [`open`] for `platform` (the host's when `None`): a registry index resolves to that
/// platform's image, local images as [`open_local_platform`] says.
pub fn open_platform(
    client: &Client,
    local: Option<&Store>,
    location: &ImageLocation,
    platform: Option<&Platform>,
    events: &dyn TransferSink,
) -> Result<(OpenedImage, Option<TransferReport>), ImageError> {
    if let ImageLocation::Registry(reference) = location {
        let wanted = platform.cloned().unwrap_or_else(Platform::host);
        let (dir, scratch, pulled) =
            pull_to_scratch(client, reference, &wanted, &PullOptions::default(), events)?;
        let opened = open_pulled(dir, &scratch, &pulled.image, reference)?;
        return Ok((opened, Some(pulled.report)));
    }
    Ok((open_local_platform(local, location, platform)?, None))
}

/// Pulls `from` into a fresh scratch layout (removed when the returned directory is dropped).
pub(crate) fn pull_to_scratch(
    client: &Client,
    from: &Reference,
    platform: &Platform,
    options: &PullOptions,
    events: &dyn TransferSink,
) -> Result<(tempfile::TempDir, Store, strata_registry::Pulled), ImageError> {
    let (dir, scratch) = scratch_layout()?;
    let pulled = strata_registry::pull_platform(client, &scratch, from, platform, options, events)?;
    Ok((dir, scratch, pulled))
}

/// Opens an image pulled by [`pull_to_scratch`] (by manifest digest, whatever tag the pull
/// gave it), named by the reference it came from; the scratch directory lives as long as it.
pub(crate) fn open_pulled(
    dir: tempfile::TempDir,
    scratch: &Store,
    image: &Image,
    from: &Reference,
) -> Result<OpenedImage, ImageError> {
    let digest = desc_digest(&image.manifest_descriptor)?;
    let mut opened = open_local(Some(scratch), &ImageLocation::Store(digest.to_string()))?;
    opened.name = Some(from.to_string());
    opened._scratch = Some(dir);
    Ok(opened)
}

/// A temporary OCI layout in the system's temp directory (not under the store, whose `gc`
/// removes temporary entries).
pub(crate) fn scratch_layout() -> Result<(tempfile::TempDir, Store), ImageError> {
    let parent = std::env::temp_dir();
    let dir = tempfile::Builder::new()
        .prefix("strata-transfer-")
        .tempdir_in(&parent)
        .map_err(|source| ImageError::Scratch { path: parent.clone(), source })?;
    let layout = Store::init(dir.path())?;
    Ok((dir, layout))
}
