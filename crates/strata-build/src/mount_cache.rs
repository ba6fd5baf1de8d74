//! Cache mounts that travel: `--cache-to ...,mounts=true` exports each
//! `RUN --mount=type=cache` directory a build used as a chain of layers, and `--cache-from`
//! seeds a directory created on this runner from the chain it imports.
//!
//! A chain is applied in order into an empty directory: its first layer is the whole
//! directory, each later one the changeset (strata-layer's [`diff`]) from the content the
//! chain had to the content at export time, with whiteouts for what was deleted (image-spec
//! layer.md "Whiteouts", applied as a layer would be). So a runner that seeded a Go build
//! cache of 1 GB and changed 3 MB of it exports a 3 MB layer, and the registry already has the
//! rest of the chain. After [`MAX_CHAIN`] layers the next export starts over with one whole
//! layer, so a chain's download stays bounded by the content plus a few changesets.
//!
//! Between builds the store keeps, per cache id, the chain the directory's content was last
//! seeded from or exported as, with the metadata of every entry of that content (the
//! *state*, [`strata_store::Store::cache_mount_state`]). The next export compares the
//! directory with it: same kind, mode, owner, size and mtime is "unchanged"; a file whose
//! mtime moved but whose size did not is compared by content when both digests are known and
//! otherwise counted as changed (never the other way round), so an export can upload a file
//! that did not change, never miss one that did.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use strata_layer::{
    diff, listing, scan, write_layer, ApplyOptions, Changeset, Entry, EntryKind, LayerWriter, Scan,
};
use strata_store::oci_spec::image::{Descriptor, MediaType};
use strata_store::{CacheEntry, Store};
use strata_types::Digest;

use crate::error::{BuildError, Result};

/// The longest chain an export extends; one more layer and it starts over whole.
pub(crate) const MAX_CHAIN: usize = 8;

/// The first line of a state document.
const STATE_HEADER: &str = "strata cache-mount state v1";

/// What the store records about one cache mount's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountState {
    /// The layers the content is, in order.
    pub chain: Vec<CacheEntry>,
    /// The content's entries (file digests where known), as a scan of it found them.
    pub entries: Vec<Entry>,
}

impl MountState {
    /// The state's text: the header, one `layer` line per chain layer (media type, digest,
    /// size, diffID), then the content's listing (strata-layer's `listing` lines).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("{STATE_HEADER}\n");
        for l in &self.chain {
            out.push_str(&format!(
                "layer {} {} {} {}\n",
                l.layer.media_type(),
                l.layer.digest(),
                l.layer.size(),
                l.diff_id
            ));
        }
        out.push_str(&listing::encode(&self.entries));
        out.into_bytes()
    }

    /// Parses what [`MountState::encode`] wrote; anything else (another version, a damaged
    /// file) is `None`, and the export then starts a whole chain: never a wrong changeset.
    pub fn decode(bytes: &[u8]) -> Option<MountState> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.lines();
        if lines.next()? != STATE_HEADER {
            return None;
        }
        let mut state = MountState { chain: Vec::new(), entries: Vec::new() };
        for line in lines {
            if let Some(rest) = line.strip_prefix("layer ") {
                let [media_type, digest, size, diff_id] = rest.split(' ').collect::<Vec<_>>()[..]
                else {
                    return None;
                };
                let digest: Digest = digest.parse().ok()?;
                let layer =
                    Descriptor::new(MediaType::from(media_type), size.parse().ok()?, digest);
                state.chain.push(CacheEntry { layer, diff_id: diff_id.parse().ok()? });
            } else {
                state.entries.push(listing::decode_line(line)?);
            }
        }
        (!state.chain.is_empty()).then_some(state)
    }

    /// The state's content as the lower side of a [`diff`]: a file whose digest was never
    /// computed gets one no real content has, so a file with a moved mtime compares as
    /// changed instead of being hashed from a root that is not there.
    fn as_lower(&self) -> Scan {
        let entries = self
            .entries
            .iter()
            .cloned()
            .map(|mut e| {
                if e.kind == EntryKind::File && e.digest.is_none() {
                    let mut unknown = b"strata: content not recorded: ".to_vec();
                    unknown.extend_from_slice(e.path.as_os_str().as_bytes());
                    e.digest = Some(Digest::of_bytes(&unknown));
                }
                e
            })
            .collect();
        Scan::from_entries(PathBuf::from("/nonexistent/strata-mount-state"), entries)
    }
}

