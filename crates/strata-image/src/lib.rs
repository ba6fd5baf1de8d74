//! Images as a whole: where they live, opening them, moving them, making them from trees.
//!
//! Layers are strata-layer's, blobs and tags strata-store's, the distribution protocol
//! strata-registry's; this crate is where they meet as *images*. An image lives at an
//! [`ImageLocation`]: the local store, another OCI layout (`oci:DIR[:REF]`), a `docker save`
//! archive (`docker-archive:FILE[:REF]`), a registry (`docker://HOST/REPO:TAG`), or, as a
//! destination only, a directory holding the flattened filesystem (`dir:PATH`).
//!
//! - [`resolve`] is the one rule for what a name means (the store, a file, or a registry
//!   image the store may hold a copy of, as the pull policy says);
//! - [`open`] reads an image wherever it is without copying it into the store first
//!   ([`open_local`] for the places that need no registry client);
//! - [`copy`] moves one between any two locations, as `skopeo copy` does, moving only what
//!   the other side lacks; [`load`] brings a layout's or an archive's image into the store;
//! - [`import_tree`] turns a directory or a tar into a one-layer image (`docker import`);
//! - [`export()`] writes an image to a layout, an archive or a directory.
//!
//! Each transport is a module: [`layout`] (OCI layouts, blob by blob), [`archive`]
//! (`docker-archive`), [`mod@export`] (`dir:` and the writers), [`import`] and [`config`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod archive;
mod blame;
pub mod config;
mod copy;
mod error;
pub mod export;
pub mod import;
pub mod layout;
mod open;
pub mod platforms;
mod resolve;

use strata_store::oci_spec::image::Descriptor;
use strata_store::StoreError;
use strata_types::Digest;
#[cfg(doc)]
use strata_types::ImageLocation;

pub use blame::{push_opened, push_opened_fetching};
pub use copy::{copy, CopyOptions, CopyOutcome, LocalCopy};
pub use error::{ImageError, Result};
pub use export::{export, export_index, export_opened, flatten, ExportOptions, ExportReport};
pub use import::{import_tree, source_date_epoch, ImportOptions, Imported};
pub use layout::{copy_image, copy_index, load, load_platform, CopyReport};
pub use open::{
    open, open_local, open_local_any, open_local_platform, open_platform, Opened, OpenedImage,
    OpenedIndex,
};
pub use platforms::{
    annotate, image_for_platform, image_size, load_for_platform, put_index, PlatformImage,
};
pub use resolve::{registry_name, resolve, PullPolicy, Resolved};

fn desc_digest(d: &Descriptor) -> Result<Digest> {
    Ok(Digest::try_from(d.digest()).map_err(StoreError::from)?)
}
