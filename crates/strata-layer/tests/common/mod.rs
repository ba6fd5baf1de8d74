//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::print_stdout, clippy::print_stderr)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use strata_layer::{Digest, EntryKind, Scan};

/// A snapshot entry reduced to what must survive a layer round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Norm {
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    pub link_target: Option<PathBuf>,
    pub rdev: u64,
    pub digest: Option<Digest>,
    /// First path (bytewise) of the hardlink group, for files with nlink > 1.
    pub link_group: Option<PathBuf>,
}

/// Normalizes a snapshot (digests computed, mtimes clamped to `epoch` and truncated to seconds).
pub fn normalize(snap: &Scan, epoch: i64) -> BTreeMap<Vec<u8>, Norm> {
    let mut snap = snap.clone();
    snap.compute_digests().expect("digests");
    let mut leader: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for e in snap.entries() {
        if e.kind == EntryKind::File && e.nlink > 1 {
            leader.entry((e.dev, e.ino)).or_insert_with(|| e.path.clone());
        }
    }
    snap.entries()
        .iter()
        .filter(|e| e.kind != EntryKind::Socket)
        .map(|e| {
            (
                e.path.as_os_str().as_bytes().to_vec(),
                Norm {
                    kind: e.kind,
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                    size: e.size,
                    mtime: e.mtime.secs.min(epoch).max(0),
                    xattrs: e.xattrs.clone(),
                    link_target: e.link_target.clone(),
                    rdev: e.rdev,
                    digest: e.digest,
                    link_group: if e.kind == EntryKind::File && e.nlink > 1 {
                        leader.get(&(e.dev, e.ino)).cloned()
                    } else {
                        None
                    },
                },
            )
        })
        .collect()
}

/// Asserts two normalized snapshots are equal, printing the first difference.
pub fn assert_same(a: &BTreeMap<Vec<u8>, Norm>, b: &BTreeMap<Vec<u8>, Norm>) {
    for (k, v) in a {
        match b.get(k) {
            None => panic!("{:?} missing from the second tree", String::from_utf8_lossy(k)),
            Some(w) => assert_eq!(v, w, "entry {:?} differs", String::from_utf8_lossy(k)),
        }
    }
    for k in b.keys() {
        assert!(a.contains_key(k), "{:?} only in the second tree", String::from_utf8_lossy(k));
    }
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Skips (returns true) when `tool` is absent, unless STRATA_TEST_STRICT=1.
pub fn skip_without(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if found {
        return false;
    }
    if std::env::var("STRATA_TEST_STRICT").as_deref() == Ok("1") {
        panic!("{tool} not found and STRATA_TEST_STRICT=1");
    }
    eprintln!("skipping: {tool} not found");
    true
}

/// One entry of a hand-made (possibly malicious) tar.
pub struct Raw<'a> {
    pub name: &'a [u8],
    pub typeflag: u8,
    pub link: &'a [u8],
    pub data: &'a [u8],
    pub mode: u32,
    pub dev: (u32, u32),
}

pub fn file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw { name: name.as_bytes(), typeflag: b'0', link: b"", data, mode: 0o644, dev: (0, 0) }
}
pub fn dir(name: &str) -> Raw<'_> {
    Raw { name: name.as_bytes(), typeflag: b'5', link: b"", data: b"", mode: 0o755, dev: (0, 0) }
}
pub fn symlink<'a>(name: &'a str, target: &'a str) -> Raw<'a> {
    Raw {
        name: name.as_bytes(),
        typeflag: b'2',
        link: target.as_bytes(),
        data: b"",
        mode: 0o777,
        dev: (0, 0),
    }
}
pub fn hardlink<'a>(name: &'a str, target: &'a str) -> Raw<'a> {
    Raw {
        name: name.as_bytes(),
        typeflag: b'1',
        link: target.as_bytes(),
        data: b"",
        mode: 0o644,
        dev: (0, 0),
    }
}

fn octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    field[..w].copy_from_slice(format!("{v:0w$o}").as_bytes());
}

/// Serializes entries as a ustar archive verbatim (no path checks at all).
pub fn raw_tar(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = [0u8; 512];
        h[..e.name.len()].copy_from_slice(e.name);
        octal(&mut h[100..108], u64::from(e.mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], e.data.len() as u64);
        octal(&mut h[136..148], 1_000_000);
        h[156] = e.typeflag;
        h[157..157 + e.link.len()].copy_from_slice(e.link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        octal(&mut h[329..337], u64::from(e.dev.0));
        octal(&mut h[337..345], u64::from(e.dev.1));
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(e.data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

pub fn write_file(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    let mut f = fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
}

/// Names (bytes, as listed) of a plain tar's entries, in archive order.
pub fn tar_names(tar_bytes: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(tar_bytes);
    a.entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect()
}
