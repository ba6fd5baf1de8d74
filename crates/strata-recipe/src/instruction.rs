//! Placeholder: typed instructions.
