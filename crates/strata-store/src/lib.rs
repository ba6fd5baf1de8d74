//! Placeholder: being written (helper: store).
#![deny(missing_docs)]
