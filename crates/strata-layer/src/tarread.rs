//! A small streaming tar reader: ustar, PAX (`x`, `g`) and GNU long names (`L`, `K`).
//!
//! Our own rather than the tar crate's because PAX values are length-prefixed byte strings
//! that may contain newlines (binary xattr values, file names with `\n`), which the tar
//! crate's record parser splits on; and because apply must see every raw name to judge it.
//!
//! The reader follows the pull model, in one forward pass with no seeking: [`TarReader::next_entry`]
//! returns the next [`RawEntry`] (extended headers already folded in), and until the next call
//! the entry's data can be read through the reader's [`Read`] impl, so a caller can hash or
//! copy file bytes while streaming; whatever it leaves unread is skipped. [`apply`](crate::apply)
//! extracts with it, and strata-diff lists and hashes layers with it without extracting.
//!
//! ```
//! use std::io::Read;
//! use strata_layer::tarread::TarReader;
//!
//! # fn main() -> std::io::Result<()> {
//! let mut builder = tar::Builder::new(Vec::new());
//! let mut header = tar::Header::new_ustar();
//! header.set_size(2);
//! header.set_mode(0o644);
//! header.set_cksum();
//! builder.append_data(&mut header, "etc/motd", &b"hi"[..])?;
//! let archive = builder.into_inner()?;
//!
//! let mut reader = TarReader::new(&archive[..]);
//! let entry = reader.next_entry()?.expect("one entry");
//! assert_eq!(entry.name, b"etc/motd");
//! let mut data = Vec::new();
//! reader.read_to_end(&mut data)?;
//! assert_eq!(data, b"hi");
//! assert!(reader.next_entry()?.is_none());
//! # Ok(()) }
//! ```

use std::io::{self, Read};

use crate::EntryKind;

const BLOCK: usize = 512;

/// One archive entry's header, with PAX / GNU long-name overrides applied.
///
/// Names are raw bytes as stored (not normalized, possibly absolute or with `..`): judging
/// them is the caller's business.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RawEntry {
    /// Path: PAX `path`, else GNU `L`, else ustar prefix + `/` + name.
    pub name: Vec<u8>,
    /// Link target (symlinks and hardlinks): PAX `linkpath`, else GNU `K`, else the header's.
    pub link: Vec<u8>,
    /// Type flag byte (`b'0'` regular, `b'1'` hardlink, `b'2'` symlink, `b'5'` dir, ...);
    /// an old-style NUL flag is reported as `b'0'`.
    pub typeflag: u8,
    /// Permission bits and setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Numeric owner (PAX `uid` overrides the header).
    pub uid: u64,
    /// Numeric group (PAX `gid` overrides the header).
    pub gid: u64,
    /// Declared data size in bytes (PAX `size` overrides the header).
    pub size: u64,
    /// Modification time in whole seconds since the epoch (PAX fractions dropped).
    pub mtime: i64,
    /// Device major and minor numbers (ustar headers; `(0, 0)` otherwise).
    pub dev: (u32, u32),
    /// Extended attributes from PAX `SCHILY.xattr.NAME` records, in archive order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RawEntry {
    /// The kind of entry the type flag declares: regular (`0`, `7`) and hardlink (`1`) entries
    /// are files, `2` symlinks, `3`/`4` character/block devices, `5` directories, `6` fifos;
    /// `None` for anything else (vendor extensions, which readers skip).
    pub fn kind(&self) -> Option<EntryKind> {
        Some(match self.typeflag {
            b'0' | b'7' | b'1' => EntryKind::File,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::CharDevice,
            b'4' => EntryKind::BlockDevice,
            b'5' => EntryKind::Dir,
            b'6' => EntryKind::Fifo,
            _ => return None,
        })
    }
}

