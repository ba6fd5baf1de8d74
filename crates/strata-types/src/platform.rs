//! Platforms: an operating system and CPU architecture, as image configs and indexes name
//! them (image-index.md "platform", Go's `GOOS`/`GOARCH` names).
//!
//! One type serves every crate: the builder's `TARGETPLATFORM` args, the config it writes,
//! `--platform` on the command line and the manifest picked from an index. It is parsed in
//! one place, [`FromStr`], normalized as containerd's `platforms.Normalize` does, so that
//! `linux/x86_64`, `linux/amd64` and `LINUX/AMD64` are the same platform.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An operating system and CPU architecture, with the variant when it matters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// `amd64`, `arm64`, ... (Go's `GOARCH` names).
    pub architecture: String,
    /// `v7`, `v8`, ... when it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// A platform from its parts, as given (not normalized).
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// The platform this program runs on: Rust's target names mapped to Go's
    /// (`x86_64` -> `amd64`, `aarch64` -> `arm64` with variant `v8`, ...).
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform::new(std::env::consts::OS, architecture, variant)
    }

    /// The variant, or `""` (how BuildKit's `TARGETVARIANT` spells "none").
    pub fn variant_or_empty(&self) -> &str {
        self.variant.as_deref().unwrap_or("")
    }

    /// Whether an image for `self` is what a request for `wanted` asks for: same OS and
    /// architecture, and the same variant, where `arm64`'s `v8` is its default (containerd's
    /// matcher treats them as one).
    pub fn satisfies(&self, wanted: &Platform) -> bool {
        let variant = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", None | Some("v8")) => None,
            (_, v) => v.map(str::to_string),
        };
        self.os == wanted.os
            && self.architecture == wanted.architecture
            && variant(self) == variant(wanted)
    }
}

/// A `--platform` value that is not `OS/ARCH[/VARIANT]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {input:?}: {reason} (write OS/ARCH[/VARIANT], e.g. linux/arm64)")]
pub struct PlatformParseError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses `OS/ARCH[/VARIANT]` as `docker pull --platform` does, normalized the way indexes
/// spell platforms (containerd's `platforms.Normalize`): lower case; `x86_64`/`x86-64` ->
/// `amd64`, `aarch64` -> `arm64` (whose `v8` variant is the default and dropped), `armhf` ->
/// `arm/v7`, `armel` -> `arm/v6`, `i386` -> `386`; a bare `arm` means `arm/v7`.
impl FromStr for Platform {
    type Err = PlatformParseError;

    fn from_str(input: &str) -> Result<Platform, PlatformParseError> {
        let bad = |reason| PlatformParseError { input: input.to_owned(), reason };
        let lower = input.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("empty part"));
        }
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(*variant)),
            [_] => return Err(bad("no architecture")),
            _ => return Err(bad("too many parts")),
        };
        let (architecture, variant) = match (arch, variant) {
            ("x86_64" | "x86-64", v) => ("amd64", v),
            ("i386", v) => ("386", v),
            ("aarch64" | "arm64", None | Some("v8" | "8")) => ("arm64", None),
            ("aarch64", v) => ("arm64", v),
            ("armhf", None) => ("arm", Some("v7")),
            ("armel", None) => ("arm", Some("v6")),
            ("arm", None) => ("arm", Some("v7")),
            (a, v) => (a, v),
        };
        // `arm/7` is `arm/v7`.
        let variant = variant.map(|v| match architecture {
            "arm" | "arm64" if !v.starts_with('v') => format!("v{v}"),
            _ => v.to_owned(),
        });
        Ok(Platform { os: os.to_owned(), architecture: architecture.to_owned(), variant })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_has_a_go_name() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert!(!["x86_64", "aarch64", "powerpc64"].contains(&host.architecture.as_str()));
    }

    #[test]
    fn platforms_parse_and_normalize_like_docker() {
        let p = |s: &str| s.parse::<Platform>().unwrap().to_string();
        assert_eq!(p("linux/amd64"), "linux/amd64");
        assert_eq!(p("Linux/X86_64"), "linux/amd64");
        assert_eq!(p("linux/aarch64"), "linux/arm64");
        assert_eq!(p("linux/arm64/v8"), "linux/arm64");
        assert_eq!(p("linux/armhf"), "linux/arm/v7");
        assert_eq!(p("linux/arm"), "linux/arm/v7");
        assert_eq!(p("linux/arm/7"), "linux/arm/v7");
        assert_eq!(p("linux/i386"), "linux/386");
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", ""] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn arm64_v8_is_arm64() {
        let v8 = Platform::new("linux", "arm64", Some("v8"));
        let bare: Platform = "linux/arm64".parse().unwrap();
        assert!(v8.satisfies(&bare) && bare.satisfies(&v8));
        let v7 = Platform::new("linux", "arm", Some("v7"));
        assert!(!Platform::new("linux", "arm", Some("v6")).satisfies(&v7));
    }

    #[test]
    fn serde_speaks_oci_json() {
        let p = Platform::new("linux", "arm", Some("v7"));
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"os":"linux","architecture":"arm","variant":"v7"}"#);
        let back: Platform =
            serde_json::from_str(r#"{"os":"linux","architecture":"amd64"}"#).unwrap();
        assert_eq!(back, Platform::new("linux", "amd64", None));
    }
}
