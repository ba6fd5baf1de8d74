//! `strata check` and `strata build --check`: the recipe's build checks (BuildKit's lint rules
//! and strata's), rendered as `docker build --check` does or as JSON. Exit status 1 when
//! anything is found, 0 when nothing is.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use strata::build::BuildOptions;
use strata::recipe::{BuildArgs, CheckReport, CheckWarning};

use super::store::open_store_if_present;

/// Arguments of `strata check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The recipe (default: CONTEXT/Dockerfile, else CONTEXT/Containerfile).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Print the warnings as JSON (format documented in the README, `"version": 1`).
    #[arg(long)]
    pub json: bool,
    /// Build argument `K=V` (a bare `K` takes its value from the environment);
    /// `BUILDKIT_DOCKERFILE_CHECK=skip=...` replaces the recipe's `# check=` directive.
    #[arg(long = "build-arg", value_name = "K=V")]
    pub build_args: Vec<String>,
    /// Check only the stages this stage (name or index) needs; all stages by default.
    #[arg(long)]
    pub target: Option<String>,
    /// The build context directory (its `.dockerignore` is read for `CopyIgnoredFile`).
    #[arg(default_value = ".")]
    pub context: PathBuf,
}

pub fn run(store: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    let mut opts = BuildOptions::new(&args.context);
    if let Some(f) = &args.file {
        opts.recipe_path = f.clone();
    }
    opts.build_args = super::parse_key_values(&args.build_args).into_iter().collect::<BuildArgs>();
    opts.target = args.target.clone();
    report(store, &opts, args.json)
}

/// The JSON document `strata check --json` prints; stable within its `version`.
#[derive(Serialize)]
struct Output<'a> {
    version: u32,
    file: String,
    warnings: &'a [CheckWarning],
}

/// Runs the checks of `opts` (base images' environments from the store, if there is one) and
/// renders them on stdout.
pub fn report(store: Option<&Path>, opts: &BuildOptions, json: bool) -> anyhow::Result<ExitCode> {
    let store = open_store_if_present(store);
    let report = match strata::build::check(store.as_ref(), opts) {
        Ok(r) => r,
        // A recipe that does not parse: the same diagnostic as `strata parse`.
        Err(strata::build::BuildError::Parse { path, source }) => {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            return Err((*source).with_source(path.display().to_string(), &text).into());
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot check {}", opts.recipe_path.display())))
        }
    };
    let file = opts.recipe_path.display().to_string();
    let mut out = std::io::stdout().lock();
    if json {
        let doc = Output { version: 1, file, warnings: &report.warnings };
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        let source = std::fs::read_to_string(&opts.recipe_path).unwrap_or_default();
        write_text(&mut out, &file, &source, &report)?;
    }
    Ok(if report.warnings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `docker build --check`'s layout: per warning the rule and its page, the message, the file
/// and line, and the lines around it with `>>>` on the one at fault; then a summary.
fn write_text(
    out: &mut impl Write,
    file: &str,
    source: &str,
    report: &CheckReport,
) -> std::io::Result<()> {
    let lines: Vec<&str> = source.lines().collect();
    for w in &report.warnings {
        match w.url {
            Some(url) => writeln!(out, "WARNING: {} - {url}", w.rule)?,
            None => writeln!(out, "WARNING: {} (strata)", w.rule)?,
        }
        writeln!(out, "{}", w.message)?;
        if w.span.line == 0 {
            writeln!(out, "{file}\n")?;
            continue;
        }
        writeln!(out, "{file}:{}", w.span.line)?;
        writeln!(out, "--------------------")?;
        let first = w.span.line.saturating_sub(2).max(1);
        let last = (w.span.line + 2).min(lines.len());
        for n in first..=last {
            let marker = if n == w.span.line { ">>>" } else { "   " };
            writeln!(out, "{n:>4} | {marker} {}", lines.get(n - 1).unwrap_or(&""))?;
        }
        writeln!(out, "--------------------\n")?;
    }
    match report.warnings.len() {
        0 => writeln!(out, "Check complete, no warnings found.")?,
        1 => writeln!(out, "Check complete, 1 warning has been found!")?,
        n => writeln!(out, "Check complete, {n} warnings have been found!")?,
    }
    if report.fails_build() {
        let rules = report.rules_violated().join(", ");
        writeln!(
            out,
            "check=error=true: a build fails with lint violation found for rules: {rules}"
        )?;
    }
    Ok(())
}
