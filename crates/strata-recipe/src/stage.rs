//! Placeholder: stages.
