//! Leases: what a live writer keeps from gc, and how gc tells a live writer from a dead one.
//!
//! A blob is unreferenced between its write and the tag, manifest or cache entry that will
//! name it, and a build relies on untagged snapshots and cache entries throughout. So, as
//! containerd's leases do, every writer registers a lease: a file
//! `<root>/strata/v1/leases/<name>` whose first line says which process owns it (pid and start
//! time, for people) and whose other lines are the digests this handle has written or pinned,
//! one per line, appended as it goes. The owner holds an exclusive `flock` on the file for as
//! long as the lease lives (the last clone of the [`Store`] handle); that lock, not the pid,
//! is how [`Store::gc`] tells a live lease (lock held: its digests are roots) from a dead one
//! (lock free: the owner was killed, so gc deletes the file and the blobs only it named are
//! garbage like any other). A lease file is created and locked in the tmp directory and only
//! then renamed into `leases/`, so gc never sees one unlocked while its owner lives.
//!
//! The race between a writer and gc is closed by `strata/v1/gc.lock`: a writer holds it
//! shared while it records a digest in its lease and publishes or checks the thing the digest
//! names (renames a blob into place, finds a blob already there, finds a snapshot or a cache
//! entry's layer), and gc holds it exclusively from reading the leases to the end of its
//! sweep. Either the writer's record-and-publish came first, and gc reads the digest in the
//! lease, or it comes after the sweep, and the writer sees what gc deleted as missing (a
//! blob writer still holds the bytes in its temp file and renames them in). The shared hold
//! lasts microseconds, so writers never wait long for each other, and only as long as a gc
//! run for gc. Lock order: the index lock (`strata/v1/lock`) before `gc.lock`; nothing that
//! holds `gc.lock` takes the index lock.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::error::StoreError;
use crate::gc::{parse_roots, read_dir_if_exists};
use crate::store::{open_lock_file, Store};
use strata_types::Digest;

/// What gc learns from the leases.
#[derive(Debug, Default)]
pub(crate) struct LeaseRoots {
    /// The digests of every live lease.
    pub(crate) roots: Vec<Digest>,
    /// Live leases.
    pub(crate) live: usize,
    /// Dead leases deleted.
    pub(crate) dead: usize,
}

/// This handle's lease (see the module docs); dropping it ends the lease.
#[derive(Debug)]
pub(crate) struct Lease {
    /// The lease file, exclusively `flock`ed.
    file: File,
    path: PathBuf,
    /// `strata/v1/gc.lock`, locked shared around each record-and-publish.
    gc_lock: File,
    gc_lock_path: PathBuf,
    /// Digests already in the file.
    recorded: HashSet<Digest>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Removed while still locked: gc sees it live or not at all.
        let _ = fs::remove_file(&self.path);
    }
}

impl Store {
    /// `<root>/strata/v1/leases`: one file per live writer.
    pub(crate) fn leases_dir(&self) -> PathBuf {
        self.meta_dir().join("leases")
    }

    /// `<root>/strata/v1/gc.lock`: writers hold it shared while they record and publish, gc
    /// exclusively while it reads leases and sweeps.
    pub(crate) fn gc_lock_path(&self) -> PathBuf {
        self.meta_dir().join("gc.lock")
    }

    /// Takes this handle's writer lease (once; later calls and clones share it), kept until
    /// the last clone of the handle is dropped. Every blob this handle writes, and everything
    /// it pins ([`Store::pin`]; [`Store::image`], the snapshot table, [`Store::cache_get`] and
    /// [`Store::find_layer`] pin what they return), is a gc root while the lease lives, so a
    /// concurrent [`Store::gc`] removes everything else and never what this handle relies on.
    /// [`Store::blob_writer`] takes the lease itself; a build or pull calls this at its start.
    ///
    /// Taking a lease also sweeps what dead processes left in the store's tmp directory
    /// (killed imports' and pulls' temp files, work directories nobody holds a lock on).
    pub fn lease(&self) -> Result<(), StoreError> {
        let mut slot = self.lease_slot();
        if slot.is_some() {
            return Ok(());
        }
        self.ensure_meta_dirs()?;
        // Best effort: a leftover that cannot be removed is no reason to fail a write.
        let _ = self.sweep_dead_temp();
        let dir = self.leases_dir();
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        let mut temp = crate::blob::locked_temp_file(&self.tmp_dir(), "lease-")?;
        let header = format!(
            "# strata lease: pid {} started {}\n",
            std::process::id(),
            process_start_time().unwrap_or_default()
        );
        temp.write_all(header.as_bytes()).map_err(StoreError::io(temp.path()))?;
        let name = temp.path().file_name().map(|n| n.to_owned()).unwrap_or_default();
        let path = dir.join(name);
        let file = temp
            .persist(&path)
            .map_err(|e| StoreError::Io { path: path.clone(), source: e.error })?;
        let gc_lock_path = self.gc_lock_path();
        let gc_lock = open_lock_file(&gc_lock_path)?;
        *slot = Some(Lease { file, path, gc_lock, gc_lock_path, recorded: HashSet::new() });
        Ok(())
    }

