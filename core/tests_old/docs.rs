//! docs/errors.md must list every error code, so users can look each up.

#[test]
fn every_error_code_is_documented() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/errors.md")).unwrap();
    for code in mailsync::ErrorCode::ALL {
        let row = format!(
            "| `{}` | {} |",
            code.as_str(),
            if code.is_transient() { "yes" } else { "no" }
        );
        assert!(
            doc.contains(&row),
            "docs/errors.md lacks the row for `{code}` (or its transient column is wrong)"
        );
    }
}
