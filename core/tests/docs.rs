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

/// The README's Rust example is `examples/readme.rs` (which `cargo test`
/// compiles), so it cannot rot.
#[test]
fn the_readme_example_is_the_compiled_one() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let example = std::fs::read_to_string(format!("{root}/core/examples/readme.rs")).unwrap();
    let start = example.find("use mailsync::").unwrap();
    let end = example.find("fn main()").unwrap();
    let snippet = example[start..end].trim_end();
    let block = readme
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README has a ```rust block");
    assert_eq!(
        block.trim_end(),
        snippet,
        "README's Rust example differs from core/examples/readme.rs; copy it over"
    );
}
