//! Name resolution: one rule for what image a name means, for every command.
//!
//! A name without a registry host (`app:v1`, a digest, an ID prefix) is the local store's.
//! A name with one (`registry.example/team/app:v1`, or written `docker://...`) is a registry
//! image (DESIGN.md decision 8), of which the store may hold a copy: a pull tags its copy
//! with exactly that full name. Whether that copy stands in for the registry is the pull
//! policy's call (`--pull=missing|always|never`, as `docker build --pull` and BuildKit): a
//! build's FROM, `diff`, `history` and `ls` all resolve through [`resolve`]. `oci:` and
//! `docker-archive:` name local files; `dir:` is a destination only.

use std::fmt;
use std::str::FromStr;

use strata_store::{Store, StoreError};
use strata_types::{ImageLocation, Reference};

use crate::error::{ImageError, Result};

/// When a registry image is fetched from the registry rather than read from the store's
/// copy (`--pull=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PullPolicy {
    /// Use the store's copy when it has one; pull otherwise (the default, as BuildKit).
    #[default]
    Missing,
    /// Ask the registry every time (a manifest request when nothing changed).
    Always,
    /// Never contact a registry: an image the store lacks is an error.
    Never,
}

impl FromStr for PullPolicy {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "missing" => Ok(PullPolicy::Missing),
            "always" | "true" => Ok(PullPolicy::Always),
            "never" | "false" => Ok(PullPolicy::Never),
            other => Err(ImageError::InvalidPullPolicy { value: other.to_string() }),
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullPolicy::Missing => "missing",
            PullPolicy::Always => "always",
            PullPolicy::Never => "never",
        })
    }
}

/// Where the image a name means is to be read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The local store (`ImageLocation::Store`, by the name it is tagged with), an `oci:`
    /// layout or a `docker-archive:` file.
    Local(ImageLocation),
    /// The registry.
    Registry(Reference),
}

/// The registry reference a store name means, when it starts with a registry host.
pub fn registry_name(name: &str) -> Option<Reference> {
    name.parse::<Reference>().ok().filter(|r| r.domain().is_some())
}

/// Resolves `location` by the one rule (module docs). `store` is the local store, if there
/// is one; without it, a registry image is always fetched.
pub fn resolve(
    store: Option<&Store>,
    location: &ImageLocation,
    policy: PullPolicy,
) -> Result<Resolved> {
    let reference = match location {
        ImageLocation::Store(name) => match registry_name(name) {
            Some(r) => r,
            None => return Ok(Resolved::Local(location.clone())),
        },
        ImageLocation::Registry(r) => r.clone(),
        ImageLocation::Oci { .. } | ImageLocation::DockerArchive { .. } => {
            return Ok(Resolved::Local(location.clone()))
        }
        ImageLocation::Dir(_) => {
            return Err(ImageError::UnsupportedLocation { location: location.to_string() })
        }
    };
    let key = reference.to_string();
    // An index the store holds counts as held: the platform is chosen when it is opened.
    let read = |s: &Store| {
        let descriptor = s.resolve(&key)?;
        match crate::platforms::is_index(&descriptor) {
            true => crate::platforms::read_index(s, &descriptor).map(drop),
            false => s.image(&descriptor).map(drop).map_err(ImageError::from),
        }
    };
    let held = match store.map(read) {
        Some(Ok(_)) => true,
        Some(Err(ImageError::Store(
            StoreError::ImageNotFound { .. } | StoreError::InvalidReference(_),
        )))
        | None => false,
        Some(Err(e)) => return Err(e),
    };
    match (policy, held) {
        (PullPolicy::Missing | PullPolicy::Never, true) => {
            Ok(Resolved::Local(ImageLocation::Store(key)))
        }
        (PullPolicy::Never, false) => Err(ImageError::NotInStore { reference: key }),
        (PullPolicy::Missing | PullPolicy::Always, _) => Ok(Resolved::Registry(reference)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_every_kind_of_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path()).unwrap();
        let loc = |s: &str| s.parse::<ImageLocation>().unwrap();
        let local = |s: &str| Resolved::Local(loc(s));
        assert_eq!(
            resolve(Some(&store), &loc("app:v1"), PullPolicy::Always).unwrap(),
            local("app:v1")
        );
        assert_eq!(
            resolve(None, &loc("oci:/x:y"), PullPolicy::Missing).unwrap(),
            local("oci:/x:y")
        );
        for name in ["r.example/app:v1", "docker://r.example/app:v1"] {
            let r = match resolve(Some(&store), &loc(name), PullPolicy::Missing).unwrap() {
                Resolved::Registry(r) => r,
                other => panic!("{other:?}"),
            };
            assert_eq!(r.to_string(), "r.example/app:v1");
            let never = resolve(Some(&store), &loc(name), PullPolicy::Never).unwrap_err();
            assert!(matches!(never, ImageError::NotInStore { .. }), "{never}");
        }
        assert!(resolve(None, &loc("dir:/x"), PullPolicy::Missing).is_err());
        assert_eq!("always".parse::<PullPolicy>().unwrap(), PullPolicy::Always);
        assert!("sometimes".parse::<PullPolicy>().is_err());
    }
}
