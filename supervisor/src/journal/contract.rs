//! The journal's promises, checked on both engines: each test is an `async fn` taking a
//! fresh journal, run once on SQLite and once on a throwaway PostgreSQL
//! (`loom-testpg`; skipped with a line when PostgreSQL is not installed, never in CI).

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use super::{Fate, Journal, Member, State};

/// A fresh journal of each engine: SQLite in a new folder, PostgreSQL in a new database.
pub(crate) enum Fresh {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Fresh {
    pub(crate) fn open(&self) -> Journal {
        match self {
            Fresh::Sqlite(dir) => Journal::open(dir.path()).unwrap(),
            Fresh::Postgres(url) => {
                let settings = super::Settings { url: Some(url.clone()), ..super::Settings::default() };
                Journal::open_with(&settings, std::path::Path::new("/nonexistent")).unwrap()
            }
        }
    }
}

pub(crate) fn sqlite() -> Fresh {
    Fresh::Sqlite(crate::core::trust::test_dir())
}

pub(crate) fn postgres() -> Option<Fresh> {
    Some(Fresh::Postgres(loom_testpg::TestPg::shared()?.database()))
}

/// One `#[tokio::test]` per engine for each `async fn(Fresh)`.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::sqlite()).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(fresh) = super::postgres() {
                    super::$name(fresh).await
                }
            })*
        }
    };
}

on_both_engines!(
    a_task_goes_from_queued_to_done_and_is_accepted_once,
    a_dead_daemons_tasks_are_requeued_or_failed_by_their_plugins_word,
    an_operation_whose_caller_stopped_waiting_still_commits,
    a_failed_operation_is_undone_alone_and_its_batch_commits,
    two_daemons_never_claim_one_task,
    a_wait_ends_when_the_task_is_done,
);

fn raw(text: &str) -> Arc<Box<RawValue>> {
    Arc::new(RawValue::from_string(text.to_owned()).unwrap())
}

const LEASE: Duration = Duration::from_secs(60);

