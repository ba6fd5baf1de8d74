//! Ctrl-C (SIGINT) and SIGTERM during a build.
//!
//! The first signal cancels the build's [`CancelToken`]: the library stops before the next
//! step, kills a running RUN with its whole pid namespace, stops a COPY/ADD between files,
//! removes its scratch space and mounts, and the command then exits 130. A second signal exits at once (the kernel still
//! kills a running RUN: its PID 1 has `PR_SET_PDEATHSIG`). The handler runs on a thread of
//! signal-hook's, not in signal context, so it may lock and print.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use strata::build::CancelToken;

/// The exit status of a build stopped by a signal (128 + SIGINT, as shells report it).
pub const CANCELLED_EXIT: u8 = 130;

/// While alive, SIGINT and SIGTERM cancel `cancel` (calling `on_first` once) instead of
/// killing the process; dropping it stops listening.
pub struct Interrupts {
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Interrupts {
    /// Starts listening.
    pub fn install(
        cancel: CancelToken,
        on_first: impl Fn() + Send + 'static,
    ) -> std::io::Result<Interrupts> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        let thread =
            std::thread::Builder::new().name("strata-signals".into()).spawn(move || {
                for _ in signals.forever() {
                    if cancel.is_cancelled() {
                        std::process::exit(i32::from(CANCELLED_EXIT));
                    }
                    cancel.cancel();
                    on_first();
                }
            })?;
        Ok(Interrupts { handle, thread: Some(thread) })
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
