//! Placeholder: being written (helper: sandbox).
#![deny(missing_docs)]
