//! `strata build`: a recipe and a context into an image, with progress rendered for a
//! terminal (`tty`), a log (`plain`, like BuildKit's `--progress=plain`) or tools (`json`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use strata::build::{self, BuildOptions, Network, PullPolicy, SecretSpec};
use strata::types::ImageLocation;

use super::interrupt::{Interrupts, CANCELLED_EXIT};
use super::progress::{Display, Finish};
use super::store::{human, init_store, CompressionArg};

/// `strata build --help` examples.
pub const EXAMPLES: &str = "\
Examples:
  strata build -t app:v1 .                        Dockerfile in ., tagged app:v1
  strata build -f Containerfile --target test .   one stage of another recipe
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) strata build -t app:v1 --output oci:out:v1 .";

/// Arguments of `strata build`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The recipe (default: CONTEXT/Dockerfile, else CONTEXT/Containerfile); `-` reads it from
    /// stdin.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Name (and tag) of the image; repeatable.
    #[arg(short = 't', long = "tag", value_name = "NAME:TAG")]
    pub tags: Vec<String>,
    /// Build argument `K=V` (a bare `K` takes its value from the environment).
    #[arg(long = "build-arg", value_name = "K=V")]
    pub build_args: Vec<String>,
    /// Build this stage (name or index) instead of the last.
    #[arg(long)]
    pub target: Option<String>,
    /// Secret for `RUN --mount=type=secret`: `id=ID,src=FILE` or `id=ID,env=VAR`.
    #[arg(long = "secret", value_name = "id=ID,src=FILE")]
    pub secrets: Vec<SecretSpec>,
    /// Network for RUN steps: `default`/`host` (the host's) or `none` (loopback only).
    #[arg(long, default_value = "default")]
    pub network: Network,
    /// Layer compression.
    #[arg(long, value_enum, default_value = "zstd")]
    pub compression: CompressionArg,
    /// Also write the image to `oci:DIR[:TAG]`, `docker-archive:FILE[:TAG]` or `dir:PATH`,
    /// or push it to `docker://HOST/REPO:TAG`.
    #[arg(long, value_name = "DEST")]
    pub output: Option<ImageLocation>,
    /// Progress display: `auto` (tty on a terminal, else plain), `plain`, `tty`, `json`
    /// (one JSON event per line on stdout).
    #[arg(long, default_value = "auto")]
    pub progress: String,
    /// Timestamp for `created`, history and the layer mtime clamp (seconds since the epoch);
    /// default $SOURCE_DATE_EPOCH (unless empty), else 0.
    #[arg(long)]
    pub timestamp: Option<i64>,
    /// Run every step even when the cache has its result.
    #[arg(long)]
    pub no_cache: bool,
    /// Run the steps of this stage (name or index) even when cached; repeatable.
    #[arg(long = "no-cache-filter", value_name = "STAGE")]
    pub no_cache_filter: Vec<String>,
    /// When to pull registry bases (`FROM host/repo:tag`): `missing` (use the store's copy if
    /// there is one), `always` (ask the registry every build), `never` (the store only).
    /// `--pull` alone means `always`.
    #[arg(long, value_name = "POLICY", default_value = "missing", num_args = 0..=1,
          require_equals = true, default_missing_value = "always")]
    pub pull: PullPolicy,
    #[command(flatten)]
    pub registry: super::registry::RegistryArgs,
    /// Run the build checks and stop, as `docker build --check`: the warnings of the stages
    /// `--target` needs (all stages without it); exit 1 when a rule finds something.
    #[arg(long)]
    pub check: bool,
    /// Set a label on the image, over the recipe's LABEL of the same key (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Add an /etc/hosts line for RUN steps, as `docker build --add-host` (repeatable).
    #[arg(long = "add-host", value_name = "NAME:ADDRESS")]
    pub add_hosts: Vec<build::ExtraHost>,
    /// Annotate the result, as `docker buildx build --annotation`: `KEY=VALUE` on the image
    /// manifest(s), `manifest[PLATFORM]:KEY=VALUE` on one platform's, `index:KEY=VALUE` on the
    /// index of a multi-platform build (repeatable).
    #[arg(long = "annotation", value_name = "[TYPE:]KEY=VALUE")]
    pub annotations: Vec<build::Annotation>,
    /// A resource limit for RUN steps, as `docker build --ulimit`: `TYPE=SOFT[:HARD]` with
    /// TYPE `nofile`, `nproc`, `core`, ... and `-1` for unlimited (repeatable).
    #[arg(long = "ulimit", value_name = "TYPE=SOFT[:HARD]")]
    pub ulimits: Vec<build::sandbox::Ulimit>,
    /// The size of /dev/shm in RUN steps, as `docker build --shm-size` (`64m`, `1g`; bytes
    /// without a unit); 64m by default.
    #[arg(long = "shm-size", value_name = "SIZE", value_parser = parse_shm_size)]
    pub shm_size: Option<u64>,
    /// The memory limit of each RUN step, as `buildah bud --memory` (`32m`, `1g`; bytes
    /// without a unit): a step above it is killed and the build fails saying so. Enforced by
    /// a cgroup per step (cgroup v2, or v1's memory hierarchy).
    #[arg(short = 'm', long = "memory", value_name = "SIZE", value_parser = parse_shm_size)]
    pub memory: Option<u64>,
    /// Memory plus swap of each RUN step (`-1`: unlimited swap); twice `--memory` by default.
    #[arg(long = "memory-swap", value_name = "SIZE", allow_hyphen_values = true)]
    pub memory_swap: Option<build::sandbox::MemorySwap>,
    /// The CPU weight of each RUN step (1024 is an ordinary process's), as `--cpu-shares`.
    #[arg(short = 'c', long = "cpu-shares", value_name = "SHARES")]
    pub cpu_shares: Option<u64>,
    /// The CFS period of RUN steps in microseconds (with `--cpu-quota`).
    #[arg(long = "cpu-period", value_name = "MICROSECONDS")]
    pub cpu_period: Option<u64>,
    /// CPU time a RUN step may use per period, in microseconds (`50000` of `100000`: half a
    /// CPU).
    #[arg(long = "cpu-quota", value_name = "MICROSECONDS", allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// The CPUs RUN steps may run on (`0-3`, `0,2`).
    #[arg(long = "cpuset-cpus", value_name = "CPUS")]
    pub cpuset_cpus: Option<String>,
    /// The memory nodes RUN steps may use (`0`, `0-1`).
    #[arg(long = "cpuset-mems", value_name = "NODES")]
    pub cpuset_mems: Option<String>,
    /// Grant an entitlement, as `docker buildx build --allow`: `security.insecure` lets
    /// `RUN --security=insecure` steps run with every capability (repeatable).
    #[arg(long = "allow", value_name = "ENTITLEMENT", value_parser = ["security.insecure"])]
    pub allow: Vec<String>,
    /// A named context, as BuildKit's: `NAME=DIR`, `NAME=docker-image://REF` or
    /// `NAME=oci-layout://DIR[:TAG]`; `FROM NAME` and `--from=NAME` read it, over a stage or
    /// image of that name (repeatable).
    #[arg(long = "build-context", value_name = "NAME=VALUE", value_parser = parse_build_context)]
    pub build_contexts: Vec<(String, build::NamedContext)>,
    /// Forward an SSH agent to `RUN --mount=type=ssh` steps, as `docker build --ssh`:
    /// `default` ($SSH_AUTH_SOCK), `ID=SOCKET` or `ID=KEYFILE[,KEYFILE]` (repeatable).
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET|KEYFILE]")]
    pub ssh: Vec<build::SshSpec>,
    /// Import a build cache before building (repeatable, first wins):
    /// `type=registry,ref=HOST/REPO:TAG`, `type=local,src=DIR` or `HOST/REPO:TAG`. A cache
    /// that cannot be read is a warning.
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<build::CacheSpec>,
    /// Export the build cache once built (repeatable):
    /// `type=registry,ref=HOST/REPO:TAG[,mode=min|max]`, `type=local,dest=DIR[,mode=...]`
    /// or `HOST/REPO:TAG`; `mode=min` (default) the final image's steps, `max` every stage's.
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<build::CacheSpec>,
    /// Push the image to every `-t HOST/REPO:TAG` once built (blobs the registry has are
    /// not sent again).
    #[arg(long)]
    pub push: bool,
    /// Build for these platforms (`OS/ARCH[/VARIANT]`, comma-separated or repeated), as
    /// `docker buildx build --platform`: one platform gives that platform's image, several an
    /// image index with one image each (built in parallel). Steps of a foreign platform run
    /// through qemu user emulation (Debian's qemu-user-static, registered in binfmt_misc).
    #[arg(long = "platform", value_name = "PLATFORMS", value_delimiter = ',')]
    pub platforms: Vec<strata::types::Platform>,
    /// How many stages build at once, across all platforms (buildah's `--jobs`); 0 for no
    /// bound, the default (as BuildKit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub jobs: usize,
    /// Make the layers the build adds one layer, keeping the base image's layers (still
    /// shared with other images), as `docker build --squash`; steps are cached one by one
    /// all the same.
    #[arg(long, conflicts_with = "squash_all")]
    pub squash: bool,
    /// Make the whole image one layer, the base's layers included, as `podman build
    /// --squash-all` (buildah's `--squash`).
    #[arg(long)]
    pub squash_all: bool,
    /// Write the image's ID (its manifest digest, as printed on stdout) to FILE.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// The build context directory; `-` reads a tar archive of it (plain or compressed) from
    /// stdin, or a recipe with an empty context, as `docker build -`; a git URL
    /// (`https://host/repo.git#REF:DIR`, `git://...`, `git@host:repo#REF`) is checked out.
    pub context: PathBuf,
}

