//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

use strata_layer::LayerError;
use strata_recipe::ParseError;
use strata_store::StoreError;
use strata_types::Digest;

/// Everything that can stop a build. Errors raised while executing a step are wrapped in
/// [`BuildError::Step`], which names the stage, the recipe line and the instruction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The recipe file could not be read.
    #[error("reading recipe {path}")]
    ReadRecipe {
        /// The recipe path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Neither `Dockerfile` nor `Containerfile` exists in the context.
    #[error("no Dockerfile or Containerfile in {context}")]
    NoRecipe {
        /// The build context.
        context: PathBuf,
    },
    /// The recipe (or a `.dockerignore`, or an ONBUILD trigger) does not parse.
    #[error("{path}:{}:{}", source.span.line, source.span.column)]
    Parse {
        /// The file being parsed.
        path: PathBuf,
        /// What is wrong and where.
        #[source]
        source: Box<ParseError>,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading a stored layer blob failed.
    #[error("reading layer {digest}")]
    ReadLayer {
        /// The layer blob.
        digest: Digest,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reading an image from a layout or an archive failed.
    #[error(transparent)]
    Image(#[from] strata_image::ImageError),
    /// An image name in FROM or `--from` is not a valid location.
    #[error(transparent)]
    Location(#[from] strata_types::LocationError),
    /// Scanning, writing or applying a layer failed.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The sandbox could not run a step.
    #[error(transparent)]
    Sandbox(#[from] strata_sandbox::SandboxError),
    /// A layer unpacked from the store does not hash to the diffID its image says.
    #[error("layer {layer} has diffID {found}, expected {expected}")]
    DiffIdMismatch {
        /// The layer blob.
        layer: Digest,
        /// The diffID in the image config.
        expected: Digest,
        /// What the blob unpacks to.
        found: Digest,
    },
    /// A base image is not in the local store and is not to be pulled: it names no registry
    /// host, or `--pull=never` forbids pulling.
    #[error("image {reference} is not in the store ({why})")]
    ImageNotInStore {
        /// The reference as written.
        reference: String,
        /// Why it was not pulled.
        why: &'static str,
    },
    /// Pulling a registry base failed.
    #[error("pulling {reference}")]
    Pull {
        /// The reference pulled.
        reference: String,
        /// What went wrong.
        #[source]
        source: Box<strata_registry::RegistryError>,
    },
    /// A COPY/ADD source does not exist.
    #[error("{path}: not found in {location}")]
    SourceNotFound {
        /// The source as written.
        path: String,
        /// `the build context` or `stage NAME` / `image REF`.
        location: String,
    },
    /// A bind mount source reaches through a symlink that points out of its root, and the
    /// path it names inside the root does not exist.
    #[error("bind mount source `{path}`: `{link}` is a symlink to `{target}`, which leaves {location}; resolved inside it, `{path}` does not exist")]
    MountSourceLeavesRoot {
        /// The source as written.
        path: String,
        /// The symlink, relative to the root.
        link: String,
        /// Its target.
        target: String,
        /// `the build context` or `stage NAME` / `image REF`.
        location: String,
    },
    /// A COPY/ADD source escapes the build context (`../x`).
    #[error("{path}: is outside the build context")]
    SourceOutsideContext {
        /// The source as written.
        path: String,
    },
    /// Several sources were copied to a destination that is not a directory.
    #[error(
        "when copying several sources, the destination {dest} must be a directory ending in /"
    )]
    DestinationNotDirectory {
        /// The destination as written.
        dest: String,
    },
    /// A user or group named by `--chown` or `USER` does not exist in the image.
    #[error("unknown {kind} {name} (not in the image's /etc/{file})")]
    UnknownUser {
        /// `user` or `group`.
        kind: &'static str,
        /// The name.
        name: String,
        /// `passwd` or `group`.
        file: &'static str,
    },
    /// The recipe says `# check=error=true` (or `BUILDKIT_DOCKERFILE_CHECK` does) and the
    /// build checks found something; the warnings were reported as events.
    #[error("lint violation found for rules: {}", rules.join(", "))]
    CheckFailed {
        /// The rules that found something, in rule order.
        rules: Vec<String>,
    },
    /// A `--checksum` value is not `sha256:<64 hex>`.
    #[error("invalid --checksum value {value}: expected sha256:<64 hex digits>")]
    InvalidChecksum {
        /// The value.
        value: String,
    },
    /// A downloaded file does not have the expected checksum.
    #[error("checksum mismatch for {url}: expected {expected}, found {found}")]
    ChecksumMismatch {
        /// The URL.
        url: String,
        /// The digest given with `--checksum`.
        expected: String,
        /// The digest of what was downloaded.
        found: Digest,
    },
    /// Fetching a URL failed.
    #[error("fetching {url}")]
    Fetch {
        /// The URL.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// A git command for a git source failed (the repository unreachable, a fetch or
    /// checkout refused); `detail` is git's own message, credentials redacted.
    #[error("git {action} of {url} (ref {reference}) failed: {detail}")]
    Git {
        /// The URL, credentials redacted.
        url: String,
        /// The ref as written (`HEAD` for the default branch).
        reference: String,
        /// The git command (`ls-remote`, `fetch`, `checkout`, ...).
        action: &'static str,
        /// What git said.
        detail: String,
    },
    /// A git source's ref names nothing in the repository.
    #[error("git repository {url} has no branch, tag or ref {reference}")]
    GitUnknownRef {
        /// The URL, credentials redacted.
        url: String,
        /// The ref as written.
        reference: String,
    },
    /// A git source's subdirectory is not a directory of the tree at that ref.
    #[error("git repository {url} has no directory {subdir} at ref {reference}")]
    GitNoSubdir {
        /// The URL, credentials redacted.
        url: String,
        /// The ref as written (`HEAD` for the default branch).
        reference: String,
        /// The subdirectory.
        subdir: String,
    },
    /// `--checksum` of a git source is not a prefix of the commit (or annotated tag) id.
    #[error("expected checksum to match {expected}, got {found} for {url}")]
    GitChecksumMismatch {
        /// The URL, credentials redacted.
        url: String,
        /// The `--checksum` value.
        expected: String,
        /// The commit id the ref resolved to.
        found: String,
    },
    /// The `git` program could not be started.
    #[error("cannot run git (a git source needs the git CLI)")]
    GitNotRunnable {
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// Extracting a local archive failed (an unreadable archive, or an entry the one tar
    /// policy refuses: `..`, a link out of the destination, ...).
    #[error("extracting {path}")]
    Extract {
        /// The archive as the recipe names it.
        path: String,
        /// What went wrong, naming the entry.
        #[source]
        source: Box<strata_layer::LayerError>,
    },
    /// A RUN command exited with a non-zero status.
    #[error("command {command} exited with status {exit_code}{}", tail_text(.tail))]
    RunFailed {
        /// The command as run.
        command: String,
        /// Its exit status (128+N for a signal).
        exit_code: i32,
        /// The last lines of its output.
        tail: Vec<String>,
    },
    /// A RUN command was killed by the kernel for going over `--memory`.
    #[error("command {command} was killed (status {exit_code}): it hit the memory limit of {limit} bytes (--memory){}", tail_text(.tail))]
    RunOutOfMemory {
        /// The command as run.
        command: String,
        /// Its exit status (137 when it was the command itself).
        exit_code: i32,
        /// `--memory`, in bytes.
        limit: u64,
        /// The last lines of its output.
        tail: Vec<String>,
    },
    /// A secret named by `--mount=type=secret` was not given (and is `required`).
    #[error("secret {id} was not provided")]
    MissingSecret {
        /// The secret id.
        id: String,
    },
    /// A secret's source could not be read.
    #[error("reading secret {id}")]
    ReadSecret {
        /// The secret id.
        id: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `RUN --security=insecure` in a build not started with `--allow security.insecure`
    /// (BuildKit's entitlement): the step is refused, never run with fewer privileges.
    #[error("RUN --security=insecure needs the build's --allow security.insecure")]
    InsecureRun,
    /// `--no-cache-filter` names a stage the recipe does not have.
    #[error("--no-cache-filter {name}: no stage is named or numbered {name} (stages: {})", .stages.join(", "))]
    UnknownStageFilter {
        /// The name or index as given.
        name: String,
        /// The recipe's stages, by name or (unnamed) index.
        stages: Vec<String>,
    },
    /// An option the recipe uses that this builder does not implement.
    #[error("{what} is not supported")]
    Unsupported {
        /// What.
        what: String,
    },
    /// Serializing the image config failed.
    #[error("serializing the image config")]
    Config {
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A `--cache-from`/`--cache-to` value that cannot be read.
    #[error("invalid cache spec {spec:?}: {why}")]
    InvalidCacheSpec {
        /// The value given.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// A `type=local` cache directory is not an OCI layout holding a strata cache.
    #[error("{dir}: not a strata cache layout: {why}")]
    InvalidCacheLayout {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Exporting the build cache to a registry failed.
    #[error("exporting the build cache to {cache}")]
    CacheExport {
        /// The `--cache-to` destination.
        cache: String,
        /// What went wrong.
        #[source]
        source: Box<strata_registry::RegistryError>,
    },
    /// A layer a cache hit was taken without (lazily) could not be fetched when a step
    /// needed its files.
    #[error("cache {cache}: layer {layer}, taken from the cache, could not be fetched: {why}")]
    CacheLayerFetch {
        /// The `--cache-from` source.
        cache: String,
        /// The layer blob's digest.
        layer: String,
        /// Why, one line.
        why: String,
    },
    /// A layer's table of contents (from an imported cache) is not one.
    #[error("the layer table of contents {digest} is malformed: {why}")]
    InvalidToc {
        /// The blob.
        digest: strata_types::Digest,
        /// What is wrong, one line.
        why: String,
    },
    /// The contents of a cache mount could not be exported (`--cache-to ...,mounts=true`).
    #[error("exporting the cache mounts to {cache}: {why}")]
    CacheMountExport {
        /// The `--cache-to` destination.
        cache: String,
        /// Which mount and why, one line.
        why: String,
    },
    /// Pushing the built image (`--push`) failed.
    #[error("pushing {reference}")]
    Push {
        /// The reference pushed to.
        reference: String,
        /// What went wrong.
        #[source]
        source: Box<strata_registry::RegistryError>,
    },
    /// `--push` with a tag that names no registry.
    #[error("--push: {tag:?} names no registry to push to (write HOST/REPO:TAG)")]
    PushWithoutRegistry {
        /// The tag.
        tag: String,
    },
    /// A `--secret` value that is not `id=ID,src=FILE` or `id=ID,env=VAR`.
    #[error("invalid --secret {spec:?}: {why}")]
    InvalidSecretSpec {
        /// The value given.
        spec: String,
        /// What is wrong.
        why: &'static str,
    },
    /// An `--ssh` value strata cannot use.
    #[error("--ssh {spec}: {why}")]
    InvalidSsh {
        /// The value (or id) given.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// A `RUN --mount=type=ssh,required` whose id no `--ssh` gives.
    #[error("ssh agent {id:?} was not forwarded: pass `strata build --ssh {id}` (or {id}=SOCKET|KEYFILE)")]
    MissingSsh {
        /// The mount's id.
        id: String,
    },
    /// A `--build-context` value strata cannot use.
    #[error("--build-context {value:?}: {why}")]
    InvalidBuildContext {
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// `strata build -` read something that is neither a tar archive nor a UTF-8 recipe.
    #[error("the context on stdin is neither a tar archive nor a recipe (not UTF-8 text)")]
    StdinNotContext,
    /// An `--add-host` value that is not `NAME:ADDRESS`.
    #[error("--add-host {value:?}: {why}")]
    InvalidExtraHost {
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// An `--annotation` value that is not `[TYPE[\[PLATFORM\]]:]KEY=VALUE`.
    #[error("--annotation {value:?}: {why}")]
    InvalidAnnotation {
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// A `SOURCE_DATE_EPOCH` that is not a number of seconds.
    #[error("SOURCE_DATE_EPOCH={value:?} is not a number of seconds since the epoch")]
    InvalidTimestamp {
        /// The value given.
        value: String,
    },
    /// An `--output` that is not a file or directory destination.
    #[error(
        "--output {output}: must be oci:DIR[:TAG], docker-archive:FILE[:TAG], dir:PATH or docker://HOST/REPO:TAG"
    )]
    InvalidOutput {
        /// The value given.
        output: String,
    },
    /// The build was cancelled through [`BuildOptions::cancel`](crate::BuildOptions::cancel):
    /// a running RUN's processes were killed, its scratch space removed, nothing tagged.
    #[error("build cancelled")]
    Cancelled,
    /// A step failed; `source` says why.
    #[error("stage {stage}, line {line}: {instruction}")]
    Step {
        /// The stage (name, or index when unnamed).
        stage: String,
        /// The recipe line of the instruction.
        line: usize,
        /// The instruction as written.
        instruction: String,
        /// What went wrong.
        #[source]
        source: Box<BuildError>,
    },
    /// `--output` to a single-image destination (`docker-archive:`, `dir:`) of a build for
    /// several platforms.
    #[error("--output {output} holds one image, and the build is for {}: build one platform with --platform, or write oci:DIR", platforms.join(", "))]
    OutputNeedsOnePlatform {
        /// The destination.
        output: String,
        /// The platforms asked for.
        platforms: Vec<String>,
    },
    /// The same platform twice in `--platform`.
    #[error("--platform lists {platform} twice")]
    DuplicatePlatform {
        /// The platform.
        platform: String,
    },
    /// A `FROM --platform=` value that is not a platform.
    #[error(
        "FROM --platform={value:?} is not a platform (write OS/ARCH[/VARIANT], e.g. linux/arm64)"
    )]
    InvalidStagePlatform {
        /// The expanded value.
        value: String,
    },
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last output:\n{}", tail.join("\n"))
    }
}

impl BuildError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        BuildError::Io { op, path: path.into(), source }
    }

    /// Whether this is the build's cancel: [`BuildError::Cancelled`], or a layer write
    /// stopped by the same token.
    pub(crate) fn is_cancel(&self) -> bool {
        matches!(self, BuildError::Cancelled | BuildError::Layer(LayerError::Cancelled))
    }

    /// The innermost error (below any [`BuildError::Step`] wrappers).
    pub fn root_cause(&self) -> &BuildError {
        match self {
            BuildError::Step { source, .. } => source.root_cause(),
            other => other,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = BuildError> = std::result::Result<T, E>;
