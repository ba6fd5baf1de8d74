//! Image configs: the RFC 3339 times they carry and the config of an imported tree.

use strata_store::oci_spec::image::{
    ConfigBuilder, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder, RootFsBuilder,
};
use strata_store::StoreError;
use strata_types::Digest;

use crate::error::{ImageError, Result};

/// Formats seconds since the epoch as the RFC 3339 UTC time OCI configs use.
pub fn format_created(epoch: i64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm), so no date crate is needed for one format.
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, (secs % 3600) / 60, secs % 60)
}

pub(crate) fn build_err(what: &'static str, e: impl std::fmt::Display) -> ImageError {
    ImageError::Store(StoreError::Serialize { what, source: serde::ser::Error::custom(e) })
}

/// A one-layer image config for `diff_id`, as `docker import` makes it.
pub(crate) fn import_config(
    diff_id: &Digest,
    epoch: i64,
    created_by: &str,
) -> Result<ImageConfiguration> {
    let strata_types::Platform { os, architecture: arch, .. } = strata_types::Platform::host();
    let created = format_created(epoch);
    let history = HistoryBuilder::default()
        .created(created.clone())
        .created_by(created_by.to_string())
        .comment("imported by strata".to_string())
        .build()
        .map_err(|e| build_err("image history", e))?;
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(vec![diff_id.to_string()])
        .build()
        .map_err(|e| build_err("image rootfs", e))?;
    let config = ConfigBuilder::default()
        .env(vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()])
        .build()
        .map_err(|e| build_err("image config", e))?;
    ImageConfigurationBuilder::default()
        .created(created)
        .architecture(arch.as_str())
        .os(os.as_str())
        .config(config)
        .rootfs(rootfs)
        .history(vec![history])
        .build()
        .map_err(|e| build_err("image configuration", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(format_created(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_created(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_created(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
