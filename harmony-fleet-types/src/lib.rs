//! The fleet's Kubernetes resource types — `Deployment` (what runs where) and `Device` (what
//! a device is) — for programs that build or read them without the operator's runtime: a
//! deploy program (`FleetDeploymentScore`), tests, dashboards.
//!
//! One source of truth: the operator generates its CRD YAML from these types
//! (`harmony-fleet-operator gen-crd`) and a test fails when the checked-in copy drifts.

pub mod crd;
