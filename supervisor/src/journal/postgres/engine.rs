//! The journal's writer connection on PostgreSQL: the [`Engine`] and [`Db`] of the
//! writer thread, on one connection that it opens again when it is lost.
//!
//! Statements are prepared once per connection and kept. Values are sent as the
//! parameter types the server infers ([`Arg`]'s `ToSql`), read back as integers or text.
//! A statement that fails because the server is out of reach (a lost connection, a
//! server shutting down or out of disk) is a storage failure: the journal reports it as
//! unhealthy and the next batch connects again.

use std::collections::HashMap;
use std::error::Error;

use ::postgres::error::SqlState;
use ::postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use ::postgres::{Client, Statement};
use bytes::BytesMut;

use super::connect::Target;
use crate::journal::sql::{Arg, Db, Dialect, Row, SqlError, Value};
use crate::journal::writer::Engine;

/// Most statements kept prepared on one connection (the journal has a few dozen).
const MOST_STATEMENTS: usize = 256;

/// The writer's connection.
pub(crate) struct Pg {
    target: Target,
    client: Option<Client>,
    prepared: HashMap<String, Statement>,
    changes: u64,
}

impl Pg {
    /// Connects to `target`, brings the schema up to date (as daemon `by`) and returns
    /// the writer's connection.
    ///
    /// # Errors
    /// When the server cannot be reached, refuses the login, or has a newer schema.
    pub(crate) fn open(target: Target, by: &str) -> Result<Pg, String> {
        let mut client = connect(&target).map_err(|e| e.message)?;
        super::migrate::migrate(&mut client, crate::journal::schema::POSTGRES, by).map_err(|e| e.to_string())?;
        Ok(Pg { target, client: Some(client), prepared: HashMap::new(), changes: 0 })
    }

    /// The connection, connected again if it was lost.
    fn client(&mut self) -> Result<&mut Client, SqlError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.prepared.clear();
            self.client = None;
            self.client = Some(connect(&self.target)?);
        }
        self.client.as_mut().ok_or_else(|| SqlError::new("no connection"))
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, SqlError> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let client = self.client()?;
        let statement = client.prepare(sql).map_err(|e| self.failed(&e))?;
        if self.prepared.len() >= MOST_STATEMENTS {
            self.prepared.clear();
        }
        self.prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// `e` as the journal reports it; a lost connection is dropped, to connect again.
    fn failed(&mut self, e: &::postgres::Error) -> SqlError {
        let error = error(e);
        if error.storage {
            self.client = None;
        }
        error
    }
}

/// A new connection with the journal's tables on its search path.
fn connect(target: &Target) -> Result<Client, SqlError> {
    let mut client = target.connect().map_err(|e| SqlError { message: e.to_string(), storage: true })?;
    client.batch_execute("SET search_path = loom").map_err(|e| error(&e))?;
    Ok(client)
}

impl Engine for Pg {
    fn db(&mut self) -> &mut dyn Db {
        self
    }

    fn begin(&mut self) -> Result<(), SqlError> {
        let client = self.client()?;
        client.batch_execute("BEGIN").map_err(|e| self.failed(&e))
    }

    fn commit(&mut self) -> Result<(), SqlError> {
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| SqlError { message: "the connection was lost".into(), storage: true })?;
        client.batch_execute("COMMIT").map_err(|e| self.failed(&e))
    }

    fn rollback(&mut self) {
        if let Some(client) = self.client.as_mut()
            && client.batch_execute("ROLLBACK").is_err()
        {
            self.client = None;
        }
    }

    fn changes(&self) -> u64 {
        self.changes
    }

    /// Nothing: PostgreSQL removes deleted rows itself (VACUUM), see SECURITY.md.
    fn tidy(&mut self) -> Result<(), String> {
        Ok(())
    }
}

impl Db for Pg {
    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError> {
        let statement = self.statement(sql)?;
        let params = params(args, &statement);
        let client = self.client()?;
        let n = client.execute(&statement, &params).map_err(|e| self.failed(&e))?;
        self.changes += n;
        Ok(n)
    }

    fn rows(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, SqlError> {
        let statement = self.statement(sql)?;
        let params = params(args, &statement);
        let client = self.client()?;
        let rows = client.query(&statement, &params).map_err(|e| self.failed(&e))?;
        // An UPDATE ... RETURNING changes what it returns.
        if !sql.trim_start().starts_with("SELECT") {
            self.changes += rows.len() as u64;
        }
        rows.iter().map(read_row).collect()
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
}

/// The arguments the statement uses (a statement written for both engines may leave out
/// one the other uses).
fn params<'a>(args: &'a [Arg<'a>], statement: &Statement) -> Vec<&'a (dyn ToSql + Sync)> {
    args.iter().take(statement.params().len()).map(|a| a as &(dyn ToSql + Sync)).collect()
}

fn read_row(row: &::postgres::Row) -> Result<Row, SqlError> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = match *ty {
            Type::INT8 => row.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int)),
            Type::INT4 => row.try_get::<_, Option<i32>>(i).map(|v| v.map(|v| Value::Int(i64::from(v)))),
            Type::INT2 => row.try_get::<_, Option<i16>>(i).map(|v| v.map(|v| Value::Int(i64::from(v)))),
            Type::BOOL => row.try_get::<_, Option<bool>>(i).map(|v| v.map(|v| Value::Int(i64::from(v)))),
            Type::VOID => Ok(None),
            _ => row.try_get::<_, Option<String>>(i).map(|v| v.map(Value::Text)),
        };
        let value = value.map_err(|e| SqlError::new(format!("column {i} ({}): {e}", column.name())))?;
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

impl ToSql for Arg<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match *self {
            Arg::Null => Ok(IsNull::Yes),
            Arg::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
                Type::BOOL => (v != 0).to_sql(ty, out),
                _ => Err(format!("an integer cannot be sent as {ty}").into()),
            },
            Arg::Text(t) => t.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value in `to_sql`: an argument is an integer or text.
        true
    }

    to_sql_checked!();
}

/// `e` as the journal reports it: a storage failure when the server is out of reach or
/// cannot write.
pub(crate) fn error(e: &::postgres::Error) -> SqlError {
    let storage = e.is_closed()
        || e.as_db_error().is_none() && e.code().is_none()
        || e.code().is_some_and(|c| {
            let code = c.code();
            // 08: connection; 53: out of resources (disk full, memory); 57P0x: the
            // server is shutting down or starting; 25006: read-only (a standby).
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P0")
                || *c == SqlState::READ_ONLY_SQL_TRANSACTION
        });
    let message = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => super::connect::cause_of(e),
    };
    SqlError { message, storage }
}
