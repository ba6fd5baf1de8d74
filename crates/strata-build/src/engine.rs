//! The two side effects a build reaches through traits: running a RUN step, and finding the
//! image a FROM or `--from` names.
//!
//! Everything else the engine does itself, on the store: planning stages, computing cache
//! keys, staging COPY and ADD, writing layers, assembling the config. Running a process needs
//! namespaces and root, and a base image may need a registry; behind [`StepRunner`] and
//! [`ImageSource`] they can be replaced, so the planning, caching and stage logic are tested
//! without either (with fakes that record what they were asked), while production uses
//! [`SandboxRunner`] (strata-sandbox) and [`StoreImages`] (the store, OCI layouts, archives
//! and registries, as the build's options say).

use std::collections::BTreeSet;
use std::path::Path;

use strata_image::{ImageError, Resolved};
use strata_sandbox::{CancelToken, RunOutcome, RunRequest, SandboxError, Stream};
use strata_store::{Image, Store, StoreError};
use strata_types::{Digest, ImageLocation, Platform};

use crate::bases::RegistryBases;
use crate::error::{BuildError, Result};
use crate::options::BuildOptions;
use crate::progress::ProgressSink;

/// Runs a RUN step's command on a prepared root filesystem.
pub trait StepRunner: Sync {
    /// Whether an overlay root filesystem can be mounted for steps whose scratch space is on
    /// the file system of `scratch` (else the engine unpacks the chain into a directory and
    /// compares before and after).
    fn overlay_supported(&self, scratch: &Path) -> bool;

    /// Makes sure commands built for `platform` can run here: natively, or through an
    /// emulator (the real runner registers qemu in binfmt_misc, see
    /// [`strata_sandbox::ensure_emulation`]). Called before the first RUN of a stage that
    /// names a platform; an error says what is missing and how to fix it.
    fn prepare_platform(&self, platform: &Platform) -> std::result::Result<(), SandboxError>;

    /// Runs `req`, handing each output line to `on_line`; a non-zero exit is in the outcome,
    /// not an error. Once `cancel` is cancelled the runner stops the command and everything
    /// it started, and returns [`SandboxError::Cancelled`].
    fn run(
        &self,
        req: &RunRequest,
        cancel: &CancelToken,
        on_line: &mut dyn FnMut(Stream, &str),
    ) -> std::result::Result<RunOutcome, SandboxError>;
}

/// The real runner: strata-sandbox's namespaces and mounts.
#[derive(Debug, Clone, Copy, Default)]
pub struct SandboxRunner;

impl StepRunner for SandboxRunner {
    fn overlay_supported(&self, scratch: &Path) -> bool {
        strata_sandbox::overlay_supported(scratch)
    }

    fn prepare_platform(&self, platform: &Platform) -> std::result::Result<(), SandboxError> {
        strata_sandbox::ensure_emulation(platform).map(|_| ())
    }

    fn run(
        &self,
        req: &RunRequest,
        cancel: &CancelToken,
        on_line: &mut dyn FnMut(Stream, &str),
    ) -> std::result::Result<RunOutcome, SandboxError> {
        strata_sandbox::run_cancellable(req, on_line, cancel)
    }
}

/// Finds the image a FROM or `--from` names and makes sure its blobs are in the store.
pub trait ImageSource: Sync {
    /// The image `reference` (as the recipe wrote it, after expansion) names, in `store`, for
    /// `platform`: a multi-platform image resolves to that platform's image and a single
    /// image must be for it. `None` (a build that names no platform) takes the host's image
    /// from an index and a local single image as it is.
    fn image(
        &self,
        store: &Store,
        reference: &str,
        platform: Option<&Platform>,
        progress: &dyn ProgressSink,
    ) -> Result<Image>;

