//! What to build and how: [`BuildOptions`], secrets, the result of a build.

use std::path::{Path, PathBuf};

use serde::Serialize;
use strata_layer::Compression;
use strata_recipe::BuildArgs;
use strata_sandbox::CancelToken;
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

/// `id=ID,src=FILE`, `id=ID,env=VAR` or `id=ID` (the value from the environment variable
/// named like the id), as `docker build --secret` writes it (`type=file|env` accepted).
impl std::str::FromStr for SecretSpec {
    type Err = BuildError;

    fn from_str(spec: &str) -> Result<SecretSpec> {
        let bad = |why: &'static str| BuildError::InvalidSecretSpec { spec: spec.to_string(), why };
        let mut id = None;
        let mut source = None;
        for field in spec.split(',') {
            match field.split_once('=') {
                Some(("id", v)) if !v.is_empty() => id = Some(v.to_string()),
                Some(("src" | "source", v)) => source = Some(SecretSource::File(PathBuf::from(v))),
                Some(("env", v)) => source = Some(SecretSource::Env(v.to_string())),
                Some(("type", "file" | "env")) => {}
                _ => return Err(bad("expected id=ID,src=FILE or id=ID,env=VAR")),
            }
        }
        let id = id.ok_or_else(|| bad("missing id="))?;
        let source = source.unwrap_or_else(|| SecretSource::Env(id.clone()));
        Ok(SecretSpec { id, source })
    }
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

/// `default` or `host` (the host's network), `none` (loopback only), as `--network`.
impl std::str::FromStr for Network {
    type Err = BuildError;

    fn from_str(s: &str) -> Result<Network> {
        match s {
            "default" | "host" => Ok(Network::Host),
            "none" => Ok(Network::None),
            other => Err(BuildError::Unsupported {
                what: format!("--network {other} (use default, host or none)"),
            }),
        }
    }
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

/// Whether the built image's layers are squashed into one (`--squash`, `--squash-all`); see
/// the `squash` module. Steps are cached one layer each either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Squash {
    /// One layer per step (the default).
    #[default]
    Off,
    /// The base image's layers kept, the layers the build added made one (`--squash`, as
    /// `docker build --squash` and `podman build --squash`).
    NewLayers,
    /// The whole image one layer, the base's included (`--squash-all`, as podman; buildah's
    /// `--squash`).
    All,
}

impl Squash {
    /// The CLI flag that asks for it (empty for [`Squash::Off`]).
    pub fn flag(self) -> &'static str {
        match self {
            Squash::Off => "",
            Squash::NewLayers => "--squash",
            Squash::All => "--squash-all",
        }
    }
}

/// When a registry base (`FROM host/repo:tag`, `FROM docker://...`) is pulled (`--pull=`):
/// strata-image's one name-resolution rule.
pub use strata_image::PullPolicy;

