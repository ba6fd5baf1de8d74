//! SHA-256 content digests.
//!
//! Every blob in the store is named by the SHA-256 of its bytes, written `sha256:<64 lowercase
//! hex>` as in the OCI image spec (descriptor.md, "Digests"). [`Digest`] holds the 32 raw bytes,
//! so a malformed digest cannot exist once parsed: the string form is produced by `Display` and
//! read back only through [`FromStr`], which serde uses too. Other algorithms (sha512, blake3)
//! are rejected on purpose: the store lays blobs out under `blobs/sha256/` only.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// The only algorithm this store uses, as written before the `:` of a digest.
pub const SHA256: &str = "sha256";

/// A SHA-256 digest of some content, displayed as `sha256:<64 lowercase hex>`.
///
/// Cheap to copy and compare; ordered by its bytes (which is also the order of its hex form).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Wraps the 32 bytes of a SHA-256 hash.
    pub const fn from_sha256(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// Hashes `bytes` in memory.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The algorithm name, always `"sha256"`.
    pub fn algorithm(&self) -> &'static str {
        SHA256
    }

    /// The 64 lowercase hex characters after `sha256:`; also the blob's file name.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw 32 bytes of the hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses exactly 64 lowercase hex characters (no `sha256:` prefix), as found in a blob
    /// file name.
    pub fn from_hex(hex_str: &str) -> Result<Digest, DigestParseError> {
        parse_hex(hex_str).map_err(|reason| DigestParseError { input: hex_str.to_owned(), reason })
    }
}

fn parse_hex(hex_str: &str) -> Result<Digest, DigestParseErrorKind> {
    if hex_str.len() != 64 {
        return Err(DigestParseErrorKind::Length(hex_str.len()));
    }
    // `hex` accepts upper case; the spec (descriptor.md "Registered algorithms") requires lower.
    if !hex_str.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(DigestParseErrorKind::NotLowerHex);
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut out).map_err(|_| DigestParseErrorKind::NotLowerHex)?;
    Ok(Digest(out))
}

impl FromStr for Digest {
    type Err = DigestParseError;

    fn from_str(s: &str) -> Result<Digest, DigestParseError> {
        let err = |reason| DigestParseError { input: s.to_owned(), reason };
        let Some((algorithm, hex_str)) = s.split_once(':') else {
            return Err(err(DigestParseErrorKind::MissingAlgorithm));
        };
        if algorithm != SHA256 {
            return Err(err(DigestParseErrorKind::UnsupportedAlgorithm(algorithm.to_owned())));
        }
        parse_hex(hex_str).map_err(err)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHA256}:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl From<Digest> for oci_spec::image::Digest {
    fn from(d: Digest) -> oci_spec::image::Digest {
        match oci_spec::image::Digest::try_from(d.to_string()) {
            Ok(oci) => oci,
            // `sha256:` + 64 lowercase hex is exactly what oci-spec's parser accepts.
            Err(e) => unreachable!("oci-spec rejected well-formed digest {d}: {e}"),
        }
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = DigestParseError;

    fn try_from(d: &oci_spec::image::Digest) -> Result<Digest, DigestParseError> {
        d.as_ref().parse()
    }
}

/// Hashes bytes incrementally; [`Hasher::finish`] gives the [`Digest`].
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    /// A hasher that has seen no bytes.
    pub fn new() -> Hasher {
        Hasher(Sha256::new())
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher(sha256)")
    }
}

/// A string that is not a `sha256:<64 lowercase hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {input:?}: {reason}")]
pub struct DigestParseError {
    /// The rejected input.
    pub input: String,
    /// Why it was rejected.
    pub reason: DigestParseErrorKind,
}

/// Why a digest string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestParseErrorKind {
    /// No `algorithm:` prefix.
    #[error("expected `sha256:<hex>`")]
    MissingAlgorithm,
    /// An algorithm other than sha256.
    #[error("unsupported algorithm {0:?} (only sha256 is supported)")]
    UnsupportedAlgorithm(String),
    /// The hex part has the wrong length.
    #[error("expected 64 hex characters, found {0}")]
    Length(usize),
    /// The hex part has characters other than `0-9a-f`.
    #[error("expected lowercase hex characters 0-9a-f")]
    NotLowerHex,
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn empty_input_hash_round_trips() {
        let d = Digest::of_bytes(b"");
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(EMPTY.parse::<Digest>().unwrap(), d);
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d.hex(), &EMPTY[7..]);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        let oci: oci_spec::image::Digest = d.into();
        assert_eq!(oci.to_string(), EMPTY);
        assert_eq!(Digest::try_from(&oci).unwrap(), d);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c442",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} parsed");
            assert!(serde_json::from_str::<Digest>(&format!("{bad:?}")).is_err());
        }
    }

    #[test]
    fn incremental_equals_one_shot() {
        let mut h = Hasher::new();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), Digest::of_bytes(b"hello world"));
    }
}
