//! Root filesystems without copying: unpacked layer snapshots and a merged read view.
//!
//! Every layer of a chain is unpacked once into its snapshot (`Store::snapshots`) in overlayfs's
//! own format (a deletion is a character device 0/0, an opaque directory carries
//! `trusted.overlay.opaque=y`), so the snapshot dirs of a chain can be handed to an overlay
//! mount as lowerdirs as they are (DESIGN.md decision 4). A snapshot is built in a temp dir
//! under the store and renamed into place, so a reader never sees half of one; two builds
//! racing on the same layer both succeed. [`MergedView`] answers "what is at this path in the
//! image" by walking the snapshot dirs top-down with overlay's rules, which is all COPY, ADD,
//! WORKDIR and `--chown` need from the parent image: nothing is copied to look.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use strata_layer::{apply_blob, decompress, ApplyOptions, OPAQUE_WHITEOUT, WHITEOUT_PREFIX};
use strata_store::Store;

use crate::error::{BuildError, Result};
use crate::image::LayerRef;

pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Makes sure the snapshot of `layer` exists and returns its directory: unpacked from its
/// blob (checked against its diffID), with OCI whiteouts turned into overlay ones.
pub(crate) fn ensure_snapshot(store: &Store, layer: &LayerRef) -> Result<PathBuf> {
    store.snapshots().ensure(&layer.diff_id, |dir| {
        let digest = layer.digest()?;
        let report = apply_blob(store, &digest, dir, &ApplyOptions::default())?;
        if let Some(found) = report.diff_id {
            if found != layer.diff_id {
                return Err(BuildError::DiffIdMismatch {
                    layer: digest,
                    expected: layer.diff_id,
                    found,
                });
            }
        }
        overlay_whiteouts(store, layer, dir)
    })
}

/// Makes `tree` the snapshot of `layer` by renaming it into place, when `tree` holds exactly
/// that layer's files: a COPY/ADD staging tree, which has no whiteouts. Its mtimes are first
/// clamped the way the layer writer clamps them (whole seconds, at most `epoch`), so the result
/// cannot be told from a snapshot unpacked from the blob, whichever a later step sees. This
/// saves unpacking, i.e. writing the layer's bytes a second time. `tree` must be inside a work
/// directory of the store. An existing snapshot wins; `tree` is then left alone.
pub(crate) fn adopt_snapshot(
    store: &Store,
    layer: &LayerRef,
    tree: &Path,
    epoch: i64,
) -> Result<PathBuf> {
    use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD};
    if let Some(dir) = store.snapshots().get(&layer.diff_id) {
        return Ok(dir);
    }
    // Children before their directory: setting a child's time would not touch the parent's,
    // but creating nothing more below it keeps the order simple to reason about.
    for entry in walkdir::WalkDir::new(tree).min_depth(1).contents_first(true) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(tree).to_path_buf();
            BuildError::io("walk", &path, e.into())
        })?;
        let meta = entry.metadata().map_err(|e| {
            BuildError::io("lstat", entry.path(), std::io::Error::other(e.to_string()))
        })?;
        let secs = meta.mtime().clamp(0, epoch.max(0));
        let t = Timespec { tv_sec: secs, tv_nsec: 0 };
        utimensat(
            CWD,
            entry.path(),
            &Timestamps { last_access: t, last_modification: t },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| BuildError::io("utimensat", entry.path(), e.into()))?;
    }
    Ok(store.snapshots().adopt(&layer.diff_id, tree)?)
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| BuildError::io("chmod", path, e))
}

