//! Scores that install harmony fleet.
//!
//! Will hold (issue 6): one Score per component — `FleetNatsScore`, `FleetOperatorScore`,
//! `FleetAgentScore`, `FleetServerScore` — each blocking on its smoke test, the `LocalTopology`
//! they run on, and the `harmony-fleet-deploy` command built on `harmony_cli`.
