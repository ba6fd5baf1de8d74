//! Printing an error with its causes.
//!
//! strata's errors say one thing each and return what caused them as
//! [`source`](std::error::Error::source), as Rust errors should: `{err}` is the top line only,
//! and a reporter walks the chain (anyhow's `{:#}` does). [`chain`] is that reporter for
//! callers without one.

use std::error::Error;

/// `err` and every cause below it, joined with `": "` (`build failed: stage 0, line 2: COPY
/// a /: a: not found in the build context`). A cause whose text is already the end of the
/// text so far is not repeated.
pub fn chain(err: &dyn Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_once() {
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(super::chain(&e), "outer: disk full");
    }
}