/// Reads a tar stream entry by entry; between two [`TarReader::next_entry`] calls the current
/// entry's data is read through [`Read`].
///
/// Errors are [`io::Error`]s: `InvalidData` for a malformed header (bad checksum, non-octal
/// field, malformed PAX record), `UnexpectedEof` for a truncated archive.
#[derive(Debug)]
pub struct TarReader<R> {
    r: R,
    /// Unread data bytes of the current entry, then its padding.
    left: u64,
    pad: u64,
    done: bool,
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn parse_num(field: &[u8], what: &str) -> io::Result<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256: big-endian, high bit of the first byte set.
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| bad(format!("{what} field overflows")))?;
        }
        return Ok(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if s.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&s).map_err(|_| bad(format!("{what} field is not octal")))?;
    u64::from_str_radix(s, 8).map_err(|_| bad(format!("{what} field {s:?} is not octal")))
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Parses PAX records (`LEN KEY=VALUE\n`), honouring LEN so values may hold any byte.
fn parse_pax(mut data: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    while !data.is_empty() && data[0] != 0 {
        let sp = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("PAX record without length".into()))?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("PAX record length is not a number".into()))?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad("malformed PAX record".into()));
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("PAX record without `=`".into()))?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

fn pax_num(v: &[u8], key: &str) -> io::Result<i64> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.split('.').next()?.parse::<i64>().ok())
        .ok_or_else(|| bad(format!("PAX {key} is not a number")))
}

impl<R: Read> TarReader<R> {
    /// A reader over the (already decompressed) tar stream `r`.
    pub fn new(r: R) -> Self {
        TarReader { r, left: 0, pad: 0, done: false }
    }

    /// The underlying reader, positioned after the end-of-archive block (or wherever reading
    /// stopped).
    pub fn inner_mut(&mut self) -> &mut R {
        &mut self.r
    }