    /// Records `digests` in this handle's lease (taking one if needed): from now on, while the
    /// handle lives, [`Store::gc`] keeps them, whatever manifests or indexes among them name,
    /// and the snapshots they name (a digest may be a layer's diffID). Pin before checking
    /// that the content is there: a pin after gc's sweep finds it gone.
    pub fn pin(&self, digests: &[Digest]) -> Result<(), StoreError> {
        self.lease()?;
        self.with_pins(digests, || Ok(()))
    }

    /// Runs `f` (which publishes or checks what `digests` name) with `digests` recorded in
    /// the lease first, both under a shared hold of `gc.lock` (see the module docs). Without
    /// a lease (a read-only handle), just runs `f`.
    pub(crate) fn with_pins<T>(
        &self,
        digests: &[Digest],
        f: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.lease_slot();
        let Some(lease) = slot.as_mut() else {
            drop(slot);
            return f();
        };
        let lock_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: rustix::io::Errno| StoreError::Io { path, source: e.into() }
        };
        flock(&lease.gc_lock, FlockOperation::LockShared).map_err(lock_err(&lease.gc_lock_path))?;
        let result = record(lease, digests).and_then(|()| f());
        let unlocked =
            flock(&lease.gc_lock, FlockOperation::Unlock).map_err(lock_err(&lease.gc_lock_path));
        let value = result?;
        unlocked?;
        Ok(value)
    }

    /// [`Store::with_pins`] for a lookup that answers "absent" rather than failing: a pin
    /// that cannot be recorded is a miss (the caller then makes the thing anew).
    pub(crate) fn pinned_lookup<T>(
        &self,
        digests: &[Digest],
        f: impl FnOnce() -> Option<T>,
    ) -> Option<T> {
        self.with_pins(digests, || Ok(f())).ok().flatten()
    }

    /// Reads every lease but this handle's own: a live one's digests are returned as roots,
    /// a dead one (nobody holds its lock) is deleted and counted. gc calls this holding
    /// `gc.lock` exclusively.
    pub(crate) fn read_leases(&self) -> Result<LeaseRoots, StoreError> {
        let own = self.lease_slot().as_ref().map(|l| l.path.clone());
        let dir = self.leases_dir();
        let mut out = LeaseRoots::default();
        let Some(entries) = read_dir_if_exists(&dir)? else { return Ok(out) };
        for entry in entries {
            let entry = entry.map_err(StoreError::io(&dir))?;
            let path = entry.path();
            if own.as_ref() == Some(&path) {
                continue;
            }
            let mut file = match File::open(&path) {
                Ok(f) => f,
                // Its owner ended it meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::Io { path, source: e }),
            };
            match flock(&file, FlockOperation::NonBlockingLockShared) {
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                    let mut text = String::new();
                    file.read_to_string(&mut text).map_err(StoreError::io(&path))?;
                    out.roots.extend(parse_roots(&path, &text)?);
                    out.live += 1;
                }
                Ok(()) => {
                    if crate::blob::remove_file_if_exists(&path)? {
                        out.dead += 1;
                    }
                }
                Err(e) => return Err(StoreError::Io { path, source: e.into() }),
            }
        }
        Ok(out)
    }

    /// The exclusive hold on `gc.lock` for one gc run: waits for writers to finish their
    /// record-and-publish, and keeps new ones waiting until dropped.
    pub(crate) fn exclusive_gc_lock(&self) -> Result<File, StoreError> {
        self.ensure_meta_dirs()?;
        let path = self.gc_lock_path();
        let file = open_lock_file(&path)?;
        flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| StoreError::Io { path, source: e.into() })?;
        Ok(file)
    }

    /// Removes every entry of the tmp directory that nobody holds an `flock` on: what killed
    /// processes left (every live entry is locked by its creator; see
    /// `blob::locked_temp_file`). Returns how many were removed.
    pub(crate) fn sweep_dead_temp(&self) -> Result<usize, StoreError> {
        crate::blob::sweep_unlocked(&self.tmp_dir())
    }
}

/// Appends the digests not yet in the lease file.
fn record(lease: &mut Lease, digests: &[Digest]) -> Result<(), StoreError> {
    let mut text = String::new();
    for d in digests {
        if !lease.recorded.contains(d) {
            text.push_str(&d.to_string());
            text.push('\n');
        }
    }
    if text.is_empty() {
        return Ok(());
    }
    // One write: gc never reads this file while we append (we hold gc.lock shared).
    lease.file.write_all(text.as_bytes()).map_err(StoreError::io(&lease.path))?;
    lease.recorded.extend(digests.iter().copied());
    Ok(())
}

/// This process's start time in clock ticks since boot (`/proc/self/stat` field 22), which
/// with the pid names the process unambiguously; informational only.
fn process_start_time() -> Option<u64> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields resume after its closing paren.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}
