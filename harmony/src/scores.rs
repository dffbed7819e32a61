//! Generic Scores shipped with harmony.
//!
//! - [`K8sResourceScore`]: server-side apply of any typed Kubernetes object.
//! - [`CrdScore`]: installs CustomResourceDefinitions generated from Rust types and waits until
//!   the API server serves them.
//!
//! [`apply_object`] is the server-side apply both use, public so that other Scores applying
//! several objects report changes the same way.

mod crd;
mod k8s_resource;

pub use crd::{CrdScore, DEFAULT_ESTABLISH_TIMEOUT};
pub use k8s_resource::{
    Applied, ApplyScope, Change, DEFAULT_FIELD_MANAGER, K8sResourceScore, apply_object,
    describe_object,
};
