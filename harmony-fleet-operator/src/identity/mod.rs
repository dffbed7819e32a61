//! Device identity (adr/0016): the operator answers enrollment and renewal requests with NATS
//! user JWTs signed by the fleet account's signing key, and revokes the credentials of
//! blacklisted, deleted and re-keyed devices by re-signing the fleet account with revocations
//! and pushing it to nats-server's resolver. nats-server's configuration never changes.
//!
//! | module | holds |
//! |---|---|
//! | [`decide`] | pure: what to answer, what to revoke, the next revocation list |
//! | [`token`] | pure: whether a bootstrap token approves one more device (adr/0020) |
//! | [`account`] | the fleet account JWT on the resolver: read revocations, push updates |
//! | [`service`] | the async shell: NATS subscriptions, the `Device` watch, writes, token uses |
//!
//! How an admin sees and approves a device:
//!
//! ```text
//! kubectl get fleetdev                       # ENROLLMENT Pending, REQUESTED KEY U…
//! kubectl patch fleetdev pi-1 --type merge -p '{"spec":{"publicKey":"U…"}}'
//! ```
//!
//! Or without a person: the device presents a bootstrap token (`harmony-fleet-deploy token
//! create`), which sets `spec.publicKey` for it and is named in the annotation
//! `fleet.nationtech.io/approved-by-token`.

pub mod account;
pub mod decide;
pub mod service;
pub mod token;

pub use service::{IdentityOptions, IdentityService};

/// Field manager of the identity service's writes: distinct from the registry's, so neither
/// removes the other's fields under server-side apply.
pub const FIELD_MANAGER: &str = "harmony-fleet-operator-identity";

/// Finalizer on every `Device` the operator issued a credential for: deleting the `Device`
/// waits until that credential is revoked.
pub const CREDENTIAL_FINALIZER: &str = "fleet.nationtech.io/credential";
