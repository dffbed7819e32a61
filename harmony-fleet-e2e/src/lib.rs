//! End-to-end harness for harmony fleet.
//!
//! Will hold (issue 7): bring-up of the whole stack with the production Scores once per test
//! binary, a fresh `e2e-<8 hex>` namespace per test, and helpers that wait with deadlines.
