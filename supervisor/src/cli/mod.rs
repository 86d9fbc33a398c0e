//! The `loom-provisioner` command line, a thin shell over the layers below: this file
//! parses the arguments, sets up the log and dispatches to the command's module.
//!
//! | | |
//! |---|---|
//! | `run`: tasks through plugins started here, results on stdout | `run.rs`; read as they arrive from a pipe: `stream.rs` |
//! | `plugins`: what the plugins folders hold; whom plugins run as | `plugins.rs` |
//! | `check`: the conformance suite against one plugin | `check.rs` |
//! | `submit`, `status`: the daemon's client | `client.rs` (`submit` reads tasks as `run` does) |
//! | `cluster`: `up`, `down`, `status`, ... | `cluster.rs` |
//! | `serve`: the daemon | `daemon/serve.rs` (socket activation: `daemon/activation.rs`) |
//! | `completions`, `man`: made from this file's definitions | `docs.rs` |
//! | exit codes, the same for every command | `exit.rs` |
//! | SIGINT and SIGTERM while a command runs | `signals.rs` |
//!
//! May use every layer below; nothing uses it.

mod check;
mod client;
mod cluster;
mod docs;
mod events;
mod exit;
mod input;
mod journal;
mod plugins;
mod run;
mod signals;
mod stream;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cli::exit::Exit;
use crate::cli::plugins::PluginsArgs;
use crate::cli::run::{RunArgs, SubmitArgs};
use crate::log::{self, Format};

/// `--version`: the version and the commit it was built from.
const VERSION_AND_COMMIT: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("LOOM_COMMIT"), ")");

#[derive(Parser, Debug)]
#[command(
    name = "loom-provisioner",
    version = VERSION_AND_COMMIT,
    about = "Runs Loom provisioner plugins out of process and sends them tasks"
)]
struct Cli {
    /// Log filter: a level (trace, debug, info, warn, error), optionally with per-target
    /// levels, e.g. "warn,loom::plugin=debug" [default: info, or the daemon's log.level].
    #[arg(long, global = true, env = "LOOM_LOG")]
    log_level: Option<String>,
    /// Log format on stderr [default: human, or the daemon's log.format].
    #[arg(long, global = true, value_enum)]
    log_format: Option<Format>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run tasks: one JSON document, or one JSON object per line; one result line each.
    Run(RunArgs),
    /// List the registered plugins and why any cannot run.
    Plugins(PluginsArgs),
    /// Run the protocol conformance suite against one plugin.
    Check(check::CheckArgs),
    /// Run the daemon: the HTTP task API, a durable journal, systemd notifications.
    ///
    /// Socket-activated by systemd (loom-provisioner.socket: LISTEN_FDS and LISTEN_PID
    /// set, the socket as fd 3), it serves on that TCP socket instead of the
    /// configuration's `listen`.
    Serve(ServeArgs),
    /// Send tasks to a running daemon (one JSON document, or one object per line).
    Submit(SubmitArgs),
    /// Show a running daemon's plugins, or one task.
    Status(StatusArgs),
    /// Bring clusters up and down from a spec: machines, then services, in order.
    Cluster(crate::cli::cluster::ClusterArgs),
    /// The journal outside a daemon: copy one to PostgreSQL for a fleet (`migrate`).
    Journal(crate::cli::journal::JournalArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions(docs::CompletionsArgs),
    /// Write the man pages (this command's and one per subcommand) into a folder.
    Man(docs::ManArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// The configuration file.
    #[arg(long, value_name = "FILE", default_value = "/etc/loom-provisioner/config.toml")]
    config: PathBuf,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// A task id: show that task instead of the plugins.
    #[arg(value_name = "TASK_ID")]
    task: Option<String>,
    /// Print the daemon's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: crate::cli::client::ApiArgs,
}

/// Parses the command line, runs the command and returns its exit code ([`Exit`]).
pub fn main() -> ExitCode {
    dispatch().into()
}

fn dispatch() -> Exit {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { Exit::Usage } else { Exit::Success };
        }
    };
    // A socket systemd passed (loom-provisioner.socket) is taken before anything else:
    // no other thread runs yet, so its variables can be removed from the environment.
    let activated = match &cli.command {
        // SAFETY: single-threaded here (no runtime, no log thread yet), and nothing has
        // opened a file that could be fd 3.
        Command::Serve(_) => match unsafe { crate::daemon::activation::take_from_env() } {
            Ok(a) => a,
            Err(e) => {
                eprintln!("loom-provisioner: {e}");
                return Exit::Usage;
            }
        },
        _ => None,
    };
    // The daemon's configuration is read first: it may set the log level and format.
    let config = match &cli.command {
        Command::Serve(args) => match crate::daemon::config::load(&args.config) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("loom-provisioner: {e}");
                return Exit::Usage;
            }
        },
        _ => None,
    };
    let level = cli
        .log_level
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.log_level.clone()))
        // A cluster operation shows its progress; the log is for what goes wrong.
        .unwrap_or_else(|| if matches!(cli.command, Command::Cluster(_)) { "warn".into() } else { "info".into() });
    let format = cli.log_format.or_else(|| config.as_ref().and_then(|c| c.log_format)).unwrap_or_default();
    let filter = match log::parse_filter(&level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("loom-provisioner: {e}");
            return Exit::Usage;
        }
    };
    let plugin_level = log::plugin_level(&filter);
    log::init(format, filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loom-provisioner: cannot start the async runtime: {e}");
            return Exit::Failed;
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(args, plugin_level).await,
            Command::Plugins(args) => plugins::plugins(&args),
            Command::Check(args) => check::main(args, plugin_level).await,
            Command::Serve(_) => match config {
                Some(config) => match crate::daemon::serve::serve(config, activated, plugin_level).await {
                    Ok(()) => Exit::Success,
                    Err(e) => {
                        eprintln!("loom-provisioner: {e}");
                        if e.is_start_up() { Exit::Usage } else { Exit::Failed }
                    }
                },
                None => Exit::Usage,
            },
            Command::Submit(args) => run::submit(args).await,
            Command::Cluster(args) => crate::cli::cluster::main(args, plugin_level).await,
            Command::Journal(args) => crate::cli::journal::main(args).await,
            Command::Completions(args) => docs::completions(&args),
            Command::Man(args) => docs::man(&args),
            Command::Status(args) => match crate::cli::client::Api::resolve(&args.api) {
                Ok(api) => crate::cli::client::status(&api, args.task.as_deref(), args.json).await,
                Err(e) => {
                    eprintln!("loom-provisioner: {e}");
                    Exit::Usage
                }
            },
        }
    });
    // Plugin log lines still queued for the log thread are written before exit.
    crate::log::pump::flush(std::time::Duration::from_secs(5));
    code
}
