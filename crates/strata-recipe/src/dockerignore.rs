//! Placeholder: being written (helper: shell).
/// Placeholder.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore;
