//! Topologies are fixed at compile time (adr/0005), for the fleet Scores a reuser touches too:
//! a fleet Score used against a topology without what it needs does not compile, and the
//! error names the missing capability (`K8sClient` for `FleetDeploymentScore`) or, for the
//! component Scores implemented per topology, the topologies that can host them.

#[test]
fn fleet_scores_compile_only_against_a_topology_that_can_run_them() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fleet_deployment_without_k8s_client.rs");
    cases.compile_fail("tests/ui/operator_score_on_other_topology.rs");
    cases.pass("tests/ui/fleet_deployment_with_k8s_client.rs");
}
