//! Reading layer tar headers as a stream: ustar, PAX (`x`, `g`) and GNU long names (`L`, `K`).
//!
//! A diff needs every header of a layer and the bytes of its regular files (to hash them), in
//! one forward pass over the decompressed stream, and nothing written anywhere. PAX records
//! are parsed by their length prefix, so values may hold newlines or any byte (binary xattrs).

use std::io::{self, Read};

const BLOCK: usize = 512;

/// One archive entry's header, PAX and GNU long-name overrides applied.
#[derive(Debug, Clone, Default)]
pub(crate) struct Header {
    pub name: Vec<u8>,
    pub link: Vec<u8>,
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub dev: (u32, u32),
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Walks the headers of a tar stream; between two headers the current entry's data can be
/// read through the [`Read`] impl.
pub(crate) struct TarStream<R> {
    r: R,
    left: u64,
    pad: u64,
    done: bool,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn number(field: &[u8], what: &str) -> io::Result<u64> {
    if let Some((&first, rest)) = field.split_first() {
        if first & 0x80 != 0 {
            // GNU base-256, big-endian.
            return rest.iter().try_fold(u64::from(first & 0x7f), |v, &b| {
                v.checked_mul(256)
                    .and_then(|v| v.checked_add(u64::from(b)))
                    .ok_or_else(|| invalid(format!("tar {what} field overflows")))
            });
        }
    }
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if digits.is_empty() {
        return Ok(0);
    }
    std::str::from_utf8(&digits)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 8).ok())
        .ok_or_else(|| invalid(format!("tar {what} field is not octal")))
}

fn c_string(field: &[u8]) -> &[u8] {
    field.iter().position(|&b| b == 0).map_or(field, |end| &field[..end])
}

/// PAX records `LEN KEY=VALUE\n`, split by LEN.
fn pax_records(mut data: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    while data.first().is_some_and(|&b| b != 0) {
        let space =
            data.iter().position(|&b| b == b' ').ok_or_else(|| invalid("bad PAX record"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("PAX record length is not a number"))?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(invalid("malformed PAX record"));
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| invalid("PAX record without ="))?;
        out.push((record[..eq].to_vec(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

fn pax_number(v: &[u8], key: &str) -> io::Result<i64> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.split('.').next()?.parse().ok())
        .ok_or_else(|| invalid(format!("PAX {key} is not a number")))
}

impl<R: Read> TarStream<R> {
    pub(crate) fn new(r: R) -> Self {
        TarStream { r, left: 0, pad: 0, done: false }
    }

    /// The underlying reader (positioned after the end-of-archive marker once
    /// [`TarStream::next_header`] returned `None`).
    pub(crate) fn into_inner(self) -> R {
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

    fn block(&mut self) -> io::Result<Option<[u8; BLOCK]>> {
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

    fn body(&mut self, size: u64) -> io::Result<Vec<u8>> {
        if size > 64 << 20 {
            return Err(invalid(format!("tar extended header of {size} bytes is too large")));
        }
        let mut v = vec![0u8; usize::try_from(size).unwrap_or(0)];
        self.r.read_exact(&mut v)?;
        self.skip((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64)?;
        Ok(v)
    }

    /// The next entry's header, skipping the unread rest of the current one; `None` at the end.
    pub(crate) fn next_header(&mut self) -> io::Result<Option<Header>> {
        self.skip(self.left + self.pad)?;
        (self.left, self.pad) = (0, 0);
        if self.done {
            return Ok(None);
        }
        let mut pax = Vec::new();
        let (mut long_name, mut long_link) = (None, None);
        loop {
            let Some(h) = self.block()? else {
                self.done = true;
                return Ok(None);
            };
            if h.iter().all(|&b| b == 0) {
                self.done = true;
                return Ok(None);
            }
            let stored = number(&h[148..156], "checksum")?;
            let sum: u64 = h
                .iter()
                .enumerate()
                .map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) })
                .sum();
            if sum != stored {
                return Err(invalid(format!("tar header checksum {stored:o} != computed {sum:o}")));
            }
            let size = number(&h[124..136], "size")?;
            match h[156] {
                b'x' => pax.extend(pax_records(&self.body(size)?)?),
                b'g' => drop(self.body(size)?),
                b'L' => long_name = Some(c_string(&self.body(size)?).to_vec()),
                b'K' => long_link = Some(c_string(&self.body(size)?).to_vec()),
                typeflag => {
                    let mut e = Header {
                        name: c_string(&h[0..100]).to_vec(),
                        link: c_string(&h[157..257]).to_vec(),
                        typeflag: if typeflag == 0 { b'0' } else { typeflag },
                        mode: u32::try_from(number(&h[100..108], "mode")? & 0o7777).unwrap_or(0),
                        uid: number(&h[108..116], "uid")?,
                        gid: number(&h[116..124], "gid")?,
                        size,
                        mtime: i64::try_from(number(&h[136..148], "mtime")?).unwrap_or(i64::MAX),
                        dev: (0, 0),
                        xattrs: Vec::new(),
                    };
                    if &h[257..262] == b"ustar" {
                        let prefix = c_string(&h[345..500]);
                        if h[262] == 0 && !prefix.is_empty() {
                            e.name = [prefix, b"/", &e.name].concat();
                        }
                        let major = number(&h[329..337], "devmajor")?;
                        let minor = number(&h[337..345], "devminor")?;
                        e.dev = (
                            u32::try_from(major).unwrap_or(u32::MAX),
                            u32::try_from(minor).unwrap_or(u32::MAX),
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
                                e.size = u64::try_from(pax_number(&v, "size")?)
                                    .map_err(|_| invalid("negative PAX size"))?
                            }
                            b"uid" => e.uid = u64::try_from(pax_number(&v, "uid")?).unwrap_or(0),
                            b"gid" => e.gid = u64::try_from(pax_number(&v, "gid")?).unwrap_or(0),
                            b"mtime" => e.mtime = pax_number(&v, "mtime")?,
                            _ => {
                                if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                                    e.xattrs.push((name.to_vec(), v));
                                }
                            }
                        }
                    }
                    self.left = e.size;
                    self.pad = (BLOCK as u64 - e.size % BLOCK as u64) % BLOCK as u64;
                    return Ok(Some(e));
                }
            }
        }
    }
}

impl<R: Read> Read for TarStream<R> {
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
    fn octal_base256_and_pax() {
        assert_eq!(number(b"0000644\0", "m").unwrap(), 0o644);
        assert_eq!(number(b"   644 \0", "m").unwrap(), 0o644);
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 1, 0], "m").unwrap(), 256);
        assert!(number(b"0009\0", "m").is_err());
        let v = pax_records(b"29 SCHILY.xattr.user.a=x\ny=z\n12 path=a/b\n").unwrap();
        assert_eq!(v[0], (b"SCHILY.xattr.user.a".to_vec(), b"x\ny=z".to_vec()));
        assert_eq!(v[1], (b"path".to_vec(), b"a/b".to_vec()));
        assert!(pax_records(b"99 path=a\n").is_err());
    }
}
