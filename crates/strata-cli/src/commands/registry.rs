//! Registry commands: `push`, `pull`, `copy`, `login`, `logout`.
//!
//! The work is [`strata::image::copy`]; this module parses locations and flags, renders the
//! registry crate's per-blob events (one progress bar per blob on a terminal, one line per
//! blob otherwise) and prints the report: blobs skipped because the other side had them,
//! mounted from another repository, uploaded or downloaded, and the bytes that moved.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use strata::image::{self, CopyOptions, CopyOutcome};
use strata::registry::{
    credentials, BlobKind, BlobOutcome, Client, ClientOptions, TransferEvent, TransferSink,
};
use strata::types::{ImageLocation, Platform, Reference};

use super::store::{human, init_store};

/// How to reach registries: TLS and credentials (skopeo's spellings).
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Require HTTPS with verified certificates. `--tls-verify=false` treats the registries
    /// this command names as insecure: HTTPS without certificate checks when they speak TLS,
    /// else plain HTTP (loopback registries always use plain HTTP).
    #[arg(
        long = "tls-verify",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub tls_verify: bool,
    /// A registry (`HOST[:PORT]`; without a port, every port of the host) to treat as
    /// insecure, as `--tls-verify=false` does; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Credentials file (Docker's config.json format). Default: $REGISTRY_AUTH_FILE, else
    /// $DOCKER_CONFIG/config.json, else ~/.docker/config.json.
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Give up on a registry request once no byte has moved for this long (`30s`, `2m`,
    /// `500ms`, or plain seconds). A slow transfer that keeps moving is never cut short.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `30s`, `2m`, `1h`, `7d`, `500ms`, `1.5s` or plain seconds (`45`); more than zero.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(format!("{text:?}: write a number with s, m, h, d or ms (e.g. 30s, 2m)")),
    };
    let value: f64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration (e.g. 30s, 2m)"))?;
    Duration::try_from_secs_f64(value * scale)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?}: the duration must be more than zero"))
}

impl RegistryArgs {
    /// Client options for talking to `registries` (the hosts this command names).
    pub fn client_options<'a>(
        &self,
        registries: impl IntoIterator<Item = &'a str>,
    ) -> ClientOptions {
        let mut insecure = self.insecure_registries.clone();
        if !self.tls_verify {
            insecure.extend(registries.into_iter().map(str::to_string));
        }
        ClientOptions {
            insecure,
            auth_file: self.authfile.clone(),
            stall_timeout: Some(self.timeout),
            ..Default::default()
        }
    }
}

/// Flags of the commands that move images.
#[derive(Debug, Clone, clap::Args)]
pub struct TransferArgs {
    /// Blobs moved at the same time.
    #[arg(short = 'j', long, default_value_t = 3, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Decide what would move (existence checks only) and print the report; move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON on stdout (progress lines still go to stderr).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `strata push --help` examples.
pub const PUSH_EXAMPLES: &str = "\
Examples:
  strata push app:v1 docker://registry.example/team/app:v1
  strata push --dry-run app:v2 registry.example/team/app:v2   what would be uploaded
  strata push --tls-verify=false app:v1 127.0.0.1:5000/app:v1";

/// `strata push IMAGE [DEST]`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The image: `name[:tag]` in the store (or `oci:DIR[:REF]`, `docker-archive:FILE`).
    pub image: String,
    /// `docker://HOST/REPO:TAG` (or `HOST/REPO:TAG`). Default: IMAGE itself when it names a
    /// registry (`127.0.0.1:5000/app:v1`).
    pub dest: Option<String>,
    /// Push only this platform's image of a multi-platform image (`OS/ARCH[/VARIANT]`);
    /// without it an index is pushed whole, every platform's manifest before the index.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

/// `strata pull REF`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// `docker://HOST/REPO:TAG` or `HOST/REPO:TAG`; stored under `HOST/REPO:TAG`.
    pub reference: String,
    /// The platform to pick when the reference names a multi-platform image (an index),
    /// `OS/ARCH[/VARIANT]` as `docker pull --platform`; the host's by default.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

/// `strata copy SRC DST`.
#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// `name[:tag]` (the store), `oci:DIR[:REF]`, `docker-archive:FILE[:REF]` or
    /// `docker://HOST/REPO:TAG`.
    pub source: String,
    /// Same forms, plus `dir:PATH` (the flattened root filesystem).
    pub dest: String,
    /// Copy a whole multi-platform image (the index, every platform's manifest and blobs),
    /// keeping its digest, instead of the host platform's image (as `skopeo copy --all`).
    #[arg(long)]
    pub all: bool,
    /// The platform to pick when the source is a multi-platform image (an index),
    /// `OS/ARCH[/VARIANT]`. Default: a registry source's host image; a store or oci: index
    /// is copied whole (to a registry, oci: or the store; docker-archive: and dir: need one).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", conflicts_with = "all")]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

/// `strata login REGISTRY`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// `HOST[:PORT]`.
    pub registry: String,
    /// User name.
    #[arg(short = 'u', long)]
    pub username: String,
    /// Read the password from standard input (the only way: never on the command line).
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub registry_args: RegistryArgs,
}

