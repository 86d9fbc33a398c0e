//! `loom-provisioner journal`: the journal itself, outside a daemon. `migrate` copies a
//! daemon's SQLite journal into a fleet's PostgreSQL ([`crate::journal::copy`]).

use std::path::PathBuf;

use crate::cli::exit::Exit;
use crate::journal::{Journal, Settings};

/// `journal` subcommands.
#[derive(clap::Args, Debug)]
pub struct JournalArgs {
    #[command(subcommand)]
    command: JournalCommand,
}

#[derive(clap::Subcommand, Debug)]
enum JournalCommand {
    /// Copy a journal (tasks, results, clusters) into an empty PostgreSQL journal, to move
    /// from one daemon to a fleet. Stop the daemon that uses the source first.
    Migrate(MigrateArgs),
}

#[derive(clap::Args, Debug)]
struct MigrateArgs {
    /// The source: `sqlite://DATA_DIR` (the daemon's data_dir, or its journal.sqlite3).
    #[arg(long, value_name = "URL")]
    from: String,
    /// The target: a PostgreSQL URL, as `[journal] url` takes it.
    #[arg(long, value_name = "URL")]
    to: String,
    /// A file holding the target's password, when its URL has none.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
}

/// Runs `journal ...`.
pub async fn main(args: JournalArgs) -> Exit {
    match args.command {
        JournalCommand::Migrate(m) => match migrate(m).await {
            Ok(report) => {
                println!("{report}");
                Exit::Success
            }
            Err(e) => {
                eprintln!("loom-provisioner: journal migrate: {e}");
                Exit::Failed
            }
        },
    }
}

async fn migrate(args: MigrateArgs) -> Result<String, String> {
    let Some(path) = args.from.strip_prefix("sqlite://") else {
        return Err("--from must be sqlite://DATA_DIR (the data_dir of the daemon whose journal is copied)".into());
    };
    let mut dir = PathBuf::from(path);
    if dir.file_name().is_some_and(|f| f == "journal.sqlite3") {
        dir.pop();
    }
    if !dir.join("journal.sqlite3").is_file() {
        return Err(format!("no journal in {}: --from names the data_dir that holds journal.sqlite3", dir.display()));
    }
    if !(args.to.starts_with("postgres://") || args.to.starts_with("postgresql://")) {
        return Err("--to must be a PostgreSQL URL (postgres://... or postgresql://...)".into());
    }
    let from = Journal::open(&dir).map_err(|e| e.to_string())?;
    let settings = Settings {
        url: Some(args.to.clone()),
        password_file: args.password_file,
        name: Some("journal-migrate".into()),
        ..Settings::default()
    };
    let to = tokio::task::spawn_blocking(move || Journal::open_with(&settings, std::path::Path::new("/")))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let copied = crate::journal::copy::copy(&from, &to).await.map_err(|e| e.to_string())?;
    let what: Vec<String> = copied.0.iter().map(|(table, n)| format!("{n} {}", table.replace('_', " "))).collect();
    Ok(format!(
        "copied {} from {} to {}; point the daemons' [journal] url at it and start them",
        what.join(", "),
        from.place(),
        to.place()
    ))
}
