//! The SSH client shared by the `shell` automator and the `fixed` provider: where to
//! connect and how to log in, read from a Loom task ([`Target::from_task`]); host-key
//! pinning; command execution with live output and cancellation ([`Session::exec`]).
//!
//! Pure Rust (`russh` with the `ring` backend): no `ssh` binary is involved.
//!
//! Every error names the address and the user, and says what went wrong in words an
//! operator can act on: connection refused, unreachable, timeout, host key changed,
//! authentication refused. None ever contains a password or key material.

mod hostkeys;
mod pool;
mod quote;
mod session;
mod target;

pub use hostkeys::{HostKeys, fingerprint, host_keys_json};
pub use pool::{Pool, Pooled};
pub use quote::shell_quote;
pub use session::{Exit, Session};
pub use target::{Auth, Target};

/// Why an SSH operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// Nothing listens on the port.
    #[error("cannot connect to {addr}: connection refused (is sshd running and listening on that port?)")]
    Refused {
        /// `host:port`.
        addr: String,
    },
    /// The address cannot be reached, or the name not resolved.
    #[error("cannot connect to {addr}: {reason}")]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// The system's words.
        reason: String,
    },
    /// No SSH handshake in time.
    #[error("no SSH answer from {addr} within {secs} s")]
    Timeout {
        /// `host:port`.
        addr: String,
        /// The limit.
        secs: u64,
    },
    /// The server's host key is not the pinned one.
    #[error(
        "the host key of {addr} changed: expected {expected}, the server presented {got}; if the machine was rebuilt on purpose, remove its ssh_host_keys"
    )]
    HostKeyChanged {
        /// `host:port`.
        addr: String,
        /// Fingerprints of the pinned keys.
        expected: String,
        /// Fingerprint of the presented key.
        got: String,
    },
    /// The server refused the credentials.
    #[error("authentication as {user} on {addr} failed: the server refused the {method}{accepts}")]
    AuthFailed {
        /// The user.
        user: String,
        /// `host:port`.
        addr: String,
        /// "password" or "key /path".
        method: String,
        /// What the server would accept, if it said.
        accepts: String,
    },
    /// The private key could not be used.
    #[error("cannot use the private key {path}: {reason}")]
    Key {
        /// Where it is (or "ssh-auth.privatekey").
        path: String,
        /// Why.
        reason: String,
    },
    /// The task does not say where or how to connect.
    #[error("{0}")]
    Config(String),
    /// The connection could not start a command (nothing ran): it may have died.
    #[error("the SSH connection to {addr} could not start a command: {reason}")]
    NoChannel {
        /// `host:port`.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// The session failed after login.
    #[error("the SSH session with {addr} failed: {reason}")]
    Session {
        /// `host:port`.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
}
