//! Prints the lifecycle state machines as mermaid diagrams, drawn from the
//! rule tables the library applies (docs/lifecycle.md holds this output).
//! Run: `cargo run -p mailsync --example lifecycle_diagram`

fn main() {
    for (name, diagram) in mailsync::lifecycle::diagram() {
        println!("### {name}\n\n```mermaid\n{diagram}```\n");
    }
}
