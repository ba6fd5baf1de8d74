//! Where an image lives, named as containers-transports(5) names it.
//!
//! strata accepts the same image names as skopeo and buildah, so a command line can move
//! between the tools unchanged: `name[:tag]` or a digest for this store, `oci:DIR[:REF]` for
//! another OCI image layout, `docker-archive:FILE[:REF]` for a `docker save` tarball,
//! `docker://HOST/REPO[:TAG]` for a registry, and (as a destination only) `dir:PATH` for a
//! flattened root filesystem. As in containers/image, the path of `oci:` and `docker-archive:`
//! ends at the first `:`, and what follows is the reference inside it (`oci:/srv/store:app:v1`
//! is image `app:v1` in layout `/srv/store`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::reference::{Reference, ReferenceError};

/// An image location that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocationError {
    /// The location is malformed.
    #[error("invalid image location {input:?}: {reason}")]
    Invalid {
        /// The location as given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The reference of a `docker://` location is malformed.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

/// A parsed image location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageLocation {
    /// An image in the local store: `name[:tag]`, `name@sha256:...`, a digest or a unique
    /// digest prefix (resolved by the store).
    Store(String),
    /// An image in an OCI image layout directory, optionally by reference (`app:v1`).
    Oci {
        /// The layout directory.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to select; `None` means "the only image".
        reference: Option<String>,
    },
    /// A `docker save` / `docker-archive` tarball, optionally by repo tag.
    DockerArchive {
        /// The tar file.
        path: PathBuf,
        /// The `RepoTags` entry to select; `None` means "the only image".
        reference: Option<String>,
    },
    /// An image in a registry: `docker://host/repo:tag`.
    Registry(Reference),
    /// A directory holding the flattened root filesystem (export only).
    Dir(PathBuf),
}

impl ImageLocation {
    /// The transport name as containers-transports(5) spells it (`strata` for the local store).
    pub fn transport(&self) -> &'static str {
        match self {
            ImageLocation::Store(_) => "strata",
            ImageLocation::Oci { .. } => "oci",
            ImageLocation::DockerArchive { .. } => "docker-archive",
            ImageLocation::Registry(_) => "docker",
            ImageLocation::Dir(_) => "dir",
        }
    }
}

fn split_path_and_ref(input: &str, rest: &str) -> Result<(PathBuf, Option<String>), LocationError> {
    let (path, reference) = match rest.split_once(':') {
        Some((p, r)) => (p, Some(r)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(LocationError::Invalid { input: input.to_string(), reason: "empty path" });
    }
    match reference {
        Some("") => {
            Err(LocationError::Invalid { input: input.to_string(), reason: "empty reference" })
        }
        r => Ok((PathBuf::from(path), r.map(str::to_string))),
    }
}

impl FromStr for ImageLocation {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Self, LocationError> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, reference) = split_path_and_ref(s, rest)?;
            return Ok(ImageLocation::Oci { dir, reference });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (path, reference) = split_path_and_ref(s, rest)?;
            return Ok(ImageLocation::DockerArchive { path, reference });
        }
        if let Some(rest) = s.strip_prefix("docker://") {
            return Ok(ImageLocation::Registry(rest.parse()?));
        }
        if let Some(rest) = s.strip_prefix("dir:") {
            if rest.is_empty() {
                return Err(LocationError::Invalid { input: s.into(), reason: "empty path" });
            }
            return Ok(ImageLocation::Dir(PathBuf::from(rest)));
        }
        if let Some(prefix) = s.strip_prefix("strata:") {
            return Ok(ImageLocation::Store(prefix.to_string()));
        }
        for transport in ["docker-daemon:", "containers-storage:", "oci-archive:", "sif:"] {
            if s.starts_with(transport) {
                return Err(LocationError::Invalid {
                    input: s.to_string(),
                    reason: "transport not supported by strata",
                });
            }
        }
        if s.is_empty() {
            return Err(LocationError::Invalid { input: s.into(), reason: "empty name" });
        }
        Ok(ImageLocation::Store(s.to_string()))
    }
}

impl fmt::Display for ImageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_ref = |f: &mut fmt::Formatter<'_>, t: &str, p: &PathBuf, r: &Option<String>| {
            write!(f, "{t}:{}", p.display())?;
            match r {
                Some(r) => write!(f, ":{r}"),
                None => Ok(()),
            }
        };
        match self {
            ImageLocation::Store(r) => f.write_str(r),
            ImageLocation::Oci { dir, reference } => with_ref(f, "oci", dir, reference),
            ImageLocation::DockerArchive { path, reference } => {
                with_ref(f, "docker-archive", path, reference)
            }
            ImageLocation::Registry(r) => write!(f, "docker://{r}"),
            ImageLocation::Dir(p) => write!(f, "dir:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_transport() {
        let l: ImageLocation = "oci:/srv/store:app:v1".parse().unwrap();
        assert_eq!(
            l,
            ImageLocation::Oci { dir: "/srv/store".into(), reference: Some("app:v1".into()) }
        );
        let l: ImageLocation = "oci:out".parse().unwrap();
        assert_eq!(l, ImageLocation::Oci { dir: "out".into(), reference: None });
        let l: ImageLocation = "docker-archive:/tmp/a.tar:app:v2".parse().unwrap();
        assert_eq!(
            l,
            ImageLocation::DockerArchive {
                path: "/tmp/a.tar".into(),
                reference: Some("app:v2".into())
            }
        );
        let l: ImageLocation = "docker://localhost:5000/team/app:v1".parse().unwrap();
        let ImageLocation::Registry(r) = &l else { panic!("{l:?}") };
        assert_eq!(
            (r.domain(), r.path(), r.tag()),
            (Some("localhost:5000"), "team/app", Some("v1"))
        );
        assert_eq!(
            "dir:/tmp/root".parse::<ImageLocation>().unwrap(),
            ImageLocation::Dir("/tmp/root".into())
        );
        assert_eq!(
            "app:v1".parse::<ImageLocation>().unwrap(),
            ImageLocation::Store("app:v1".into())
        );
        for l in [
            "oci:/srv/store:app:v1",
            "docker-archive:a.tar",
            "docker://r.example/a:b",
            "dir:x",
            "app:v1",
        ] {
            assert_eq!(l.parse::<ImageLocation>().unwrap().to_string(), l);
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "oci:",
            "oci::x",
            "oci:dir:",
            "docker-archive:",
            "dir:",
            "",
            "docker://UPPER/x",
            "docker-daemon:x",
        ] {
            assert!(bad.parse::<ImageLocation>().is_err(), "{bad}");
        }
    }
}
