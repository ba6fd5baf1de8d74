//! Placeholder: being written (helper: build).
#![deny(missing_docs)]
