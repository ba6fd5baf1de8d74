//! Manifests, indexes and configs: strata-registry's kind detection, Docker->OCI conversion
//! and index reading, strata-store's strict `Store::image` / `Store::resolve`, and the
//! `oci_spec` types under both.
//!
//! Input: `DOCUMENT[\xff CONFIG[\xff CONTENT-TYPE]]` (0xff never occurs in UTF-8 JSON). In the
//! document, `$CONFIG_DIGEST` and `$CONFIG_SIZE` are replaced by the config's digest and
//! size, so the fuzzer can reach a manifest whose config really is in the store.
//! Asserts, beyond "no panic":
//! - registry: a converted manifest is stored under the digest of its bytes, is itself an OCI
//!   manifest that converts to itself (conversion is idempotent), and names the same blobs as
//!   the document did (`manifest_blobs`); the platform a pull picks from an index is one of
//!   the index's children;
//! - store (the document, and what a pull would store if that differs): an image `Store::image` accepts has the manifest's digest and valid layer digests,
//!   and its config and manifest survive a serde round trip; `resolve` by digest finds it;
//! - oci_spec: a manifest, index or config that parses re-serializes to one that parses equal.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use strata_registry::fuzzing::{self, FuzzKind};
use strata_store::Store;
use strata_types::{Digest, Platform};

fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug>(
    bytes: &[u8],
) {
    if let Ok(v) = serde_json::from_slice::<T>(bytes) {
        let again = serde_json::to_vec(&v).expect("serializes");
        let back: T = serde_json::from_slice(&again).expect("re-parses");
        assert_eq!(v, back, "serde round trip changes {}", std::any::type_name::<T>());
    }
}

/// Returns the manifest a pull would store, if it converts.
fn registry(doc: &[u8], content_type: Option<&str>) -> Option<Vec<u8>> {
    let kind = fuzzing::manifest_kind(content_type, doc).ok()?;
    match kind {
        FuzzKind::OciIndex | FuzzKind::DockerList => {
            let children = fuzzing::index_children(doc);
            if let Ok(picked) = fuzzing::select_platform(doc, &Platform::host()) {
                let children =
                    children.expect("select_platform read an index index_children refuses");
                assert!(
                    children.iter().any(|(d, _, _)| *d == picked),
                    "picked a manifest the index does not list"
                );
            }
            None
        }
        FuzzKind::OciManifest | FuzzKind::DockerManifest => {
            let image = fuzzing::manifest_to_oci(kind, doc.to_vec()).ok()?;
            assert_eq!(image.digest, Digest::of_bytes(&image.bytes), "stored under another digest");
            let blobs =
                fuzzing::manifest_blobs(doc).expect("to_oci read a manifest image_blobs refuses");
            let mut named = vec![image.config];
            named.extend(image.layers.iter().copied());
            assert_eq!(blobs, named, "conversion changed the blobs");
            let again_kind =
                fuzzing::manifest_kind(None, &image.bytes).expect("converted manifest reads");
            assert_eq!(again_kind, FuzzKind::OciManifest);
            let again = fuzzing::manifest_to_oci(again_kind, image.bytes.clone())
                .expect("converted manifest converts");
            assert_eq!(again, image, "conversion is not idempotent");
            Some(image.bytes)
        }
    }
}

thread_local! {
    /// A store reused for 256 runs, then replaced (blobs accumulate).
    static STORE: RefCell<Option<(tempfile::TempDir, Store, u32)>> = const { RefCell::new(None) };
}

fn store(doc: &[u8], config: &[u8]) {
    STORE.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(_, _, uses)| *uses >= 256) {
            let dir =
                tempfile::Builder::new().prefix("strata-fuzz-store-").tempdir().expect("tempdir");
            let store = Store::init(dir.path().join("store")).expect("store");
            *slot = Some((dir, store, 0));
        }
        let (_, store, uses) = slot.as_mut().expect("store");
        *uses += 1;
        let config_blob = store.put_blob(config).expect("put config");
        let put = store.put_blob(doc).expect("put manifest");
        let desc = Descriptor::new(MediaType::ImageManifest, put.size, put.digest);
        if let Ok(image) = store.image(&desc) {
            assert_eq!(image.digest().expect("digest"), put.digest);
            let layers = image.layer_digests().expect("an accepted image has valid layer digests");
            assert_eq!(layers.len(), image.manifest.layers().len());
            assert_eq!(
                Digest::try_from(image.manifest.config().digest()).ok(),
                Some(config_blob.digest)
            );
            let found = store.resolve(&put.digest.to_string());
            if let Ok(found) = found {
                assert_eq!(Digest::try_from(found.digest()).ok(), Some(put.digest));
            }
        }
        let _ = store.resolve(&put.digest.to_string());
    });
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0xff);
    let doc = parts.next().unwrap_or_default();
    let config = parts.next().unwrap_or(b"{}");
    let content_type = parts.next().and_then(|c| std::str::from_utf8(c).ok());
    let doc = match std::str::from_utf8(doc) {
        Ok(text) if text.contains("$CONFIG_") => text
            .replace("$CONFIG_DIGEST", &Digest::of_bytes(config).to_string())
            .replace("$CONFIG_SIZE", &config.len().to_string())
            .into_bytes(),
        _ => doc.to_vec(),
    };
    let doc = &doc[..];

    let converted = registry(doc, content_type);
    store(doc, config);
    if let Some(converted) = converted.filter(|c| c != doc) {
        store(&converted, config);
    }
    round_trips::<ImageManifest>(doc);
    round_trips::<ImageIndex>(doc);
    round_trips::<ImageConfiguration>(config);
});
