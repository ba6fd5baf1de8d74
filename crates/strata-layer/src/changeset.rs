//! Changesets: what differs between two trees, as OCI layers express it.
//!
//! A [`Changeset`] is a sorted list of [`Change`]s: entries added or modified (carrying the
//! upper tree's metadata; bytes are read from the upper tree when a layer is written), paths
//! deleted (written as `.wh.NAME` whiteouts), and opaque directories (written as the
//! directory plus `.wh..wh..opq`), following the "Change Types", "Whiteouts" and "Opaque
//! Whiteout" sections of the OCI image-spec `layer.md`.
//!
//! There are two sources. [`diff`] merge-joins two [`Scan`]s in one pass. Its rule for
//! regular files, so that a huge unchanged tree costs no reads: a file whose size, mtime
//! (to the nanosecond), mode, owner and xattrs are all equal is *unchanged* without looking
//! at its bytes; a differing size, mode, owner or xattr set makes it *modified* without
//! looking either; only when everything but the mtime matches are the two files hashed (in
//! parallel) and compared by content. Other entry types compare all their metadata,
//! mtime included. A deleted directory yields one deletion, not one per descendant, and
//! explicit whiteouts are preferred over opaque directories as `layer.md` recommends.
//! [`crate::overlay::changeset_from_upper`] reads an overlayfs upperdir instead: the
//! upperdir *is* the change, with overlay's own whiteout conventions translated.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::Result;
use crate::scan::{path_cmp, Entry, EntryKind, Scan};

/// One change of a [`Changeset`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// The entry does not exist in the lower tree.
    Added(Entry),
    /// The entry exists in both trees and differs (content, type or metadata).
    Modified(Entry),
    /// The entry (a directory) replaces whatever the lower layers had at its path: all lower
    /// children are hidden (`.wh..wh..opq`), and only children listed in this changeset exist.
    Opaque(Entry),
    /// The path exists in the lower tree and not in the upper one.
    Deleted(PathBuf),
}

impl Change {
    /// The relative path this change is about.
    pub fn path(&self) -> &Path {
        match self {
            Change::Added(e) | Change::Modified(e) | Change::Opaque(e) => &e.path,
            Change::Deleted(p) => p,
        }
    }

    /// The upper entry, unless this is a deletion.
    pub fn entry(&self) -> Option<&Entry> {
        match self {
            Change::Added(e) | Change::Modified(e) | Change::Opaque(e) => Some(e),
            Change::Deleted(_) => None,
        }
    }
}

/// A set of changes, sorted bytewise by path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changeset {
    changes: Vec<Change>,
}

impl Changeset {
    /// Builds a changeset from changes in any order (they are sorted here).
    pub fn from_changes(mut changes: Vec<Change>) -> Changeset {
        changes.sort_by(|a, b| path_cmp(a.path(), b.path()));
        Changeset { changes }
    }

    /// Every entry of `scan` as an addition: the changeset of a whole tree.
    pub fn from_scan(scan: Scan) -> Changeset {
        Changeset { changes: scan.into_entries().into_iter().map(Change::Added).collect() }
    }

    /// Every entry under `dir` (not `dir` itself) as an addition: the changeset of a whole
    /// tree, what [`Changeset::from_scan`] makes of a [`scan`](crate::scan()) of `dir`, read
    /// without the scan in between. A tree of 200,000 entries then has one list of them
    /// (about 40 MB) at a time, not two while one is converted into the other.
    pub fn of_dir(dir: &Path) -> Result<Changeset> {
        let mut changes = crate::scan::walk(dir, Change::Added)?;
        changes.par_sort_unstable_by(|a, b| path_cmp(a.path(), b.path()));
        Ok(Changeset { changes })
    }

    /// The changes, sorted bytewise by path.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// What [`diff`] decided for one path present in both trees.
enum Verdict {
    Same,
    Changed,
    /// Only the mtime differs: compare content.
    CompareContent,
}

fn compare(lower: &Entry, upper: &Entry) -> Verdict {
    if lower.kind != upper.kind
        || lower.mode != upper.mode
        || lower.uid != upper.uid
        || lower.gid != upper.gid
        || lower.xattrs != upper.xattrs
        || lower.link_target != upper.link_target
        || lower.rdev != upper.rdev
        || lower.size != upper.size
    {
        return Verdict::Changed;
    }
    if lower.mtime == upper.mtime {
        return Verdict::Same;
    }
    if upper.kind == EntryKind::File {
        match (lower.digest, upper.digest) {
            (Some(a), Some(b)) if a == b => Verdict::Same,
            (Some(_), Some(_)) => Verdict::Changed,
            _ => Verdict::CompareContent,
        }
    } else {
        Verdict::Changed
    }
}

/// Computes the changes that turn `lower` into `upper` (see the module docs for the rule).
///
/// Reads file bytes only for regular files whose metadata match except for the mtime; those
/// are hashed from `lower.root()` and `upper.root()` in parallel.
pub fn diff(lower: &Scan, upper: &Scan) -> Result<Changeset> {
    let (l, u) = (lower.entries(), upper.entries());
    let mut changes = Vec::new();
    let mut undecided: Vec<(&Entry, &Entry)> = Vec::new();
    // Paths whose lower subtree is gone (deleted, or a directory replaced by a non-directory).
    let mut gone: HashSet<&Path> = HashSet::new();
    let parent_gone =
        |gone: &HashSet<&Path>, p: &Path| p.parent().is_some_and(|pp| gone.contains(pp));
    let (mut i, mut j) = (0, 0);
    while i < l.len() || j < u.len() {
        let ord = match (l.get(i), u.get(j)) {
            (Some(a), Some(b)) => path_cmp(&a.path, &b.path),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                let a = &l[i];
                if !parent_gone(&gone, &a.path) {
                    changes.push(Change::Deleted(a.path.clone()));
                }
                gone.insert(&a.path);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                changes.push(Change::Added(u[j].clone()));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (a, b) = (&l[i], &u[j]);
                if a.kind == EntryKind::Dir && b.kind != EntryKind::Dir {
                    gone.insert(&a.path);
                }
                match compare(a, b) {
                    Verdict::Same => {}
                    Verdict::Changed => changes.push(Change::Modified(b.clone())),
                    Verdict::CompareContent => undecided.push((a, b)),
                }
                i += 1;
                j += 1;
            }
        }
    }
    let decided: Vec<Option<Change>> = undecided
        .into_par_iter()
        .map(|(a, b)| {
            let da = lower.digest_of(&a.path)?;
            let db = upper.digest_of(&b.path)?;
            Ok((da != db).then(|| Change::Modified(b.clone())))
        })
        .collect::<Result<_>>()?;
    changes.extend(decided.into_iter().flatten());
    Ok(Changeset::from_changes(changes))
}
