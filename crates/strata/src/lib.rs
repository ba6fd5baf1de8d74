//! strata: the embedding API.
//!
//! One dependency for programs that embed strata: each module re-exports the crate that owns
//! that part of the job (see DESIGN.md): [`types`] is the vocabulary (digests, references,
//! image locations, platforms, media types), [`recipe`] parses Dockerfiles into stages and
//! steps, [`store`] is the content-addressed OCI-layout store, [`layer`] turns trees into
//! layers and back, [`image`] opens, copies, imports and exports whole images wherever they
//! live ([`image::copy`] is the one entry point that moves an image between any two places),
//! [`build`] executes a recipe into an image, [`registry`] speaks the OCI distribution
//! protocol, and [`diff`] compares two images (config, layers, files, what a transfer
//! costs) and lists one (history, file tree, wasted space), reading only the layers the two
//! do not share.
#![deny(missing_docs)]

pub use strata_build as build;
pub use strata_diff as diff;
pub use strata_image as image;
pub use strata_layer as layer;
pub use strata_recipe as recipe;
pub use strata_registry as registry;
pub use strata_store as store;
pub use strata_types as types;

/// The README's Rust examples, compiled and run as doctests so the README stays true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
