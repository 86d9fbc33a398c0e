//! The wire to a plugin process: the task as it travels ([`envelope`]), the connection
//! over the process's stdin and stdout ([`connection`], [`outbound`]), what the plugin
//! prints ([`capture`]), its answers ([`answer`]), the scrubbing of credentials from
//! everything that leaves ([`redact`]), and the reading of JSON from outside ([`json`]).
//!
//! Uses only the protocol crate and the supervisor's own log ([`crate::log`]).

pub mod answer;
pub mod capture;
pub mod connection;
pub mod envelope;
pub mod json;
pub mod outbound;
pub mod redact;
