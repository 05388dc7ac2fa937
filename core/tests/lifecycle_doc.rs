//! docs/lifecycle.md draws the state machines from the tables the code
//! applies; this keeps the two equal.

#[test]
fn the_documented_diagram_is_the_code_table() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/lifecycle.md"))
        .unwrap();
    let start = "<!-- generated: lifecycle::diagram -->\n";
    let end = "<!-- end generated -->";
    let from = doc.find(start).expect("start marker") + start.len();
    let to = doc.find(end).expect("end marker");
    let documented = &doc[from..to];
    let mut expected = String::new();
    for (name, diagram) in mailsync::lifecycle::diagram() {
        expected.push_str(&format!("### {name}\n\n```mermaid\n{diagram}```\n\n"));
    }
    assert_eq!(
        documented.trim(),
        expected.trim(),
        "docs/lifecycle.md is stale; regenerate it with \
         `cargo run -p mailsync --example lifecycle_diagram`"
    );
}
