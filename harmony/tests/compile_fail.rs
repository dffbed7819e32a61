//! Topologies are fixed at compile time (adr/0005): a Score that needs a capability must not
//! compile against a topology that lacks it, and must compile against one that has it.

//!
//! The case that must compile is a module of this test, so the ordinary test build compiles it;
//! trybuild gets only the cases that must fail, which it type-checks (`cargo check`) instead of
//! building every dependency a second time (issue 14: that was 7 minutes of a cold CI run).

#[path = "ui/k8s_score_with_k8s_client.rs"]
mod with_k8s_client;

#[test]
fn k8s_score_compiles_against_a_topology_with_k8s_client() {
    with_k8s_client::main();
}

#[test]
fn k8s_score_does_not_compile_against_a_topology_without_k8s_client() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/k8s_score_without_k8s_client.rs");
}
