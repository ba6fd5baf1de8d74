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
