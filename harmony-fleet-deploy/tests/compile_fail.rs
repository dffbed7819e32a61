//! Topologies are fixed at compile time (adr/0005), for the fleet Scores a reuser touches too:
//! a fleet Score used against a topology without what it needs does not compile, and the
//! error names the missing capability (`K8sClient` for `FleetDeploymentScore`) or, for the
//! component Scores implemented per topology, the topologies that can host them.

//!
//! As in `harmony`'s, the case that must compile is a module built with this test and trybuild
//! only type-checks the cases that must fail.

#[path = "ui/fleet_deployment_with_k8s_client.rs"]
mod with_k8s_client;

#[test]
fn fleet_deployment_score_compiles_against_both_topologies_with_a_kubernetes_api() {
    with_k8s_client::main();
}

#[test]
fn fleet_scores_do_not_compile_against_a_topology_that_cannot_run_them() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fleet_deployment_without_k8s_client.rs");
    cases.compile_fail("tests/ui/operator_score_on_other_topology.rs");
}
