//! strata: a content-addressed container image builder and layer store, as a library.
//!
//! # The model
//!
//! A *recipe* (a Dockerfile or Containerfile, unchanged) is parsed into stages and steps.
//! Each step that changes the filesystem produces one *layer*: a tar of what changed, named
//! by the SHA-256 of its bytes. The *store* keeps every blob once, on disk as an OCI image
//! layout (`skopeo inspect oci:$STORE:app:v1` reads it), and remembers, per step, the layer
//! its inputs produced, so a rebuild runs only the steps whose inputs changed. An *image* is
//! a manifest naming a config and layers; it can live in the store, another OCI layout, a
//! `docker save` archive or a registry, and moving it between two of those moves only the
//! blobs the other side lacks. Two images can be compared down to the file, and what a push
//! of one to where the other is would cost.
//!
//! # The four tasks
//!
//! **Parse** a recipe into its stages (no I/O):
//!
//! ```
//! use strata::recipe::{parse, BuildArgs};
//!
//! let recipe = parse("ARG V=3.20\nFROM alpine:${V} AS base\nRUN echo hi\n")?;
//! let stages = recipe.stages(&BuildArgs::new())?;
//! assert_eq!(stages.len(), 1);
//! # Ok::<(), strata::recipe::ParseError>(())
//! ```
//!
//! **Build** a context into a store and tag the result (`examples/embed-build.rs` prints
//! progress and reports errors with their causes):
//!
//! ```no_run
//! use strata::build::{build, BuildOptions, NoProgress};
//! use strata::store::Store;
//!
//! let store = Store::init("/var/lib/strata")?; // creates it when missing; `open` does not
//! let mut opts = BuildOptions::new("./app");
//! opts.tags = vec!["app:v2".into()];
//! let out = build(&store, &opts, &NoProgress)?;
//! println!("{} ({} layers reused)", out.manifest.digest(), out.layers_reused);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **Diff** two images, reading only the layers they do not share (`examples/embed-diff.rs`):
//!
//! ```no_run
//! use strata::diff::{diff, DiffOptions, StoredImage};
//! use strata::store::Store;
//!
//! let store = Store::open("/var/lib/strata")?;
//! let (v1, v2) = (store.load_image("app:v1")?, store.load_image("app:v2")?);
//! let report = diff(StoredImage::new(&store, &v1), StoredImage::new(&store, &v2), &DiffOptions::default())?;
//! let cost = report.transfer.expect("layers are compared by default");
//! println!("identical: {}, a push moves {} bytes", report.identical, cost.bytes);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **Push** (or pull, or copy between any two places) moving only what the other side lacks
//! (`examples/embed-push.rs`):
//!
//! ```no_run
//! use strata::image::{copy, CopyOptions};
//! use strata::registry::{Client, ClientOptions, NoTransferProgress};
//! use strata::store::Store;
//! use strata::types::ImageLocation;
//!
//! let store = Store::open("/var/lib/strata")?;
//! let client = Client::new(ClientOptions::default())?.with_blob_hints(store.clone());
//! let src: ImageLocation = "app:v2".parse()?;
//! let dst: ImageLocation = "docker://registry.example/team/app:v2".parse()?;
//! let outcome = copy(&client, &store, &src, &dst, &CopyOptions::default(), &NoTransferProgress)?;
//! println!("{} blobs uploaded", outcome.transfer.map_or(0, |t| t.uploaded));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The three examples under `crates/strata/examples/` are built and run by `cargo test`.
//!
//! # Where things are
//!
//! Each module re-exports the crate that owns that part of the job: [`types`] is the
//! vocabulary (digests, references, image locations, platforms, media types); [`recipe`]
//! parses; [`store`] is the content-addressed store and its side tables; [`layer`] turns
//! trees into layers and back (and holds the overlay model); [`image`] treats images as a
//! whole (name resolution, open, copy, import, export); [`build`] executes a recipe;
//! [`registry`] speaks the OCI distribution protocol; [`diff`] compares and lists images.
//! This crate holds no logic of its own.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[doc(inline)]
pub use strata_build as build;
#[doc(inline)]
pub use strata_diff as diff;
#[doc(inline)]
pub use strata_image as image;
#[doc(inline)]
pub use strata_layer as layer;
#[doc(inline)]
pub use strata_recipe as recipe;
#[doc(inline)]
pub use strata_registry as registry;
#[doc(inline)]
pub use strata_store as store;
#[doc(inline)]
pub use strata_types as types;

/// The README's Rust examples, compiled and run as doctests so the README stays true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
