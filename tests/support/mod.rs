//! Shared helpers for the end-to-end tests.

use std::time::Duration;

use causeway_testkit::lab::{Lab, LabOptions};

/// How long a federated message may take in these tests (first contact includes dialback).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Lab options for a test's subnet, with the binaries cargo built for this test run.
pub fn options(subnet: u8) -> LabOptions {
    LabOptions::new(
        subnet,
        env!("CARGO_BIN_EXE_edge"),
        env!("CARGO_BIN_EXE_core"),
    )
}

/// Start a lab or fail the test with the reason.
pub fn start(opts: LabOptions) -> Lab {
    match Lab::start(opts) {
        Ok(lab) => lab,
        Err(e) => panic!("lab did not start: {e:#}"),
    }
}

/// Unwrap a step of a story, printing the lab's logs when it fails.
pub trait Step<T> {
    /// The value, or a panic carrying `what` and the logs.
    fn step(self, lab: &Lab, what: &str) -> T;
}

impl<T> Step<T> for anyhow::Result<T> {
    fn step(self, lab: &Lab, what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("{what}: {e:#}\n{}", lab.diagnostics()),
        }
    }
}
