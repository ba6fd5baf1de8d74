//! `strata completion SHELL` and `strata man DIR`: documentation generated from the same clap
//! definitions that parse the arguments, so it cannot drift from them.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use super::Cli;

/// `strata completion SHELL`.
#[derive(Debug, clap::Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn completion(args: CompletionArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "strata", &mut out);
    std::io::stdout().lock().write_all(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// `strata man DIR`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory to write the pages to (created if missing): `strata.1`, `strata-build.1`, ...
    pub dir: PathBuf,
}

pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = 0;
    write_pages(&cmd, &args.dir, &mut written)?;
    writeln!(std::io::stdout().lock(), "wrote {written} man pages to {}", args.dir.display())?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the page of `cmd` and of each of its subcommands.
fn write_pages(
    cmd: &clap::Command,
    dir: &std::path::Path,
    written: &mut usize,
) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut page)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut page)?;
    }
    // The `after_help` text is either examples (`Examples:` then command lines) or, for
    // `strata` itself, the exit code table: each gets its conventional man section.
    if let Some(after) = cmd.get_after_help().map(|h| h.to_string()) {
        let (title, body) = match after.split_once('\n') {
            Some(("Examples:", body)) => ("EXAMPLES", body.to_string()),
            Some((head, body)) if head.starts_with("Exit codes") => {
                ("EXIT STATUS", body.to_string())
            }
            _ => ("NOTES", after.clone()),
        };
        writeln!(page, ".SH {title}\n.nf")?;
        for line in body.lines() {
            writeln!(page, "{}", roff_line(line))?;
        }
        writeln!(page, ".fi")?;
    }
    man.render_version_section(&mut page)?;
    let path = dir.join(man.get_filename());
    fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    *written += 1;
    Ok(())
}

/// One line of literal text in roff: backslashes escaped, a leading `.` or `'` (which roff
/// would take for a request) guarded by a zero-width `\&`.
fn roff_line(line: &str) -> String {
    let escaped = line.replace('\\', "\\e");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}
