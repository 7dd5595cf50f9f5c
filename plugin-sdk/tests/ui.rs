//! Misusing `export_handler!` fails to compile with a message that says what a handler is.

#[test]
fn macro_misuse_is_a_clear_compile_error() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass.rs");
    t.compile_fail("tests/ui/missing-handler.rs");
    t.compile_fail("tests/ui/wrong-signature.rs");
    t.compile_fail("tests/ui/bad-init.rs");
    t.compile_fail("tests/ui/not-a-function.rs");
}
