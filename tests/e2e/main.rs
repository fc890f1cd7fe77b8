//! End-to-end tests: the real `orch` binary, the real Docker engine, real
//! signals. Each test has its own `ORCH_HOME`, hence its own instance id, and
//! fails if it leaves a container of that instance behind.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod chaos;
mod cleanup;
mod cluster;
mod daemon;
mod faults;
mod helper;
mod hostile;
mod hostile_save;
mod network;
mod newuser;
mod observe;
mod policy;
mod registry;
mod remote;
mod sandbox;
mod task;
mod watchdog;
mod workflow;
mod workspace;
