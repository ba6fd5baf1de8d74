//! One module per subcommand; each exposes an `Args` struct and a `run` function.

mod build;
mod check;
mod diff;
mod parse;
mod registry;
mod store;

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
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
pub enum Command {
    /// Build an image from a Dockerfile/Containerfile and a context directory.
    Build(build::Args),
    /// Parse a Dockerfile/Containerfile and print its stages and steps.
    Parse(parse::Args),
    /// Run the build checks (BuildKit's lint rules and strata's) without building: exit 1
    /// when a rule finds something.
    Check(check::Args),
    /// Import a directory or root-filesystem tar as a one-layer image (or copy an image from
    /// oci:DIR / docker-archive:FILE into the store).
    Import(store::ImportArgs),
    /// List tagged images.
    Images(store::ImagesArgs),
    /// Show an image's manifest and config.
    Inspect(store::InspectArgs),
    /// Compare two images: config, layers, files, transfer cost (exit 0 same, 1 different).
    Diff(diff::DiffArgs),
    /// Show an image's layers with the history lines that made them.
    History(diff::HistoryArgs),
    /// List an image's files, each with the layer it comes from.
    Ls(diff::LsArgs),
    /// Give an image another name.
    Tag(store::TagArgs),
    /// Remove image tags.
    Rmi(store::RmiArgs),
    /// Write an image to oci:DIR, docker-archive:FILE or dir:PATH.
    Export(store::ExportArgs),
    /// Delete blobs no tag or cache entry reaches.
    Gc(store::GcArgs),
    /// Verify every blob and reference in the store.
    Fsck(store::FsckArgs),
    /// Send an image to a registry; only the layers it lacks are uploaded.
    Push(registry::PushArgs),
    /// Fetch an image from a registry into the store; only the layers the store lacks move.
    Pull(registry::PullArgs),
    /// Copy an image between the store, oci:DIR, docker-archive:FILE and docker://HOST/REPO:TAG.
    Copy(registry::CopyArgs),
    /// Check credentials for a registry and save them.
    Login(registry::LoginArgs),
    /// Remove a registry's saved credentials.
    Logout(registry::LogoutArgs),
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let root = cli.store.as_deref();
    match cli.command {
        Command::Build(args) => build::run(root, args),
        Command::Parse(args) => parse::run(args),
        Command::Check(args) => check::run(root, args),
        Command::Import(args) => store::import(root, args),
        Command::Images(args) => store::images(root, args),
        Command::Inspect(args) => store::inspect(root, args),
        Command::Diff(args) => diff::diff(root, args),
        Command::History(args) => diff::history(root, args),
        Command::Ls(args) => diff::ls(root, args),
        Command::Tag(args) => store::tag(root, args),
        Command::Rmi(args) => store::rmi(root, args),
        Command::Export(args) => store::export(root, args),
        Command::Gc(args) => store::gc(root, args),
        Command::Fsck(args) => store::fsck(root, args),
        Command::Push(args) => registry::push(root, args),
        Command::Pull(args) => registry::pull(root, args),
        Command::Copy(args) => registry::copy(root, args),
        Command::Login(args) => registry::login(args),
        Command::Logout(args) => registry::logout(args),
    }
}

/// Exit code for an error that reached `main`: 1 for a recipe that does not parse or a build
/// that fails (as `docker build`), 3 for store damage that `strata fsck --repair` mends (a
/// missing or unparseable `index.json`), 2 for everything else (bad arguments, I/O).
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| {
        matches!(
            e.downcast_ref::<strata::store::StoreError>(),
            Some(strata::store::StoreError::DamagedFile { .. })
        )
    }) {
        3
    } else if err.chain().any(|e| {
        e.downcast_ref::<strata::recipe::ParseError>().is_some()
            || e.downcast_ref::<strata::build::BuildError>().is_some()
    }) {
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
