//! strata's vocabulary: the values every other crate speaks in, parsed once and valid once
//! parsed.
//!
//! A [`Digest`] is the SHA-256 that names a blob; a [`Reference`] is an image name as the
//! distribution project's grammar has it (`host/repo:tag@digest`); an [`ImageLocation`] is
//! where an image lives, named as containers-transports(5) names it (`oci:DIR:REF`,
//! `docker://...`, a plain store name); a [`Platform`] is the OS and architecture an image is
//! for; the `MEDIA_TYPE_*` constants are the OCI media types strata writes. Each is parsed in
//! its `FromStr`, which serde goes through too, so a malformed value cannot travel between
//! crates. This crate does no I/O: it sits below every other crate of the workspace, and
//! strata-recipe, which uses no other strata crate, uses it for [`Platform`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cancel;
mod digest;
mod location;
mod media;
mod platform;
mod reference;
mod report;

pub use cancel::CancelToken;
pub use digest::{Digest, DigestParseError, DigestParseErrorKind, Hasher, SHA256};
pub use location::{ImageLocation, LocationError};
pub use media::*;
pub use platform::{Platform, PlatformParseError};
pub use reference::{Reference, ReferenceError, ReferenceErrorKind, DEFAULT_TAG};
pub use report::{chain, elide};