    /// [`ImageSource::image`], where the build could do without the layers (blob digests)
    /// `skip`: an imported cache can stand them in and fetch them when a step reads them. A
    /// source may still bring them (the default does); the build takes what the store has.
    fn image_lazy(
        &self,
        store: &Store,
        reference: &str,
        platform: Option<&Platform>,
        progress: &dyn ProgressSink,
        skip: &BTreeSet<Digest>,
    ) -> Result<Image> {
        let _ = skip;
        self.image(store, reference, platform, progress)
    }
}

/// The real source: a plain `name:tag` is the store's; `host/repo:tag` and `docker://...`
/// are registry images, pulled as `--pull` says and kept in the store under their full name
/// (once per reference per build); `oci:` and `docker-archive:` images are loaded into the
/// store.
pub struct StoreImages<'a> {
    opts: &'a BuildOptions,
    bases: RegistryBases,
}

impl<'a> StoreImages<'a> {
    /// The source a build with `opts` uses (its pull policy and registry settings).
    pub fn new(opts: &'a BuildOptions) -> StoreImages<'a> {
        StoreImages { opts, bases: RegistryBases::default() }
    }
}

impl ImageSource for StoreImages<'_> {
    fn image(
        &self,
        store: &Store,
        reference: &str,
        platform: Option<&Platform>,
        progress: &dyn ProgressSink,
    ) -> Result<Image> {
        self.image_lazy(store, reference, platform, progress, &BTreeSet::new())
    }

    /// A registry base is pulled without the layers in `skip` (kept untagged then: it is not
    /// whole); anything else as [`ImageSource::image`].
    fn image_lazy(
        &self,
        store: &Store,
        reference: &str,
        platform: Option<&Platform>,
        progress: &dyn ProgressSink,
        skip: &BTreeSet<Digest>,
    ) -> Result<Image> {
        let location: ImageLocation = reference.parse()?;
        match strata_image::resolve(Some(store), &location, self.opts.pull) {
            Ok(Resolved::Local(ImageLocation::Store(name))) => {
                // A registry image kept in the store: one pulled for another platform is not
                // this one, so the registry is asked again (unless --pull=never).
                let registry = match strata_image::registry_name(&name) {
                    Some(r) if self.opts.pull != strata_image::PullPolicy::Never => Some(r),
                    _ => None,
                };
                let wanted = match (&registry, platform) {
                    (Some(_), None) => Some(Platform::host()),
                    (_, p) => p.cloned(),
                };
                match (strata_image::load_for_platform(store, &name, wanted.as_ref()), registry) {
                    (Ok(i), _) => Ok(i),
                    (Err(ImageError::NoSuchPlatform { .. }), Some(r)) => {
                        let p = wanted.unwrap_or_else(Platform::host);
                        self.bases.image(store, self.opts, progress, &r, &p, skip)
                    }
                    (
                        Err(ImageError::Store(
                            StoreError::ImageNotFound { .. } | StoreError::InvalidReference(_),
                        )),
                        _,
                    ) => Err(BuildError::ImageNotInStore {
                        reference: reference.to_string(),
                        why: "it names no registry to pull it from: write HOST/REPO:TAG",
                    }),
                    (Err(e), _) => Err(e.into()),
                }
            }
            Ok(Resolved::Local(other)) => load_for(store, &other, platform),
            Ok(Resolved::Registry(r)) => {
                let wanted = platform.cloned().unwrap_or_else(Platform::host);
                self.bases.image(store, self.opts, progress, &r, &wanted, skip)
            }
            Err(ImageError::NotInStore { .. }) => Err(BuildError::ImageNotInStore {
                reference: reference.to_string(),
                why: "--pull=never forbids pulling it",
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// The image an `oci:` layout or a `docker-archive` holds for `platform` (see
/// [`ImageSource::image`]), copied into `store`.
pub(crate) fn load_for(
    store: &Store,
    location: &ImageLocation,
    platform: Option<&Platform>,
) -> Result<Image> {
    let opened = strata_image::open_local_platform(None, location, platform)?;
    let (manifest, _) = strata_image::copy_image(&opened.store, &opened.image, store, None)?;
    Ok(store.image(&manifest)?)
}
