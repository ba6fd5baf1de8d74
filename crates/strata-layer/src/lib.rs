//! Placeholder: being written (helper: layer).
#![deny(missing_docs)]
