//! The `strata` command: parses arguments, calls the library, renders results, maps errors to
//! exit codes. Logic a library user would want lives in the library crates, not here.
#![forbid(unsafe_code)]

mod commands;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: glibc keeps what the walk, copy and compression
/// threads free in per-thread arenas, so a large build's RSS ran 60-100 MB above its live heap
/// (see the workspace Cargo.toml).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            // A corrupt blob is the one thing to say, however deep the reader that met it;
            // other damage gets the fsck hint.
            match (commands::corrupt_blob(&err), commands::damage_hint(&err)) {
                (Some(corrupt), _) => {
                    let _ = writeln!(std::io::stderr(), "strata: error: {corrupt}");
                }
                (None, Some(hint)) => {
                    let _ = writeln!(std::io::stderr(), "strata: error: {err:#}; {hint}");
                }
                (None, None) => {
                    let _ = writeln!(std::io::stderr(), "strata: error: {err:#}");
                }
            }
            ExitCode::from(commands::exit_code_for(&err))
        }
    }
}

/// A closed stdout (`strata parse | head`) is not a failure.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
