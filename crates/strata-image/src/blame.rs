//! Which image a corrupt blob belongs to, as the user named it.
//!
//! A blob whose bytes do not hash to its name stops a command with one line, "blob X of image
//! Y is corrupt; run `strata fsck --repair`" ([`StoreError::CorruptBlob`]). The store only
//! knows X; Y is what the command was given: `app:v1`, else the image's digest. A
//! multi-platform image is one name for several images, so a blob of one of them is named
//! with the platforms whose images use it (`app:v1 (linux/arm64)`; a layer every platform
//! shares lists them all), and the index document or a blob no platform's image uses is
//! named by the index alone.

use std::collections::BTreeMap;

use strata_registry::{Client, PushOptions, RegistryError, TransferReport, TransferSink};
use strata_store::StoreError;
use strata_types::{Digest, Reference};

use crate::desc_digest;
use crate::open::{Opened, OpenedImage, OpenedIndex};

impl OpenedImage {
    /// How the image is named in messages: its name, else its manifest digest; followed by
    /// its platform when it was chosen out of a multi-platform image (`app:v1 (linux/arm64)`).
    pub fn display_name(&self) -> String {
        let name = match (&self.name, self.image.digest()) {
            (Some(name), _) => name.clone(),
            (None, Ok(d)) => d.to_string(),
            (None, Err(_)) => self.image.manifest_descriptor.digest().to_string(),
        };
        match &self.platform {
            Some(p) => format!("{name} ({p})"),
            None => name,
        }
    }
}

impl OpenedIndex {
    /// Every blob of the index (the index, then each platform's manifest, config and
    /// layers), each once, with the name its image has in messages.
    fn blob_owners(&self) -> Vec<(Digest, String)> {
        let index_name = self.display_name();
        let mut order: Vec<Digest> = Vec::new();
        let mut users: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        let mut add = |d: Digest, user: Option<String>| {
            let entry = users.entry(d).or_insert_with(|| {
                order.push(d);
                Vec::new()
            });
            if let Some(u) = user.filter(|u| !entry.contains(u)) {
                entry.push(u);
            }
        };
        if let Ok(d) = desc_digest(&self.descriptor) {
            add(d, None);
        }
        for p in &self.platforms {
            let platform = p.platform.to_string();
            let Ok(manifest) = desc_digest(&p.manifest) else { continue };
            add(manifest, Some(platform.clone()));
            // A manifest that does not read is itself the blob to blame.
            let Ok(image) = self.store.image(&p.manifest) else { continue };
            let config = desc_digest(image.manifest.config()).ok();
            let layers = image.manifest.layers().iter().map(|l| desc_digest(l).ok());
            for d in std::iter::once(config).chain(layers).flatten() {
                add(d, Some(platform.clone()));
            }
        }
        order
            .into_iter()
            .map(|d| {
                let name = match users.get(&d).map(Vec::as_slice) {
                    None | Some([]) => index_name.clone(),
                    Some(platforms) => format!("{index_name} ({})", platforms.join(", ")),
                };
                (d, name)
            })
            .collect()
    }

    /// The name of the image `digest` belongs to in messages (see the module docs).
    fn owner_of(&self, digest: &Digest) -> String {
        self.blob_owners()
            .into_iter()
            .find(|(d, _)| d == digest)
            .map_or_else(|| self.display_name(), |(_, name)| name)
    }

    /// A [`StoreError::DigestMismatch`] of one of the index's blobs as the
    /// [`StoreError::CorruptBlob`] naming the image (and platforms) it belongs to; any other
    /// error unchanged.
    pub(crate) fn blame(&self, err: StoreError) -> StoreError {
        match err {
            StoreError::DigestMismatch { expected, .. } => {
                let owner = self.owner_of(&expected);
                err.of_image(&owner)
            }
            other => other,
        }
    }

    /// The first of the index's blobs whose bytes do not hash to their name, as the
    /// [`StoreError::CorruptBlob`] naming its image; `None` when every blob is sound.
    pub(crate) fn find_corrupt_blob(&self) -> Option<StoreError> {
        self.blob_owners().into_iter().find_map(|(digest, owner)| {
            match self.store.verify_blob_of(&digest, &owner) {
                Err(e @ StoreError::CorruptBlob { .. }) => Some(e),
                _ => None,
            }
        })
    }
}

/// Pushes what `source` is (one image with `strata_registry::push`, an index whole with
/// `push_index`, children first) to the registry reference `to`. A blob the push refused to
/// send because its bytes are not its digest's is reported as [`StoreError::CorruptBlob`] of
/// the image by the name it was opened under (with the platform, for an index's image).
pub fn push_opened(
    client: &Client,
    source: &Opened,
    to: &Reference,
    options: &PushOptions,
    events: &dyn TransferSink,
) -> Result<TransferReport, RegistryError> {
    push_opened_fetching(client, source, to, options, events, None)
}

/// [`push_opened`] where an image's layers need not all be in its store: `fetch` brings one
/// the registry neither has nor can mount (strata-registry's `push_fetching`). An index is
/// pushed from its store, whole.
pub fn push_opened_fetching(
    client: &Client,
    source: &Opened,
    to: &Reference,
    options: &PushOptions,
    events: &dyn TransferSink,
    fetch: Option<strata_registry::FetchMissing<'_>>,
) -> Result<TransferReport, RegistryError> {
    match source {
        Opened::Image(image) => {
            let (store, image_ref) = (&image.store, &image.image);
            strata_registry::push_fetching(client, store, image_ref, to, options, events, fetch)
                .map_err(|e| match e {
                    RegistryError::Store(e) => {
                        RegistryError::Store(e.of_image(&image.display_name()))
                    }
                    e => e,
                })
        }
        Opened::Index(index) => push_index(client, index, to, options, events),
    }
}

/// [`push_opened`] of one image.
pub(crate) fn push_image(
    client: &Client,
    source: &OpenedImage,
    to: &Reference,
    options: &PushOptions,
    events: &dyn TransferSink,
) -> Result<TransferReport, RegistryError> {
    strata_registry::push(client, &source.store, &source.image, to, options, events).map_err(|e| {
        match e {
            RegistryError::Store(e) => RegistryError::Store(e.of_image(&source.display_name())),
            e => e,
        }
    })
}

/// [`push_opened`] of an index, whole.
pub(crate) fn push_index(
    client: &Client,
    source: &OpenedIndex,
    to: &Reference,
    options: &PushOptions,
    events: &dyn TransferSink,
) -> Result<TransferReport, RegistryError> {
    let top = Digest::try_from(source.descriptor.digest()).map_err(StoreError::from)?;
    strata_registry::push_index(client, &source.store, &top, to, options, events).map_err(|e| {
        match e {
            RegistryError::Store(e) => RegistryError::Store(source.blame(e)),
            e => e,
        }
    })
}
