//! Error text for people: an error with its sources, joined.

/// `e` and its sources joined with ": ", skipping a source whose text the
/// message already holds (reqwest's "error sending request" alone hides
/// the cause: refused, TLS, DNS).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn sources_are_joined_once() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(super::chain(&e), "outer: inner");
        let same = std::io::Error::other("outer");
        assert_eq!(super::chain(&same), "outer");
    }
}
