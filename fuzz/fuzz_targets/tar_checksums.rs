//! Shared by the tar targets: a valid checksum in every header-shaped block.

/// Writes a correct checksum into every non-zero 512-byte block of `tar`, so that mutations
/// of a header's fields get past the checksum test instead of all failing it (a header's 8
/// checksum bytes are the only thing the fuzzer cannot find by itself). Data blocks get the
/// same bytes overwritten, which is just another mutation.
pub fn fix_checksums(tar: &mut [u8]) {
    for block in tar.chunks_exact_mut(512) {
        if block.iter().all(|&b| b == 0) {
            continue;
        }
        block[148..156].copy_from_slice(b"        ");
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }
}
