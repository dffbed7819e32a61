//! The custom resources of the fleet, generated from Rust types: `Deployment` (namespaced)
//! and `Device` (cluster-scoped), group [`GROUP`], version `v1alpha1`.

pub mod deployment;
pub mod device;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use deployment::{Deployment, DeploymentSpec, DeploymentStatus};
pub use device::{Device, DeviceSpec, DeviceStatus};

/// API group of every fleet resource.
pub const GROUP: &str = "fleet.nationtech.io";

/// Both CRDs, in install order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Deployment::crd(), Device::crd()]
}