/// What to build.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BuildOptions {
    /// The build context directory.
    pub context: PathBuf,
    /// The recipe file (see [`default_recipe_path`]).
    pub recipe_path: PathBuf,
    /// The recipe's text when it does not come from a file (`-f -`, a recipe on stdin):
    /// [`BuildOptions::recipe_path`] then only names it in messages, and the only
    /// `.dockerignore` is the context's.
    pub recipe: Option<String>,
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
    /// Stops the build from another thread (a Ctrl-C handler): the build checks it before
    /// each step and a running RUN is killed with its whole pid namespace; the build then
    /// fails with [`BuildError::Cancelled`] and tags nothing. Clones share the flag.
    pub cancel: CancelToken,
    /// Run every step even when the cache has its result (`--no-cache`); results are still
    /// recorded for later builds.
    pub no_cache: bool,
    /// Stages (names or indices) whose steps run even when cached (`--no-cache-filter`);
    /// other stages may hit.
    pub no_cache_filter: Vec<String>,
    /// When registry bases are pulled.
    pub pull: PullPolicy,
    /// How to reach registries for those pulls (plain-HTTP hosts, credentials file, stall
    /// timeout).
    pub registry: strata_registry::ClientOptions,
    /// When false, every registry a base names is reached over plain HTTP (skopeo's
    /// `--tls-verify=false`), as if listed in `registry.insecure`.
    pub tls_verify: bool,
    /// Also write the result here once built and tagged (`--output`): `oci:DIR[:REF]`,
    /// `docker-archive:FILE[:REF]` or `dir:PATH`.
    pub output: Option<strata_types::ImageLocation>,
    /// Labels set on the built image over the recipe's own (`--label`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// `/etc/hosts` entries of every RUN step (`--add-host`).
    pub extra_hosts: Vec<ExtraHost>,
    /// BuildKit's named contexts (`--build-context NAME=VALUE`), by lower-case name: `FROM
    /// NAME`, `COPY --from=NAME` and `RUN --mount=from=NAME` read them instead of a stage or
    /// image of that name.
    pub named_contexts: std::collections::BTreeMap<String, NamedContext>,
    /// SSH agents RUN steps may reach with `--mount=type=ssh` (`--ssh`).
    pub ssh: Vec<crate::SshSpec>,
    /// Caches to import before building (`--cache-from`), in priority order.
    pub cache_from: Vec<crate::CacheSpec>,
    /// Where to export the build cache once built (`--cache-to`).
    pub cache_to: Vec<crate::CacheSpec>,
    /// Push the result to every tag (each `HOST/REPO:TAG`) once built (`--push`).
    pub push: bool,
    /// The platforms to build for (`--platform linux/amd64,linux/arm64`). Empty: the host's,
    /// with the result a single image as before. One: an image for that platform. Several: the
    /// recipe is built once per platform (in parallel) and the result is an OCI image index
    /// listing each platform's image, in this order. A step of a platform other than the
    /// host's runs through qemu user emulation registered in binfmt_misc.
    pub platforms: Vec<strata_types::Platform>,
    /// How many stages build at once, across all platforms (`--jobs`, buildah's flag); `None`
    /// for no bound (BuildKit's default). Stages wait for a free job before their first
    /// step; a stage that another platform's builder already made takes none.
    pub jobs: Option<std::num::NonZeroUsize>,
    /// Resource limits of every RUN step (`--ulimit`, and `--memory`, `--cpu-*`,
    /// `--cpuset-*` through a cgroup per step) and the size of its `/dev/shm`
    /// (`--shm-size`); part of a RUN's cache key when set.
    pub run_resources: strata_sandbox::Resources,
    /// `--allow security.insecure`: `RUN --security=insecure` steps run with every
    /// capability; without it such a step is refused.
    pub allow_insecure: bool,
    /// Annotations of the result's manifests and index (`--annotation`), in order.
    pub annotations: Vec<Annotation>,
    /// Squash the result's layers (`--squash`, `--squash-all`).
    pub squash: Squash,
}

/// What a named context is (`--build-context NAME=VALUE`, BuildKit's spelling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// A local directory (`NAME=./dir`): its files, as a one-layer image (owners and modes
    /// as on disk, mtimes clamped like an import).
    Dir(PathBuf),
    /// An image (`NAME=docker-image://REF`): found or pulled as `FROM REF` would be.
    Image(String),
    /// An image in an OCI layout (`NAME=oci-layout://DIR[:TAG]`, or `@sha256:...`).
    OciLayout(strata_types::ImageLocation),
}

impl NamedContext {
    /// Parses `NAME=VALUE`: the lower-cased name and the context.
    pub fn parse_flag(flag: &str) -> Result<(String, NamedContext)> {
        let bad = |why: &str| BuildError::InvalidBuildContext {
            value: flag.to_string(),
            why: why.to_string(),
        };
        let (name, value) = flag.split_once('=').ok_or_else(|| bad("expected NAME=VALUE"))?;
        if name.is_empty() || value.is_empty() {
            return Err(bad("expected NAME=VALUE"));
        }
        let context = if let Some(reference) = value.strip_prefix("docker-image://") {
            NamedContext::Image(reference.to_string())
        } else if let Some(layout) = value.strip_prefix("oci-layout://") {
            // BuildKit writes `DIR@sha256:...` or `DIR:TAG`; strata's oci: location takes both.
            let location = format!("oci:{}", layout.replacen('@', ":", 1));
            NamedContext::OciLayout(location.parse().map_err(|_| bad("not an OCI layout"))?)
        } else if value.contains("://") || value.starts_with("target:") {
            return Err(bad(
                "only a directory, docker-image://REF and oci-layout://DIR[:TAG] are supported",
            ));
        } else {
            let dir = PathBuf::from(value);
            if !dir.is_dir() {
                return Err(bad("not a directory"));
            }
            NamedContext::Dir(dir)
        };
        Ok((name.to_ascii_lowercase(), context))
    }
}

/// An `--add-host NAME:ADDRESS` entry (Docker's spelling; `NAME=ADDRESS` is taken too, as
/// buildx does). The address is an IPv4 or IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExtraHost {
    /// The host name.
    pub name: String,
    /// Its address.
    pub address: std::net::IpAddr,
}