/// The layer writer for mount layers: the build's compression, and no clamping of mtimes
/// (the content is a cache, not an image: its mtimes are what tools like make and go look at).
pub(crate) fn writer(build: &LayerWriter) -> LayerWriter {
    build.clone().epoch(i64::MAX)
}

/// The chain cache mount `id`'s directory `dir` is now: the recorded chain plus one layer of
/// what changed since (nothing added when nothing changed), or one whole layer when nothing
/// usable is recorded or the chain is at [`MAX_CHAIN`]. Records the new state.
pub(crate) fn export(
    store: &Store,
    id: &str,
    dir: &Path,
    writer: &LayerWriter,
) -> Result<Vec<CacheEntry>> {
    let upper = scan(dir)?;
    let recorded = store
        .cache_mount_state(id)
        .and_then(|b| MountState::decode(&b))
        .filter(|s| s.chain.len() < MAX_CHAIN)
        .filter(|s| {
            s.chain.iter().all(|e| {
                Digest::try_from(e.layer.digest())
                    .is_ok_and(|d| store.blob_size(&d).is_ok_and(|n| n == e.layer.size()))
            })
        });
    let (mut chain, changes) = match recorded {
        Some(state) => {
            let changes = diff(&state.as_lower(), &upper)?;
            (state.chain, changes)
        }
        None => (Vec::new(), Changeset::from_scan(upper.clone())),
    };
    if chain.is_empty() || !changes.is_empty() {
        let desc = write_layer(store, writer, &changes, dir)?;
        let layer = desc.descriptor();
        chain.push(CacheEntry { layer, diff_id: desc.diff_id });
    }
    let state = MountState { chain: chain.clone(), entries: upper.into_entries() };
    store.set_cache_mount_state(id, &state.encode(), &chain_blobs(&chain))?;
    Ok(chain)
}

/// Fills the new, empty directory `dir` of cache mount `id` from `chain`, whose blobs are in
/// `store` (verified as they are read), and records the state, so the next export is a
/// changeset on `chain`.
pub(crate) fn seed(store: &Store, id: &str, dir: &Path, chain: &[CacheEntry]) -> Result<()> {
    for e in chain {
        let digest = Digest::try_from(e.layer.digest()).map_err(strata_store::StoreError::from)?;
        let report = strata_layer::apply_blob(store, &digest, dir, &ApplyOptions::default())?;
        if let Some(found) = report.diff_id {
            if found != e.diff_id {
                return Err(BuildError::DiffIdMismatch {
                    layer: digest,
                    expected: e.diff_id,
                    found,
                });
            }
        }
    }
    let state = MountState { chain: chain.to_vec(), entries: scan(dir)?.into_entries() };
    store.set_cache_mount_state(id, &state.encode(), &chain_blobs(chain))?;
    Ok(())
}

