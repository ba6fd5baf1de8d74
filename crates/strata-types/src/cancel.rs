//! A flag one thread raises to stop work another thread is doing.
//!
//! A build is stopped by Ctrl-C from the CLI's signal thread while its steps run on others:
//! the sandbox kills a running RUN, and the long loops of a COPY (hashing the context,
//! staging files, writing the layer) look at the flag between files and between chunks of
//! a big one. It lives here, in the vocabulary crate, so the crates that do that work can
//! all take the same token without depending on each other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A shared stop flag: [`CancelToken::cancel`] on any clone is seen by every clone.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests cancellation (idempotent).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