/// Where an [`Annotation`] goes: BuildKit's `TYPE` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnnotationTarget {
    /// The image manifest (of each platform, or of the one the annotation names): the
    /// default.
    Manifest,
    /// The image index of a multi-platform build.
    Index,
}

/// One `--annotation [TYPE[\[PLATFORM\]]:]KEY=VALUE`, as `docker buildx build` takes it: TYPE
/// `manifest` (the default) or `index`, PLATFORM limiting a manifest annotation to that
/// platform's image. BuildKit's `manifest-descriptor` and `index-descriptor` are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// What it annotates.
    pub target: AnnotationTarget,
    /// Only the manifest of this platform, when given.
    pub platform: Option<strata_types::Platform>,
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

impl std::str::FromStr for Annotation {
    type Err = BuildError;

    fn from_str(s: &str) -> Result<Annotation> {
        let bad =
            |why: &str| BuildError::InvalidAnnotation { value: s.to_string(), why: why.into() };
        let (key, value) = s.split_once('=').ok_or_else(|| bad("expected KEY=VALUE"))?;
        // BuildKit's key syntax: an optional `type[platform]:` before the key, the type
        // lower-case letters and dashes.
        let prefix = key.split_once(':').filter(|(t, _)| {
            let name = t.split('[').next().unwrap_or(t);
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        });
        let (target, platform, key) = match prefix {
            None => (AnnotationTarget::Manifest, None, key),
            Some((kind, key)) => {
                let (name, platform) = match kind.split_once('[') {
                    Some((n, p)) => {
                        let p = p.strip_suffix(']').ok_or_else(|| bad("unclosed `[`"))?;
                        let p = p.parse().map_err(|_| bad("not a platform in `[...]`"))?;
                        (n, Some(p))
                    }
                    None => (kind, None),
                };
                let target = match name {
                    "manifest" => AnnotationTarget::Manifest,
                    "index" => AnnotationTarget::Index,
                    "manifest-descriptor" | "index-descriptor" => {
                        return Err(bad("descriptor annotations are not supported"))
                    }
                    _ => return Err(bad("the type is manifest or index")),
                };
                (target, platform, key)
            }
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(bad("the key is empty or has spaces"));
        }
        if target == AnnotationTarget::Index && platform.is_some() {
            return Err(bad("an index annotation has no platform"));
        }
        Ok(Annotation { target, platform, key: key.to_string(), value: value.to_string() })
    }
}

impl std::str::FromStr for ExtraHost {
    type Err = BuildError;

    fn from_str(s: &str) -> Result<ExtraHost> {
        let bad =
            |why: &str| BuildError::InvalidExtraHost { value: s.to_string(), why: why.into() };
        let (name, address) = s
            .split_once('=')
            .or_else(|| s.split_once(':'))
            .ok_or_else(|| bad("expected NAME:ADDRESS"))?;
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(bad("the host name is empty or has spaces"));
        }
        if address == "host-gateway" {
            return Err(bad("host-gateway names a bridge's gateway, and strata runs RUN steps on the host network or none"));
        }
        // `[::1]` as Docker writes an IPv6 address beside a port.
        let address = address.trim_start_matches('[').trim_end_matches(']');
        let address = address.parse().map_err(|_| bad("the address is not an IP address"))?;
        Ok(ExtraHost { name: name.to_string(), address })
    }
}

impl BuildOptions {
    /// Options for building `context` with its default recipe file and nothing else set.
    pub fn new(context: impl Into<PathBuf>) -> BuildOptions {
        let context = context.into();
        let recipe_path = default_recipe_path(&context);
        BuildOptions {
            context,
            recipe_path,
            recipe: None,
            tags: Vec::new(),
            build_args: BuildArgs::new(),
            target: None,
            secrets: Vec::new(),
            network: Network::Host,
            compression: Compression::Zstd,
            timestamp: 0,
            run_rootfs: RunRootfs::Overlay,
            cancel: CancelToken::new(),
            no_cache: false,
            no_cache_filter: Vec::new(),
            pull: PullPolicy::Missing,
            registry: strata_registry::ClientOptions::default(),
            tls_verify: true,
            output: None,
            labels: Default::default(),
            extra_hosts: Vec::new(),
            named_contexts: Default::default(),
            ssh: Vec::new(),
            cache_from: Vec::new(),
            cache_to: Vec::new(),
            push: false,
            platforms: Vec::new(),
            jobs: None,
            run_resources: Default::default(),
            allow_insecure: false,
            annotations: Vec::new(),
            squash: Squash::Off,
        }
    }

