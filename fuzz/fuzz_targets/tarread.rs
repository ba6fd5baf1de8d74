//! The one tar reader (`strata_layer::tarread`), over any bytes.
//!
//! Asserts, beyond "no panic, no hang, no unbounded allocation": reading an entry's data never
//! yields more than its declared size; and the reader gives the same entries, data and verdict
//! whether the stream arrives whole or in short reads of 1 to 13 bytes (the sizes chosen by
//! the input), as tar-rs tests its reader with a `RandomReader`.
//!
//! Input: one control byte, then the tar. The control byte seeds the short-read sizes; when
//! its low bit is set, every header-shaped block gets a valid checksum first, so mutations
//! reach the fields behind the checksum test.
#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use strata_layer::tarread::{RawEntry, TarReader};

#[path = "tar_checksums.rs"]
mod tar_checksums;

/// A reader that hands out at most a few bytes per call.
struct ShortReads<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for ShortReads<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.step = self.step.wrapping_mul(31).wrapping_add(7);
        let n = (self.step % 13 + 1).min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Every entry with (up to 64 KiB of) its data, and the error that ended the walk, if any.
fn walk(r: impl Read) -> (Vec<(RawEntry, Vec<u8>)>, Option<io::ErrorKind>) {
    let mut tar = TarReader::new(r);
    let mut out = Vec::new();
    loop {
        match tar.next_entry() {
            Ok(None) => return (out, None),
            Ok(Some(e)) => {
                let mut data = Vec::new();
                if let Err(err) = (&mut tar).take(64 << 10).read_to_end(&mut data) {
                    return (out, Some(err.kind()));
                }
                assert!(
                    data.len() as u64 <= e.size,
                    "read {} bytes of a {}-byte entry",
                    data.len(),
                    e.size
                );
                let _ = e.kind();
                out.push((e, data));
            }
            Err(err) => return (out, Some(err.kind())),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, tar)) = data.split_first() else { return };
    let mut tar = tar.to_vec();
    if control & 1 != 0 {
        tar_checksums::fix_checksums(&mut tar);
    }
    let data = &tar[..];
    let whole = walk(data);
    let short = walk(ShortReads { data, step: usize::from(control) });
    assert_eq!(whole, short, "short reads change what the reader sees");
});
