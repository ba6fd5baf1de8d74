//! One module per subcommand; each exposes an `Args` struct and a `run` function.

mod build;
mod cache;
mod check;
mod diff;
mod docs;
mod interrupt;
mod parse;
mod progress;
mod registry;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The exit codes of every command, shown by `strata --help` (and in README.md).
pub const EXIT_CODES: &str = "\
Exit codes (every command):
  0  success
  1  the thing failed: a build step, a recipe that does not parse, a check that found
     something, a diff that found differences
  2  usage or environment: bad arguments, a missing file or image, no store, a registry
     that refuses or cannot be reached
  3  store damage: a blob or metadata file that does not match what refers to it
     (run `strata fsck`)";

/// strata: a content-addressed container image builder and layer store.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about, long_about = None, propagate_version = true,
          after_help = EXIT_CODES)]
pub struct Cli {
    /// Root of the image store (an OCI image layout). Default: $STRATA_STORE, else
    /// $XDG_DATA_HOME/strata, else ~/.local/share/strata (an empty variable counts as unset).
    // Not clap's `env`: it takes an empty STRATA_STORE= for an empty --store; the library's
    // `Store::default_root` reads the variable and ignores it when empty.
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
pub enum Command {
    /// Build an image from a Dockerfile/Containerfile and a context directory.
    #[command(after_help = build::EXAMPLES)]
    Build(build::Args),
    /// Parse a Dockerfile/Containerfile and print its stages and steps.
    Parse(parse::Args),
    /// Run the build checks (BuildKit's lint rules and strata's) without building: exit 1
    /// when a rule finds something.
    Check(check::Args),
    /// Import a directory or root-filesystem tar as a one-layer image (or copy an image from
    /// oci:DIR / docker-archive:FILE into the store).
    Import(store::ImportArgs),
    /// List images: tagged ones, and untagged (dangling) builds as `<none>`.
    #[command(after_help = store::IMAGES_EXAMPLES)]
    Images(store::ImagesArgs),
    /// Manage images (`strata image ls`, `strata image prune`).
    #[command(subcommand)]
    Image(store::ImageCommand),
    /// Show an image's manifest and config.
    Inspect(store::InspectArgs),
    /// Compare two images: config, layers, files, transfer cost (exit 0 same, 1 different).
    #[command(after_help = diff::DIFF_EXAMPLES)]
    Diff(diff::DiffArgs),
    /// Show an image's layers with the history lines that made them.
    History(diff::HistoryArgs),
    /// List an image's files, each with the layer it comes from.
    Ls(diff::LsArgs),
    /// Give an image another name.
    Tag(store::TagArgs),
    /// Remove images by tag or ID (`-f` for an image with several tags).
    Rmi(store::RmiArgs),
    /// Write an image to oci:DIR, docker-archive:FILE or dir:PATH.
    Export(store::ExportArgs),
    /// Delete blobs no tag, dangling image or running build reaches, cache-only layers
    /// included unless `--keep-storage` (`--dangling`: prune untagged images first).
    Gc(store::GcArgs),
    /// The local build cache (`strata cache ls`, `strata cache prune`).
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Verify every blob and reference in the store.
    Fsck(store::FsckArgs),
    /// Send an image to a registry; only the layers it lacks are uploaded.
    #[command(after_help = registry::PUSH_EXAMPLES)]
    Push(registry::PushArgs),
    /// Fetch an image from a registry into the store; only the layers the store lacks move.
    Pull(registry::PullArgs),
    /// Copy an image between the store, oci:DIR, docker-archive:FILE and docker://HOST/REPO:TAG.
    Copy(registry::CopyArgs),
    /// Check credentials for a registry and save them.
    Login(registry::LoginArgs),
    /// Remove a registry's saved credentials.
    Logout(registry::LogoutArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(docs::CompletionArgs),
    /// Write man pages (strata.1 and one per command) into a directory.
    Man(docs::ManArgs),
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
        Command::Image(cmd) => store::image_command(root, cmd),
        Command::Inspect(args) => store::inspect(root, args),
        Command::Diff(args) => diff::diff(root, args),
        Command::History(args) => diff::history(root, args),
        Command::Ls(args) => diff::ls(root, args),
        Command::Tag(args) => store::tag(root, args),
        Command::Rmi(args) => store::rmi(root, args),
        Command::Export(args) => store::export(root, args),
        Command::Gc(args) => store::gc(root, args),
        Command::Cache(cmd) => cache::run(root, cmd),
        Command::Fsck(args) => store::fsck(root, args),
        Command::Push(args) => registry::push(root, args),
        Command::Pull(args) => registry::pull(root, args),
        Command::Copy(args) => registry::copy(root, args),
        Command::Login(args) => registry::login(args),
        Command::Logout(args) => registry::logout(args),
        Command::Completion(args) => docs::completion(args),
        Command::Man(args) => docs::man(args),
    }
}

/// Exit code for an error that reached `main`, by [`EXIT_CODES`]: 3 when the store is damaged,
/// 2 for a request the user can fix (an option, a name, a file), 1 when a build or parse
/// failed, 2 for everything else (I/O, registries).
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    use strata::build::BuildError;
    use strata::image::ImageError;
    use strata::store::StoreError;
    if is_damage(err) || corrupt_blob(err).is_some() {
        return 3;
    }
    let usage = err.chain().any(|e| {
        e.is::<strata::types::ReferenceError>()
            || e.is::<strata::types::LocationError>()
            || matches!(
                store_error(e),
                Some(StoreError::InvalidReference(_) | StoreError::UnexpectedDigest { .. })
            )
            || matches!(
                image_error(e),
                Some(
                    ImageError::InvalidSourceDateEpoch { .. }
                        | ImageError::InvalidPullPolicy { .. }
                )
            )
            || matches!(
                e.downcast_ref::<BuildError>(),
                Some(
                    BuildError::NoRecipe { .. }
                        | BuildError::ReadRecipe { .. }
                        | BuildError::InvalidTimestamp { .. }
                        | BuildError::InvalidOutput { .. }
                        | BuildError::InvalidSecretSpec { .. }
                        | BuildError::UnknownStageFilter { .. }
                )
            )
    });
    if usage {
        return 2;
    }
    if err.chain().any(|e| e.is::<strata::recipe::ParseError>() || e.is::<BuildError>()) {
        1
    } else {
        2
    }
}