    /// The platforms a build makes images for: [`BuildOptions::platforms`], or the host's.
    pub fn target_platforms(&self) -> Vec<strata_types::Platform> {
        match self.platforms.is_empty() {
            true => vec![strata_types::Platform::host()],
            false => self.platforms.clone(),
        }
    }

    /// Sets [`BuildOptions::timestamp`] by BuildKit's rule: `explicit` (`--timestamp`) when
    /// given, else `$SOURCE_DATE_EPOCH` from the environment, else a `SOURCE_DATE_EPOCH` build
    /// argument, else 0. An empty variable or build argument counts as unset, as in BuildKit.
    /// Set the build args first.
    pub fn with_source_date_epoch(mut self, explicit: Option<i64>) -> Result<BuildOptions> {
        let explicit = match explicit {
            Some(t) => Some(t),
            None => strata_image::source_date_epoch()?,
        };
        let arg =
            self.build_args.get("SOURCE_DATE_EPOCH").map(|v| v.trim()).filter(|v| !v.is_empty());
        self.timestamp = match (explicit, arg) {
            (Some(t), _) => t,
            (None, Some(v)) => {
                v.parse().map_err(|_| BuildError::InvalidTimestamp { value: v.to_string() })?
            }
            (None, None) => 0,
        };
        Ok(self)
    }

    /// Checks what can be checked before any work: the tags are `NAME[:TAG]` and the output
    /// is a place an image can be written to.
    pub fn validate(&self) -> Result<()> {
        self.run_resources.cgroup.validate()?;
        for tag in &self.tags {
            let r: strata_types::Reference = tag.parse().map_err(strata_store::StoreError::from)?;
            if r.digest().is_some() {
                return Err(
                    strata_store::StoreError::UnexpectedDigest { reference: tag.clone() }.into()
                );
            }
            if self.push && r.domain().is_none() {
                return Err(BuildError::PushWithoutRegistry { tag: tag.clone() });
            }
        }
        if let Some(out) = &self.output {
            use strata_types::ImageLocation;
            if matches!(out, ImageLocation::Store(_)) {
                return Err(BuildError::InvalidOutput { output: out.to_string() });
            }
            // An archive and a directory hold one image (`docker load` knows no index).
            if self.platforms.len() > 1
                && matches!(out, ImageLocation::DockerArchive { .. } | ImageLocation::Dir(_))
            {
                return Err(BuildError::OutputNeedsOnePlatform {
                    output: out.to_string(),
                    platforms: self.platforms.iter().map(ToString::to_string).collect(),
                });
            }
        }
        for (i, p) in self.platforms.iter().enumerate() {
            if self.platforms[..i].iter().any(|q| q.satisfies(p) || p.satisfies(q)) {
                return Err(BuildError::DuplicatePlatform { platform: p.to_string() });
            }
        }
        Ok(())
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
    if let Some(text) = &opts.recipe {
        return Ok(text.clone());
    }
    match std::fs::read(&opts.recipe_path) {
        Ok(bytes) => strata_recipe::decode(bytes).map_err(|source| BuildError::Parse {
            path: opts.recipe_path.clone(),
            source: Box::new(source),
        }),
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
    /// What was tagged with every `BuildOptions::tags` entry: the image manifest's
    /// descriptor, or the image index's in a build for several platforms.
    pub manifest: Descriptor,
    /// The image as stored (in a build for several platforms: the host platform's image
    /// when it was built, else the first platform's).
    pub image: Image,
    /// Each platform's image, in `--platform` order, in a build for several platforms
    /// (empty otherwise).
    pub platforms: Vec<strata_image::PlatformImage>,
    /// Every step executed, in order (platform after platform).
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
    /// What was written to [`BuildOptions::output`], when set.
    pub exported: Option<strata_image::ExportReport>,
    /// With [`BuildOptions::push`]: each tag pushed and what moved.
    pub pushed: Vec<(String, strata_registry::TransferReport)>,
    /// Entries exported to each [`BuildOptions::cache_to`] destination.
    pub cache_exported: Vec<(String, usize)>,
    /// Layers of the result that a build which only pushes never needed here (lazy cache
    /// hits and bases nothing read): they stay in the registry, and the image is then pushed
    /// but neither tagged nor kept in the store, as it is not whole there. 0 when it is.
    pub layers_left_in_registry: usize,
}