    /// The underlying reader, positioned as for [`TarReader::inner_mut`].
    pub fn into_inner(self) -> R {
        self.r
    }

    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            self.r.read_exact(&mut buf[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    fn read_block(&mut self) -> io::Result<Option<[u8; BLOCK]>> {
        let mut b = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            match self.r.read(&mut b[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(b))
    }

    fn read_body(&mut self, size: u64) -> io::Result<Vec<u8>> {
        if size > 64 << 20 {
            return Err(bad(format!("extended header of {size} bytes is too large")));
        }
        let mut v = vec![0u8; usize::try_from(size).unwrap_or(0)];
        self.r.read_exact(&mut v)?;
        self.skip((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64)?;
        Ok(v)
    }

    /// The next entry, skipping whatever is left of the current one; `None` at the end.
    ///
    /// # Errors
    /// `InvalidData` for a malformed header, `UnexpectedEof` for a truncated stream, or the
    /// underlying reader's error.
    pub fn next_entry(&mut self) -> io::Result<Option<RawEntry>> {
        // Saturating: a size near 2^64 leaves no room for padding, and must not wrap to a
        // short skip that would read the entry's data as the next header.
        self.skip(self.left.saturating_add(self.pad))?;
        self.left = 0;
        self.pad = 0;
        if self.done {
            return Ok(None);
        }
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let Some(h) = self.read_block()? else {
                self.done = true;
                return Ok(None);
            };
            if h.iter().all(|&b| b == 0) {
                self.done = true;
                return Ok(None);
            }
            let stored = parse_num(&h[148..156], "checksum")?;
            let mut sum: u64 = 0;
            for (i, &b) in h.iter().enumerate() {
                sum += if (148..156).contains(&i) { 32 } else { u64::from(b) };
            }
            if sum != stored {
                return Err(bad(format!(
                    "header checksum mismatch (expected {stored:o}, found {sum:o})"
                )));
            }
            let size = parse_num(&h[124..136], "size")?;
            let typeflag = h[156];
            match typeflag {
                b'x' => {
                    pax.extend(parse_pax(&self.read_body(size)?)?);
                    continue;
                }
                b'g' => {
                    self.read_body(size)?;
                    continue;
                }
                b'L' => {
                    long_name = Some(cstr(&self.read_body(size)?).to_vec());
                    continue;
                }
                b'K' => {
                    long_link = Some(cstr(&self.read_body(size)?).to_vec());
                    continue;
                }
                _ => {}
            }
            let mut e = RawEntry {
                name: cstr(&h[0..100]).to_vec(),
                link: cstr(&h[157..257]).to_vec(),
                typeflag: if typeflag == 0 { b'0' } else { typeflag },
                mode: u32::try_from(parse_num(&h[100..108], "mode")? & 0o7777).unwrap_or(0),
                uid: parse_num(&h[108..116], "uid")?,
                gid: parse_num(&h[116..124], "gid")?,
                size,
                mtime: i64::try_from(parse_num(&h[136..148], "mtime")?).unwrap_or(i64::MAX),
                dev: (0, 0),
                xattrs: Vec::new(),
            };
            if &h[257..263] == b"ustar\0" {
                let prefix = cstr(&h[345..500]);
                if !prefix.is_empty() {
                    let mut n = prefix.to_vec();
                    n.push(b'/');
                    n.extend_from_slice(&e.name);
                    e.name = n;
                }
            }
            if &h[257..262] == b"ustar" {
                let maj = parse_num(&h[329..337], "devmajor")?;
                let min = parse_num(&h[337..345], "devminor")?;
                e.dev = (
                    u32::try_from(maj).unwrap_or(u32::MAX),
                    u32::try_from(min).unwrap_or(u32::MAX),
                );
            }
            if let Some(n) = long_name {
                e.name = n;
            }
            if let Some(l) = long_link {
                e.link = l;
            }
            for (k, v) in pax {
                match k.as_slice() {
                    b"path" => e.name = v,
                    b"linkpath" => e.link = v,
                    b"size" => {
                        e.size = u64::try_from(pax_num(&v, "size")?)
                            .map_err(|_| bad("negative PAX size".into()))?
                    }
                    b"uid" => e.uid = u64::try_from(pax_num(&v, "uid")?).unwrap_or(u64::MAX),
                    b"gid" => e.gid = u64::try_from(pax_num(&v, "gid")?).unwrap_or(u64::MAX),
                    b"mtime" => e.mtime = pax_num(&v, "mtime")?,
                    _ => {
                        if let Some(x) = k.strip_prefix(b"SCHILY.xattr.") {
                            e.xattrs.push((x.to_vec(), v));
                        }
                    }
                }
            }
            // Only regular files carry data; hardlinks, dirs, etc. may still declare a size.
            self.left = e.size;
            self.pad = (BLOCK as u64 - e.size % BLOCK as u64) % BLOCK as u64;
            return Ok(Some(e));
        }
    }
}

impl<R: Read> Read for TarReader<R> {
    /// Reads the current entry's data.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let k = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.r.read(&mut buf[..k])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_octal_with_padding_and_base256() {
        assert_eq!(parse_num(b"0000644\0", "m").unwrap(), 0o644);
        assert_eq!(parse_num(b"   644 \0", "m").unwrap(), 0o644);
        assert_eq!(parse_num(b"\0\0\0\0\0\0\0\0", "m").unwrap(), 0);
        assert_eq!(parse_num(&[0x80, 0, 0, 0, 0, 0, 0x01, 0x00], "m").unwrap(), 256);
        assert!(parse_num(b"0009\0", "m").is_err());
    }

    #[test]
    fn pax_values_may_contain_newlines_and_equals() {
        let rec = b"29 SCHILY.xattr.user.a=x\ny=z\n12 path=a/b\n";
        let v = parse_pax(rec).unwrap();
        assert_eq!(v[0], (b"SCHILY.xattr.user.a".to_vec(), b"x\ny=z".to_vec()));
        assert_eq!(v[1], (b"path".to_vec(), b"a/b".to_vec()));
        assert!(parse_pax(b"99 path=a\n").is_err());
        assert!(parse_pax(b"x path=a\n").is_err());
    }
}
