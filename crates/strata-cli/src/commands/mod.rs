//! One module per subcommand; each exposes an `Args` struct and a `run` function.

mod parse;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// strata: a content-addressed container image builder and layer store.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Root of the image store (an OCI image layout). Default: $STRATA_STORE, else
    /// $XDG_DATA_HOME/strata, else ~/.local/share/strata.
    #[arg(long, global = true, env = "STRATA_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse a Dockerfile/Containerfile and print its stages and steps.
    Parse(parse::Args),
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Parse(args) => parse::run(args),
    }
}

/// Exit code for an error that reached `main`: 1 for bad input the user can fix (a recipe
/// that does not parse), 2 for everything else (I/O, a corrupt store).
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.downcast_ref::<strata::recipe::ParseError>().is_some()) {
        1
    } else {
        2
    }
}

/// Splits `K=V`; a bare `K` takes its value from the environment, as `docker build
/// --build-arg K` does, and is dropped when the environment has none.
pub fn parse_key_values(items: &[String]) -> Vec<(String, String)> {
    items
        .iter()
        .filter_map(|item| match item.split_once('=') {
            Some((k, v)) => Some((k.to_string(), v.to_string())),
            None => std::env::var(item).ok().map(|v| (item.clone(), v)),
        })
        .collect()
}