/// `strata logout REGISTRY`.
#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// `HOST[:PORT]`.
    pub registry: String,
    /// Credentials file (default as for `login`).
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

/// A registry reference from `docker://HOST/REPO:TAG` or `HOST/REPO:TAG`, which must name a
/// registry host.
pub(crate) fn registry_reference(input: &str) -> anyhow::Result<Reference> {
    let text = input.strip_prefix("docker://").unwrap_or(input);
    let reference: Reference =
        text.parse().with_context(|| format!("invalid registry reference {input:?}"))?;
    if reference.domain().is_none() {
        bail!(
            "{input:?} names no registry: write HOST[:PORT]/REPO:TAG (e.g. 127.0.0.1:5000/app:v1)"
        );
    }
    Ok(reference)
}

pub fn push(store: Option<&Path>, args: PushArgs) -> anyhow::Result<ExitCode> {
    let src: ImageLocation = args.image.parse()?;
    let dest = match (&args.dest, &src) {
        (Some(d), _) => registry_reference(d)?,
        (None, ImageLocation::Store(name)) => registry_reference(name).with_context(|| {
            format!(
                "no destination: give DEST (docker://HOST/REPO:TAG) or tag {name} as HOST/REPO:TAG"
            )
        })?,
        (None, _) => bail!("no destination: give DEST (docker://HOST/REPO:TAG)"),
    };
    run_copy(store, src, ImageLocation::Registry(dest), &args.transfer, false, args.platform)
}

pub fn pull(store: Option<&Path>, args: PullArgs) -> anyhow::Result<ExitCode> {
    let reference = registry_reference(&args.reference)?;
    let dst = ImageLocation::Store(reference.to_string());
    run_copy(store, ImageLocation::Registry(reference), dst, &args.transfer, false, args.platform)
}

pub fn copy(store: Option<&Path>, args: CopyArgs) -> anyhow::Result<ExitCode> {
    let src: ImageLocation = args.source.parse()?;
    let dst: ImageLocation = args.dest.parse()?;
    run_copy(store, src, dst, &args.transfer, args.all, args.platform)
}

fn registry_host(location: &ImageLocation) -> Option<&str> {
    match location {
        ImageLocation::Registry(r) => r.domain(),
        _ => None,
    }
}

