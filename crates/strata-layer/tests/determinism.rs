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

/// The zstd window a frame declares (RFC 8878 § 3.1.1.1: Frame_Header_Descriptor, then the
/// Window_Descriptor unless the frame is single-segment).
fn zstd_window(frame: &[u8]) -> u64 {
    assert_eq!(&frame[..4], &[0x28, 0xb5, 0x2f, 0xfd], "not a zstd frame");
    assert_eq!(frame[4] & 0x20, 0, "single-segment frame declares no window");
    let (exp, mantissa) = (u64::from(frame[5] >> 3), u64::from(frame[5] & 7));
    let base = 1u64 << (10 + exp);
    base + base / 8 * mantissa
}

#[test]
fn default_zstd_parameters_hold_across_worker_counts_and_jobs() {
    // ~29 MiB of compressible, non-repeating text: more than three 8 MiB jobs.
    let t = tempfile::tempdir().unwrap();
    for f in 0..16 {
        let text: String = (0..60_000u64)
            .map(|i| format!("{f} {} {}\n", i * 7919 % 10007, i.wrapping_mul(2654435761) % 97))
            .collect();
        write_file(&t.path().join(format!("f{f:02}")), text.repeat(3).as_bytes());
    }
    let (d1, b1) = layer(t.path(), Compression::Zstd, 1);
    assert!(d1.uncompressed_size > 3 * (8 << 20), "{}", d1.uncompressed_size);
    for workers in [2, 4] {
        let (d, b) = layer(t.path(), Compression::Zstd, workers);
        assert_eq!(d, d1, "{workers} workers");
        assert!(b == b1, "{workers} workers gave other bytes");
    }
    // The defaults are strata's parameter set (8 MiB window), not zstd's level 3 table.
    assert_eq!(zstd_window(&b1), 8 << 20);
    let level3 = LayerWriter::new(Compression::Zstd).epoch(EPOCH).level(3);
    let mut b3 = Vec::new();
    let d3 = level3.write_dir(t.path(), &mut b3).unwrap();
    assert_eq!(zstd_window(&b3), 2 << 20);
    assert_eq!(d3.diff_id, d1.diff_id);
    assert_ne!(d3.digest, d1.digest);
    // Both decompress to the tar their diffID names.
    for blob in [&b1, &b3] {
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut strata_layer::decompress(&blob[..]).unwrap(), &mut tar)
            .unwrap();
        assert_eq!(strata_layer::Digest::of_bytes(&tar), d1.diff_id);
    }
    // The cache-relevant name tells the two apart.
    assert_eq!(LayerWriter::new(Compression::Zstd).compression_id(), "zstd:strata-1");
    assert_eq!(level3.compression_id(), "zstd:level-3");
    assert_eq!(LayerWriter::new(Compression::Gzip).compression_id(), "gzip:level-6");
    assert_eq!(LayerWriter::new(Compression::None).level(9).compression_id(), "none");
}
