//! Builds a recipe into a store and tags it, printing each step as it starts:
//! `embed-build STORE CONTEXT TAG`.
//!
//! The build runs its RUN steps in strata's sandbox (root and overlayfs, or a user namespace);
//! a recipe of COPY, ADD and metadata instructions needs neither.
// A command-line example: printing is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use strata::build::{build, BuildEvent, BuildOptions};
use strata::store::Store;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, context, tag] = args.as_slice() else {
        eprintln!("usage: embed-build STORE CONTEXT TAG");
        return ExitCode::from(2);
    };
    match run(store, context, tag) {
        Ok(digest) => {
            println!("{digest}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("embed-build: {e}");
            let mut cause = e.source();
            while let Some(c) = cause {
                eprintln!("  caused by: {c}");
                cause = c.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn run(store: &str, context: &str, tag: &str) -> Result<String, Box<dyn std::error::Error>> {
    // `init` creates the store if there is none; `open` only opens an existing one.
    let store = Store::init(store)?;
    let mut opts = BuildOptions::new(context);
    opts.tags = vec![tag.to_string()];
    // Events arrive from the build's threads; any `Fn(&BuildEvent) + Sync` is a sink.
    let progress = |event: &BuildEvent| {
        if let BuildEvent::StepStart { line, text, .. } = event {
            eprintln!("step at line {line}: {text}");
        }
    };
    let out = build(&store, &opts, &progress)?;
    eprintln!("{} layers written, {} reused", out.layers_written, out.layers_reused);
    Ok(out.manifest.digest().to_string())
}
