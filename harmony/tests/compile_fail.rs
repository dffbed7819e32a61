//! Topologies are fixed at compile time (adr/0005): a Score that needs a capability must not
//! compile against a topology that lacks it, and must compile against one that has it.

#[test]
fn k8s_score_compiles_only_against_a_topology_with_k8s_client() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/k8s_score_without_k8s_client.rs");
    cases.pass("tests/ui/k8s_score_with_k8s_client.rs");
}
