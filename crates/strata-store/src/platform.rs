//! The OCI platform of the machine this code runs on, spelled as image configs and indexes
//! spell it (Go's `GOOS`/`GOARCH` names, image-index.md "platform"), shared by every crate that
//! writes a config or picks a manifest from an index.

/// `(os, architecture, variant)` of this machine: `("linux", "amd64", None)`,
/// `("linux", "arm64", Some("v8"))`, ... Rust's target names are mapped to Go's.
pub fn host_platform() -> (&'static str, &'static str, Option<&'static str>) {
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
    (std::env::consts::OS, architecture, variant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_has_a_go_name() {
        let (os, arch, _) = host_platform();
        assert_eq!(os, "linux");
        assert!(!["x86_64", "aarch64", "powerpc64"].contains(&arch), "{arch}");
    }
}
