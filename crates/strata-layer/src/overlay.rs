//! The overlay model: how overlayfs stores a layer, and the one conversion between that and
//! OCI's changesets.
//!
//! A *snapshot* is one layer unpacked into a directory in overlayfs's own format, so that the
//! snapshots of a chain can be handed to an overlay mount as lowerdirs as they are (DESIGN.md
//! decision 4): a deletion is a character device 0/0 (a whiteout), a directory whose lower
//! contents are hidden carries `trusted.overlay.opaque=y`. OCI layers say the same with
//! `.wh.NAME` and `.wh..wh..opq` entries (image-spec `layer.md` § Whiteouts). The conversion
//! is written once in each direction: OCI to overlay when a layer is unpacked
//! ([`ApplyOptions::overlay_whiteouts`](crate::ApplyOptions::overlay_whiteouts)), overlay to
//! OCI when an upperdir becomes a changeset ([`changeset_from_upper`]).
//!
//! Reading goes two ways: [`probe`] asks one snapshot what it says about a path (has it,
//! hides it, or nothing: a top-down lookup can skip the layer), and [`MergedView`] answers
//! "what is at this path in the image" for a whole stack with overlay's rules, resolving
//! symlinks inside it: all COPY, ADD, WORKDIR and `--chown` need from a parent image, and
//! nothing is copied to look. The opaque marker is a `trusted.*` xattr that only root can
//! read, so only root may trust what a snapshot says.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use crate::changeset::{Change, Changeset};
use crate::error::{LayerError, Result};
use crate::scan::{scan, EntryKind};

/// The xattr overlayfs marks an opaque directory with (as root).
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Whether `md` is an overlay whiteout: a character device 0/0.
pub fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

/// Whether the directory at `path` is opaque (`trusted.overlay.opaque=y`).
pub fn is_opaque(path: &Path) -> bool {
    let mut buf = [0u8; 4];
    matches!(rustix::fs::lgetxattr(path, OPAQUE_XATTR, &mut buf[..]), Ok(1) if buf[0] == b'y')
}

/// What one snapshot says about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The layer neither has nor hides the path: look lower.
    Nothing,
    /// The layer hides it (whiteout, opaque or non-directory ancestor).
    Hidden,
    /// The layer has something there.
    Something,
}

/// The proper ancestors of `path` (`/`-separated, relative), shallowest first.
fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter().enumerate().filter(|(_, &b)| b == b'/').map(move |(i, _)| &path[..i])
}

/// Asks the snapshot at `root` about `path` (relative, `/`-separated) with `lstat`s and
/// xattr reads only.
pub fn probe(root: &Path, path: &[u8]) -> Probe {
    let at = |p: &[u8]| root.join(OsStr::from_bytes(p));
    let mut opaque_above = false;
    for a in ancestors(path) {
        let full = at(a);
        match fs::symlink_metadata(&full) {
            Err(_) => return Probe::Nothing,
            Ok(md) if is_whiteout(&md) || !md.is_dir() => return Probe::Hidden,
            Ok(_) => opaque_above |= is_opaque(&full),
        }
    }
    match fs::symlink_metadata(at(path)) {
        Ok(md) if is_whiteout(&md) => Probe::Hidden,
        Ok(_) => Probe::Something,
        Err(_) if opaque_above => Probe::Hidden,
        Err(_) => Probe::Nothing,
    }
}

