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

/// Every code block is closed by a fence alone on its line (a closing fence with text
/// after it swallowed the prose that followed it).
#[test]
fn readme_code_blocks_are_closed() {
    let readme = include_str!("../README.md");
    let fences: Vec<(usize, &str)> = readme
        .lines()
        .enumerate()
        .filter(|(_, line)| line.starts_with("```"))
        .collect();
    assert!(fences.len().is_multiple_of(2), "an unclosed code block");
    for (number, line) in fences.iter().skip(1).step_by(2) {
        assert_eq!(
            *line,
            "```",
            "line {}: a closing fence with text after it",
            number + 1
        );
    }
}
