//! Compares two images of a store: `embed-diff STORE A B`. Prints what changed and what
//! pushing B to where A already is would cost; exits 1 when they differ, like diff(1).
// A command-line example: printing is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use strata::diff::{diff, DiffOptions, StoredImage};
use strata::store::Store;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, a, b] = args.as_slice() else {
        eprintln!("usage: embed-diff STORE A B");
        return ExitCode::from(2);
    };
    match run(store, a, b) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("embed-diff: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(store: &str, a: &str, b: &str) -> Result<bool, Box<dyn std::error::Error>> {
    let store = Store::open(store)?;
    let (image_a, image_b) = (store.load_image(a)?, store.load_image(b)?);
    // Each side names the store holding its blobs: the two may live in different stores.
    let report = diff(
        StoredImage::new(&store, &image_a).named(a),
        StoredImage::new(&store, &image_b).named(b),
        &DiffOptions::default(),
    )?;
    for change in report.files.iter().flat_map(|f| &f.changes) {
        println!("{:?} {}", change.change, change.path);
    }
    if let Some(cost) = &report.transfer {
        println!("transfer: {} blobs, {} bytes", cost.blobs, cost.bytes);
    }
    println!("layers read: {}", report.stats.layers_read);
    Ok(report.identical)
}
