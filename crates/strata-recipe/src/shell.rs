//! Placeholder: being written (helper: shell).
