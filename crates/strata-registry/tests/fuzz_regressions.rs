//! One test per defect found by the fuzz targets in `fuzz/`, named after it; each input is
//! also in `fuzz/corpus/<target>/`.

use strata_registry::fuzzing::resolve_location;

/// A `Location` whose scheme was not lower case (`httPs://storage/x`) was taken for a path
/// and sent to the registry as `https://registry/httPs://storage/x`. Schemes are
/// case-insensitive (RFC 3986 section 3.1).
#[test]
fn regression_fuzz_registry_location_scheme_case() {
    let base = "https://registry.example";
    for absolute in ["httPs://storage/x?sig=1", "HTTP://storage/x", "Https://s/é"] {
        assert_eq!(resolve_location(base, absolute).unwrap(), absolute);
    }
    assert_eq!(resolve_location(base, "/v2/x").unwrap(), "https://registry.example/v2/x");
    assert_eq!(resolve_location(base, "é/x").unwrap(), "https://registry.example/é/x");
}

/// An index with a malformed digest in an entry the platform does not pick: a pull took the
/// matching entry and went on, a copy of the same index refused it. Both refuse it now.
#[test]
fn regression_fuzz_manifest_index_with_a_bad_entry() {
    let doc = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[
        {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,"digest":"sha256configf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef","platform":{"architecture":"arm","os":"linux","variant":"v7"}},
        {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,"digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","platform":{"architecture":"amd64","os":"linux"}}]}"#;
    let amd64: strata_types::Platform = "linux/amd64".parse().unwrap();
    assert!(strata_registry::fuzzing::index_children(doc).is_err());
    let err = strata_registry::fuzzing::select_platform(doc, &amd64).unwrap_err();
    assert!(strata_types::chain(&err).contains("sha256configf18a"), "{err}");
}

/// An upload's `Range: 0-9223372036854775807` (i64::MAX) overflowed computing the next offset
/// (a panic with debug assertions). Such a header is no range: the upload status is unknown.
#[test]
fn regression_fuzz_registry_range_end_at_i64_max() {
    use strata_registry::fuzzing::upload_range_end;
    assert_eq!(upload_range_end("0-9223372036854775807"), None);
    assert_eq!(upload_range_end("0-9223372036854775806"), Some(9_223_372_036_854_775_807));
    assert_eq!(upload_range_end("0--1"), Some(0));
}
