//! Property: tree -> scan -> layer -> apply into an empty dir -> scan gives the same tree
//! (mtimes clamped to the epoch), for every compression.
mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{assert_same, is_root, normalize};
use filetime::FileTime;
use proptest::prelude::*;
use strata_layer::{apply, scan, ApplyOptions, Changeset, Compression, LayerWriter};

#[derive(Debug, Clone)]
enum Kind {
    File { data: Vec<u8>, mode: u32, xattr: Option<(String, Vec<u8>)> },
    Dir { mode: u32 },
    Symlink { target: String },
    Hardlink { to: usize },
}

#[derive(Debug, Clone)]
struct Spec {
    parent: usize,
    name: String,
    kind: Kind,
    owner: (u32, u32),
    mtime: i64,
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        Just("with space".to_string()),
        Just("ünïcødé-日本".to_string()),
        Just("-dash".to_string()),
        Just(".hidden".to_string()),
        Just("x".repeat(120)),
        "[a-z]{90,140}",
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => (
            proptest::collection::vec(any::<u8>(), 0..3000),
            prop::sample::select(vec![0o644u32, 0o755, 0o4755, 0o2750, 0o600, 0o6711]),
            proptest::option::of(("user\\.[a-z]{1,6}", proptest::collection::vec(any::<u8>(), 0..40))),
        )
            .prop_map(|(data, mode, xattr)| Kind::File { data, mode, xattr }),
        2 => prop::sample::select(vec![0o755u32, 0o700, 0o1777, 0o2755])
            .prop_map(|mode| Kind::Dir { mode }),
        1 => prop::sample::select(vec![
            "target".to_string(),
            "../up".to_string(),
            "/abs/path".to_string(),
            "a b/c".to_string(),
            "t".repeat(130),
        ])
        .prop_map(|target| Kind::Symlink { target }),
        1 => (0usize..50).prop_map(|to| Kind::Hardlink { to }),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0usize..50,
        name(),
        kind(),
        prop::sample::select(vec![(0u32, 0u32), (1000, 1000), (65534, 100)]),
        0i64..2_000_000_000,
    )
        .prop_map(|(parent, name, kind, owner, mtime)| Spec {
            parent,
            name,
            kind,
            owner,
            mtime,
        })
}

/// Materializes specs under `root`; returns the created paths.
fn build(root: &Path, specs: &[Spec]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = vec![PathBuf::new()];
    let mut files: Vec<PathBuf> = Vec::new();
    let mut made: Vec<(PathBuf, i64, bool)> = Vec::new();
    for s in specs {
        let rel = dirs[s.parent % dirs.len()].join(&s.name);
        let abs = root.join(&rel);
        if fs::symlink_metadata(&abs).is_ok() {
            continue;
        }
        let mut is_link = false;
        match &s.kind {
            Kind::File { data, mode, xattr } => {
                fs::write(&abs, data).unwrap();
                if let Some((k, v)) = xattr {
                    xattr::set(&abs, k, v).unwrap();
                }
                if is_root() {
                    std::os::unix::fs::lchown(&abs, Some(s.owner.0), Some(s.owner.1)).unwrap();
                }
                fs::set_permissions(&abs, fs::Permissions::from_mode(*mode)).unwrap();
                files.push(rel.clone());
            }
            Kind::Dir { mode } => {
                fs::create_dir(&abs).unwrap();
                if is_root() {
                    std::os::unix::fs::lchown(&abs, Some(s.owner.0), Some(s.owner.1)).unwrap();
                }
                fs::set_permissions(&abs, fs::Permissions::from_mode(*mode)).unwrap();
                dirs.push(rel.clone());
            }
            Kind::Symlink { target } => {
                symlink(target, &abs).unwrap();
                is_link = true;
            }
            Kind::Hardlink { to } => {
                if files.is_empty() {
                    continue;
                }
                fs::hard_link(root.join(&files[to % files.len()]), &abs).unwrap();
            }
        }
        made.push((rel, s.mtime, is_link));
    }
    // Deepest first, so setting a child's time never disturbs a parent's.
    made.sort_by(|a, b| b.0.cmp(&a.0));
    for (rel, mtime, _) in &made {
        let t = FileTime::from_unix_time(*mtime, 123);
        filetime::set_symlink_file_times(root.join(rel), t, t).unwrap();
    }
    made.into_iter().map(|m| m.0).collect()
}

fn roundtrip(specs: &[Spec], compression: Compression, epoch: i64) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dst).unwrap();
    build(&src, specs);
    let before = scan(&src).unwrap();
    let mut layer = Vec::new();
    let summary = LayerWriter::new(compression)
        .epoch(epoch)
        .write(&Changeset::from_scan(before.clone()), &src, &mut layer)
        .unwrap();
    assert_eq!(summary.size, layer.len() as u64);
    let report = apply(&layer[..], &dst, &ApplyOptions::default()).unwrap();
    assert_eq!(report.diff_id, Some(summary.diff_id));
    let after = scan(&dst).unwrap();
    assert_same(&normalize(&before, epoch), &normalize(&after, i64::MAX));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn scan_layer_apply_scan_is_identity(
        specs in proptest::collection::vec(spec(), 1..40),
        comp in prop::sample::select(vec![Compression::Zstd, Compression::Gzip, Compression::None]),
        epoch in prop::sample::select(vec![0i64, 1_000_000_000, i64::MAX]),
    ) {
        roundtrip(&specs, comp, epoch);
    }
}

#[test]
fn empty_tree_is_a_valid_layer() {
    roundtrip(&[], Compression::Zstd, 0);
}

#[test]
fn fifos_and_device_nodes_round_trip() {
    use rustix::fs::{makedev, mknodat, FileType, Mode, CWD};
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dst).unwrap();
    mknodat(CWD, src.join("fifo"), FileType::Fifo, Mode::from_raw_mode(0o640), 0).unwrap();
    if is_root() {
        let m = Mode::from_raw_mode(0o666);
        mknodat(CWD, src.join("null"), FileType::CharacterDevice, m, makedev(1, 3)).unwrap();
        mknodat(CWD, src.join("loop9"), FileType::BlockDevice, m, makedev(7, 9)).unwrap();
    }
    let before = scan(&src).unwrap();
    let mut layer = Vec::new();
    LayerWriter::new(Compression::None).write_dir(&src, &mut layer).unwrap();
    apply(&layer[..], &dst, &ApplyOptions::default()).unwrap();
    assert_same(&normalize(&before, 0), &normalize(&scan(&dst).unwrap(), i64::MAX));
}
