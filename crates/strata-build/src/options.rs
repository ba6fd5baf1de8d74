//! What to build and how: [`BuildOptions`], secrets, the result of a build.

use std::path::{Path, PathBuf};

use serde::Serialize;
use strata_layer::Compression;
use strata_recipe::BuildArgs;
use strata_store::oci_spec::image::Descriptor;
use strata_store::Image;
use strata_types::Digest;

use crate::error::{BuildError, Result};

/// Where a secret's value comes from (`--secret id=x,src=FILE` or `env=VAR`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretSource {
    /// A file on the build host.
    File(PathBuf),
    /// An environment variable of the build process.
    Env(String),
}

/// A secret RUN steps may mount with `--mount=type=secret,id=ID`. Its value never enters a
/// layer, the config or the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// The id the recipe names.
    pub id: String,
    /// Where the value comes from.
    pub source: SecretSource,
}

/// The network RUN steps get unless they say `--network=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Network {
    /// The host's network (like `docker build`).
    #[default]
    Host,
    /// Loopback only.
    None,
}

/// How RUN steps get their root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RunRootfs {
    /// An overlay of the chain's snapshots when the kernel allows it (the upperdir is the
    /// changeset), else [`RunRootfs::Copy`].
    #[default]
    Overlay,
    /// Unpack the chain into a directory, scan before and after, diff (same layer bytes,
    /// cost proportional to the image size).
    Copy,
}

/// When a registry base (`FROM host/repo:tag`, `FROM docker://...`) is pulled (`--pull=`).
/// The store keeps a pulled image tagged with its full reference, which is what
/// [`PullPolicy::Missing`] and [`PullPolicy::Never`] look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PullPolicy {
    /// Use the store's copy when it has one; pull otherwise (the default, as BuildKit).
    #[default]
    Missing,
    /// Pull every time, once per build and reference (a manifest check when nothing changed).
    Always,
    /// Never contact a registry: a base that is not in the store is an error.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = BuildError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "missing" => Ok(PullPolicy::Missing),
            "always" => Ok(PullPolicy::Always),
            "never" => Ok(PullPolicy::Never),
            other => Err(BuildError::Unsupported {
                what: format!("--pull={other} (use missing, always or never)"),
            }),
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BuildOptions {
    /// The build context directory.
    pub context: PathBuf,
    /// The recipe file (see [`default_recipe_path`]).
    pub recipe_path: PathBuf,
    /// Names to tag the result with (`app:v1`).
    pub tags: Vec<String>,
    /// `--build-arg` values.
    pub build_args: BuildArgs,
    /// The stage to build (`--target`); the last stage when `None`.
    pub target: Option<String>,
    /// Secrets RUN steps may mount.
    pub secrets: Vec<SecretSpec>,
    /// Default network of RUN steps.
    pub network: Network,
    /// Layer compression.
    pub compression: Compression,
    /// Seconds since the epoch for `created`, history times and the layer mtime clamp
    /// (the CLI passes `SOURCE_DATE_EPOCH`); 0 by default.
    pub timestamp: i64,
    /// How RUN steps get their root filesystem.
    pub run_rootfs: RunRootfs,
    /// Run every step even when the cache has its result (`--no-cache`); results are still
    /// recorded for later builds.
    pub no_cache: bool,
    /// Stages (names or indices) whose steps run even when cached (`--no-cache-filter`);
    /// other stages may hit.
    pub no_cache_filter: Vec<String>,
    /// When registry bases are pulled.
    pub pull: PullPolicy,
    /// How to reach registries for those pulls (plain-HTTP hosts, credentials file).
    pub registry: strata_registry::ClientOptions,
    /// When false, every registry a base names is reached over plain HTTP (skopeo's
    /// `--tls-verify=false`), as if listed in `registry.insecure`.
    pub tls_verify: bool,
}

impl BuildOptions {
    /// Options for building `context` with its default recipe file and nothing else set.
    pub fn new(context: impl Into<PathBuf>) -> BuildOptions {
        let context = context.into();
        let recipe_path = default_recipe_path(&context);
        BuildOptions {
            context,
            recipe_path,
            tags: Vec::new(),
            build_args: BuildArgs::new(),
            target: None,
            secrets: Vec::new(),
            network: Network::Host,
            compression: Compression::Zstd,
            timestamp: 0,
            run_rootfs: RunRootfs::Overlay,
            no_cache: false,
            no_cache_filter: Vec::new(),
            pull: PullPolicy::Missing,
            registry: strata_registry::ClientOptions::default(),
            tls_verify: true,
        }
    }
}

/// `CONTEXT/Dockerfile` if it exists, else `CONTEXT/Containerfile` if it exists, else
/// `CONTEXT/Dockerfile` (whose absence the build then reports).
pub fn default_recipe_path(context: &Path) -> PathBuf {
    let docker = context.join("Dockerfile");
    if docker.exists() {
        return docker;
    }
    let containerfile = context.join("Containerfile");
    if containerfile.exists() {
        return containerfile;
    }
    docker
}

pub(crate) fn read_recipe(opts: &BuildOptions) -> Result<String> {
    match std::fs::read_to_string(&opts.recipe_path) {
        Ok(s) => Ok(s),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && opts.recipe_path == default_recipe_path(&opts.context) =>
        {
            Err(BuildError::NoRecipe { context: opts.context.clone() })
        }
        Err(source) => Err(BuildError::ReadRecipe { path: opts.recipe_path.clone(), source }),
    }
}

/// What one executed step did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// Stage index.
    pub stage: usize,
    /// Recipe line.
    pub line: usize,
    /// The history `created_by` of the step.
    pub created_by: String,
    /// The layer written, if the step changed the filesystem.
    pub layer: Option<Digest>,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// The layer came from the cache (the step did not run).
    pub cached: bool,
}

/// The result of [`crate::build`].
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The image manifest's descriptor (tagged with every `BuildOptions::tags` entry).
    pub manifest: Descriptor,
    /// The image as stored.
    pub image: Image,
    /// Every step executed, in order.
    pub steps: Vec<StepReport>,
    /// Layers this build created (including ones the store already had).
    pub layers_written: usize,
    /// Layers reused from the cache without running their step.
    pub layers_reused: usize,
    /// Compressed bytes of those layers.
    pub bytes_written: u64,
    /// Context files whose content had to be read to compute cache keys (0 on a rebuild
    /// where no file changed: the content-hash cache knew them all).
    pub context_files_hashed: u64,
}
