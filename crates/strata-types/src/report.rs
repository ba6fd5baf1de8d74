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

/// `text` as an error message shows input: whole when it has at most `max` characters, else
/// its start and end around `…` and the count of characters left out (a 1 MB recipe line is
/// not echoed whole).
pub fn elide(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    let count = text.chars().count();
    if count <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let keep = max / 2;
    let head: String = text.chars().take(keep).collect();
    let tail: String = text.chars().skip(count - keep).collect();
    std::borrow::Cow::Owned(format!("{head} … ({} characters) … {tail}", count - 2 * keep))
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_input_is_elided_in_the_middle() {
        assert_eq!(super::elide("short", 10), "short");
        let long = "a".repeat(50) + &"é".repeat(1000) + &"z".repeat(50);
        let e = super::elide(&long, 100);
        assert!(e.starts_with(&"a".repeat(50)) && e.ends_with(&"z".repeat(50)), "{e}");
        assert!(e.contains("(1000 characters)"), "{e}");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_once() {
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(super::chain(&e), "outer: disk full");
    }
}