/// Re-reads the layer's tar and turns its OCI whiteouts into overlay ones under `dir`.
fn overlay_whiteouts(store: &Store, layer: &LayerRef, dir: &Path) -> Result<()> {
    let digest = layer.digest()?;
    let blob = store.open_blob(&digest)?;
    let read_err = |source| BuildError::ReadLayer { digest, source };
    let reader = decompress(blob).map_err(read_err)?;
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(read_err)?;
    for entry in entries {
        let entry = entry.map_err(read_err)?;
        let name = entry.path().map_err(read_err)?.into_owned();
        let Some(file) = name.file_name() else { continue };
        let file = file.as_bytes();
        if !file.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            continue;
        }
        let rel = normalize(&name);
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        if parent.components().any(|c| !matches!(c, Component::Normal(_))) {
            continue;
        }
        let parent_abs = dir.join(&parent);
        fs::create_dir_all(&parent_abs).map_err(|e| BuildError::io("mkdir", &parent_abs, e))?;
        if file == OPAQUE_WHITEOUT.as_bytes() {
            rustix::fs::setxattr(&parent_abs, OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty())
                .map_err(|e| BuildError::io("setxattr", &parent_abs, e.into()))?;
        } else {
            let victim = &file[WHITEOUT_PREFIX.len()..];
            let target = parent_abs.join(std::ffi::OsStr::from_bytes(victim));
            if fs::symlink_metadata(&target).is_ok() {
                continue;
            }
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &target,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                0,
            )
            .map_err(|e| BuildError::io("mknod", &target, e.into()))?;
        }
    }
    Ok(())
}

/// A path relative to a root with `.`/`/` dropped (`..` is kept out by the caller).
pub(crate) fn normalize(p: &Path) -> PathBuf {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// Read access to the merged tree of a stack of directories, overlay-style.
#[derive(Debug, Clone, Default)]
pub(crate) struct MergedView {
    /// Top layer first.
    layers: Vec<PathBuf>,
}

fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    let mut buf = [0u8; 4];
    matches!(rustix::fs::lgetxattr(path, OPAQUE_XATTR, &mut buf[..]), Ok(1) if buf[0] == b'y')
}

impl MergedView {
    /// A view of `layers`, given bottom first (the order of a chain).
    pub fn new(mut layers: Vec<PathBuf>) -> MergedView {
        layers.reverse();
        MergedView { layers }
    }

    /// The snapshot dirs of a chain (creating missing ones).
    pub fn of_chain(store: &Store, chain: &[LayerRef]) -> Result<MergedView> {
        let dirs = chain.iter().map(|l| ensure_snapshot(store, l)).collect::<Result<Vec<_>>>()?;
        Ok(MergedView::new(dirs))
    }

    /// The layer dirs, bottom first, for an overlay mount. A layer that occurs twice in a
    /// chain (two steps with identical changes, e.g. two RUNs that change nothing) is kept at
    /// its topmost position only: overlayfs refuses a lowerdir given twice, and re-applying the
    /// same changes on top makes the lower copy's effect invisible anyway.
    pub fn lowers(&self) -> Vec<PathBuf> {
        let mut seen = std::collections::HashSet::new();
        let mut top_first: Vec<PathBuf> =
            self.layers.iter().filter(|l| seen.insert(*l)).cloned().collect();
        top_first.reverse();
        top_first
    }

    /// Layers (top first) that contribute to `rel` (a normalized relative path), or none when
    /// it does not exist. `rel` empty is the root.
    fn contributors(&self, rel: &Path) -> Vec<&PathBuf> {
        let mut active: Vec<&PathBuf> = self.layers.iter().collect();
        let mut prefix = PathBuf::new();
        for comp in rel.components() {
            prefix.push(comp);
            let mut next = Vec::new();
            for layer in active {
                let p = layer.join(&prefix);
                let Ok(md) = fs::symlink_metadata(&p) else { continue };
                if is_whiteout(&md) {
                    break;
                }
                next.push(layer);
                if !md.is_dir() || is_opaque(&p) {
                    break;
                }
            }
            if next.is_empty() {
                return next;
            }
            active = next;
        }
        active
    }

