//! Listings: a tree's metadata without its bytes, as text, and a tree made back from one.
//!
//! One line per [`Entry`] of a [`Scan`](crate::Scan): `entry KIND MODE UID GID SIZE SECS NANOS RDEV DIGEST
//! LINK XATTRS PATH`, space-separated, in the scan's (bytewise path) order. Paths, link targets
//! and xattr names are percent-encoded bytes (every byte outside `!`..`~`, and `%`; the empty
//! path is `%`); xattrs are `NAME=HEX` joined by `,`; an absent digest, link or xattr set is
//! `-`. strata-build keeps cache-mount states in it, and a layer's *table of contents* (the
//! listing of its unpacked snapshot, overlay whiteouts included) lets a COPY resolve its
//! destination in a parent image whose layers were never downloaded ([`materialize`] makes
//! the stand-in tree).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use strata_types::Digest;

use crate::error::{LayerError, Result};
use crate::scan::{Entry, EntryKind, Timestamp};

/// The listing lines of `entries`.
pub fn encode(entries: &[Entry]) -> String {
    let mut out = String::new();
    for e in entries {
        let xattrs = if e.xattrs.is_empty() {
            "-".to_string()
        } else {
            let one = |(k, v): (&OsString, &Vec<u8>)| {
                let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
                format!("{}={hex}", encode_bytes(k.as_bytes()))
            };
            e.xattrs.iter().map(one).collect::<Vec<_>>().join(",")
        };
        out.push_str(&format!(
            "entry {} {:o} {} {} {} {} {} {} {} {} {} {}\n",
            e.kind.letter(),
            e.mode,
            e.uid,
            e.gid,
            e.size,
            e.mtime.secs,
            e.mtime.nanos,
            e.rdev,
            e.digest.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
            e.link_target
                .as_deref()
                .map(|t| encode_bytes(t.as_os_str().as_bytes()))
                .unwrap_or("-".into()),
            xattrs,
            encode_bytes(e.path.as_os_str().as_bytes()),
        ));
    }
    out
}

/// Parses one line [`encode`] wrote; `None` for anything else.
pub fn decode_line(line: &str) -> Option<Entry> {
    let f: Vec<&str> = line.split(' ').collect();
    let ["entry", kind, mode, uid, gid, size, secs, nanos, rdev, digest, link, xattrs, path] =
        f.as_slice()
    else {
        return None;
    };
    let digest = match *digest {
        "-" => None,
        d => Some(d.parse::<Digest>().ok()?),
    };
    let link_target = match *link {
        "-" => None,
        t => Some(PathBuf::from(OsStr::from_bytes(&decode_bytes(t)?))),
    };
    let mut xattr_map = BTreeMap::new();
    if *xattrs != "-" {
        for pair in xattrs.split(',') {
            let (name, hex) = pair.split_once('=')?;
            let value = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            xattr_map.insert(OsStr::from_bytes(&decode_bytes(name)?).to_os_string(), value);
        }
    }
    Some(Entry {
        path: PathBuf::from(OsStr::from_bytes(&decode_bytes(path)?)),
        kind: kind_of(kind)?,
        mode: u32::from_str_radix(mode, 8).ok()?,
        uid: uid.parse().ok()?,
        gid: gid.parse().ok()?,
        size: size.parse().ok()?,
        mtime: Timestamp { secs: secs.parse().ok()?, nanos: nanos.parse().ok()? },
        xattrs: xattr_map,
        link_target,
        dev: 0,
        ino: 0,
        nlink: 1,
        rdev: rdev.parse().ok()?,
        digest,
    })
}

/// Parses a whole listing; `None` if any line is not an entry line.
pub fn decode(text: &str) -> Option<Vec<Entry>> {
    text.lines().map(decode_line).collect()
}

