//! `strata cache ls|prune`: the local build cache, as `docker buildx du` and `docker builder
//! prune` show and trim BuildKit's.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use strata::store::{CachePrune, CacheUsage};

use super::registry::parse_duration;
use super::store::{human, open_store, open_store_to_list};

/// `strata cache`.
#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// List the build cache's entries, most recently used first, with their layer sizes
    /// and whether an image holds the layer too (then removing the entry frees nothing).
    Ls(LsArgs),
    /// Remove build-cache entries and free the layers only they held (`docker builder
    /// prune`): by default every entry whose layer no image holds.
    Prune(PruneArgs),
}

/// `strata cache ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// One JSON document: `{"entries": [{kind, key, layer, size, last_used, in_image}],
    /// "cache_only_bytes"}`.
    #[arg(long)]
    pub json: bool,
}

/// `strata cache prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Also remove entries whose layers images hold (the layers stay with the images; the
    /// next build of those steps misses).
    #[arg(short, long)]
    pub all: bool,
    /// `until=DURATION`: only entries unused for at least that long (`24h`, `7d`, `90m`).
    #[arg(long, value_name = "FILTER", value_parser = parse_filter)]
    pub filter: Option<Duration>,
    /// Keep the most recently used cache-only layers up to SIZE (`5GB`, `500MB`, `1.5g`:
    /// units of 1024 as Docker's; plain bytes). The cap is exact: what is kept never passes
    /// it.
    #[arg(long = "keep-storage", value_name = "SIZE", value_parser = parse_size)]
    pub keep_storage: Option<u64>,
    /// Accepted for `docker builder prune -f`'s sake: strata never asks.
    #[arg(short, long)]
    pub force: bool,
}

/// `until=24h`, the one filter `docker builder prune` users type.
fn parse_filter(text: &str) -> Result<Duration, String> {
    match text.split_once('=') {
        Some(("until", d)) => parse_duration(d),
        _ => Err(format!("{text:?}: strata knows the filter until=DURATION (e.g. until=24h)")),
    }
}

/// `5GB`, `500m`, `1.5GiB`, `1024`: bytes, with Docker's 1024-based units (b, k, m, g, t,
/// each also with `b` or `ib`), any case.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix("ib").or_else(|| unit.strip_suffix('b')).unwrap_or(&unit);
    let power = match unit {
        "" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        _ => return Err(format!("{text:?}: write a size such as 500MB, 5GB or 1024")),
    };
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a size (e.g. 5GB)"))?;
    Ok((value * 1024f64.powi(power)) as u64)
}

pub fn run(store: Option<&Path>, cmd: CacheCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CacheCommand::Ls(args) => ls(store, args),
        CacheCommand::Prune(args) => prune(store, args),
    }
}

fn ago(t: SystemTime) -> String {
    let secs = SystemTime::now().duration_since(t).unwrap_or_default().as_secs();
    match secs {
        0..=59 => format!("{secs} seconds ago"),
        60..=3599 => format!("{} minutes ago", secs / 60),
        3600..=86399 => format!("{} hours ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}

fn ls(store: Option<&Path>, args: LsArgs) -> anyhow::Result<ExitCode> {
    // A machine that never built has an empty cache, not an error (as `images`).
    let entries = match open_store_to_list(store)? {
        Some(store) => store.cache_usage()?,
        None => Vec::new(),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let rows: Vec<serde_json::Value> = entries
            .iter()
            .map(|u| {
                let secs = u
                    .last_used
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default();
                serde_json::json!({
                    "kind": u.key.kind,
                    "key": u.key.digest.to_string(),
                    "layer": u.entry.layer.digest().to_string(),
                    "size": u.entry.layer.size(),
                    "last_used": secs,
                    "in_image": u.in_image,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "entries": rows,
            "cache_only_bytes": CacheUsage::cache_only_bytes(&entries),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<8} {:<14} {:<14} {:>10}  {:<18} IN IMAGE",
        "KIND", "KEY", "LAYER", "SIZE", "LAST USED"
    )?;
    for u in &entries {
        let kind = serde_json::to_value(u.key.kind)?.as_str().unwrap_or_default().to_string();
        let layer = u.entry.layer.digest().to_string();
        let short = |d: &str| d.trim_start_matches("sha256:").chars().take(12).collect::<String>();
        writeln!(
            out,
            "{:<8} {:<14} {:<14} {:>10}  {:<18} {}",
            kind,
            short(&u.key.digest.to_string()),
            short(&layer),
            human(u.entry.layer.size()),
            ago(u.last_used),
            if u.in_image { "yes" } else { "no" }
        )?;
    }
    let s = if entries.len() == 1 { "y" } else { "ies" };
    writeln!(
        out,
        "{} entr{s}; {} in layers only the cache holds (what `strata cache prune` frees)",
        entries.len(),
        human(CacheUsage::cache_only_bytes(&entries))
    )?;
    Ok(ExitCode::SUCCESS)
}

fn prune(store: Option<&Path>, args: PruneArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(store)?;
    let opts = CachePrune::default()
        .with_all(args.all)
        .with_unused_for(args.filter)
        .with_keep_bytes(args.keep_storage);
    let report = store.cache_prune(&opts)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "removed {} cache entries, {} blobs ({} freed); kept {} entries, {} in layers only the cache holds",
        report.entries_removed,
        report.gc.removed.len(),
        human(report.gc.bytes_freed),
        report.entries_kept,
        human(report.cache_only_bytes)
    )?;
    Ok(ExitCode::SUCCESS)
}
