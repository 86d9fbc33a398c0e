//! The plumbing of the journal on PostgreSQL: reaching the server ([`connect`]: the URL,
//! TLS, the password) and bringing its schema up to date ([`migrate`]).
//!
//! Both are blocking (the synchronous `postgres` client): they run on the journal's
//! writer thread, as SQLite does, never inside the tokio runtime.

// Until the journal's PostgreSQL engine uses them, only the tests do.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod connect;
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod migrate;
mod pgpass;
mod tls;
