//! Pushes an image of a store to a registry, moving only what the registry lacks:
//! `embed-push STORE IMAGE docker://HOST/REPO:TAG`.
//!
//! Loopback registries are spoken to over plain HTTP; others need a certificate the system
//! trusts (or `ClientOptions::insecure`). Credentials come from the Docker config file.
// A command-line example: printing is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use strata::image::{copy, CopyOptions};
use strata::registry::{Client, ClientOptions, NoTransferProgress};
use strata::store::Store;
use strata::types::ImageLocation;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, image, dest] = args.as_slice() else {
        eprintln!("usage: embed-push STORE IMAGE docker://HOST/REPO:TAG");
        return ExitCode::from(2);
    };
    match run(store, image, dest) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embed-push: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(store: &str, image: &str, dest: &str) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(store)?;
    let src: ImageLocation = image.parse()?;
    let dst: ImageLocation = dest.parse()?;
    // The store as blob hints: where blobs were seen is remembered, so later pushes to
    // another repository of the same registry mount instead of uploading.
    let client = Client::new(ClientOptions::default())?.with_blob_hints(store.clone());
    let outcome = copy(&client, &store, &src, &dst, &CopyOptions::default(), &NoTransferProgress)?;
    let report = outcome.transfer.ok_or("not a registry destination")?;
    println!("manifest {}", outcome.manifest);
    println!(
        "{} present, {} mounted, {} uploaded, {} bytes",
        report.present, report.mounted, report.uploaded, report.bytes
    );
    Ok(())
}
