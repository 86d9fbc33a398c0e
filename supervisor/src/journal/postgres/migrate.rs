//! The journal's schema on PostgreSQL, brought up to date: versioned migrations applied
//! once, in one transaction, safely when several daemons start at once.
//!
//! Every daemon that starts runs [`migrate`]. The first to take the advisory lock applies
//! what the database lacks; the others wait for its commit, then find nothing to do. A
//! failure (a migration's error, a lost connection, a daemon killed midway) rolls back
//! everything, DDL included (PostgreSQL's DDL is transactional), so a database is always
//! at one version or the next, never in between.

use std::collections::BTreeSet;

use super::connect::cause_of;

/// The advisory lock that serializes migrations (`pg_advisory_xact_lock`): one fixed key
/// per database, "loommigr" in ASCII, unlikely to meet another application's.
const LOCK_KEY: i64 = 0x6c6f_6f6d_6d69_6772;

/// Creates what records the applied versions (under the lock: `CREATE ... IF NOT EXISTS`
/// alone races, two sessions both seeing nothing and one failing on the catalog's
/// unique index).
const BOOKKEEPING: &str = "CREATE SCHEMA IF NOT EXISTS loom;
CREATE TABLE IF NOT EXISTS loom.migrations (
    version int PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now(),
    by_daemon text NOT NULL
)";

/// Why the schema could not be brought up to date. Nothing was changed in any case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MigrateError {
    /// The database has a version this daemon does not know: a newer daemon migrated it.
    #[error(
        "the journal database's schema is at version {database}, newer than this daemon's {known}: \
         run a daemon of the same release or newer (nothing was changed)"
    )]
    Newer { database: i32, known: i32 },
    /// A migration's SQL failed.
    #[error("journal schema migration {version} failed (nothing was changed): {cause}")]
    Failed { version: i32, cause: String },
    /// The migrations given are not in ascending order without repeats (a bug).
    #[error("journal schema migrations are not in ascending order at version {0}")]
    Order(i32),
    /// The database failed otherwise (the connection, the lock, the bookkeeping).
    #[error("migrating the journal database's schema (nothing was changed): {0}")]
    Database(String),
}

impl From<postgres::Error> for MigrateError {
    fn from(e: postgres::Error) -> MigrateError {
        MigrateError::Database(cause_of(&e))
    }
}

