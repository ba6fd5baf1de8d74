//! What a registry sends back: `WWW-Authenticate` challenges, the `Range` of an upload session,
//! the `Content-Range` of a resumed download, and `Location` headers.
//!
//! Input: any bytes; the first byte picks which parser gets the rest (as UTF-8, as a header
//! value would be). Asserts, beyond "no panic":
//! - a Bearer challenge has a realm, and rendering a parsed challenge back as a header (values
//!   quoted and escaped) parses to the same challenge;
//! - `Range: 0-N` gives the next offset N+1, `Content-Range: bytes N-M/T` starts at N, for
//!   every N the fuzzer writes, and the parsers agree with them on any other value they accept;
//! - `Location`: an absolute `http(s)://` URL (scheme in any case, RFC 3986 § 3.1) is kept as it is; anything else resolves under
//!   the registry's own base URL, so a relative Location can never move the upload elsewhere.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_registry::fuzzing::{self, FuzzChallenge};

fn quote(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn challenge(value: &str) {
    let Some(parsed) = fuzzing::parse_challenge(value) else { return };
    let rendered = match &parsed {
        FuzzChallenge::Basic => "Basic realm=\"r\"".to_owned(),
        FuzzChallenge::Bearer { realm, service, scope } => {
            let mut h = format!("Bearer realm={}", quote(realm));
            if let Some(s) = service {
                h.push_str(&format!(",service={}", quote(s)));
            }
            if let Some(s) = scope {
                h.push_str(&format!(", scope={}", quote(s)));
            }
            h
        }
    };
    assert_eq!(
        fuzzing::parse_challenge(&rendered),
        Some(parsed),
        "{rendered:?} does not round-trip"
    );
}

fn ranges(value: &str) {
    let end = fuzzing::upload_range_end(value);
    let start = fuzzing::content_range_start(value);
    // Numbers the fuzzer chose, in the canonical forms.
    let n = value.bytes().fold(0u64, |a, b| a.wrapping_mul(131).wrapping_add(u64::from(b))) >> 2;
    assert_eq!(fuzzing::upload_range_end(&format!("0-{n}")), Some(n + 1));
    assert_eq!(fuzzing::upload_range_end(&format!("bytes=0-{n}")), Some(n + 1));
    assert_eq!(
        fuzzing::content_range_start(&format!("bytes {n}-{}/*", n.saturating_add(9))),
        Some(n)
    );
    if let (Some(end), Some((_, last))) =
        (end, value.trim().trim_start_matches("bytes=").split_once('-'))
    {
        if let Ok(last) = last.trim().parse::<u64>() {
            assert_eq!(end, last + 1, "Range {value:?}");
        }
    }
    let _ = start;
}

fn location(value: &str) {
    for base in ["https://registry.example", "http://127.0.0.1:5000"] {
        let Ok(url) = fuzzing::resolve_location(base, value) else {
            assert!(value.is_empty(), "Location {value:?} refused");
            continue;
        };
        let lower = value.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            assert_eq!(url, value);
        } else {
            assert!(
                url.starts_with(&format!("{base}/")),
                "{value:?} resolved to {url:?}, off {base}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let Ok(value) = std::str::from_utf8(rest) else { return };
    match which % 3 {
        0 => challenge(value),
        1 => ranges(value),
        _ => location(value),
    }
});
