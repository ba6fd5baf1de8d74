//! Image references: `[host[:port]/]path[:tag][@sha256:hex]`.
//!
//! The grammar is the one of the distribution project's `reference` package, which Docker,
//! podman and skopeo share: a name is `/`-separated path components of lowercase letters and
//! digits joined by `.`, `_`, `__` or runs of `-`; the first component is a registry host when it
//! contains `.` or `:` or is `localhost`; the whole name is at most 255 characters; a tag is
//! `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`. Parsing happens once, in [`FromStr`], so a
//! [`Reference`] in hand is always valid. Local names are kept as written: `app` is not expanded
//! to `docker.io/library/app`, because in this store a name is just a tag on an image.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestParseError};

/// The tag implied when a reference has none.
pub const DEFAULT_TAG: &str = "latest";

const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// A parsed image reference: a name, an optional tag and an optional digest.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    name: String,
    /// Byte length of the registry host prefix (without the `/`), 0 if none.
    domain_len: usize,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// The full name, including any registry host: `registry.example:5000/team/app`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The registry host and port, if the name starts with one.
    pub fn domain(&self) -> Option<&str> {
        (self.domain_len > 0).then(|| &self.name[..self.domain_len])
    }

    /// The repository path after any registry host: `team/app`.
    pub fn path(&self) -> &str {
        match self.domain_len {
            0 => &self.name,
            n => &self.name[n + 1..],
        }
    }

    /// The tag, if one was written.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if one was written (`name@sha256:...`).
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `name:tag`, with the tag defaulting to `latest`: the key under which this store records a
    /// tag (the `org.opencontainers.image.ref.name` annotation in `index.json`).
    pub fn tag_key(&self) -> String {
        format!("{}:{}", self.name, self.tag.as_deref().unwrap_or(DEFAULT_TAG))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        let err = |kind| ReferenceError { input: s.to_owned(), kind };
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                (rest, Some(d.parse::<Digest>().map_err(|e| err(ReferenceErrorKind::Digest(e)))?))
            }
            None => (s, None),
        };
        // A `:` after the last `/` starts the tag; one before it belongs to a registry port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(err(ReferenceErrorKind::EmptyName));
        }
        if name.len() > NAME_MAX {
            return Err(err(ReferenceErrorKind::NameTooLong(name.len())));
        }
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(err(ReferenceErrorKind::Tag(tag.to_owned())));
            }
        }
        let mut components = name.split('/');
        let first = components.next().unwrap_or_default();
        let has_more = name.contains('/');
        // As in the grammar's regex, a first component that is a valid host is the registry
        // (when it looks like one: has `.` or `:` or is `localhost`); otherwise it must be a
        // path component.
        let looks_like_host = first.contains(['.', ':']) || first == "localhost";
        let domain_len = if has_more && looks_like_host && valid_domain(first) {
            first.len()
        } else if valid_path_component(first) {
            0
        } else if has_more && looks_like_host {
            return Err(err(ReferenceErrorKind::Domain(first.to_owned())));
        } else {
            return Err(err(ReferenceErrorKind::PathComponent(first.to_owned())));
        };
        for c in components {
            if !valid_path_component(c) {
                return Err(err(ReferenceErrorKind::PathComponent(c.to_owned())));
            }
        }
        Ok(Reference { name: name.to_owned(), domain_len, tag: tag.map(str::to_owned), digest })
    }
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__`, or one or more `-`; must be followed by alnum.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || !b.get(i).copied().is_some_and(alnum) {
            return false;
        }
    }
    true
}

/// `host[:port]`, host = dot-separated `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
        })
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    !b.is_empty()
        && b.len() <= TAG_MAX
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// A string that is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {kind}")]
pub struct ReferenceError {
    /// The rejected input.
    pub input: String,
    /// What is wrong with it.
    pub kind: ReferenceErrorKind,
}

/// What is wrong with an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceErrorKind {
    /// Nothing before the tag or digest.
    #[error("empty name")]
    EmptyName,
    /// The name is longer than 255 characters.
    #[error("name is {0} characters long (at most 255)")]
    NameTooLong(usize),
    /// A path component has characters other than lowercase letters, digits and separators.
    #[error("path component {0:?} must be lowercase letters and digits separated by '.', '_', '__' or '-'")]
    PathComponent(String),
    /// The registry host is malformed.
    #[error("registry host {0:?} is not host[:port]")]
    Domain(String),
    /// The tag is malformed.
    #[error("tag {0:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    Tag(String),
    /// The part after `@` is not a sha256 digest.
    #[error("{0}")]
    Digest(DigestParseError),
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_valid() {
        let r: Reference = "app".parse().unwrap();
        assert_eq!(
            (r.name(), r.tag(), r.domain(), r.tag_key()),
            ("app", None, None, "app:latest".into())
        );
        let r: Reference = "registry.example:5000/team/my-app:v1.2".parse().unwrap();
        assert_eq!(r.domain(), Some("registry.example:5000"));
        assert_eq!(r.path(), "team/my-app");
        assert_eq!(r.tag(), Some("v1.2"));
        let r: Reference = format!("localhost/a__b/c.d:x@{D}").parse().unwrap();
        assert_eq!(r.domain(), Some("localhost"));
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(r.to_string(), format!("localhost/a__b/c.d:x@{D}"));
        let r: Reference = "a---b_c:_X".parse().unwrap();
        assert_eq!(r.tag(), Some("_X"));
        assert!(format!("x:{}", "t".repeat(128)).parse::<Reference>().is_ok());
        // Not a valid host, but a valid path component: the name has no registry.
        let r: Reference = "a__b.c/d".parse().unwrap();
        assert_eq!((r.domain(), r.path()), (None, "a__b.c/d"));
    }

    #[test]
    fn rejects_invalid() {
        for bad in [
            "",
            ":tag",
            "App",
            "app:",
            "app:-x",
            "app:.x",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "a/",
            "/a",
            "a//b",
            "host:port/app",
            "bad_host:5000/app",
            "app@sha256:abc",
            "app:t@t",
            "app tag",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} parsed");
        }
        assert!(format!("x:{}", "t".repeat(129)).parse::<Reference>().is_err());
        assert!("a".repeat(256).parse::<Reference>().is_err());
    }
}
