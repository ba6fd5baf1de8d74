//! Layer tables of contents, which let a cold runner take cache hits without downloading
//! their layers (remote_cache's lazy hits).
//!
//! A table of contents is the listing (strata-layer's `listing`) of a layer's unpacked
//! snapshot, overlay whiteouts and opaque markers included, file bytes left out, compressed
//! with zstd: a blob of media type [`LAYER_TOC_MEDIA_TYPE`]. `--cache-to` exports one for every
//! layer the exported steps stand on, base layers included; a runner that imports the cache
//! makes a stand-in tree from it when a COPY or WORKDIR needs to resolve its destination in a
//! parent it never downloaded. A stand-in answers "what is at this path, with which mode,
//! owner and mtime", which is all those steps read from their parent; anything that reads a
//! file's bytes fetches the layer itself.

use std::io::Read;

use strata_layer::{listing, scan, Entry};
use strata_store::oci_spec::image::{Descriptor, MediaType};
use strata_store::{Store, LAYER_TOC_MEDIA_TYPE};
use strata_types::Digest;

use crate::error::{BuildError, Result};
use crate::image::LayerRef;
use crate::remote_cache::Imported;
use crate::rootfs::ensure_snapshot;

/// The largest table of contents read back (decompressed): far above any real layer's
/// listing (a million entries), and a bound on what a hostile cache can make us allocate.
const MAX_TOC_BYTES: u64 = 256 << 20;

/// The table of contents of `layer`, in `store`: the one recorded, else the one an imported
/// cache carries, else made now from the layer's snapshot (unpacked if needed). `None` when
/// the layer is neither stored nor described by an import.
pub(crate) fn toc_of(
    store: &Store,
    imported: &Imported,
    layer: &LayerRef,
) -> Result<Option<Descriptor>> {
    if let Some(toc) = store.layer_toc(&layer.diff_id) {
        return Ok(Some(toc));
    }
    if imported.is_pending(&layer.diff_id) || !store.has_blob(&layer.digest()?) {
        return Ok(imported.toc(store, &layer.diff_id));
    }
    let dir = ensure_snapshot(store, layer)?;
    let text = listing::encode(&scan(&dir)?.into_entries());
    let compressed = zstd::encode_all(text.as_bytes(), 3)
        .map_err(|e| BuildError::io("compress a table of contents of", &dir, e))?;
    let put = store.put_blob(compressed.as_slice())?;
    let toc =
        Descriptor::new(MediaType::Other(LAYER_TOC_MEDIA_TYPE.to_string()), put.size, put.digest);
    store.set_layer_toc(&layer.diff_id, &toc)?;
    Ok(Some(toc))
}

/// The entries the stored table of contents `toc` lists. A blob that is not one (bad
/// compression, a line that is not a listing line, too big) is an error naming it.
pub(crate) fn read_toc(store: &Store, toc: &Descriptor) -> Result<Vec<Entry>> {
    let digest = Digest::try_from(toc.digest()).map_err(strata_store::StoreError::from)?;
    let invalid = |why: String| BuildError::InvalidToc { digest, why };
    let decoder =
        zstd::Decoder::new(store.open_blob(&digest)?).map_err(|e| invalid(e.to_string()))?;
    let mut text = String::new();
    decoder
        .take(MAX_TOC_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| invalid(e.to_string()))?;
    if text.len() as u64 > MAX_TOC_BYTES {
        return Err(invalid(format!("larger than {MAX_TOC_BYTES} bytes")));
    }
    listing::decode(&text).ok_or_else(|| invalid("a line is not a listing entry".into()))
}

/// Where stand-in trees go: a tmpfs (they are metadata only, and a disk filesystem takes
/// its time creating and removing thousands of entries), else the store's work directories.
const STUB_DIR: &str = "/dev/shm";

/// The stand-in tree of a layer, removed with it.
pub(crate) enum StubDir {
    /// In [`STUB_DIR`], named `strata-stub-<pid>-XXXXXX` so that a later build sweeps it
    /// once its process is gone.
    Memory(tempfile::TempDir),
    /// In the store's tmp (a flock'd work directory).
    Store(strata_store::WorkDir),
}

impl StubDir {
    /// A new, empty one: in memory when [`STUB_DIR`] is a tmpfs, else in `store`.
    pub fn new(store: &Store) -> Result<StubDir> {
        let base = std::path::Path::new(STUB_DIR);
        let tmpfs = rustix::fs::statfs(base).is_ok_and(|s| s.f_type == 0x0102_1994);
        if tmpfs {
            static SWEPT: std::sync::Once = std::sync::Once::new();
            SWEPT.call_once(|| sweep_stubs(base));
            let prefix = format!("strata-stub-{}-", std::process::id());
            if let Ok(dir) = tempfile::Builder::new().prefix(&prefix).tempdir_in(base) {
                return Ok(StubDir::Memory(dir));
            }
        }
        Ok(StubDir::Store(store.work_dir("stub-")?))
    }

    /// Its directory.
    pub fn path(&self) -> &std::path::Path {
        match self {
            StubDir::Memory(d) => d.path(),
            StubDir::Store(w) => w.path(),
        }
    }
}

/// Removes the stand-in trees of processes that are gone (a killed build's), best effort.
fn sweep_stubs(base: &std::path::Path) {
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("strata-stub-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let alive = rustix::process::Pid::from_raw(pid)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_ins_of_dead_processes_are_swept_and_live_ones_kept() {
        let base = tempfile::tempdir().unwrap();
        // Above any pid_max: no such process.
        let dead = base.path().join("strata-stub-2000000000-abc");
        let live = base.path().join(format!("strata-stub-{}-def", std::process::id()));
        let other = base.path().join("not-ours");
        for d in [&dead, &live, &other] {
            std::fs::create_dir_all(d.join("tree/etc")).unwrap();
        }
        sweep_stubs(base.path());
        assert!(!dead.exists() && live.exists() && other.exists());
    }

    #[test]
    fn a_toc_lists_the_layer_and_anything_else_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path()).unwrap();
        let text = "entry d 755 0 0 0 0 0 0 - - - etc\nentry - 644 0 0 3 0 0 0 - - - etc/passwd\n";
        let put = store.put_blob(zstd::encode_all(text.as_bytes(), 3).unwrap().as_slice()).unwrap();
        let toc =
            Descriptor::new(MediaType::Other(LAYER_TOC_MEDIA_TYPE.into()), put.size, put.digest);
        let entries = read_toc(&store, &toc).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].path, std::path::Path::new("etc/passwd"));
        for bad in [&b"not zstd"[..], &zstd::encode_all(&b"entry nonsense\n"[..], 3).unwrap()] {
            let put = store.put_blob(bad).unwrap();
            let toc = Descriptor::new(MediaType::Other("x".into()), put.size, put.digest);
            let err = read_toc(&store, &toc).unwrap_err().to_string();
            assert!(err.contains(&put.digest.to_string()), "{err}");
        }
    }
}