fn run_copy(
    store: Option<&Path>,
    src: ImageLocation,
    dst: ImageLocation,
    args: &TransferArgs,
    all: bool,
    platform: Option<Platform>,
) -> anyhow::Result<ExitCode> {
    let hosts = [registry_host(&src), registry_host(&dst)];
    let options = args.registry.client_options(hosts.into_iter().flatten());
    let store = init_store(store)?;
    // Transfers through scratch layouts (oci:/docker-archive: sources, registry-to-file
    // copies) record where blobs live in this store, and pulls copy what it already has.
    let client = Client::new(options)
        .context("cannot set up the registry client")?
        .with_blob_hints(store.clone());
    let copy_options =
        CopyOptions::new(args.jobs.into(), args.dry_run).with_all(all).with_platform(platform);
    let verb = match (&src, &dst) {
        (ImageLocation::Registry(_), ImageLocation::Registry(_)) => "copy",
        (ImageLocation::Registry(_), _) => "pull",
        (_, ImageLocation::Registry(_)) => "push",
        _ => "copy",
    };
    let outcome = if std::io::stderr().is_terminal() {
        let bars = BarProgress::new();
        let r = image::copy(&client, &store, &src, &dst, &copy_options, &bars);
        bars.clear();
        r
    } else {
        image::copy(&client, &store, &src, &dst, &copy_options, &LineProgress::new(verb))
    }
    .with_context(|| format!("{verb} {src} -> {dst} failed"))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&json_report(&src, &dst, &outcome))?)?;
    } else {
        write_report(&mut out, verb, &src, &dst, &outcome)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The `--json` report: the locations, the manifest digest, the registry leg's report as the
/// registry crate serializes it, and the local leg.
fn json_report(src: &ImageLocation, dst: &ImageLocation, o: &CopyOutcome) -> serde_json::Value {
    serde_json::json!({
        "source": src.to_string(),
        "destination": dst.to_string(),
        "manifest": o.manifest.to_string(),
        "dry_run": o.dry_run,
        "transfer": o.transfer,
        "local": o.local.as_ref().map(|l| serde_json::json!({
            "written": l.written,
            "skipped": l.skipped,
            "bytes": l.bytes,
        })),
    })
}

fn write_report(
    out: &mut impl Write,
    verb: &str,
    src: &ImageLocation,
    dst: &ImageLocation,
    o: &CopyOutcome,
) -> std::io::Result<()> {
    let dst = match dst {
        ImageLocation::Store(name) => format!("the store as {name}"),
        other => other.to_string(),
    };
    if o.dry_run {
        writeln!(out, "dry run, nothing moved: would {verb} {src} to {dst}")?;
    } else {
        let done = match verb {
            "push" => "pushed",
            "pull" => "pulled",
            _ => "copied",
        };
        writeln!(out, "{done} {src} to {dst}")?;
    }
    writeln!(out, "  manifest {}", o.manifest)?;
    if let Some(t) = &o.transfer {
        let layers = |f: &dyn Fn(&BlobOutcome) -> bool| {
            t.blobs.iter().filter(|b| b.kind == BlobKind::Layer && f(&b.outcome)).count()
        };
        writeln!(
            out,
            "  layers: {} present (skipped), {} mounted, {} uploaded, {} downloaded",
            layers(&|x| matches!(x, BlobOutcome::Present)),
            layers(&|x| matches!(x, BlobOutcome::Mounted { .. })),
            layers(&|x| matches!(x, BlobOutcome::Uploaded)),
            layers(&|x| matches!(x, BlobOutcome::Downloaded)),
        )?;
        writeln!(
            out,
            "  blobs (layers and config): {} present, {} mounted, {} uploaded, {} downloaded; {} over the network ({} bytes)",
            t.present,
            t.mounted,
            t.uploaded,
            t.downloaded,
            human(t.bytes),
            t.bytes
        )?;
    }
    if let Some(l) = &o.local {
        writeln!(
            out,
            "  written locally: {} items, {} already present; {} ({} bytes)",
            l.written,
            l.skipped,
            human(l.bytes),
            l.bytes
        )?;
    }
    Ok(())
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn kind_name(kind: BlobKind) -> &'static str {
    match kind {
        BlobKind::Layer => "layer",
        BlobKind::Config => "config",
        BlobKind::Manifest => "manifest",
    }
}

fn outcome_text(outcome: &BlobOutcome) -> String {
    match outcome {
        BlobOutcome::Present => "already present".to_string(),
        BlobOutcome::Mounted { from } => format!("mounted from {from}"),
        BlobOutcome::Uploaded => "uploaded".to_string(),
        BlobOutcome::Downloaded => "downloaded".to_string(),
    }
}

/// One line per blob decision, for logs (stderr is not a terminal), and one per stall.
struct LineProgress {
    verb: &'static str,
    started: Mutex<HashMap<String, (BlobKind, u64)>>,
    /// Per blob, the `seconds` of its last `Stalled` event: a smaller one starts a new stall.
    stalls: Mutex<HashMap<String, u64>>,
}

impl LineProgress {
    fn new(verb: &'static str) -> Self {
        LineProgress {
            verb,
            started: Mutex::new(HashMap::new()),
            stalls: Mutex::new(HashMap::new()),
        }
    }
}

impl TransferSink for LineProgress {
    fn event(&self, event: &TransferEvent) {
        let mut err = std::io::stderr().lock();
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        let _ = match event {
            TransferEvent::BlobStart { digest, size, kind } => {
                let d = digest.to_string();
                started.insert(d.clone(), (*kind, *size));
                writeln!(err, "{} {} {} ({})", self.verb, kind_name(*kind), short(&d), human(*size))
            }
            TransferEvent::BlobDone { digest, outcome } => {
                let d = digest.to_string();
                match started.get(&d) {
                    Some((kind, size)) => writeln!(
                        err,
                        "{} {}: {} ({})",
                        kind_name(*kind),
                        short(&d),
                        outcome_text(outcome),
                        human(*size)
                    ),
                    None => writeln!(err, "blob {}: {}", short(&d), outcome_text(outcome)),
                }
            }
            TransferEvent::Manifest { digest } => writeln!(err, "manifest {digest}"),
            TransferEvent::Stalled { digest, seconds } => {
                let d = digest.to_string();
                let mut stalls = self.stalls.lock().unwrap_or_else(|p| p.into_inner());
                let new_stall = starts_a_stall(&mut stalls, &d, *seconds);
                let kind = started.get(&d).map_or("blob", |(kind, _)| kind_name(*kind));
                if new_stall {
                    writeln!(err, "{kind} {}: stalled, no data for {seconds}s", short(&d))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        };
    }
}

/// Whether a `Stalled` event for `digest` begins a new stall (the first for the blob, or
/// `seconds` not above the last one's: the count restarts after progress), remembering it.
fn starts_a_stall(last: &mut HashMap<String, u64>, digest: &str, seconds: u64) -> bool {
    last.insert(digest.to_owned(), seconds).is_none_or(|prev| seconds <= prev)
}

/// One progress bar per blob that moves; blobs that need not move get a finished line.
struct BarProgress {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, (ProgressBar, String)>>,
}

impl BarProgress {
    fn new() -> Self {
        BarProgress { multi: MultiProgress::new(), bars: Mutex::new(HashMap::new()) }
    }

    fn clear(&self) {
        let bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        for (bar, _) in bars.values() {
            bar.abandon();
        }
    }
}

impl TransferSink for BarProgress {
    fn event(&self, event: &TransferEvent) {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            TransferEvent::BlobStart { digest, size, kind } => {
                let d = digest.to_string();
                let bar = self.multi.add(ProgressBar::new(*size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {decimal_bytes:>9}/{decimal_total_bytes:<9} {decimal_bytes_per_sec:>11} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                let label = format!("{:<8} {}", kind_name(*kind), short(&d));
                bar.set_prefix(label.clone());
                bars.insert(d, (bar, label));
            }
            TransferEvent::BlobProgress { digest, done } => {
                if let Some((bar, _)) = bars.get(&digest.to_string()) {
                    bar.set_position(*done);
                }
            }
            TransferEvent::BlobDone { digest, outcome } => {
                let d = digest.to_string();
                match bars.remove(&d) {
                    Some((bar, _)) => {
                        if let Some(len) = bar.length() {
                            bar.set_position(len);
                        }
                        bar.finish_with_message(outcome_text(outcome));
                    }
                    None => {
                        let _ = self.multi.println(format!(
                            "{:<8} {} {}",
                            "blob",
                            short(&d),
                            outcome_text(outcome)
                        ));
                    }
                }
            }
            TransferEvent::Manifest { digest } => {
                let _ = self.multi.println(format!("manifest {digest}"));
            }
            _ => {}
        }
    }
}

pub fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let registry = args.registry.strip_prefix("docker://").unwrap_or(&args.registry);
    if !args.password_stdin {
        bail!("give the password on standard input with --password-stdin");
    }
    let mut password = String::new();
    std::io::stdin().read_to_string(&mut password).context("reading the password from stdin")?;
    let password = password.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        bail!("empty password on standard input");
    }
    let options = args.registry_args.client_options([registry]);
    let client = Client::new(options).context("cannot set up the registry client")?;
    client
        .check_login(registry, &args.username, password)
        .with_context(|| format!("login to {registry} as {} failed", args.username))?;
    let file = credentials::login(
        registry,
        &args.username,
        password,
        args.registry_args.authfile.as_deref(),
    )
    .with_context(|| format!("cannot save the credentials for {registry}"))?;
    writeln!(
        std::io::stdout().lock(),
        "Login Succeeded: credentials for {registry} saved in {}",
        file.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

pub fn logout(args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let registry = args.registry.strip_prefix("docker://").unwrap_or(&args.registry);
    let removed = credentials::logout(registry, args.authfile.as_deref())
        .with_context(|| format!("cannot remove the credentials for {registry}"))?;
    if !removed {
        bail!("not logged in to {registry}");
    }
    writeln!(std::io::stdout().lock(), "Removed login credentials for {registry}")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_references_need_a_host() {
        let r = registry_reference("docker://127.0.0.1:5000/app:v1").unwrap();
        assert_eq!((r.domain(), r.path(), r.tag()), (Some("127.0.0.1:5000"), "app", Some("v1")));
        let r = registry_reference("localhost/team/app:v2").unwrap();
        assert_eq!(r.domain(), Some("localhost"));
        assert!(registry_reference("app:v1").is_err());
        assert!(registry_reference("docker://app").is_err());
    }

    #[test]
    fn tls_verify_false_makes_the_named_hosts_insecure() {
        let args = RegistryArgs {
            tls_verify: false,
            insecure_registries: vec!["r.example:443".into()],
            authfile: None,
            timeout: Duration::from_secs(30),
        };
        let o = args.client_options(["h.example:5000"]);
        assert_eq!(o.insecure, ["r.example:443", "h.example:5000"]);
        let args = RegistryArgs { tls_verify: true, ..args };
        assert_eq!(args.client_options(["h.example:5000"]).insecure, ["r.example:443"]);
    }

    #[test]
    fn plain_progress_tells_each_stall_once() {
        let mut last = HashMap::new();
        let told: Vec<bool> = [("a", 5), ("a", 6), ("b", 5), ("a", 7), ("a", 5), ("a", 6)]
            .into_iter()
            .map(|(digest, seconds)| starts_a_stall(&mut last, digest, seconds))
            .collect();
        assert_eq!(told, [true, false, true, false, true, false]);
    }

    #[test]
    fn timeouts_take_units_or_plain_seconds() {
        let ok = |t: &str| parse_duration(t).unwrap();
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("45"), Duration::from_secs(45));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        for bad in ["0", "0s", "", "s", "2x", "-1s", "1e3"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