/// The blobs of a chain's layers (what its state keeps from gc).
fn chain_blobs(chain: &[CacheEntry]) -> Vec<Digest> {
    chain.iter().filter_map(|e| Digest::try_from(e.layer.digest()).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fs;

    fn new_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path().join("store")).unwrap();
        (dir, store)
    }

    fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        walkdir::WalkDir::new(dir)
            .min_depth(1)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy().to_string();
                (rel, fs::read(e.path()).unwrap())
            })
            .collect()
    }

    #[test]
    fn a_state_round_trips_and_anything_else_is_no_state() {
        let (tmp, _store) = new_store();
        let d = tmp.path().join("m");
        fs::create_dir_all(d.join("sub dir")).unwrap();
        fs::write(d.join("sub dir/a%b\n"), b"x").unwrap();
        std::os::unix::fs::symlink("../t a", d.join("link")).unwrap();
        let layer = Descriptor::new(MediaType::ImageLayerZstd, 3, Digest::of_bytes(b"l"));
        let chain = vec![CacheEntry { layer, diff_id: Digest::of_bytes(b"t") }];
        let state = MountState { chain, entries: scan(&d).unwrap().into_entries() };
        let back = MountState::decode(&state.encode()).unwrap();
        assert_eq!(back.chain, state.chain);
        let paths = |s: &MountState| {
            s.entries.iter().map(|e| (e.path.clone(), e.link_target.clone())).collect::<Vec<_>>()
        };
        assert_eq!(paths(&back), paths(&state));
        let text = String::from_utf8(state.encode()).unwrap();
        for bad in [
            text.replace("v1", "v2"),
            text.replace("layer ", "layr "),
            text[..text.len() / 2].to_string(),
            format!("{STATE_HEADER}\n"),
        ] {
            assert!(MountState::decode(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_second_export_is_a_changeset_and_the_chain_rebuilds_the_directory() {
        let (tmp, store) = new_store();
        let writer = writer(&LayerWriter::default());
        let m = tmp.path().join("m");
        fs::create_dir_all(m.join("pkg")).unwrap();
        // Incompressible, so the layers' sizes tell what they carry.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fs::write(m.join("pkg/big.bin"), noise).unwrap();
        fs::write(m.join("pkg/old.txt"), b"old").unwrap();
        fs::write(m.join("keep.txt"), b"keep").unwrap();
        let first = export(&store, "deps", &m, &writer).unwrap();
        assert_eq!(first.len(), 1);
        // Nothing changed: the same chain.
        assert_eq!(export(&store, "deps", &m, &writer).unwrap(), first);

        fs::remove_file(m.join("pkg/old.txt")).unwrap();
        fs::write(m.join("pkg/new.txt"), b"new").unwrap();
        // Same size, new content, mtime moved: must not be missed.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(m.join("keep.txt"), b"KEEP").unwrap();
        let second = export(&store, "deps", &m, &writer).unwrap();
        assert_eq!(second.len(), 2);
        assert_eq!(second[0], first[0]);
        assert!(
            second[1].layer.size() < first[0].layer.size() / 4,
            "the changeset carries only what changed: {} vs {}",
            second[1].layer.size(),
            first[0].layer.size()
        );

        // Another runner: seed an empty directory from the chain.
        let (_tmp2, other) = new_store();
        for e in &second {
            let d = Digest::try_from(e.layer.digest()).unwrap();
            other.put_blob_verified(store.open_blob(&d).unwrap(), &d, None).unwrap();
        }
        let seeded = tmp.path().join("seeded");
        fs::create_dir(&seeded).unwrap();
        seed(&other, "deps", &seeded, &second).unwrap();
        assert_eq!(files(&seeded), files(&m));
        assert!(!seeded.join("pkg/old.txt").exists(), "the whiteout deleted it");
        // Its next export, unchanged, extends nothing.
        assert_eq!(export(&other, "deps", &seeded, &writer).unwrap(), second);
    }

    #[test]
    fn a_long_chain_or_a_lost_blob_starts_over_whole() {
        let (tmp, store) = new_store();
        let writer = writer(&LayerWriter::default());
        let m = tmp.path().join("m");
        fs::create_dir(&m).unwrap();
        let mut chain = Vec::new();
        for n in 0..=MAX_CHAIN {
            fs::write(m.join(format!("f{n}")), format!("{n}")).unwrap();
            chain = export(&store, "c", &m, &writer).unwrap();
        }
        assert_eq!(chain.len(), 1, "the chain started over after {MAX_CHAIN} layers");
        fs::write(m.join("g"), b"g").unwrap();
        let two = export(&store, "c", &m, &writer).unwrap();
        assert_eq!(two.len(), 2);
        let d = Digest::try_from(two[0].layer.digest()).unwrap();
        fs::remove_file(tmp.path().join("store/blobs/sha256").join(d.hex())).unwrap();
        let whole = export(&store, "c", &m, &writer).unwrap();
        assert_eq!(whole.len(), 1);
    }
}
