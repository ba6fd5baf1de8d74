//! An OCI distribution-spec v1.1 client: moves images between a strata
//! [`Store`](strata_store::Store) and a registry, transferring only the blobs the other side
//! lacks, and verifying every byte it receives.
//!
//! The model: a registry is a second content-addressed store, reached over HTTP. An image is a
//! manifest naming a config blob and layer blobs by digest, so a transfer is "for each blob, does
//! the other side have it? if not, move it; then move the manifest". [`push`] asks with `HEAD`,
//! then *mounts* a blob it knows lives in another repository of the same registry (no bytes
//! move), else uploads it (monolithic for small blobs, chunked and resumable for large ones), and
//! only after every blob is in place `PUT`s the manifest, so a registry never holds a manifest
//! whose blobs are missing. [`pull`] fetches the manifest (bounded in size and hashed in memory),
//! picks the host platform from an index, converts a Docker schema2 manifest to OCI, and streams
//! each missing blob into the store's [`BlobWriter`](strata_store::BlobWriter), which refuses to
//! name bytes that do not hash to the digest asked for: nothing unverified is ever stored, and a
//! broken download resumes with `Range`. Blobs move in parallel, bounded by `jobs`.
//!
//! Whole multi-platform images move with [`push_index`] and [`pull_all`] (`copy --all`): the
//! index, every manifest it lists and all their blobs, byte for byte, so digests are kept.
//! [`copy`] moves one image from a registry to another (or to another repository of the same
//! one) asking the destination first, so a blob it has is never downloaded and a blob of the
//! same registry is mounted; its manifest is kept byte for byte too.
//!
//! A build cache travels as an OCI artifact ([`push_cache`], [`pull_cache`]): a manifest with
//! strata's `artifactType` whose config is the cache index and whose layers are the very blobs
//! of the images built, so exporting it after pushing an image only mounts or finds them.
//!
//! Knowledge of where blobs live ("`sha256:...` is in `host/repo`") is recorded in the store's
//! metadata under `strata/v1/registry-v1/` whenever a blob is pushed or pulled; it is a hint,
//! checked by the registry itself when a mount is attempted.
//!
//! Authentication follows the registry's `WWW-Authenticate` challenge (the Docker token
//! specification): anonymous first, then Basic, or a Bearer token fetched from the challenge's
//! realm with the scopes the operation needs (`repository:NAME:pull`, `pull,push`, and
//! `repository:FROM:pull` for a mount), cached until it expires. Credentials come from the
//! Docker/podman credential files and helpers ([`credentials`]). HTTPS uses rustls with the
//! system's CA bundle (falling back to the bundled WebPKI roots); plain HTTP is used only for
//! loopback hosts and for registries listed in [`ClientOptions::insecure`] that do not speak
//! TLS (those that do get HTTPS without certificate checks).
//!
//! Libraries report, callers render: progress is a stream of [`TransferEvent`]s sent to a
//! [`TransferSink`], and each operation returns a [`TransferReport`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod auth;
mod cache;
mod client;
mod copy;
pub mod credentials;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod index;
mod knowledge;
mod manifest;
mod pull;
mod push;

use serde::Serialize;
use strata_types::Digest;
pub use strata_types::Reference;

pub use cache::{pull_cache, push_cache, push_cache_fetching, RemoteCache};
pub use client::{Client, ClientOptions, DEFAULT_STALL_TIMEOUT};
pub use copy::{copy, copy_all, Copied};
pub use error::RegistryError;
pub use index::{pull_all, push_index, PulledIndex};
pub use pull::{pull, pull_platform, Pulled};
pub use push::{push, push_fetching, FetchMissing};

/// Options of [`push`].
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Blobs moved at once (at least 1; 0 is treated as 1).
    pub jobs: usize,
    /// Only check which blobs the registry has (HEAD); write nothing.
    pub dry_run: bool,
}

impl Default for PushOptions {
    fn default() -> PushOptions {
        PushOptions { jobs: 3, dry_run: false }
    }
}

/// Options of [`pull`].
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Blobs moved at once (at least 1; 0 is treated as 1).
    pub jobs: usize,
    /// Fetch (and verify) the manifest only; report which blobs would be downloaded.
    pub dry_run: bool,
    /// Layers (by blob digest) the caller brings in itself when it needs them (a build whose
    /// imported cache can stand them in): not downloaded, and an image pulled without some of
    /// its layers is stored but not tagged, since it is not whole.
    pub skip_layers: std::collections::BTreeSet<Digest>,
}

