//! The embedded engine: one SQLite file, `journal.sqlite3` in the daemon's data folder,
//! for a daemon that is alone (the default; nothing to install).
//!
//! `journal_mode=WAL` and `synchronous=FULL` (a commit is on disk when it answers);
//! `secure_delete=ON` (SQLite overwrites what it deletes with zeros) and the write-ahead
//! log truncated soon after each commit ([`Engine::tidy`]), so a finished task's body is
//! in no file. The file is readable by its owner only, and never reached through a link.

use std::path::{Path, PathBuf};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags};

use super::schema;
use super::sql::{Arg, Db, Dialect, Row, SqlError, Value, sqlite_placeholders};
use super::writer::Engine;

/// The database file's name in the data folder.
pub const FILE: &str = "journal.sqlite3";

/// The connection the writer thread owns.
pub(crate) struct Sqlite {
    conn: Connection,
}

impl Sqlite {
    /// Opens (creating if needed) `<data_dir>/journal.sqlite3`, safely ([`open_safely`]),
    /// sets its pragmas and creates what its schema lacks. Returns it and its path.
    ///
    /// # Errors
    /// When the folder or database cannot be created, trusted or read, or has a newer
    /// schema than this program knows.
    pub(crate) fn open(data_dir: &Path) -> Result<(Sqlite, PathBuf), String> {
        use std::os::unix::fs::PermissionsExt;
        let (path, conn) = open_safely(data_dir)?;
        // Tasks and results carry credentials.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             PRAGMA secure_delete = ON;",
        )
        .map_err(|e| e.to_string())?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| e.to_string())?;
        if version > schema::VERSION {
            return Err(format!(
                "schema version {version} is newer than this loom-provisioner understands ({})",
                schema::VERSION
            ));
        }
        schema::create(&conn).map_err(|e| e.to_string())?;
        conn.execute_batch(&format!("PRAGMA user_version = {}", schema::VERSION)).map_err(|e| e.to_string())?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok((Sqlite { conn }, path))
    }
}

impl Engine for Sqlite {
    fn db(&mut self) -> &mut dyn Db {
        self
    }

    fn begin(&mut self) -> Result<(), SqlError> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(error)
    }

    fn commit(&mut self) -> Result<(), SqlError> {
        self.conn.execute_batch("COMMIT").map_err(error)
    }

    fn rollback(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    fn changes(&self) -> u64 {
        self.conn.total_changes()
    }

    /// Copies the write-ahead log into the database and truncates it to nothing.
    fn tidy(&mut self) -> Result<(), String> {
        let busy: i64 =
            self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)).map_err(|e| e.to_string())?;
        if busy != 0 {
            return Err("the write-ahead log is in use by another reader; it was not truncated".into());
        }
        Ok(())
    }
}

impl Db for Sqlite {
    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError> {
        let mut stmt = self.conn.prepare_cached(&sqlite_placeholders(sql)).map_err(error)?;
        // A statement written for both engines may leave out an argument the other uses.
        let used = stmt.parameter_count();
        let n = stmt.execute(rusqlite::params_from_iter(args.iter().take(used))).map_err(error)?;
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    fn rows(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, SqlError> {
        let mut stmt = self.conn.prepare_cached(&sqlite_placeholders(sql)).map_err(error)?;
        let width = stmt.column_count();
        let used = stmt.parameter_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args.iter().take(used))).map_err(error)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(error)? {
            let mut row = Vec::with_capacity(width);
            for i in 0..width {
                row.push(match r.get_ref(i).map_err(error)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    // The journal stores no floats; one read as an integer is what it meant.
                    #[allow(clippy::cast_possible_truncation)]
                    ValueRef::Real(v) => Value::Int(v as i64),
                    ValueRef::Text(t) | ValueRef::Blob(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                });
            }
            out.push(Row(row));
        }
        Ok(out)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Arg::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Arg::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(v)),
            Arg::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
        })
    }
}

fn error(e: rusqlite::Error) -> SqlError {
    SqlError { storage: is_storage_error(&e), message: e.to_string() }
}

/// Whether `e` says the storage under the journal cannot take a write (full, read-only,
/// failing), rather than something about one operation.
fn is_storage_error(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{CannotOpen, DiskFull, ReadOnly, SystemIoFailure};
    matches!(e.sqlite_error_code(), Some(DiskFull | ReadOnly | SystemIoFailure | CannotOpen))
}

/// Creates `data_dir` (mode 0700) if needed, checks it as [`crate::core::trust`] checks plugin
/// folders (owned by root or the daemon's user, writable by no one else, on its whole
/// path), and opens the database in it without following symbolic links: the database's
/// own name and its `-wal`, `-shm` and `-journal` companions (which SQLite opens by name
/// itself) must not be links, so nobody can point the journal, and the credentials in it,
/// at another file. Returns the database's path, links on the way resolved.
fn open_safely(data_dir: &Path) -> Result<(PathBuf, Connection), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|e| format!("cannot create the data folder {}: {e}", data_dir.display()))?;
    let dir = crate::core::trust::check(data_dir, crate::core::trust::Kind::Folder)
        .map_err(|e| format!("data folder: {e}"))?;
    let path = dir.join(FILE);
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::symlink_metadata(&file) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symbolic link, and the journal never follows one (it could point the journal at another file); remove it",
                    file.display()
                ));
            }
            Ok(md) if !md.is_file() => return Err(format!("{} is not a regular file; remove it", file.display())),
            _ => {}
        }
    }
    // SQLITE_OPEN_NOFOLLOW: SQLite refuses a path with a link in it (O_NOFOLLOW and more).
    let conn = Connection::open_with_flags(&path, OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW)
        .map_err(|e| e.to_string())?;
    Ok((path, conn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_are_told_from_others() {
        let full = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
        let constraint =
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT), None);
        assert!(is_storage_error(&full));
        assert!(!is_storage_error(&constraint));
        assert!(!is_storage_error(&rusqlite::Error::QueryReturnedNoRows));
    }
}
