//! The journal on PostgreSQL, for a fleet of daemons: reaching the server ([`connect`]:
//! the URL, TLS, the password), bringing its schema up to date ([`migrate`]), the writer
//! thread's connection ([`engine`]) and the notifications of the other daemons
//! ([`listen`]).
//!
//! Both are blocking (the synchronous `postgres` client): they run on the journal's
//! writer thread, as SQLite does, never inside the tokio runtime.

pub(crate) mod connect;
pub(crate) mod engine;
pub(crate) mod listen;
pub(crate) mod migrate;
mod pgpass;
mod tls;