    /// The real path holding `rel` (no symlink following), if it exists.
    pub fn find(&self, rel: &Path) -> Option<PathBuf> {
        let rel = normalize(rel);
        let top = self.contributors(&rel).first().map(|l| l.join(&rel))?;
        // Each ancestor must be a directory in the merged view.
        let mut prefix = PathBuf::new();
        let comps: Vec<_> = rel.components().collect();
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            prefix.push(c);
            let real = self.contributors(&prefix).first().map(|l| l.join(&prefix))?;
            if !fs::symlink_metadata(&real).ok()?.is_dir() {
                return None;
            }
        }
        Some(top)
    }

    /// Entries of the directory `rel`, by name, with the real path of each.
    pub fn list(&self, rel: &Path) -> Result<BTreeMap<OsString, PathBuf>> {
        let rel = normalize(rel);
        let mut out: BTreeMap<OsString, PathBuf> = BTreeMap::new();
        let mut hidden: std::collections::BTreeSet<OsString> = Default::default();
        for layer in self.contributors(&rel) {
            let dir = layer.join(&rel);
            let Ok(md) = fs::symlink_metadata(&dir) else { continue };
            if !md.is_dir() {
                break;
            }
            let rd = fs::read_dir(&dir).map_err(|e| BuildError::io("read dir", &dir, e))?;
            for ent in rd {
                let ent = ent.map_err(|e| BuildError::io("read dir", &dir, e))?;
                let name = ent.file_name();
                if out.contains_key(&name) || hidden.contains(&name) {
                    continue;
                }
                let p = ent.path();
                let emd = fs::symlink_metadata(&p).map_err(|e| BuildError::io("lstat", &p, e))?;
                if is_whiteout(&emd) {
                    hidden.insert(name);
                } else {
                    out.insert(name, p);
                }
            }
            if is_opaque(&dir) {
                break;
            }
        }
        Ok(out)
    }

    /// Resolves `path` (absolute or relative to the root) inside the view, following symlinks
    /// (all of them, or all but the last component) without ever leaving the root. The result
    /// is a normalized relative path that may not exist.
    pub fn resolve(&self, path: &Path, follow_last: bool) -> Result<PathBuf> {
        self.resolve_traced(path, follow_last).map(|r| r.path)
    }

    /// [`MergedView::resolve`], also naming the first symlink followed whose target points
    /// out of the root (absolute, or `..` past the top): such a link is taken to mean the same
    /// path inside the root, as BuildKit does, and when that path is missing an error can say
    /// why.
    pub fn resolve_traced(&self, path: &Path, follow_last: bool) -> Result<Resolved> {
        let mut todo: Vec<OsString> =
            path.components().rev().filter_map(component_name).collect::<Vec<_>>();
        let mut cur = PathBuf::new();
        let mut hops = 0;
        let mut escaped: Option<(PathBuf, PathBuf)> = None;
        // the link whose target is being walked, while its components are in `todo`
        let mut walking: Option<(PathBuf, PathBuf, usize)> = None;
        while let Some(c) = todo.pop() {
            if walking.as_ref().is_some_and(|(_, _, left)| todo.len() < *left) {
                walking = None;
            }
            if c == ".." {
                if cur.as_os_str().is_empty() && escaped.is_none() {
                    escaped = walking.as_ref().map(|(l, t, _)| (l.clone(), t.clone()));
                }
                cur.pop();
                continue;
            }
            let cand = cur.join(&c);
            let last = todo.is_empty();
            if !last || follow_last {
                if let Some(real) = self.find(&cand) {
                    let md = fs::symlink_metadata(&real)
                        .map_err(|e| BuildError::io("lstat", &real, e))?;
                    if md.file_type().is_symlink() {
                        hops += 1;
                        if hops > 40 {
                            return Err(BuildError::io(
                                "resolve",
                                path,
                                std::io::Error::other("too many levels of symbolic links"),
                            ));
                        }
                        let target = fs::read_link(&real)
                            .map_err(|e| BuildError::io("readlink", &real, e))?;
                        if target.is_absolute() {
                            if escaped.is_none() {
                                escaped = Some((cand.clone(), target.clone()));
                            }
                            cur = PathBuf::new();
                        }
                        let before = todo.len();
                        todo.extend(target.components().rev().filter_map(component_name));
                        walking = Some((cand, target, before));
                        continue;
                    }
                }
            }
            cur = cand;
        }
        Ok(Resolved { path: cur, escaped })
    }

    /// `lstat` of `rel` in the view.
    pub fn metadata(&self, rel: &Path) -> Option<fs::Metadata> {
        self.find(rel).and_then(|p| fs::symlink_metadata(p).ok())
    }

    /// Reads a whole file (following symlinks inside the view).
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let rel = self.resolve(path, true).ok()?;
        let real = self.find(&rel)?;
        let mut f = fs::File::open(real).ok()?;
        let mut v = Vec::new();
        f.read_to_end(&mut v).ok()?;
        Some(v)
    }
}

