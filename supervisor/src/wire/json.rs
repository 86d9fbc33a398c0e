//! Reading JSON text from outside (plugin manifests, cluster specs, request bodies, plugin
//! answers) with errors that say what is wrong and where, and never quote the text:
//! manifests and specs carry credentials.

use serde_json::Value;

/// JSON text that could not be read. Shown as `not valid JSON: ` and serde_json's
/// description, which is a fixed phrase and a position ("expected `:` at line 1 column 7",
/// "recursion limit exceeded at line 3 column 200"), never the text.
#[derive(Debug, thiserror::Error)]
#[error("not valid JSON: {0}")]
pub struct InvalidJson(#[from] serde_json::Error);

/// Reads a whole JSON document (a plugin manifest, a cluster spec) into a tree. Nesting is
/// read to 128 levels, serde_json's limit, so a deep document cannot exhaust the stack.
///
/// # Errors
/// [`InvalidJson`]: the text is not one JSON value (a syntax error, an early end, text
/// after the value, nesting too deep, a number too large to read).
pub fn read_value(text: &[u8]) -> Result<Value, InvalidJson> {
    Ok(serde_json::from_slice(text)?)
}

/// What is wrong with a JSON text, by position, never quoting it: "not valid JSON at line
/// 1 column 7 (expected `:`)", "JSON nested deeper than 128 levels at ...", "a number too
/// large to read at ...", "JSON that ends too soon at ...". For syntax errors only: the
/// text of serde's data errors quotes values.
pub fn describe_json_error(e: &serde_json::Error) -> String {
    let at = format!("at line {} column {}", e.line(), e.column());
    // serde_json's syntax messages are fixed phrases ("expected `:`", "trailing
    // characters"), never the input; the position is appended after " at line".
    let text = e.to_string();
    let what = text.split(" at line ").next().unwrap_or_default();
    match what {
        "recursion limit exceeded" => format!("JSON nested deeper than 128 levels, the most that is read, {at}"),
        "number out of range" => format!("a number too large to read (beyond a 64-bit float) {at}"),
        _ if e.is_eof() => format!("JSON that ends too soon {at}"),
        _ if e.is_syntax() => format!("not valid JSON {at} ({what})"),
        _ => format!("not valid JSON {at}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_is_read_and_its_errors_name_a_place_and_never_its_text() {
        assert_eq!(read_value(br#"{"a": [1, {"b": null}]}"#).unwrap(), serde_json::json!({"a": [1, {"b": null}]}));
        let cases: [(&[u8], &str); 4] = [
            (br#"{"pw" "hunter2"}"#, "not valid JSON: expected `:` at line 1 column 7"),
            (br#"{"pw": "hunter2"} x"#, "not valid JSON: trailing characters at line 1 column 19"),
            (br#"{"pw": "hunter2""#, "not valid JSON: EOF while parsing an object at line 1 column 16"),
            (b"{\"pw\": 1e999}", "not valid JSON: number out of range at line 1 column 12"),
        ];
        for (text, expected) in cases {
            let e = read_value(text).unwrap_err().to_string();
            assert_eq!(e, expected);
            assert!(!e.contains("hunter2"), "{e}");
            // What manifests and specs said before they shared this reader.
            let before = serde_json::from_str::<Value>(std::str::from_utf8(text).unwrap()).unwrap_err();
            assert_eq!(e, format!("not valid JSON: {before}"));
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let e = read_value(deep.as_bytes()).unwrap_err().to_string();
        assert!(e.starts_with("not valid JSON: recursion limit exceeded at line 1 column 128"), "{e}");
    }

    #[test]
    fn a_json_error_is_described_by_position_never_quoting_the_text() {
        let error = |text: &str| serde_json::from_str::<Value>(text).unwrap_err();
        assert_eq!(
            describe_json_error(&error(r#"{"pw" "hunter2"}"#)),
            "not valid JSON at line 1 column 7 (expected `:`)"
        );
        assert_eq!(describe_json_error(&error(r#"{"pw": "hunter2""#)), "JSON that ends too soon at line 1 column 16");
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(
            describe_json_error(&error(&deep))
                .starts_with("JSON nested deeper than 128 levels, the most that is read,")
        );
        assert!(
            describe_json_error(&error("[1e999]")).starts_with("a number too large to read (beyond a 64-bit float)")
        );
    }
}
