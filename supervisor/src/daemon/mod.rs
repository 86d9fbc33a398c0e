//! The daemon (`loom-provisioner serve`): its configuration ([`config`]), the service
//! that journals and runs submitted tasks and cluster operations ([`service`]), the HTTP
//! API ([`http`]) with its live events ([`events`], the bus; [`published`], what goes on
//! it) and the web console it serves ([`console`], [`session`]), systemd ([`notify`],
//! [`activation`]), metrics ([`metrics`]), and bounds on what it holds ([`budget`],
//! [`memory`]); [`serve`] puts them together.
//!
//! Uses the clusters, the journal, the core, the wire and the log; nothing above.

pub mod activation;
pub mod budget;
pub mod config;
pub mod console;
pub mod events;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod published;
pub mod serve;
pub mod service;
pub mod session;
