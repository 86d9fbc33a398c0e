//! The web console's files, embedded in the binary and served at `/` by [`super::http`].
//!
//! Three files, written by hand (no build step, no framework): `index.html`, `console.css`
//! and `console.js`. The console is a client of the public API and nothing else; the
//! server's part is only to hand these out with headers that keep them safe
//! ([`CSP`]: no inline scripts or styles, nothing from other origins, no framing).

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Its path, without the leading `/`; `""` is the page itself.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
}

/// Every file of the console.
pub const ASSETS: &[Asset] = &[
    Asset { path: "", content_type: "text/html; charset=utf-8", bytes: include_bytes!("assets/index.html") },
    Asset { path: "console.css", content_type: "text/css; charset=utf-8", bytes: include_bytes!("assets/console.css") },
    Asset {
        path: "console.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/console.js"),
    },
];

/// The console's Content-Security-Policy: scripts and styles from the daemon's own files
/// only (no `unsafe-inline`: a value that slipped past escaping still cannot run), requests
/// to the daemon only, no plugins, no framing by other sites, forms only to the daemon.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The file at `path` (the request's path without its leading `/`), if it is one.
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// The file's entity tag: a hash of its bytes, so that a browser revalidates cheaply and
/// never keeps a file from an older daemon.
pub fn etag(asset: &Asset) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(asset.bytes);
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total_bytes() -> usize {
        ASSETS.iter().map(|a| a.bytes.len()).sum()
    }

    #[test]
    fn the_console_is_small_and_has_no_inline_script_or_style() {
        assert!(total_bytes() < 200 * 1024, "the console's files take {} bytes", total_bytes());
        let page = std::str::from_utf8(find("").unwrap().bytes).unwrap();
        // Each <script> loads a file of the daemon's; none carries code of its own.
        for tag in page.split("<script").skip(1) {
            let (attrs, rest) = tag.split_once('>').unwrap();
            assert!(attrs.contains("src=\"/"), "a script without a src of the daemon: <script{attrs}>");
            assert!(rest.trim_start().starts_with("</script>"), "inline script after <script{attrs}>");
        }
        for forbidden in [" style=", " onclick=", " onload=", "javascript:"] {
            assert!(!page.contains(forbidden), "index.html has {forbidden}");
        }
        assert!(find("console.js").is_some() && find("console.css").is_some() && find("nope").is_none());
    }

    #[test]
    fn an_etag_changes_with_the_bytes() {
        let a = Asset { path: "a", content_type: "text/plain", bytes: b"one" };
        let b = Asset { path: "a", content_type: "text/plain", bytes: b"two" };
        assert_ne!(etag(&a), etag(&b));
        assert_eq!(etag(&a), etag(&a));
    }
}
