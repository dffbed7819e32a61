//! End-to-end harness: the fleet brought up on `LocalTopology` with the *production* Scores
//! (the ones `harmony-fleet-deploy local up` runs), once per test binary, with real
//! kube-apiserver, nats-server, operator and agent processes and real podman.
//!
//! - [`stack`]: [`Stack`] — bring-up (once, [`stack::shared`]), clients, and the faults tests
//!   inject (stop/restart NATS, operator, agents; relabel a device).
//! - [`namespace`]: [`TestNamespace`] — an `e2e-<8 hex>` namespace per test, deleted on drop.
//! - [`fleetdep`]: building and applying fleet `Deployment`s, reading their status.
//! - [`restore`]: [`Restore`](restore::Restore) — fault tests put the shared stack back even
//!   when they fail.
//! - [`wait`]: polling with a deadline that says what it waited for.
//! - [`cluster`]: cluster mode — the bring-up on a real cluster (`FLEET_E2E_KUBECONFIG`).
//!
//! Bring-up runs on a runtime of its own that lives as long as the test binary: each
//! `#[tokio::test]` has its own runtime, and clients (kube, NATS) must outlive the test that
//! first asked for the stack.

pub mod cluster;
pub mod fleetdep;
pub mod namespace;
pub mod restore;
pub mod stack;
pub mod wait;

pub use namespace::TestNamespace;
pub use stack::Stack;
