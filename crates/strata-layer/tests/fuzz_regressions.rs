//! One test per defect found by the fuzz targets in `fuzz/` (or while writing them), named
//! after it; each input is also in `fuzz/corpus/<target>/`.

use std::io::Read;

use strata_layer::tarread::TarReader;

/// A ustar header for `name` whose 12-byte size field is `size` verbatim, with its checksum.
fn header(name: &[u8], size: [u8; 12]) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(&size);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A GNU base-256 size of 2^64 - 1 left no room for the entry's padding: skipping the entry
/// overflowed (a panic with debug assertions, and in release a skip of 0 bytes, so the
/// entry's data was read as the next header: an entry other readers see as file content).
#[test]
fn regression_tarread_base256_size_near_u64_max() {
    let mut size = [0u8; 12];
    size[0] = 0x80;
    size[4..].fill(0xff);
    let mut tar = header(b"big", size).to_vec();
    // What a reader that skipped nothing would take for the next entry.
    tar.extend_from_slice(&header(b"smuggled", *b"00000000000\0"));
    tar.extend_from_slice(&[0u8; 1024]);

    let mut r = TarReader::new(&tar[..]);
    let big = r.next_entry().unwrap().expect("the first entry");
    assert_eq!(big.size, u64::MAX);
    // Skipping the unread entry must not stop short of its declared size.
    let err = r.next_entry().expect_err("the archive ends inside the entry");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);

    // The same after part of the data was read.
    let mut r = TarReader::new(&tar[..]);
    r.next_entry().unwrap().expect("the first entry");
    let mut data = Vec::new();
    (&mut r).take(512).read_to_end(&mut data).unwrap();
    assert_eq!(&data[..8], b"smuggled", "the rest of the archive is the entry's data");
    let err = r.next_entry().expect_err("the archive ends inside the entry");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}