/// Makes `dir` (existing, empty) a stand-in for the tree `entries` describe: directories,
/// symlinks, fifos and device nodes as listed (an overlay whiteout is a character device
/// 0/0), regular files empty, each with its mode, owner, xattrs and mtime. What the tree
/// looks like, not what its files hold: enough to resolve paths and read directory metadata
/// in it. Device nodes, owners and `trusted.*` xattrs need root.
pub fn materialize(entries: &[Entry], dir: &Path) -> Result<()> {
    materialize_with(entries, dir, None)
}

/// [`materialize`] for looking at the tree's shape only: every regular file is a hardlink of
/// `empty` (an existing empty file outside `dir`), so it exists, as a regular file, but its
/// mode, owner and mtime are `empty`'s, not the listed ones. Directories, symlinks and device
/// nodes (overlay whiteouts) are exact. One `link` per file instead of creating an inode and
/// setting its metadata: a listing of tens of thousands of files stands in within
/// milliseconds.
pub fn materialize_shape(entries: &[Entry], dir: &Path, empty: &Path) -> Result<()> {
    materialize_with(entries, dir, Some(empty))
}

fn materialize_with(entries: &[Entry], dir: &Path, empty: Option<&Path>) -> Result<()> {
    use rustix::fs::{mknodat, FileType, Mode, CWD};
    let mut dirs = Vec::new();
    for e in entries {
        let rel = e.path.strip_prefix("/").unwrap_or(&e.path);
        if rel.as_os_str().is_empty()
            || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(LayerError::io(
                "materialize",
                dir.join(rel),
                std::io::Error::other("a listing path leaves its root"),
            ));
        }
        let p = dir.join(rel);
        let io = |what: &'static str| {
            let p = p.clone();
            move |err: std::io::Error| LayerError::io(what, &p, err)
        };
        match e.kind {
            EntryKind::Dir => {
                fs::create_dir(&p).map_err(io("mkdir"))?;
                dirs.push(e);
            }
            EntryKind::File => match empty {
                Some(empty) => {
                    fs::hard_link(empty, &p).map_err(io("link"))?;
                    continue;
                }
                None => {
                    fs::File::create(&p).map_err(io("create"))?;
                }
            },
            EntryKind::Symlink => {
                let target = e.link_target.as_deref().unwrap_or(Path::new(""));
                std::os::unix::fs::symlink(target, &p).map_err(io("symlink"))?;
            }
            kind => {
                let ft = match kind {
                    EntryKind::CharDevice => FileType::CharacterDevice,
                    EntryKind::BlockDevice => FileType::BlockDevice,
                    EntryKind::Fifo => FileType::Fifo,
                    _ => FileType::Socket,
                };
                if kind == EntryKind::Socket {
                    // A socket in a layer is nothing to resolve through; an empty file holds
                    // its place.
                    fs::File::create(&p).map_err(io("create"))?;
                } else {
                    mknodat(CWD, &p, ft, Mode::from_raw_mode(0o600), e.rdev)
                        .map_err(|err| io("mknod")(err.into()))?;
                }
            }
        }
        if e.kind != EntryKind::Dir {
            set_meta(&p, e)?;
        }
    }
    // Directories last, deepest first, so creating their children moved no mtime.
    for e in dirs.iter().rev() {
        set_meta(&dir.join(e.path.strip_prefix("/").unwrap_or(&e.path)), e)?;
    }
    Ok(())
}

fn set_meta(p: &Path, e: &Entry) -> Result<()> {
    use rustix::fs::{chownat, utimensat, AtFlags, Gid, Timespec, Timestamps, Uid, CWD};
    let io = |what: &'static str| move |err: std::io::Error| LayerError::io(what, p, err);
    let (uid, gid) = (Uid::from_raw(e.uid), Gid::from_raw(e.gid));
    chownat(CWD, p, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|err| io("lchown")(err.into()))?;
    if e.kind != EntryKind::Symlink {
        fs::set_permissions(p, fs::Permissions::from_mode(e.mode)).map_err(io("chmod"))?;
    }
    for (name, value) in &e.xattrs {
        xattr::set(p, name, value).map_err(io("lsetxattr"))?;
    }
    let t = Timespec { tv_sec: e.mtime.secs, tv_nsec: e.mtime.nanos.into() };
    utimensat(
        CWD,
        p,
        &Timestamps { last_access: t, last_modification: t },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|err| io("utimensat")(err.into()))?;
    Ok(())
}

