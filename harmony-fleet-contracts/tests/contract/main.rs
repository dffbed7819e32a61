//! Contract tests of harmony-fleet-contracts, in one test binary (link time):
//! - `golden`: every literal name and JSON shape, written out in full, so a rename fails here;
//! - `properties`: property tests of key round trips, id rejection and canonical encoding;
//! - `permissions`: every subject the contract produces for a device is allowed by that
//!   device's template and refused by every other device's.
//! - `sessions`: the JSON of the `logs-stream` / `shell` session protocol.

mod golden;
mod permissions;
mod properties;
mod sessions;
