//! Cache-mount directories: the contents of `RUN --mount=type=cache`, kept between builds and
//! never in a layer.

use std::fs;
use std::path::PathBuf;

use rustix::fs::{flock, FlockOperation};

use crate::error::StoreError;
use crate::store::Store;
use strata_types::Digest;

const DIR: &str = "cache-mounts";

/// Versioned directory of the cache mounts' export states (see
/// [`Store::cache_mount_state`]).
const STATE_DIR: &str = "cache-mount-states-v1";

/// How steps that run at the same time share a cache mount (`sharing=` of
/// `RUN --mount=type=cache`, BuildKit's three modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Every step uses the one directory at once (BuildKit's default).
    Shared,
    /// One step at a time: the others wait for it.
    Locked,
    /// A step that finds the directory in use gets another instance of its own (created
    /// empty when every instance is busy); instances are reused by later steps.
    Private,
}

/// A cache-mount directory in use by one step: while held, `Locked` and `Private` users
/// of the same instance wait or go elsewhere (an `flock` on the directory).
#[derive(Debug)]
pub struct CacheMount {
    /// The directory.
    pub path: PathBuf,
    /// Whether it was created for this use (so the caller sets its mode and owner once).
    pub created: bool,
    _lock: fs::File,
}

impl Store {
    /// Cache mount `id` for one step, shared as `sharing` says (see [`Sharing`]); held
    /// until dropped. Instances beyond the first live beside it as `<id>@N`.
    pub fn cache_mount(&self, id: &str, sharing: Sharing) -> Result<CacheMount, StoreError> {
        let base = self.meta_dir().join(DIR).join(dir_name(id));
        for n in 0.. {
            let path = if n == 0 {
                base.clone()
            } else {
                PathBuf::from(format!("{}@{n}", base.display()))
            };
            let created = !path.is_dir();
            if created {
                fs::create_dir_all(&path).map_err(StoreError::io(&path))?;
            }
            let dir = fs::File::open(&path).map_err(StoreError::io(&path))?;
            let op = match sharing {
                Sharing::Shared => FlockOperation::LockShared,
                Sharing::Locked => FlockOperation::LockExclusive,
                Sharing::Private => FlockOperation::NonBlockingLockExclusive,
            };
            match flock(&dir, op) {
                Ok(()) => return Ok(CacheMount { path, created, _lock: dir }),
                Err(rustix::io::Errno::WOULDBLOCK) if sharing == Sharing::Private => continue,
                Err(e) => return Err(StoreError::io(&path)(e.into())),
            }
        }
        unreachable!("0.. never ends")
    }

    /// The directory of cache mount `id` (created when missing), and whether it was created
    /// by this call (so the caller sets its mode and owner once).
    pub fn cache_mount_dir(&self, id: &str) -> Result<(PathBuf, bool), StoreError> {
        let dir = self.meta_dir().join(DIR).join(dir_name(id));
        if dir.is_dir() {
            return Ok((dir, false));
        }
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        Ok((dir, true))
    }
}

impl Store {
    fn cache_mount_state_path(&self, id: &str) -> PathBuf {
        self.meta_dir().join(STATE_DIR).join(dir_name(id))
    }

    /// What strata-build last recorded about cache mount `id`'s content for `--cache-to
    /// ...,mounts=true`: the chain of layers that content is (as an opaque document of its
    /// own), so the next export can be a changeset on it. `None` when nothing is recorded.
    pub fn cache_mount_state(&self, id: &str) -> Option<Vec<u8>> {
        fs::read(self.cache_mount_state_path(id)).ok()
    }

    /// Records `state` for cache mount `id` (atomically, replacing what was there), and keeps
    /// `blobs` (the chain's layers) from gc until the state is replaced or cleared: they are
    /// listed in the roots file `roots/cache-mount.<name>`.
    pub fn set_cache_mount_state(
        &self,
        id: &str,
        state: &[u8],
        blobs: &[Digest],
    ) -> Result<(), StoreError> {
        let path = self.cache_mount_state_path(id);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
        }
        self.ensure_meta_dirs()?;
        // Roots first: a state never names a chain gc may take.
        self.set_gc_roots(&roots_name(id), blobs)?;
        crate::blob::write_atomic(&self.tmp_dir(), &path, state)
    }

    /// Forgets the state of cache mount `id` (its directory was created afresh), and lets gc
    /// take its chain.
    pub fn clear_cache_mount_state(&self, id: &str) -> Result<(), StoreError> {
        crate::blob::remove_file_if_exists(&self.cache_mount_state_path(id))?;
        let roots = self.roots_dir().join(roots_name(id));
        crate::blob::remove_file_if_exists(&roots).map(|_| ())
    }
}

/// The name of the roots file that keeps cache mount `id`'s chain.
fn roots_name(id: &str) -> String {
    format!("cache-mount.{}", dir_name(id))
}

/// A file name for a cache id: the id itself when it is a plain name, else its hex.
fn dir_name(id: &str) -> String {
    let plain = !id.is_empty()
        && id.len() <= 100
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !id.starts_with('.');
    if plain {
        id.to_string()
    } else {
        let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x-{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_users_get_their_own_instance_and_locked_ones_wait() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path()).unwrap();
        let a = store.cache_mount("go", Sharing::Private).unwrap();
        let b = store.cache_mount("go", Sharing::Private).unwrap();
        assert_ne!(a.path, b.path, "the second private user gets another instance");
        assert!(a.created && b.created);
        drop(b);
        let c = store.cache_mount("go", Sharing::Private).unwrap();
        assert!(!c.created, "a free instance is reused");
        drop((a, c));
        // Locked: a second user waits until the first lets go.
        let first = store.cache_mount("apt", Sharing::Locked).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let second = store.cache_mount("apt", Sharing::Locked).unwrap();
                tx.send(second.path.clone()).unwrap();
            });
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert!(rx.try_recv().is_err(), "the second locked user did not wait");
            drop(first);
            assert!(rx.recv_timeout(std::time::Duration::from_secs(5)).is_ok());
        });
        // Shared users do not wait for each other.
        let x = store.cache_mount("npm", Sharing::Shared).unwrap();
        let y = store.cache_mount("npm", Sharing::Shared).unwrap();
        assert_eq!(x.path, y.path);
    }

    #[test]
    fn cache_ids_become_safe_names() {
        assert_eq!(dir_name("/root/.cache"), "x-2f726f6f742f2e6361636865");
        assert_eq!(dir_name("pip"), "pip");
        assert_eq!(dir_name("../x"), "x-2e2e2f78");
    }
}
