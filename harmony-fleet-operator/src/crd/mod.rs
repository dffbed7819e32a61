//! The custom resources the operator serves: `Deployment` (namespaced) and `Device`
//! (cluster-scoped). The types live in `harmony-fleet-types` (so that deploy programs use them
//! without this crate's runtime) and are re-exported here; [`convert`] turns their specs into
//! the operator's terms. `gen-crd` prints [`crd_yaml`]; the checked-in `yaml/crd.yaml` is
//! compared with it by a test.

pub mod convert;

pub use harmony_fleet_types::crd::{
    Deployment, DeploymentSpec, DeploymentStatus, Device, DeviceSpec, DeviceStatus, GROUP, crds,
    deployment, device,
};

pub use convert::{ToIndex, ToPolicy};

use crate::error::Error;

/// Finalizer the operator puts on each `Deployment` so that its `desired-state` keys are
/// removed before the resource goes away.
pub const FINALIZER: &str = "fleet.nationtech.io/finalizer";

/// Field manager of every write the operator makes (server-side apply and patches).
pub const FIELD_MANAGER: &str = "harmony-fleet-operator";

/// Both CRDs as one multi-document YAML stream (what `gen-crd` prints).
pub fn crd_yaml() -> Result<String, Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).map_err(|e| Error::Yaml(e.to_string()))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    /// Regenerate with `cargo run -p harmony-fleet-operator -- gen-crd > harmony-fleet-operator/yaml/crd.yaml`.
    #[test]
    fn checked_in_crd_yaml_matches_the_rust_types() {
        let generated = crd_yaml().expect("CRDs serialise");
        let checked_in = include_str!("../../yaml/crd.yaml");
        assert!(
            generated == checked_in,
            "yaml/crd.yaml is stale: run `cargo run -p harmony-fleet-operator -- gen-crd > \
             harmony-fleet-operator/yaml/crd.yaml`"
        );
    }

    #[test]
    fn deployment_crd_is_namespaced_with_status_and_short_name() {
        let crd = Deployment::crd();
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            crd.spec.names.short_names,
            Some(vec!["fleetdep".to_owned()])
        );
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some())
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            ["Matched", "Succeeded", "Failed", "Pending", "Age"]
        );
    }

    #[test]
    fn device_crd_is_cluster_scoped() {
        let crd = Device::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(
            crd.spec.names.short_names,
            Some(vec!["fleetdev".to_owned()])
        );
    }

    #[test]
    fn deployment_schema_carries_cel_rules_with_messages() {
        let json = serde_json::to_string(&Deployment::crd()).expect("json");
        for needle in [
            "!self.metadata.name.contains('.')",
            "rollout.batches[*].percent must add up to at most 100",
            "values must be non-empty for operator In or NotIn",
        ] {
            assert!(json.contains(needle), "missing {needle}");
        }
    }
}