async fn member(j: &Journal, name: &str) -> Member {
    let me = Member::this_process(name);
    j.join(&me, "[]", r#"["automator:a"]"#, LEASE).await.unwrap();
    me
}

async fn a_task_goes_from_queued_to_done_and_is_accepted_once(fresh: Fresh) {
    let j = fresh.open();
    let me = member(&j, "d").await;
    assert!(j.accept("t1", "CREATE", "[]", Some(&me), raw(r#"{"taskId":"t1"}"#)).await.unwrap().is_none());
    let again = j.accept("t1", "CREATE", "[]", Some(&me), raw(r#"{"other":1}"#)).await.unwrap().unwrap();
    assert_eq!(again.state, State::Queued);
    assert_eq!(j.start("t1", &me, "p", false).await.unwrap(), Some(1));
    assert_eq!(j.get("t1").await.unwrap().unwrap().state, State::Running);
    assert!(j.finish_owned("t1", &me, r#"{"status":0}"#.into()).await.unwrap());
    let done = j.get("t1").await.unwrap().unwrap();
    assert_eq!((done.state, done.attempts), (State::Done, 1));
    assert_eq!(done.result.map(|r| r.get().to_owned()).as_deref(), Some(r#"{"status":0}"#));
    assert!(j.get("nope").await.unwrap().is_none());
    let counts = j.counts().await.unwrap();
    assert_eq!((counts.queued, counts.running, counts.done), (0, 0, 1));
    assert_eq!(j.prune(Duration::ZERO).await.unwrap(), 1);
}

async fn a_dead_daemons_tasks_are_requeued_or_failed_by_their_plugins_word(fresh: Fresh) {
    let j = fresh.open();
    let old = member(&j, "d").await;
    for (id, idempotent) in [("claimed", None), ("rerun", Some(true)), ("failed", Some(false))] {
        j.accept(id, "INSTALL", r#"["automator:a"]"#, Some(&old), raw("{}")).await.unwrap();
        if let Some(idempotent) = idempotent {
            assert_eq!(j.start(id, &old, "shell", idempotent).await.unwrap(), Some(1));
        }
    }
    // The next start of the daemon, under the same name: the old one is dead at once.
    let new = old.renewed();
    j.join(&new, "[]", r#"["automator:a"]"#, LEASE).await.unwrap();
    let mut fates: Vec<_> = j.take_over(&new).await.unwrap().into_iter().map(|o| (o.task_id, o.fate)).collect();
    fates.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(fates.len(), 3, "{fates:?}");
    assert_eq!(fates[0].1, Fate::Requeued, "never sent");
    assert!(
        matches!(&fates[1].1, Fate::Failed(why) if why.contains("INSTALL failed was running on shell")),
        "{fates:?}"
    );
    assert_eq!(fates[2].1, Fate::Requeued, "idempotent");
    assert!(j.take_over(&new).await.unwrap().is_empty(), "taken once");
    // The old daemon's late result is not recorded over the new record.
    assert!(!j.finish_owned("failed", &old, r#"{"status":0}"#.into()).await.unwrap());
    let failed = j.get("failed").await.unwrap().unwrap();
    assert_eq!(failed.state, State::Done);
    assert!(failed.result.unwrap().get().contains("not run again"));
    // Nor can it start what it no longer owns.
    assert_eq!(j.start("claimed", &old, "shell", false).await.unwrap(), None);
    let mut claimed: Vec<String> =
        j.claim(&new, r#"["automator:a"]"#, 10).await.unwrap().into_iter().map(|c| c.0).collect();
    claimed.sort();
    assert_eq!(claimed, ["claimed", "rerun"]);
    assert_eq!(j.start("rerun", &new, "shell", true).await.unwrap(), Some(2), "its second attempt");
}

async fn an_operation_whose_caller_stopped_waiting_still_commits(fresh: Fresh) {
    use futures_util::FutureExt;
    let j = fresh.open();
    let me = member(&j, "d").await;
    // Polled once (which queues it), then dropped before its answer.
    let _ = j.accept("t", "CREATE", "[]", Some(&me), raw("{}")).now_or_never();
    // Operations are applied in the order they were queued: this one sees it.
    assert_eq!(j.get("t").await.unwrap().map(|r| r.state), Some(State::Queued));
    drop(j);
    assert_eq!(fresh.open().counts().await.unwrap().queued, 1, "committed");
}

async fn a_failed_operation_is_undone_alone_and_its_batch_commits(fresh: Fresh) {
    let j = fresh.open();
    let me = member(&j, "d").await;
    // Many operations at once share batches; the failing ones write a row first.
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let (j, me) = (j.clone(), me.clone());
            tokio::spawn(async move {
                if i % 10 == 0 {
                    j.run(move |c| {
                        c.exec(
                            "INSERT INTO tasks (task_id, task_name, state, submitted_at) VALUES ($1, 'START', 'queued', 0)",
                            &[format!("half-{i}").as_str().into()],
                        )?;
                        c.exec("INSERT INTO no_such_table VALUES (1)", &[])
                    })
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
                } else {
                    j.accept(&format!("t{i}"), "START", "[]", Some(&me), raw("{}")).await.map(drop).map_err(|e| e.to_string())
                }
            })
        })
        .collect();
    let mut failed = 0;
    for h in handles {
        failed += usize::from(h.await.unwrap().is_err());
    }
    assert_eq!(failed, 20);
    let counts = j.counts().await.unwrap();
    assert_eq!(counts.queued, 180, "the others committed; the failed ones left nothing");
}

async fn two_daemons_never_claim_one_task(fresh: Fresh) {
    let j = fresh.open();
    let submitter = member(&j, "s").await;
    for i in 0..300 {
        j.accept(&format!("t{i}"), "START", r#"["automator:a"]"#, None, raw("{}")).await.unwrap();
    }
    // Only PostgreSQL is shared; on SQLite two handles on one file stand in for it.
    let (a, b) = (fresh.open(), fresh.open());
    let (ma, mb) = (member(&a, "a").await, member(&b, "b").await);
    let claimer = |j: Journal, me: Member| {
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = j.claim(&me, r#"["automator:a", "automator:*"]"#, 7).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|g| g.0));
            }
        })
    };
    let (ta, tb) = (claimer(a, ma), claimer(b, mb));
    let (mut all, b) = (ta.await.unwrap(), tb.await.unwrap());
    all.extend(b);
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!((before, all.len()), (300, 300), "each task claimed exactly once");
    // A daemon without the plugin claims nothing on PostgreSQL.
    j.accept("other", "START", r#"["automator:chef"]"#, None, raw("{}")).await.unwrap();
    let got = j.claim(&submitter, r#"["automator:a"]"#, 10).await.unwrap();
    assert_eq!(got.len(), usize::from(j.dialect() == super::sql::Dialect::Sqlite));
}

async fn a_wait_ends_when_the_task_is_done(fresh: Fresh) {
    let j = fresh.open();
    let me = member(&j, "d").await;
    j.accept("t", "START", "[]", Some(&me), raw("{}")).await.unwrap();
    let waiter = {
        let j = fresh.open();
        tokio::spawn(async move { j.wait_done("t").await })
    };
    j.start("t", &me, "p", true).await.unwrap();
    j.finish_owned("t", &me, r#"{"status":0}"#.into()).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(60), waiter).await.unwrap().unwrap().unwrap().unwrap();
    assert_eq!(done.state, State::Done);
    assert!(j.wait_done("unknown").await.unwrap().is_none());
}
