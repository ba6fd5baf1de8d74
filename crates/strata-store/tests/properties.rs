//! Property tests: round trips through the store and through the parsers.

use std::io::Write;

use proptest::prelude::*;
use strata_store::Store;
use strata_types::{Digest, Reference};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// However the bytes are chunked, the blob read back is the bytes written, named by their hash.
    #[test]
    fn blob_write_read_round_trip(data in proptest::collection::vec(any::<u8>(), 0..20_000), cuts in proptest::collection::vec(0usize..20_000, 0..8)) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path()).unwrap();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
        cuts.sort();
        let mut w = store.blob_writer().unwrap();
        let mut start = 0;
        for cut in cuts.into_iter().chain([data.len()]) {
            w.write_all(&data[start..cut]).unwrap();
            start = cut;
        }
        let put = w.commit().unwrap();
        prop_assert_eq!(put.digest, Digest::of_bytes(&data));
        prop_assert_eq!(put.size, data.len() as u64);
        prop_assert_eq!(store.read_blob(&put.digest).unwrap(), data);
    }

    /// Display of a parsed digest is the input; any 32 bytes round-trip.
    #[test]
    fn digest_round_trip(bytes in any::<[u8; 32]>()) {
        let d = Digest::from_sha256(bytes);
        let s = d.to_string();
        prop_assert_eq!(s.parse::<Digest>().unwrap(), d);
        prop_assert_eq!(Digest::from_hex(&d.hex()).unwrap(), d);
    }

    /// Valid references print back exactly as written.
    #[test]
    fn reference_round_trip(
        domain in proptest::option::of("[a-z][a-z0-9-]{0,8}[a-z0-9]\\.[a-z]{2,5}(:[0-9]{1,5})?"),
        path in "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}(/[a-z0-9]{1,6}){0,2}",
        tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        digest in proptest::option::of(any::<[u8; 32]>()),
    ) {
        let mut s = String::new();
        if let Some(d) = &domain { s.push_str(d); s.push('/'); }
        s.push_str(&path);
        if let Some(t) = &tag { s.push(':'); s.push_str(t); }
        if let Some(d) = digest { s.push('@'); s.push_str(&Digest::from_sha256(d).to_string()); }
        let r: Reference = s.parse().unwrap();
        prop_assert_eq!(r.to_string(), s);
        if domain.is_some() {
            prop_assert_eq!(r.domain(), domain.as_deref());
            prop_assert_eq!(r.path(), path.as_str());
        } else {
            // Without a host, a first component like `a.b` is still read as one (per grammar).
            prop_assert_eq!(r.name(), path.as_str());
        }
        prop_assert_eq!(r.tag(), tag.as_deref());
    }
}
