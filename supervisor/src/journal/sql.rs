//! The SQL the journal speaks to either engine: statements with `$1`, `$2` ...
//! placeholders, arguments and row values that are only integers, text or NULL, and one
//! trait, [`Db`], that the SQLite and the PostgreSQL connections both implement.
//!
//! Why so small: every table holds only integers (times in milliseconds, counts) and
//! text (ids, states, JSON), so three kinds of values say everything, and the tasks' and
//! clusters' statements are written once for both engines. Where the engines differ
//! (claiming a task, leases on the server's clock), the caller asks [`Db::dialect`].

use std::fmt;

/// Which engine runs the statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The embedded file.
    Sqlite,
    /// A PostgreSQL server, shared by several daemons.
    Postgres,
}

impl Dialect {
    /// An expression for the database's clock, in milliseconds since the epoch: leases
    /// are compared on one clock, the database's, never on the daemons' own.
    pub fn now_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
            Dialect::Postgres => "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS bigint)",
        }
    }
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    /// NULL.
    Null,
    /// An integer.
    Int(i64),
    /// Text.
    Text(&'a str),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<u32> for Arg<'_> {
    fn from(v: u32) -> Self {
        Arg::Int(i64::from(v))
    }
}

impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Int(i64::from(v))
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(v)
    }
}

impl<'a, T: Into<Arg<'a>>> From<Option<T>> for Arg<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Arg::Null, Into::into)
    }
}

/// A value read from a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// NULL.
    Null,
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
}

/// One row of a query's answer.
#[derive(Debug, Clone, Default)]
pub struct Row(pub(crate) Vec<Value>);

impl Row {
    /// Column `i` as text.
    ///
    /// # Errors
    /// When it is NULL, an integer, or not there.
    pub fn text(&self, i: usize) -> Result<String, SqlError> {
        self.opt_text(i)?.ok_or_else(|| SqlError::read(i, "NULL where text was expected"))
    }

    /// Column `i` as text, or `None` for NULL.
    ///
    /// # Errors
    /// When it is an integer or not there.
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, SqlError> {
        match self.0.get(i) {
            Some(Value::Text(t)) => Ok(Some(t.clone())),
            Some(Value::Null) => Ok(None),
            Some(Value::Int(_)) => Err(SqlError::read(i, "an integer where text was expected")),
            None => Err(SqlError::read(i, "no such column")),
        }
    }

    /// Column `i` as an integer.
    ///
    /// # Errors
    /// When it is NULL, text, or not there.
    pub fn int(&self, i: usize) -> Result<i64, SqlError> {
        self.opt_int(i)?.ok_or_else(|| SqlError::read(i, "NULL where an integer was expected"))
    }

    /// Column `i` as an integer, or `None` for NULL.
    ///
    /// # Errors
    /// When it is text or not there.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, SqlError> {
        match self.0.get(i) {
            Some(Value::Int(v)) => Ok(Some(*v)),
            Some(Value::Null) => Ok(None),
            Some(Value::Text(_)) => Err(SqlError::read(i, "text where an integer was expected")),
            None => Err(SqlError::read(i, "no such column")),
        }
    }

    /// Column `i` as a count (an integer that fits `u32`; 0 when it does not).
    ///
    /// # Errors
    /// When it is NULL, text, or not there.
    pub fn count(&self, i: usize) -> Result<u32, SqlError> {
        Ok(u32::try_from(self.int(i)?).unwrap_or(0))
    }
}

/// A statement failed, or a value read was not what the statement promised.
#[derive(Debug, Clone)]
pub struct SqlError {
    /// What the engine said.
    pub message: String,
    /// Whether the storage cannot take a write (a full disk, a read-only file system, a
    /// database server that cannot be reached), rather than something about one statement.
    pub storage: bool,
}

impl SqlError {
    /// A failure of one statement.
    pub fn new(message: impl Into<String>) -> SqlError {
        SqlError { message: message.into(), storage: false }
    }

    fn read(column: usize, what: &str) -> SqlError {
        SqlError::new(format!("column {column}: {what}"))
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqlError {}

/// A connection inside the journal's current transaction.
///
/// Statements use `$1`, `$2` ... for their arguments, in either engine. Every statement
/// of one journal operation commits or fails with that operation.
pub trait Db {
    /// Runs a statement; returns how many rows it changed.
    ///
    /// # Errors
    /// The engine's.
    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError>;

    /// Runs a query; returns every row of its answer.
    ///
    /// # Errors
    /// The engine's.
    fn rows(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, SqlError>;

    /// Which engine this is.
    fn dialect(&self) -> Dialect;

    /// Tells every daemon that listens on `channel` (PostgreSQL's `NOTIFY`, delivered
    /// when the transaction commits, never before); SQLite has no one else to tell.
    ///
    /// # Errors
    /// The engine's.
    fn notify(&mut self, channel: &str, payload: &str) -> Result<(), SqlError> {
        if self.dialect() == Dialect::Postgres {
            self.exec("SELECT pg_notify($1, $2)", &[channel.into(), payload.into()])?;
        }
        Ok(())
    }

    /// The first row of a query's answer, if any.
    ///
    /// # Errors
    /// The engine's.
    fn row(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Option<Row>, SqlError> {
        Ok(self.rows(sql, args)?.into_iter().next())
    }
}

/// `sql` with PostgreSQL's `$N` placeholders written as SQLite's `?N` (SQLite reads `$1`
/// as a *named* parameter, numbered by first appearance, so `$2 ... $1` would swap).
/// The journal's statements hold no `$` in literals.
pub(crate) fn sqlite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_keep_their_numbers_for_sqlite() {
        assert_eq!(
            sqlite_placeholders("UPDATE t SET a = $2 WHERE b = $1 AND c = $10"),
            "UPDATE t SET a = ?2 WHERE b = ?1 AND c = ?10"
        );
        assert_eq!(sqlite_placeholders("SELECT '$' || x"), "SELECT '$' || x");
    }

    #[test]
    fn rows_say_what_was_wrong_without_the_value() {
        let row = Row(vec![Value::Text("secret".into()), Value::Null, Value::Int(7)]);
        assert_eq!(row.text(0).unwrap(), "secret");
        assert_eq!(row.opt_text(1).unwrap(), None);
        assert_eq!(row.int(2).unwrap(), 7);
        let e = row.int(0).unwrap_err().message;
        assert!(e.contains("column 0") && !e.contains("secret"), "{e}");
        assert!(row.text(1).is_err() && row.int(9).is_err());
    }
}
