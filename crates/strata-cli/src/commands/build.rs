//! `strata build`: a recipe and a context into an image, with progress rendered for a
//! terminal (`tty`), a log (`plain`, like BuildKit's `--progress=plain`) or tools (`json`).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use strata::build::{
    self, BuildEvent, BuildOptions, Network, ProgressSink, PullPolicy, SecretSpec,
};
use strata::types::ImageLocation;

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
    /// The recipe (default: CONTEXT/Dockerfile, else CONTEXT/Containerfile).
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
    /// Write the image's ID (its manifest digest, as printed on stdout) to FILE.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// The build context directory.
    pub context: PathBuf,
}

pub fn run(store: Option<&std::path::Path>, args: Args) -> anyhow::Result<ExitCode> {
    let mut opts = BuildOptions::new(&args.context);
    if let Some(f) = &args.file {
        opts.recipe_path = f.clone();
    }
    opts.tags = args.tags.clone();
    opts.build_args = super::parse_key_values(&args.build_args).into_iter().collect();
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
    opts.cache_from = args.cache_from.clone();
    opts.cache_to = args.cache_to.clone();
    opts.push = args.push;
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
    let result = match mode {
        "json" => build::build(&store, &opts, &JsonProgress),
        "tty" => build::build(&store, &opts, &TtyProgress::new()),
        _ => build::build(&store, &opts, &PlainProgress::new()),
    };
    let out = result.with_context(|| format!("build of {} failed", args.context.display()))?;
    if mode != "json" {
        let mut err = std::io::stderr().lock();
        write_report(&mut err, &out)?;
        writeln!(
            err,
            "built {} in {:.1}s: {} steps, {} layers reused, {} written, {} bytes written ({})",
            out.manifest.digest(),
            started.elapsed().as_secs_f64(),
            out.steps.len(),
            out.layers_reused,
            out.layers_written,
            out.bytes_written,
            human(out.bytes_written)
        )?;
        for t in &opts.tags {
            writeln!(err, "tagged {t}")?;
        }
        if let Some(dest) = out.exported.as_ref().and(opts.output.as_ref()) {
            writeln!(err, "wrote {dest}")?;
        }
        for (reference, r) in &out.pushed {
            writeln!(
                err,
                "pushed {reference}: {} uploaded, {} mounted, {} present ({})",
                r.uploaded,
                r.mounted,
                r.present,
                human(r.bytes)
            )?;
        }
        for (cache, entries) in &out.cache_exported {
            writeln!(err, "exported cache {cache}: {entries} entries")?;
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

/// The build report: one line per step, `CACHED` or its time.
fn write_report(err: &mut impl Write, out: &build::BuildOutput) -> std::io::Result<()> {
    writeln!(err, "build report:")?;
    for s in &out.steps {
        let status = if s.cached {
            "CACHED".to_string()
        } else {
            format!("{:.1}s", s.duration_ms as f64 / 1000.0)
        };
        writeln!(err, "  {status:>7}  [stage {}, line {}] {}", s.stage, s.line, s.created_by)?;
    }
    Ok(())
}

/// One JSON object per event on stdout.
struct JsonProgress;

impl ProgressSink for JsonProgress {
    fn event(&self, e: &BuildEvent) {
        if let Ok(line) = serde_json::to_string(e) {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    }
}

/// BuildKit's `--progress=plain` shape: `#N [stage] INSTRUCTION`, output lines as `#N 0.123 text`,
/// `#N DONE 1.2s`.
struct PlainProgress {
    start: Instant,
    steps: Mutex<HashMap<(usize, usize), (usize, Instant)>>,
}

impl PlainProgress {
    fn new() -> Self {
        PlainProgress { start: Instant::now(), steps: Mutex::new(HashMap::new()) }
    }
}

impl ProgressSink for PlainProgress {
    fn event(&self, e: &BuildEvent) {
        let mut err = std::io::stderr().lock();
        let mut steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        let _ = match e {
            BuildEvent::StageStart { stage, name, base } => {
                let name = name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
                writeln!(err, "=> stage {stage}{name} FROM {base}")
            }
            BuildEvent::StepStart { stage, step, line, text } => {
                let n = steps.len() + 1;
                steps.insert((*stage, *step), (n, Instant::now()));
                writeln!(err, "#{n} [stage {stage}, line {line}] {text}")
            }
            BuildEvent::StepOutput { stage, step, line, .. } => {
                let n = steps.get(&(*stage, *step)).map(|s| s.0).unwrap_or(0);
                writeln!(err, "#{n} {:.3} {line}", self.start.elapsed().as_secs_f64())
            }
            BuildEvent::StepCached { stage, step } => {
                let n = steps.get(&(*stage, *step)).map(|s| s.0).unwrap_or(0);
                writeln!(err, "#{n} CACHED")
            }
            BuildEvent::StepDone { stage, step, duration_ms, layer, layer_size, .. } => {
                let n = steps.get(&(*stage, *step)).map(|s| s.0).unwrap_or(0);
                let secs = *duration_ms as f64 / 1000.0;
                match (layer, layer_size) {
                    (Some(l), Some(sz)) => {
                        writeln!(err, "#{n} DONE {secs:.1}s layer {} ({})", short(l), human(*sz))
                    }
                    _ => writeln!(err, "#{n} DONE {secs:.1}s"),
                }
            }
            BuildEvent::CheckWarning { rule, message, line, .. } => {
                writeln!(err, "WARNING: {rule}: {message} (line {line})")
            }
            BuildEvent::Warning { message } => writeln!(err, "WARNING: {message}"),
            BuildEvent::PullStart { reference } => writeln!(err, "=> pulling {reference}"),
            BuildEvent::PullDone { .. } => writeln!(err, "=> {}", pull_summary(e)),
            BuildEvent::BuildDone { .. } => Ok(()),
            _ => Ok(()),
        };
    }
}

/// `pulled host/repo:tag (sha256:...): 3 blobs downloaded (12MB), 1 present`.
fn pull_summary(e: &BuildEvent) -> String {
    match e {
        BuildEvent::PullDone { reference, digest, blobs_downloaded, blobs_present, bytes } => {
            format!(
                "pulled {reference} ({}): {blobs_downloaded} blobs downloaded ({}), {blobs_present} already present",
                short(digest),
                human(*bytes)
            )
        }
        _ => String::new(),
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// A live view: one spinner per running step with its elapsed time; RUN output scrolls above.
struct TtyProgress {
    multi: MultiProgress,
    bars: Mutex<HashMap<(usize, usize), (ProgressBar, String)>>,
}

impl TtyProgress {
    fn new() -> Self {
        TtyProgress { multi: MultiProgress::new(), bars: Mutex::new(HashMap::new()) }
    }
}

impl ProgressSink for TtyProgress {
    fn event(&self, e: &BuildEvent) {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            BuildEvent::StepStart { stage, step, text, .. } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} [{elapsed:>4}] {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                let label = format!("[{stage}] {text}");
                bar.set_message(label.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                bars.insert((*stage, *step), (bar, label));
            }
            BuildEvent::StepOutput { line, .. } => {
                let _ = self.multi.println(format!("  {line}"));
            }
            BuildEvent::StepDone { stage, step, duration_ms, layer_size, .. } => {
                if let Some((bar, label)) = bars.remove(&(*stage, *step)) {
                    let size = layer_size.map(|s| format!(" ({})", human(s))).unwrap_or_default();
                    bar.set_style(
                        ProgressStyle::with_template("{msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.finish_with_message(format!(
                        "✔ {:>5.1}s {label}{size}",
                        *duration_ms as f64 / 1000.0
                    ));
                }
            }
            BuildEvent::StepCached { stage, step } => {
                if let Some((_, label)) = bars.get_mut(&(*stage, *step)) {
                    *label = format!("CACHED {label}");
                }
            }
            BuildEvent::CheckWarning { rule, message, line, .. } => {
                let _ = self.multi.println(format!("WARNING: {rule}: {message} (line {line})"));
            }
            BuildEvent::Warning { message } => {
                let _ = self.multi.println(format!("WARNING: {message}"));
            }
            BuildEvent::PullStart { reference } => {
                let _ = self.multi.println(format!("pulling {reference}"));
            }
            BuildEvent::PullDone { .. } => {
                let _ = self.multi.println(pull_summary(e));
            }
            _ => {}
        }
    }
}