/// A path resolved inside a [`MergedView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// Normalized, relative to the root; may not exist.
    pub path: PathBuf,
    /// The first symlink followed (its path in the view, and its target) that pointed out of
    /// the root.
    pub escaped: Option<(PathBuf, PathBuf)>,
}

fn component_name(c: Component<'_>) -> Option<OsString> {
    match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        _ => None,
    }
}

/// Resolves `user[:group]` to numeric ids with the image's `/etc/passwd` and `/etc/group`.
/// A name without a group takes the user's primary group (as buildah does); a numeric uid
/// without a group uses the same number as gid (as Docker documents).
pub(crate) fn resolve_owner(view: &MergedView, spec: &str) -> Result<(u32, u32)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) => {
            let passwd = view.read(Path::new("etc/passwd")).unwrap_or_default();
            lookup(&passwd, user, 2, 3).ok_or_else(|| BuildError::UnknownUser {
                kind: "user",
                name: user.to_string(),
                file: "passwd",
            })?
        }
    };
    let gid = match group {
        None | Some("") => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let groups = view.read(Path::new("etc/group")).unwrap_or_default();
                lookup(&groups, g, 2, 2).map(|(gid, _)| gid).ok_or_else(|| {
                    BuildError::UnknownUser { kind: "group", name: g.to_string(), file: "group" }
                })?
            }
        },
    };
    Ok((uid, gid))
}

/// Finds `name` in a colon-separated database and returns fields `a` and `b` as numbers.
fn lookup(db: &[u8], name: &str, a: usize, b: usize) -> Option<(u32, u32)> {
    String::from_utf8_lossy(db).lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.first() == Some(&name) {
            Some((f.get(a)?.trim().parse().ok()?, f.get(b)?.trim().parse().ok()?))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_view_follows_overlay_rules() {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("l");
        let upper = t.path().join("u");
        fs::create_dir_all(lower.join("etc/sub")).unwrap();
        fs::write(lower.join("etc/a"), "a").unwrap();
        fs::write(lower.join("etc/b"), "b").unwrap();
        fs::write(lower.join("etc/sub/x"), "x").unwrap();
        fs::create_dir_all(upper.join("etc/sub")).unwrap();
        fs::write(upper.join("etc/c"), "c").unwrap();
        std::os::unix::fs::symlink("/etc/sub", upper.join("link")).unwrap();
        let opaque_ok = rustix::fs::setxattr(
            upper.join("etc/sub"),
            OPAQUE_XATTR,
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .is_ok();
        let whiteout_ok = rustix::fs::mknodat(
            rustix::fs::CWD,
            upper.join("etc/b"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .is_ok();
        let view = MergedView::new(vec![lower.clone(), upper.clone()]);
        let names: Vec<_> = view.list(Path::new("etc")).unwrap().into_keys().collect();
        if whiteout_ok {
            assert_eq!(names, ["a", "c", "sub"]);
            assert!(view.find(Path::new("etc/b")).is_none());
        }
        if opaque_ok {
            assert!(view.find(Path::new("etc/sub/x")).is_none());
        }
        assert_eq!(view.find(Path::new("etc/a")), Some(lower.join("etc/a")));
        assert_eq!(view.resolve(Path::new("/link/y"), true).unwrap(), Path::new("etc/sub/y"));
        assert_eq!(view.resolve(Path::new("/../../etc"), true).unwrap(), Path::new("etc"));
    }

    #[test]
    fn owners_resolve_through_passwd_and_group() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("etc")).unwrap();
        fs::write(t.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nbob:x:1000:1001::/:\n")
            .unwrap();
        fs::write(t.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let view = MergedView::new(vec![t.path().to_path_buf()]);
        assert_eq!(resolve_owner(&view, "bob").unwrap(), (1000, 1001));
        assert_eq!(resolve_owner(&view, "bob:staff").unwrap(), (1000, 50));
        assert_eq!(resolve_owner(&view, "7").unwrap(), (7, 7));
        assert_eq!(resolve_owner(&view, "7:8").unwrap(), (7, 8));
        assert!(matches!(resolve_owner(&view, "eve"), Err(BuildError::UnknownUser { .. })));
    }
}
