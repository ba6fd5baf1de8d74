//! Cache-mount directories: the contents of `RUN --mount=type=cache`, kept between builds and
//! never in a layer.

use std::fs;
use std::path::PathBuf;

use crate::error::StoreError;
use crate::store::Store;

const DIR: &str = "cache-mounts";

impl Store {
    /// The directory of cache mount `id` (created when missing), and whether it was created
    /// by this call (so the caller sets its mode and owner once).
    pub fn cache_mount_dir(&self, id: &str) -> Result<(PathBuf, bool), StoreError> {
        let dir = self.meta_dir().join(DIR).join(dir_name(id));
        if dir.is_dir() {
            return Ok((dir, false));
        }
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        Ok((dir, true))
    }
}

/// A file name for a cache id: the id itself when it is a plain name, else its hex.
fn dir_name(id: &str) -> String {
    let plain = !id.is_empty()
        && id.len() <= 100
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !id.starts_with('.');
    if plain {
        id.to_string()
    } else {
        let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x-{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_ids_become_safe_names() {
        assert_eq!(dir_name("/root/.cache"), "x-2f726f6f742f2e6361636865");
        assert_eq!(dir_name("pip"), "pip");
        assert_eq!(dir_name("../x"), "x-2e2e2f78");
    }
}
