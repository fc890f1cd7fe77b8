//! The seam between orch and a container engine.
//!
//! The run, teardown and reconciliation code ask a [`Runtime`] for what they
//! need (an image, a container created, attached, started, stopped with a
//! grace, waited for, removed, listed by owner) and never see the engine
//! behind it. Docker is the one implementation; what only some engines can
//! do (mounting host directories, carrying the owning process's identity)
//! is a [`Capabilities`] flag, so another engine can come later without
//! touching the callers.

mod docker;
mod error;
#[cfg(test)]
pub(crate) mod fake;
mod reference;
mod spec;

pub use docker::DockerRuntime;
pub use error::{RuntimeError, display_chain};
pub(crate) use reference::validate_reference;
pub use spec::{
    Capabilities, ContainerSpec, ContainerState, Gone, Machine, Mount, OutputChunk, OutputStream,
    OwnedContainer, OwnedNetwork, Ownership, Runtime, Selector, StdinWriter, Stopped, Stream,
};
pub(crate) use spec::{egress_name, is_egress};