/// The [`StoreError::CorruptBlob`] anywhere in `err`'s chain (also inside transparent
/// wrappers and I/O errors): a corrupt blob stops a command with that one line, whatever was
/// reading it.
pub fn corrupt_blob(err: &anyhow::Error) -> Option<&strata::store::StoreError> {
    use strata::build::BuildError;
    use strata::store::StoreError;
    err.chain().find_map(|e| {
        // A failed step boxes its cause; look at the root of it.
        let step = e
            .downcast_ref::<BuildError>()
            .or_else(|| e.downcast_ref::<Box<BuildError>>().map(|b| &**b))
            .map(|b| b.root_cause() as &(dyn std::error::Error + 'static));
        [Some(e), step].into_iter().flatten().find_map(|e| match store_error(e) {
            Some(s @ StoreError::CorruptBlob { .. }) => Some(s),
            _ => StoreError::corrupt_blob_in(e),
        })
    })
}

/// Whether `err` says the store is damaged (exit 3).
fn is_damage(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        store_error(e).is_some_and(strata::store::StoreError::is_damage)
            || e.downcast_ref::<strata::diff::DiffError>().is_some_and(|d| d.is_damage())
    })
}

/// What to add to the error line of a damaged store: run `strata fsck` (unless the error
/// already names the repair, as a damaged metadata file does).
pub fn damage_hint(err: &anyhow::Error) -> Option<&'static str> {
    let names_repair = err
        .chain()
        .any(|e| matches!(store_error(e), Some(strata::store::StoreError::DamagedFile { .. })));
    (is_damage(err) && !names_repair).then_some("run `strata fsck` to check the store")
}

/// The store error `e` is or wraps transparently (`#[error(transparent)]` variants hide it
/// from the source chain).
fn store_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a strata::store::StoreError> {
    use strata::build::BuildError;
    if let Some(s) = e.downcast_ref::<strata::store::StoreError>() {
        return Some(s);
    }
    let layer = |l: &'a strata::layer::LayerError| match l {
        strata::layer::LayerError::Store(s) => Some(s),
        _ => None,
    };
    let image = |i: &'a strata::image::ImageError| match i {
        strata::image::ImageError::Store(s) => Some(s),
        strata::image::ImageError::Registry(strata::registry::RegistryError::Store(s)) => Some(s),
        strata::image::ImageError::Layer(l) => layer(l),
        _ => None,
    };
    if let Some(b) = e.downcast_ref::<BuildError>() {
        return match b {
            BuildError::Store(s) => Some(s),
            BuildError::Image(i) => image(i),
            BuildError::Layer(l) => layer(l),
            _ => None,
        };
    }
    if let Some(i) = e.downcast_ref::<strata::image::ImageError>() {
        return image(i);
    }
    if let Some(l) = e.downcast_ref::<strata::layer::LayerError>() {
        return layer(l);
    }
    if let Some(strata::registry::RegistryError::Store(s)) = e.downcast_ref() {
        return Some(s);
    }
    // A failed push of a build boxes its registry error.
    if let Some(b) = e.downcast_ref::<Box<strata::registry::RegistryError>>() {
        if let strata::registry::RegistryError::Store(s) = &**b {
            return Some(s);
        }
    }
    if let Some(strata::diff::DiffError::Store(s)) = e.downcast_ref() {
        return Some(s);
    }
    None
}

/// The image error `e` is or wraps transparently.
fn image_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a strata::image::ImageError> {
    match e.downcast_ref::<strata::build::BuildError>() {
        Some(strata::build::BuildError::Image(i)) => Some(i),
        _ => e.downcast_ref(),
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
