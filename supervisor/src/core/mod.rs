//! The plugin core: plugins found ([`registry`], [`manifest`]) and trusted ([`vet`],
//! [`trust`], [`runas`]), their processes started, contained ([`cgroup`]) and supervised
//! ([`spawn`], [`process`], [`instance`], [`restart`]), and tasks routed ([`router`]) to a
//! slot of a plugin ([`plugin`]) through the one entry point, [`supervisor`].
//!
//! Uses the wire ([`crate::wire`]), the log and the protocol crate; nothing above.

pub mod cgroup;
pub mod instance;
pub mod manifest;
pub mod manifest_shape;
pub mod plugin;
pub mod pool;
pub mod process;
pub mod registry;
pub mod restart;
pub mod router;
pub mod ruby;
pub mod runas;
pub mod spawn;
pub mod supervisor;
#[cfg(test)]
pub(crate) mod testing;
pub mod trust;
pub mod vet;
