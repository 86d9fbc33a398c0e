//! The Loom provisioner's supervisor (map rewritten below).

pub mod cli;
pub mod cluster;
pub mod core;
pub mod daemon;
pub mod journal;
pub mod log;
pub mod wire;

pub use crate::core::registry::Registry;
pub use crate::core::supervisor::{Options, Permit, Refused, Supervisor, TaskReport};
pub use crate::wire::envelope::TaskEnvelope;