impl Default for PullOptions {
    fn default() -> PullOptions {
        PullOptions { jobs: 3, dry_run: false, skip_layers: Default::default() }
    }
}

/// Receives [`TransferEvent`]s; called from several threads at once.
pub trait TransferSink: Sync {
    /// Handles one event.
    fn event(&self, event: &TransferEvent);
}

/// A sink that drops every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTransferProgress;

impl TransferSink for NoTransferProgress {
    fn event(&self, _event: &TransferEvent) {}
}

/// What a transfer is doing, for progress display.
#[non_exhaustive]
#[derive(Debug, Clone, Serialize)]
pub enum TransferEvent {
    /// A blob transfer starts (after the existence check decided it must move).
    BlobStart {
        /// The blob.
        digest: Digest,
        /// Its size in bytes.
        size: u64,
        /// What it is.
        kind: BlobKind,
    },
    /// Bytes moved so far for that blob (throttled, not every write).
    BlobProgress {
        /// The blob.
        digest: Digest,
        /// Bytes done (may go back when an upload is resumed from where the registry was).
        done: u64,
    },
    /// The blob is done, with how.
    BlobDone {
        /// The blob.
        digest: Digest,
        /// How it got to the other side.
        outcome: BlobOutcome,
    },
    /// Nothing has moved for that blob for a while: sent once a second while the stall lasts,
    /// from a few seconds in (5 s, or half the stall timeout if that is shorter), `seconds`
    /// counting from the last byte (so it starts again low when a new stall begins). Once
    /// `seconds` reaches [`ClientOptions::stall_timeout`] the transfer fails with
    /// [`RegistryError::Stalled`].
    Stalled {
        /// The blob.
        digest: Digest,
        /// Whole seconds since the last byte moved.
        seconds: u64,
    },
    /// The manifest was written (push) or read (pull).
    Manifest {
        /// Its digest.
        digest: Digest,
    },
}

/// What a blob is to the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BlobKind {
    /// A layer.
    Layer,
    /// The image config.
    Config,
    /// A manifest or index.
    Manifest,
}

/// How a blob reached the other side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum BlobOutcome {
    /// Already there; nothing moved.
    Present,
    /// Mounted from another repository of the same registry; nothing moved.
    Mounted {
        /// The repository it was mounted from.
        from: String,
    },
    /// Uploaded to the registry.
    Uploaded,
    /// Downloaded into the store.
    Downloaded,
}

/// The summary of one push or pull.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TransferReport {
    /// The manifest digest pushed / pulled (for a pull: the manifest stored, which differs from
    /// the registry's when a Docker manifest was converted; see [`Pulled::source_digest`]).
    pub manifest: Option<Digest>,
    /// One per blob, config first and then the layers, in manifest order.
    pub blobs: Vec<BlobReport>,
    /// Blobs the other side already had.
    pub present: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs downloaded.
    pub downloaded: usize,
    /// Bytes of blob content that crossed the wire (would cross, in a dry run).
    pub bytes: u64,
    /// Whether this was a dry run (nothing written; outcomes are predictions).
    pub dry_run: bool,
}

/// One blob's line in a [`TransferReport`].
#[derive(Debug, Clone, Serialize)]
pub struct BlobReport {
    /// The blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// What it is.
    pub kind: BlobKind,
    /// How it was (or would be) transferred.
    pub outcome: BlobOutcome,
}

impl TransferReport {
    pub(crate) fn add(&mut self, blob: BlobReport) {
        match blob.outcome {
            BlobOutcome::Present => self.present += 1,
            BlobOutcome::Mounted { .. } => self.mounted += 1,
            BlobOutcome::Uploaded => {
                self.uploaded += 1;
                self.bytes += blob.size;
            }
            BlobOutcome::Downloaded => {
                self.downloaded += 1;
                self.bytes += blob.size;
            }
        }
        self.blobs.push(blob);
    }
}