fn parse_shm_size(value: &str) -> Result<u64, String> {
    build::sandbox::parse_size(value).map_err(|e| e.to_string())
}

fn parse_build_context(flag: &str) -> Result<(String, build::NamedContext), String> {
    build::NamedContext::parse_flag(flag).map_err(|e| e.to_string())
}

pub fn run(store: Option<&std::path::Path>, args: Args) -> anyhow::Result<ExitCode> {
    // `-` as the context is a tar archive (or a lone recipe) on stdin, `-f -` the recipe, as
    // with docker build; stdin can be only one of them.
    let stdin_recipe = args.file.as_deref() == Some(std::path::Path::new("-"));
    let stdin_context = if args.context.as_os_str() == "-" {
        if stdin_recipe {
            bail!("the context and the recipe cannot both come from stdin (`-` and `-f -`)");
        }
        Some(build::StreamContext::read(std::io::stdin().lock())?)
    } else {
        None
    };
    // A git URL is checked out (shallow, no `.git`) and built as a directory, as docker build.
    let git_url = args.context.to_str().and_then(build::GitUrl::parse);
    let build_args: build::BuildArgs =
        super::parse_key_values(&args.build_args).into_iter().collect();
    // Checked out into the store, once per commit: a rebuild only asks the remote what the
    // ref names (`git ls-remote`).
    let git_context = match &git_url {
        Some(url) => Some(build::GitContext::fetch_cached(&init_store(store)?, url, &build_args)?),
        None => None,
    };
    let context = match (&stdin_context, &git_context) {
        (Some(c), _) => c.path(),
        (_, Some(g)) => g.path().to_path_buf(),
        _ => args.context.clone(),
    };
    // Names the context in messages, a URL's password redacted.
    let context_name = match &git_url {
        Some(url) => url.to_string(),
        None => args.context.display().to_string(),
    };
    let mut opts = BuildOptions::new(&context);
    if stdin_recipe {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
            .context("cannot read the recipe from stdin (`-f -`)")?;
        opts.recipe = Some(text);
        opts.recipe_path = PathBuf::from("<stdin>");
    } else if let Some(f) = &args.file {
        // In a git context, a relative `-f` names a file of the repository (BuildKit).
        opts.recipe_path = match &git_context {
            Some(g) if f.is_relative() => g.path().join(f),
            _ => f.clone(),
        };
    } else if let Some(text) = stdin_context.as_ref().and_then(|c| c.recipe()) {
        opts.recipe = Some(text.to_string());
        opts.recipe_path = PathBuf::from("<stdin>");
    }
    opts.tags = args.tags.clone();
    opts.build_args = build_args;
    opts.target = args.target.clone();
    if args.check {
        return super::check::report(store, &opts, false);
    }
    opts.secrets = args.secrets.clone();
    opts.network = args.network;
    opts.compression = args.compression.into();
    opts.no_cache = args.no_cache;
    opts.no_cache_filter = args.no_cache_filter.clone();
    opts.pull = args.pull;
    opts.registry = args.registry.client_options([]);
    opts.tls_verify = args.registry.tls_verify;
    opts.output = args.output.clone();
    // As docker build: `--label KEY` alone is a label with an empty value.
    opts.labels = args
        .labels
        .iter()
        .map(|l| l.split_once('=').unwrap_or((l, "")))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    opts.extra_hosts = args.add_hosts.clone();
    opts.annotations = args.annotations.clone();
    opts.run_resources.ulimits = args.ulimits.clone();
    opts.run_resources.shm_size = args.shm_size;
    opts.run_resources.cgroup = build::sandbox::CgroupLimits {
        memory: args.memory,
        memory_swap: args.memory_swap,
        cpu_shares: args.cpu_shares,
        cpu_period: args.cpu_period,
        cpu_quota: args.cpu_quota,
        cpuset_cpus: args.cpuset_cpus.clone(),
        cpuset_mems: args.cpuset_mems.clone(),
    };
    opts.allow_insecure = args.allow.iter().any(|a| a == "security.insecure");
    opts.named_contexts = args.build_contexts.iter().cloned().collect();
    opts.ssh = args.ssh.clone();
    opts.cache_from = args.cache_from.clone();
    opts.cache_to = args.cache_to.clone();
    opts.push = args.push;
    opts.platforms = args.platforms.clone();
    opts.jobs = std::num::NonZeroUsize::new(args.jobs);
    opts.squash = match (args.squash, args.squash_all) {
        (_, true) => build::Squash::All,
        (true, false) => build::Squash::NewLayers,
        (false, false) => build::Squash::Off,
    };
    let opts = opts.with_source_date_epoch(args.timestamp)?;
    opts.validate()?;

    let store = init_store(store)?;
    let mode = match args.progress.as_str() {
        "auto" if std::io::stderr().is_terminal() => "tty",
        "auto" => "plain",
        m @ ("plain" | "tty" | "json") => m,
        other => bail!("unsupported --progress {other:?}: use auto, plain, tty or json"),
    };
    let started = Instant::now();
    let display = Arc::new(Display::new(mode));
    // Ctrl-C cancels through the library, which kills a running RUN and cleans up.
    let on_first = {
        let display = Arc::clone(&display);
        move || display.notice("cancelled")
    };
    let interrupts = Interrupts::install(opts.cancel.clone(), on_first)
        .context("cannot install the Ctrl-C handler")?;
    let result = build::build(&store, &opts, display.sink());
    drop(interrupts);
    let out = match result {
        Ok(out) => out,
        Err(e) if matches!(e.root_cause(), build::BuildError::Cancelled) => {
            display.finish(Finish::Cancelled)?;
            return Ok(ExitCode::from(CANCELLED_EXIT));
        }
        Err(e) => {
            display.finish(Finish::Failed)?;
            return Err(e).with_context(|| format!("build of {context_name} failed"));
        }
    };
    display.finish(Finish::Built(&out))?;
    if mode != "json" {
        let digest = out.manifest.digest().to_string();
        let secs = started.elapsed().as_secs_f64();
        let (steps, reused, written) = (out.steps.len(), out.layers_reused, out.layers_written);
        let size = human(out.bytes_written);
        display.line(&if mode == "tty" {
            // Cut to the terminal: the image ID as `images` shows it keeps the counts on
            // screen (the full digest is on stdout).
            let id = &digest[..digest.len().min(19)];
            format!("built {id} in {secs:.1}s: {steps} steps, {reused} layers reused, {written} written ({size})")
        } else {
            let bytes = out.bytes_written;
            format!("built {digest} in {secs:.1}s: {steps} steps, {reused} layers reused, {written} written, {bytes} bytes written ({size})")
        })?;
        for p in &out.platforms {
            display.line(&format!("{}: {}", p.platform, p.manifest.digest()))?;
        }
        if out.layers_left_in_registry == 0 {
            for t in &opts.tags {
                display.line(&format!("tagged {t}"))?;
            }
        } else {
            display.line(&format!(
                "not stored here: {} of its layers were never needed on this machine and stay in the registry (pull it to keep it)",
                out.layers_left_in_registry
            ))?;
        }
        if let Some(dest) = out.exported.as_ref().and(opts.output.as_ref()) {
            display.line(&format!("wrote {dest}"))?;
        }
        for (reference, r) in &out.pushed {
            display.line(&format!(
                "pushed {reference}: {} uploaded, {} mounted, {} present ({})",
                r.uploaded,
                r.mounted,
                r.present,
                human(r.bytes)
            ))?;
        }
        for (cache, entries) in &out.cache_exported {
            display.line(&format!("exported cache {cache}: {entries} entries"))?;
        }
    }
    if let Some(path) = &args.iidfile {
        std::fs::write(path, out.manifest.digest().to_string())
            .with_context(|| format!("cannot write --iidfile {}", path.display()))?;
    }
    if mode != "json" {
        // The digest on stdout, for scripts (`id=$(strata build -q ...)`); JSON has it in
        // the `build_done` event.
        writeln!(std::io::stdout().lock(), "{}", out.manifest.digest())?;
    }
    Ok(ExitCode::SUCCESS)
}