/// A path relative to a root with `.`/`/` dropped (`..` is kept out by the caller).
pub fn normalize(p: &Path) -> PathBuf {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// Read access to the merged tree of a stack of directories, overlay-style.
#[derive(Debug, Clone, Default)]
pub struct MergedView {
    /// Top layer first.
    layers: Vec<PathBuf>,
}

impl MergedView {
    /// A view of `layers`, given bottom first (the order of a chain).
    pub fn new(mut layers: Vec<PathBuf>) -> MergedView {
        layers.reverse();
        MergedView { layers }
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
            let rd = fs::read_dir(&dir).map_err(|e| LayerError::io("read dir", &dir, e))?;
            for ent in rd {
                let ent = ent.map_err(|e| LayerError::io("read dir", &dir, e))?;
                let name = ent.file_name();
                if out.contains_key(&name) || hidden.contains(&name) {
                    continue;
                }
                let p = ent.path();
                let emd = fs::symlink_metadata(&p).map_err(|e| LayerError::io("lstat", &p, e))?;
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
                        .map_err(|e| LayerError::io("lstat", &real, e))?;
                    if md.file_type().is_symlink() {
                        hops += 1;
                        if hops > 40 {
                            return Err(LayerError::io(
                                "resolve",
                                path,
                                std::io::Error::other("too many levels of symbolic links"),
                            ));
                        }
                        let target = fs::read_link(&real)
                            .map_err(|e| LayerError::io("readlink", &real, e))?;
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
pub struct Resolved {
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

/// overlayfs's opaque-directory xattrs: `trusted.` as root, `user.` under `userxattr`.
const OPAQUE_XATTRS: [&str; 2] = [OPAQUE_XATTR, "user.overlay.opaque"];

fn is_overlay_xattr(name: &OsStr) -> bool {
    let b = name.as_encoded_bytes();
    b.starts_with(b"trusted.overlay.") || b.starts_with(b"user.overlay.")
}

/// Reads an overlayfs upperdir as a changeset: the conversion from overlay to OCI.
///
/// Overlay's conventions become OCI ones: a character device 0/0 is a deletion (whiteout),
/// a directory with xattr `trusted.overlay.opaque=y` (or `user.overlay.opaque=y` for
/// `userxattr` mounts) is [`Change::Opaque`], and every other `trusted.overlay.*` /
/// `user.overlay.*` xattr is dropped. Everything else is reported as [`Change::Added`]: an
/// upperdir cannot tell an addition from a modification (a copied-up parent directory shows
/// up too, which is what a layer needs anyway). The overlay must be mounted with
/// `redirect_dir=off,metacopy=off` so that upper files are complete. The other direction,
/// OCI to overlay, is [`ApplyOptions::overlay_whiteouts`](crate::ApplyOptions::overlay_whiteouts).
pub fn changeset_from_upper(upperdir: &Path) -> Result<Changeset> {
    let snap = scan(upperdir)?;
    let mut changes = Vec::with_capacity(snap.entries().len());
    for mut e in snap.into_entries() {
        if e.kind == EntryKind::CharDevice && e.rdev == 0 {
            changes.push(Change::Deleted(e.path));
            continue;
        }
        let opaque = e.kind == EntryKind::Dir
            && OPAQUE_XATTRS
                .iter()
                .any(|k| e.xattrs.get(OsStr::new(k)).is_some_and(|v| v.as_slice() == b"y"));
        e.xattrs.retain(|k, _| !is_overlay_xattr(k));
        changes.push(if opaque { Change::Opaque(e) } else { Change::Added(e) });
    }
    Ok(Changeset::from_changes(changes))
}

/// Turns an upperdir into the snapshot of the layer just written from it, in place, when
/// that gives exactly the tree unpacking the layer would ([`ApplyOptions::overlay_whiteouts`]
/// into an empty directory): the layer's bytes are then written once, not twice.
///
/// `changeset` is what the layer was written from, with `upper` as its source. The upper is
/// first checked against it, entry by entry: every entry of the upper must be a change with
/// the same type, mode, owner, size, mtime, inode, link target, device and (overlay's own
/// aside) xattrs, and every change must be in the upper, except deletions that are not
/// whiteouts there yet (opaque directories rewritten as explicit whiteouts). Anything else,
/// or not running as root (an unprivileged unpack keeps neither owners nor devices), returns
/// `Ok(false)` with the upper untouched: the caller unpacks the blob instead. Otherwise the
/// upper is made what unpacking gives: the missing whiteouts made (character devices 0/0),
/// sockets removed (a layer omits them), overlayfs's private xattrs (`trusted.overlay.*`,
/// `user.overlay.*`: origin, impure, opaque of a rewritten directory) removed except the
/// opaque marker of a [`Change::Opaque`], and every mtime (and atime) clamped the way the
/// layer writer clamps it: whole seconds, between 0 and `epoch`. The root itself, which no
/// layer carries, loses overlay's xattrs and gets the caller's owner; its mode is the
/// snapshot table's to set. Hardlinks need nothing: the layer links exactly the paths that
/// share an inode in the upper. An error may leave the upper half converted.
///
/// [`ApplyOptions::overlay_whiteouts`]: crate::ApplyOptions::overlay_whiteouts
pub fn snapshot_from_upper(upper: &Path, changeset: &Changeset, epoch: i64) -> Result<bool> {
    use rayon::prelude::*;
    use rustix::fs::CWD;
    if !rustix::process::geteuid().is_root() {
        return Ok(false);
    }
    let found = scan(upper)?;
    let Some(fix) = snapshot_fixups(&found, changeset) else { return Ok(false) };
    for rel in &fix.sockets {
        let p = upper.join(rel);
        fs::remove_file(&p).map_err(|e| LayerError::io("unlink", &p, e))?;
    }
    for rel in &fix.whiteouts {
        let p = upper.join(rel);
        rustix::fs::mknodat(
            CWD,
            &p,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .map_err(|e| LayerError::io("mknod", &p, e.into()))?;
    }
    for rel in &fix.opaque {
        let p = upper.join(rel);
        rustix::fs::lsetxattr(&p, OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty())
            .map_err(|e| LayerError::io("setxattr", &p, e.into()))?;
    }
    strip_overlay_xattrs(upper, &overlay_xattrs_of(upper)?)?;
    rustix::fs::chown(upper, Some(rustix::process::geteuid()), Some(rustix::process::getegid()))
        .map_err(|e| LayerError::io("chown", upper, e.into()))?;
    // Times last: making or removing an entry above moved its directory's mtime.
    fix.entries.par_iter().try_for_each(|(rel, xattrs, secs)| {
        let p = upper.join(rel);
        strip_overlay_xattrs(&p, xattrs)?;
        set_layer_time(&p, *secs, epoch)
    })?;
    Ok(true)
}

/// Sets the mtime (and atime) of the entry at `path`, not a symlink's target, to `secs` as the
/// layer writer writes an mtime: whole seconds, between 0 and `epoch`.
fn set_layer_time(path: &Path, secs: i64, epoch: i64) -> Result<()> {
    use rustix::fs::{AtFlags, Timespec, Timestamps, CWD};
    let t = Timespec { tv_sec: secs.clamp(0, epoch.max(0)), tv_nsec: 0 };
    let times = Timestamps { last_access: t, last_modification: t };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| LayerError::io("utimensat", path, e.into()))
}

/// Clamps the mtime of every entry below `tree` (not `tree` itself) the way the layer writer
/// writes them (see `set_layer_time`), so a tree that holds exactly a layer's files cannot be
/// told from that layer unpacked: what a COPY's staging tree needs to become its snapshot.
/// Only times change, so this may run while the layer is written from the same tree (the
/// writer reads contents, and metadata from its changeset). An entry already clamped is left.
pub fn clamp_mtimes(tree: &Path, epoch: i64) -> Result<()> {
    // Setting a child's time does not touch its directory's, so the order does not matter.
    for entry in walkdir::WalkDir::new(tree).min_depth(1) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(tree).to_path_buf();
            LayerError::io("walk", &path, e.into())
        })?;
        let meta = entry.metadata().map_err(|e| {
            LayerError::io("lstat", entry.path(), std::io::Error::other(e.to_string()))
        })?;
        if meta.mtime() == meta.mtime().clamp(0, epoch.max(0)) && meta.mtime_nsec() == 0 {
            continue;
        }
        set_layer_time(entry.path(), meta.mtime(), epoch)?;
    }
    Ok(())
}

/// What [`snapshot_from_upper`] changes in an upper, decided before it changes anything.
#[derive(Default)]
struct SnapshotFixups {
    /// Every entry kept (whiteouts aside): its overlay xattrs to remove, its mtime (seconds).
    entries: Vec<(PathBuf, Vec<OsString>, i64)>,
    sockets: Vec<PathBuf>,
    /// Deletions with no whiteout in the upper yet.
    whiteouts: Vec<PathBuf>,
    /// Opaque directories that lack `trusted.overlay.opaque=y` (a `userxattr` upper).
    opaque: Vec<PathBuf>,
}

/// Merge-joins the upper's scan with the changeset (both sorted bytewise by path); `None`
/// when the upper does not hold exactly the changeset (see [`snapshot_from_upper`]).
fn snapshot_fixups(found: &crate::scan::Scan, changeset: &Changeset) -> Option<SnapshotFixups> {
    use std::cmp::Ordering;
    let (changes, entries) = (changeset.changes(), found.entries());
    let dir_in_upper = |p: &Path| {
        p.as_os_str().is_empty() || found.get(p).is_some_and(|e| e.kind == EntryKind::Dir)
    };
    let mut fix = SnapshotFixups::default();
    let (mut i, mut j) = (0, 0);
    while i < changes.len() || j < entries.len() {
        let ord = match (changes.get(i), entries.get(j)) {
            (Some(c), Some(e)) => crate::scan::path_cmp(c.path(), &e.path),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        let c = changes.get(i);
        // One change per path, or the unpack order would decide.
        if c.is_some_and(|c| changes.get(i + 1).is_some_and(|n| n.path() == c.path())) {
            return None;
        }
        match (ord, c) {
            // In the upper, not in the layer.
            (Ordering::Greater, _) => return None,
            (Ordering::Less, Some(Change::Deleted(p))) if p.parent().is_some_and(dir_in_upper) => {
                fix.whiteouts.push(p.clone());
                i += 1;
            }
            (Ordering::Less, _) => return None,
            (Ordering::Equal, Some(Change::Deleted(_))) => {
                let e = &entries[j];
                if !(e.kind == EntryKind::CharDevice && e.rdev == 0) {
                    return None;
                }
                (i, j) = (i + 1, j + 1);
            }
            (Ordering::Equal, Some(change)) => {
                let (w, e) = (change.entry()?, &entries[j]);
                let mut overlay: Vec<OsString> =
                    e.xattrs.keys().filter(|k| is_overlay_xattr(k)).cloned().collect();
                let mut rest = e.xattrs.clone();
                rest.retain(|k, _| !is_overlay_xattr(k));
                let same = w.kind == e.kind
                    && w.mode == e.mode
                    && (w.uid, w.gid) == (e.uid, e.gid)
                    && w.size == e.size
                    && w.mtime == e.mtime
                    && (w.dev, w.ino) == (e.dev, e.ino)
                    && w.link_target == e.link_target
                    && w.rdev == e.rdev
                    && w.xattrs == rest;
                if !same {
                    return None;
                }
                if e.kind == EntryKind::Socket {
                    fix.sockets.push(e.path.clone());
                } else {
                    if matches!(change, Change::Opaque(_)) {
                        let marked =
                            e.xattrs.get(OsStr::new(OPAQUE_XATTR)).is_some_and(|v| v == b"y");
                        overlay.retain(|k| !(marked && k == OPAQUE_XATTR));
                        if !marked {
                            fix.opaque.push(e.path.clone());
                        }
                    }
                    fix.entries.push((e.path.clone(), overlay, e.mtime.secs));
                }
                (i, j) = (i + 1, j + 1);
            }
            (Ordering::Equal, None) => return None,
        }
    }
    Some(fix)
}

/// The overlay xattrs (see [`is_overlay_xattr`]) that `path` carries.
fn overlay_xattrs_of(path: &Path) -> Result<Vec<OsString>> {
    match xattr::list(path) {
        Ok(names) => Ok(names.filter(|n| is_overlay_xattr(n)).collect()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => {
            Ok(Vec::new())
        }
        Err(e) => Err(LayerError::io("llistxattr", path, e)),
    }
}

fn strip_overlay_xattrs(path: &Path, names: &[OsString]) -> Result<()> {
    for n in names {
        match xattr::remove(path, n) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NODATA.raw_os_error()) => {}
            Err(e) => return Err(LayerError::io("lremovexattr", path, e)),
        }
    }
    Ok(())
}

/// Drops from an upperdir the directories that a step's mountpoint stubs (container paths,
/// as the sandbox reports them) made overlay copy up, and nothing the step changed: a
/// stub's ancestor that is now empty in `upper`, carries no opaque or redirect marker, and
/// matches its copy in `lower` (the step's lower layers) in mode and owner. Deepest first,
/// so an emptied directory can free its own parent. (A command that only touched such a
/// directory's mtime loses that change; nothing else can.) Every directory is opened without
/// following a symlink, so one the step planted leads nowhere.
pub fn drop_copy_ups(upper: &Path, lower: &MergedView, stubs: &[String]) {
    use std::collections::BTreeSet;
    let mut parents: BTreeSet<String> = stubs.iter().filter_map(|s| parent_of(s)).collect();
    while let Some(dir) =
        parents.iter().max_by_key(|p| (p.matches('/').count(), (*p).clone())).cloned()
    {
        parents.remove(&dir);
        if stubs.contains(&dir) {
            continue;
        }
        let rel = dir.trim_start_matches('/');
        let Some((pfd, name)) = beneath::parent_and_name(upper, rel) else { continue };
        if only_copied_up(&pfd, name, lower, Path::new(rel))
            && rustix::fs::unlinkat(&pfd, name, rustix::fs::AtFlags::REMOVEDIR).is_ok()
        {
            if let Some(parent) = parent_of(&dir) {
                parents.insert(parent);
            }
        }
    }
}

fn parent_of(container_path: &str) -> Option<String> {
    let parent = Path::new(container_path).parent()?;
    (parent != Path::new("/")).then(|| parent.to_string_lossy().into_owned())
}

/// Whether the upper directory `name` in `parent` (image path `rel`) is only a copy-up.
fn only_copied_up(
    parent: &std::os::fd::OwnedFd,
    name: &OsStr,
    lower: &MergedView,
    rel: &Path,
) -> bool {
    use rustix::fs::{Mode, OFlags};
    let Ok(up) = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let Ok(meta) = rustix::fs::fstat(&up) else { return false };
    let empty = rustix::fs::Dir::read_from(&up).is_ok_and(|d| {
        d.filter_map(std::result::Result::ok)
            .all(|e| matches!(e.file_name().to_bytes(), b"." | b".."))
    });
    if !empty {
        return false;
    }
    let markers = [
        "trusted.overlay.opaque",
        "user.overlay.opaque",
        "trusted.overlay.redirect",
        "user.overlay.redirect",
    ];
    if markers.iter().any(|m| rustix::fs::fgetxattr(&up, *m, &mut [0u8; 0][..]).is_ok()) {
        return false;
    }
    match lower.metadata(rel) {
        Some(l) => {
            l.is_dir()
                && l.mode() == meta.st_mode
                && l.uid() == meta.st_uid
                && l.gid() == meta.st_gid
        }
        None => false,
    }
}

/// Opening directories below a root without following any symlink.
mod beneath {
    use std::ffi::OsStr;
    use std::os::fd::OwnedFd;
    use std::path::Path;

    use rustix::fs::{Mode, OFlags, ResolveFlags};

    /// The directory `rel` below `root`, opened `O_PATH` without following any symlink or
    /// leaving `root`'s mount.
    pub(super) fn open_dir(root: &Path, rel: &str) -> Option<OwnedFd> {
        let dir = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let rel = rel.trim_matches('/');
        if rel.is_empty() {
            return Some(dir);
        }
        rustix::fs::openat2(
            &dir,
            rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
        )
        .ok()
    }

    /// The parent directory of `rel` below `root` (see [`open_dir`]) and the last name.
    pub(super) fn parent_and_name<'a>(root: &Path, rel: &'a str) -> Option<(OwnedFd, &'a OsStr)> {
        let p = Path::new(rel.trim_matches('/'));
        let name = p.file_name()?;
        let parent = p.parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        Some((open_dir(root, &parent)?, name))
    }
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
    fn copy_ups_made_for_stubs_are_dropped_and_changed_dirs_kept() {
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        fs::create_dir_all(lower.path().join("etc")).unwrap();
        fs::create_dir_all(lower.path().join("root")).unwrap();
        fs::create_dir_all(upper.path().join("etc")).unwrap();
        fs::create_dir_all(upper.path().join("root")).unwrap();
        fs::write(upper.path().join("root/keep"), b"x").unwrap();
        // a dir present only in upper (the command created it) is not a copy-up
        fs::create_dir_all(upper.path().join("new")).unwrap();
        let view = MergedView::new(vec![lower.path().to_path_buf()]);
        let stubs: Vec<String> = ["/etc/resolv.conf", "/root/.cache", "/new/stub"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        drop_copy_ups(upper.path(), &view, &stubs);
        assert!(!upper.path().join("etc").exists(), "copy-up for the stub only");
        assert!(upper.path().join("root/keep").exists());
        assert!(upper.path().join("new").is_dir(), "no lower copy: the command's");
    }

    #[test]
    fn probes_see_whiteouts_opaque_dirs_and_files_in_the_way() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/file"), "x").unwrap();
        assert_eq!(probe(root, b"a/b"), Probe::Something);
        assert_eq!(probe(root, b"a/none"), Probe::Nothing);
        assert_eq!(probe(root, b"a/file/below"), Probe::Hidden);
        assert_eq!(probe(root, b"z/y"), Probe::Nothing);
        let whiteout = rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("a/gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        );
        if whiteout.is_ok() {
            assert_eq!(probe(root, b"a/gone"), Probe::Hidden);
            assert_eq!(probe(root, b"a/gone/x"), Probe::Hidden);
        }
        let opaque = rustix::fs::setxattr(
            root.join("a/b"),
            OPAQUE_XATTR,
            b"y",
            rustix::fs::XattrFlags::empty(),
        );
        if opaque.is_ok() {
            assert_eq!(probe(root, b"a/b/lower"), Probe::Hidden);
        }
    }
}
