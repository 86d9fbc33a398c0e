//! Request paths: split into percent-decoded segments, and names percent-encoded for the
//! `Location` header. (Task ids and cluster names are checked when submitted, so they
//! rarely need encoding; a client that encodes them anyway is understood.)

/// The path's segments, percent-decoded; `None` when an escape is malformed or the
/// result is not UTF-8.
pub(super) fn segments(path: &str) -> Option<Vec<String>> {
    path.split('/').filter(|s| !s.is_empty()).map(decode).collect()
}

/// `segment` percent-decoded; `None` when an escape is malformed or the result is not
/// UTF-8.
pub(super) fn decode(segment: &str) -> Option<String> {
    if !segment.contains('%') {
        return Some(segment.to_owned());
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `name` with every byte but RFC 3986's unreserved characters percent-encoded (also
/// what the `--api` client sends: names and query values).
pub(crate) fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_decoded_and_names_encoded_back() {
        assert_eq!(segments("/v1/tasks/a%2Fb%20c%C3%A9").unwrap(), ["v1", "tasks", "a/b cé"]);
        assert_eq!(segments("//v1//tasks/").unwrap(), ["v1", "tasks"]);
        for bad in ["/v1/tasks/%", "/v1/tasks/%zz", "/v1/tasks/%ff", "/v1/tasks/%C3"] {
            assert_eq!(segments(bad), None, "{bad}");
        }
        for name in ["t1", "a/b c?d#e%f", "é", "00000001-002-071", "x.INSTALL.web.j1a1"] {
            let encoded = encode(name);
            assert!(encoded.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'?' && b != b'#'));
            assert_eq!(segments(&format!("/v1/tasks/{encoded}")).unwrap()[2], name);
        }
        assert_eq!(encode("00000001-002-071"), "00000001-002-071");
    }
}
