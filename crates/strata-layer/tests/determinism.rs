//! Same tree => same bytes, whatever the creation order, inode numbers, mtimes above the
//! clamp, or zstd worker count.
mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use common::write_file;
use filetime::FileTime;
use strata_layer::{layer_from_dir, Compression, LayerDescriptor, LayerWriter};

const EPOCH: i64 = 1_700_000_000;

fn make(root: &Path, reverse: bool, mtime: i64) {
    let mut files: Vec<(String, Vec<u8>)> =
        (0..60).map(|i| (format!("d{}/f{i:03}", i % 7), vec![i as u8; i * 97])).collect();
    files.push(("long/".to_string() + &"n".repeat(150), b"long".to_vec()));
    if reverse {
        files.reverse();
    }
    for (p, data) in &files {
        write_file(&root.join(p), data);
    }
    if reverse {
        fs::hard_link(root.join("d1/f001"), root.join("hl")).unwrap();
        symlink("d1/f001", root.join("sl")).unwrap();
    } else {
        symlink("d1/f001", root.join("sl")).unwrap();
        fs::hard_link(root.join("d1/f001"), root.join("hl")).unwrap();
    }
    fs::set_permissions(root.join("d2/f002"), fs::Permissions::from_mode(0o4755)).unwrap();
    xattr::set(root.join("d3/f003"), "user.b", b"2").unwrap();
    xattr::set(root.join("d3/f003"), "user.a", b"1").unwrap();
    let t = FileTime::from_unix_time(mtime, 42);
    for e in walkdir::WalkDir::new(root).contents_first(true) {
        let e = e.unwrap();
        filetime::set_symlink_file_times(e.path(), t, t).unwrap();
    }
}

fn layer(root: &Path, c: Compression, workers: u32) -> (LayerDescriptor, Vec<u8>) {
    let mut out = Vec::new();
    let s =
        LayerWriter::new(c).epoch(EPOCH).zstd_workers(workers).write_dir(root, &mut out).unwrap();
    (s, out)
}

#[test]
fn same_tree_built_differently_gives_same_digests() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    make(&a, false, EPOCH + 10);
    make(&b, true, EPOCH + 99_999);
    for c in [Compression::Zstd, Compression::Gzip, Compression::None] {
        let (sa, ba) = layer(&a, c, 1);
        let (sb, bb) = layer(&b, c, 3);
        assert_eq!(sa, sb, "{c:?}");
        assert_eq!(ba, bb, "{c:?}");
    }
    // Same diffID across compressions: it names the tar, not the blob.
    let ids: Vec<_> = [Compression::Zstd, Compression::Gzip, Compression::None]
        .into_iter()
        .map(|c| layer(&a, c, 2).0.diff_id)
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn mtimes_below_the_clamp_are_kept() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    make(&a, false, EPOCH - 10);
    make(&b, false, EPOCH - 20);
    assert_ne!(
        layer(&a, Compression::None, 1).0.diff_id,
        layer(&b, Compression::None, 1).0.diff_id
    );
}

#[test]
fn summary_matches_the_bytes() {
    use sha2::Digest as _;
    let t = tempfile::tempdir().unwrap();
    make(t.path(), false, 5);
    let mut out = Vec::new();
    let s = layer_from_dir(t.path(), &mut out).unwrap();
    assert_eq!(s.size, out.len() as u64);
    assert_eq!(*s.digest.as_bytes(), <[u8; 32]>::from(sha2::Sha256::digest(&out)));
    let tar = zstd::decode_all(&out[..]).unwrap();
    assert_eq!(s.uncompressed_size, tar.len() as u64);
    assert_eq!(*s.diff_id.as_bytes(), <[u8; 32]>::from(sha2::Sha256::digest(&tar)));
    assert_eq!(s.media_type, "application/vnd.oci.image.layer.v1.tar+zstd");
    // gzip header is fixed: no mtime, no name, OS = unknown.
    let mut gz = Vec::new();
    LayerWriter::new(Compression::Gzip).write_dir(t.path(), &mut gz).unwrap();
    assert_eq!(&gz[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
}
