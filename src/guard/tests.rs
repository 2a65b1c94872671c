use super::*;

#[test]
fn rules_compile() {
    rules::compile_for_test().unwrap();
}