/// Runs `f` on every item with at most `jobs` threads; results in item order. After the first
/// error no new item is started (items in flight finish), and the error that happened first is
/// returned: later ones are usually its consequences.
pub(crate) fn run_parallel<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> Result<R, RegistryError> + Sync,
) -> Result<Vec<R>, RegistryError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Mutex, PoisonError};
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<RegistryError>> = Mutex::new(None);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    let failed = || first_error.lock().unwrap_or_else(PoisonError::into_inner).is_some();
    let worker = || loop {
        if failed() {
            return;
        }
        let i = next.fetch_add(1, Ordering::SeqCst);
        let Some(item) = items.get(i) else { return };
        match f(item) {
            Ok(r) => results.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(r),
            Err(e) => {
                first_error.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(e);
            }
        }
    };
    let jobs = jobs.clamp(1, items.len().max(1));
    std::thread::scope(|s| {
        for _ in 1..jobs {
            s.spawn(worker);
        }
        worker();
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(PoisonError::into_inner) {
        return Err(e);
    }
    Ok(results.into_inner().unwrap_or_else(PoisonError::into_inner).into_iter().flatten().collect())
}

/// Emits `BlobProgress` at most every `PROGRESS_STEP` bytes, and `Stalled` while
/// [`Throttle::watch`]ing a transfer in which nothing moves.
pub(crate) struct Throttle<'a> {
    sink: &'a dyn TransferSink,
    digest: Digest,
    last: std::sync::atomic::AtomicU64,
    /// When the throttle was made, and milliseconds from then to the last report (progress).
    started: std::time::Instant,
    moved_at: std::sync::atomic::AtomicU64,
}

/// Bytes between two progress events of one blob.
const PROGRESS_STEP: u64 = 1 << 20;

impl<'a> Throttle<'a> {
    pub(crate) fn new(sink: &'a dyn TransferSink, digest: Digest) -> Throttle<'a> {
        Throttle {
            sink,
            digest,
            last: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
            moved_at: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Reports `done` if it moved far enough since the last report (or `force`). Every call
    /// counts as progress for [`Throttle::watch`].
    pub(crate) fn report(&self, done: u64, force: bool) {
        use std::sync::atomic::Ordering;
        self.moved_at.store(millis(self.started.elapsed()), Ordering::Relaxed);
        let last = self.last.load(Ordering::Relaxed);
        if force || done < last || done >= last + PROGRESS_STEP {
            self.last.store(done, Ordering::Relaxed);
            self.sink.event(&TransferEvent::BlobProgress { digest: self.digest, done });
        }
    }
}

impl Throttle<'_> {
    /// Runs `transfer` while a watcher thread sends [`TransferEvent::Stalled`] once a second
    /// after nothing was [`report`](Throttle::report)ed for `notice_after` (the thread blocked
    /// in a read cannot tell anyone; the watcher can).
    pub(crate) fn watch<R>(
        &self,
        notice_after: std::time::Duration,
        transfer: impl FnOnce() -> R,
    ) -> R {
        use std::sync::atomic::Ordering;
        use std::sync::{Condvar, Mutex, PoisonError};
        use std::time::Duration;
        /// Tells the watcher to stop, also when `transfer` panics.
        struct Finished<'f>(&'f (Mutex<bool>, Condvar));
        impl Drop for Finished<'_> {
            fn drop(&mut self) {
                *self.0 .0.lock().unwrap_or_else(PoisonError::into_inner) = true;
                self.0 .1.notify_all();
            }
        }
        let finished = (Mutex::new(false), Condvar::new());
        self.moved_at.store(millis(self.started.elapsed()), Ordering::Relaxed);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let (lock, wake) = &finished;
                let mut done = lock.lock().unwrap_or_else(PoisonError::into_inner);
                let mut told = 0;
                while !*done {
                    done = wake
                        .wait_timeout(done, Duration::from_millis(200))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    let now = millis(self.started.elapsed());
                    let idle = Duration::from_millis(
                        now.saturating_sub(self.moved_at.load(Ordering::Relaxed)),
                    );
                    if *done || idle < notice_after {
                        told = 0;
                        continue;
                    }
                    if idle.as_secs() != told {
                        told = idle.as_secs();
                        self.sink
                            .event(&TransferEvent::Stalled { digest: self.digest, seconds: told });
                    }
                }
            });
            let _finished = Finished(&finished);
            transfer()
        })
    }
}

/// When a stall is first shown: after 5 s without progress, or half the stall timeout if that
/// is shorter (at least a second).
pub(crate) fn stall_notice_after(stall_timeout: std::time::Duration) -> std::time::Duration {
    use std::time::Duration;
    (stall_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_runs_keep_order_and_stop_after_the_first_error() {
        let items: Vec<u32> = (0..20).collect();
        let out = run_parallel(&items, 4, |i| Ok(i * 2)).unwrap();
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let started = std::sync::atomic::AtomicUsize::new(0);
        let err = run_parallel(&items, 1, |i| {
            started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if *i == 3 {
                Err(RegistryError::NoCredentialsFile)
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(matches!(err, RegistryError::NoCredentialsFile));
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    #[test]
    fn clients_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Client>();
        check::<RegistryError>();
    }
}