/// Applies `migrations` (version, SQL; ascending) that `client`'s database lacks, in one
/// transaction under `pg_advisory_xact_lock(<fixed key>)`, recording each in
/// `loom.migrations (version int primary key, applied_at timestamptz default now(),
/// by_daemon text)`; creates schema `loom` first (under the lock: `CREATE SCHEMA IF NOT
/// EXISTS` alone races). Refuses (error, nothing changed) a database whose highest version
/// is newer than the last of `migrations`. Safe when several daemons start at once.
/// Returns how many migrations it applied (0: the database was up to date).
///
/// Blocks while another session migrates the same database, within the connection's
/// statement timeout. A migration's SQL may hold several statements.
///
/// # Errors
/// See [`MigrateError`]; the transaction is rolled back in every case.
pub(crate) fn migrate(
    client: &mut postgres::Client,
    migrations: &[(i32, &str)],
    by: &str,
) -> Result<u32, MigrateError> {
    for pair in migrations.windows(2) {
        if pair[1].0 <= pair[0].0 {
            return Err(MigrateError::Order(pair[1].0));
        }
    }
    let known = migrations.last().map_or(0, |(version, _)| *version);
    // Dropped without commit on every early return: rolled back.
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])?;
    tx.batch_execute(BOOKKEEPING)?;
    let applied: BTreeSet<i32> =
        tx.query("SELECT version FROM loom.migrations", &[])?.iter().map(|row| row.get(0)).collect();
    if let Some(&database) = applied.last()
        && database > known
    {
        return Err(MigrateError::Newer { database, known });
    }
    let mut count = 0;
    for (version, sql) in migrations.iter().filter(|(version, _)| !applied.contains(version)) {
        tx.batch_execute(sql).map_err(|e| MigrateError::Failed { version: *version, cause: cause_of(&e) })?;
        tx.execute("INSERT INTO loom.migrations (version, by_daemon) VALUES ($1, $2)", &[version, &by])?;
        count += 1;
    }
    tx.commit()?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use loom_testpg::TestPg;

    use super::*;
    use crate::journal::postgres::connect::Target;

    const MIGRATIONS: [(i32, &str); 3] = [
        (1, "CREATE TABLE loom.tasks (id bigint PRIMARY KEY)"),
        (2, "CREATE TABLE loom.results (task bigint REFERENCES loom.tasks (id)); CREATE INDEX ON loom.results (task)"),
        (3, "ALTER TABLE loom.tasks ADD COLUMN plugin text NOT NULL DEFAULT ''"),
    ];

    fn client(url: &str) -> postgres::Client {
        Target::parse(url, None).unwrap().connect().unwrap()
    }

    fn versions(client: &mut postgres::Client) -> Vec<(i32, String)> {
        client
            .query("SELECT version, by_daemon FROM loom.migrations ORDER BY version", &[])
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }

    fn columns(client: &mut postgres::Client) -> Vec<String> {
        client
            .query(
                "SELECT table_name || '.' || column_name FROM information_schema.columns \
                 WHERE table_schema = 'loom' AND table_name <> 'migrations' ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    #[test]
    fn daemons_starting_at_once_apply_each_migration_once() {
        let Some(pg) = TestPg::shared() else { return };
        for round in 0..10 {
            let url = pg.database();
            let start = Arc::new(Barrier::new(4));
            let daemons: Vec<_> = (0..4)
                .map(|daemon| {
                    let (url, start) = (url.clone(), start.clone());
                    std::thread::spawn(move || {
                        let mut client = client(&url);
                        start.wait();
                        migrate(&mut client, &MIGRATIONS, &format!("daemon-{daemon}"))
                    })
                })
                .collect();
            let applied: Vec<u32> = daemons.into_iter().map(|d| d.join().unwrap().unwrap()).collect();
            assert_eq!(applied.iter().sum::<u32>(), 3, "round {round}: {applied:?}");
            let mut client = client(&url);
            let versions = versions(&mut client);
            assert_eq!(versions.iter().map(|(v, _)| *v).collect::<Vec<_>>(), [1, 2, 3], "round {round}");
            // One daemon applied them all, in one transaction.
            assert!(versions.iter().all(|(_, by)| *by == versions[0].1), "round {round}: {versions:?}");
            assert_eq!(columns(&mut client), ["results.task", "tasks.id", "tasks.plugin"]);
        }
    }

    #[test]
    fn an_up_to_date_database_is_left_alone_and_a_new_migration_is_applied_alone() {
        let Some(pg) = TestPg::shared() else { return };
        let mut client = client(&pg.database());
        assert_eq!(migrate(&mut client, &MIGRATIONS[..2], "first").unwrap(), 2);
        assert_eq!(migrate(&mut client, &MIGRATIONS[..2], "second").unwrap(), 0);
        assert_eq!(migrate(&mut client, &MIGRATIONS, "third").unwrap(), 1);
        assert_eq!(versions(&mut client), [(1, "first".into()), (2, "first".into()), (3, "third".into())]);
    }

    #[test]
    fn a_database_newer_than_the_daemon_is_refused_unchanged() {
        let Some(pg) = TestPg::shared() else { return };
        let mut client = client(&pg.database());
        migrate(&mut client, &[(1, MIGRATIONS[0].1), (99, "SELECT 1")], "newer").unwrap();
        let err = migrate(&mut client, &MIGRATIONS, "older").unwrap_err();
        assert_eq!(err, MigrateError::Newer { database: 99, known: 3 });
        let message = err.to_string();
        assert!(message.contains("version 99") && message.contains("daemon's 3"), "{message}");
        assert_eq!(versions(&mut client), [(1, "newer".into()), (99, "newer".into())]);
        assert_eq!(columns(&mut client), ["tasks.id"]);
    }

    #[test]
    fn a_failing_migration_leaves_nothing_behind() {
        let Some(pg) = TestPg::shared() else { return };
        let mut client = client(&pg.database());
        let broken = [MIGRATIONS[0], (2, "CREATE TABLE loom.results (task no_such_type)")];
        match migrate(&mut client, &broken, "daemon").unwrap_err() {
            MigrateError::Failed { version: 2, cause } => assert!(cause.contains("no_such_type"), "{cause}"),
            other => panic!("{other:?}"),
        }
        // Not even the schema: DDL is transactional.
        let schemas: i64 =
            client.query_one("SELECT count(*) FROM pg_namespace WHERE nspname = 'loom'", &[]).unwrap().get(0);
        assert_eq!(schemas, 0);
        // And the connection is usable again: the transaction was rolled back.
        assert_eq!(migrate(&mut client, &MIGRATIONS, "daemon").unwrap(), 3);
    }

    #[test]
    fn migrations_out_of_order_are_refused_before_anything_is_done() {
        let Some(pg) = TestPg::shared() else { return };
        let mut client = client(&pg.database());
        assert_eq!(migrate(&mut client, &[MIGRATIONS[1], MIGRATIONS[0]], "d"), Err(MigrateError::Order(1)));
        assert_eq!(migrate(&mut client, &[MIGRATIONS[0], MIGRATIONS[0]], "d"), Err(MigrateError::Order(1)));
        let schemas: i64 =
            client.query_one("SELECT count(*) FROM pg_namespace WHERE nspname = 'loom'", &[]).unwrap().get(0);
        assert_eq!(schemas, 0);
    }
}
