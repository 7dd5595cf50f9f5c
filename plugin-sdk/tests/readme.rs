//! The README's complete handler example is `examples/review_gate.rs`, which `cargo test`
//! compiles and unit-tests; this keeps the README's copy identical to it.

#[test]
fn readme_shows_the_tested_example_verbatim() {
    let readme = include_str!("../README.md");
    let example = include_str!("../examples/review_gate.rs");
    assert!(
        readme.contains(example),
        "README.md must contain examples/review_gate.rs verbatim; copy it again"
    );
}