fn kind_of(letter: &str) -> Option<EntryKind> {
    [
        EntryKind::File,
        EntryKind::Dir,
        EntryKind::Symlink,
        EntryKind::CharDevice,
        EntryKind::BlockDevice,
        EntryKind::Fifo,
        EntryKind::Socket,
    ]
    .into_iter()
    .find(|k| letter.len() == 1 && letter.starts_with(k.letter()))
}

fn encode_bytes(b: &[u8]) -> String {
    if b.is_empty() {
        return "%".to_string();
    }
    let mut out = String::new();
    for &c in b {
        if c.is_ascii_graphic() && c != b'%' && c != b',' && c != b'=' {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

fn decode_bytes(s: &str) -> Option<Vec<u8>> {
    if s == "%" {
        return Some(Vec::new());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::scan;

    #[test]
    fn a_listing_round_trips_and_materializes_the_same_tree_without_its_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("a dir/sub")).unwrap();
        fs::write(src.join("a dir/f%1,=x\n"), b"bytes").unwrap();
        fs::set_permissions(src.join("a dir"), fs::Permissions::from_mode(0o1777)).unwrap();
        std::os::unix::fs::symlink("../elsewhere", src.join("a dir/link")).unwrap();
        xattr::set(src.join("a dir/sub"), "user.note", b"v\x00,").unwrap();
        let entries = scan(&src).unwrap().into_entries();
        let text = encode(&entries);
        let back = decode(&text).unwrap();
        assert_eq!(back.len(), entries.len());
        for (a, b) in entries.iter().zip(&back) {
            assert_eq!(
                (&a.path, a.kind, a.mode, a.uid, a.mtime, &a.link_target, &a.xattrs, a.size),
                (&b.path, b.kind, b.mode, b.uid, b.mtime, &b.link_target, &b.xattrs, b.size)
            );
        }
        let made = tmp.path().join("made");
        fs::create_dir(&made).unwrap();
        materialize(&back, &made).unwrap();
        let again = scan(&made).unwrap().into_entries();
        for (a, b) in entries.iter().zip(&again) {
            let size = if a.kind == EntryKind::File { 0 } else { a.size };
            assert_eq!(
                (&a.path, a.kind, a.mode, a.mtime, &a.link_target, &a.xattrs, size),
                (&b.path, b.kind, b.mode, b.mtime, &b.link_target, &b.xattrs, b.size)
            );
        }
        for bad in ["entry x", "entry f 644 0 0 0 0 0 0 - - - %zz", "something else"] {
            assert!(decode(bad).is_none(), "{bad}");
        }
        // The shape only: files are links of one empty file, the rest exact.
        let shape = tmp.path().join("shape");
        let empty = tmp.path().join("empty");
        fs::create_dir(&shape).unwrap();
        fs::write(&empty, b"").unwrap();
        materialize_shape(&back, &shape, &empty).unwrap();
        let again = scan(&shape).unwrap().into_entries();
        assert_eq!(again.len(), entries.len());
        for (a, b) in entries.iter().zip(&again) {
            assert_eq!((&a.path, a.kind), (&b.path, b.kind));
            if a.kind == EntryKind::Dir {
                assert_eq!((a.mode, a.mtime, &a.xattrs), (b.mode, b.mtime, &b.xattrs));
            }
        }
        let escaping = decode("entry d 755 0 0 0 0 0 0 - - - ../up").unwrap();
        let fresh = tmp.path().join("fresh");
        fs::create_dir(&fresh).unwrap();
        assert!(materialize(&escaping, &fresh).is_err());
    }
}
