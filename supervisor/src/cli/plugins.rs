//! `plugins`: what the plugins folders hold, and why any plugin cannot run; and whom
//! plugins run as ([`RunAsArgs`]) for every command that starts them from folders.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::cli::exit::Exit;
use crate::core::manifest::Defaults;
use crate::core::registry::{Availability, Registry, Severity};
use crate::core::runas::{Origin, RunAs};

/// Whom plugins run as, for the commands that start them from plugins folders (the
/// daemon reads `[defaults] user` and `group` from its configuration instead).
#[derive(Args, Debug, Clone, Default)]
pub struct RunAsArgs {
    /// When run as root: the user to run plugins as whose manifest names none (never
    /// root: only a plugin's own manifest can ask for that).
    #[arg(long, env = "LOOM_PLUGIN_USER", value_name = "USER")]
    pub plugin_user: Option<String>,
    /// When run as root: their group [default: the user's own].
    #[arg(long, env = "LOOM_PLUGIN_GROUP", value_name = "GROUP")]
    pub plugin_group: Option<String>,
}

impl RunAsArgs {
    /// The defaults these arguments give manifests.
    pub fn defaults(&self) -> Defaults {
        let run_as = RunAs::defaults(self.plugin_user.clone(), self.plugin_group.clone(), Origin::CommandLine);
        Defaults { run_as, ..Defaults::default() }
    }
}

#[derive(clap::Args, Debug)]
pub struct PluginsArgs {
    /// A folder with providers/ and automators/ (repeatable).
    #[arg(long = "plugins-dir", required = true, value_name = "DIR")]
    pub(crate) plugins_dirs: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) run_as: RunAsArgs,
}

/// Loads the registry, logging each problem; `None` (after saying why) when a folder
/// cannot be read or `run_as` names a user that cannot be used.
pub fn load_registry(dirs: &[PathBuf], run_as: &RunAsArgs) -> Option<Registry> {
    let defaults = run_as.defaults();
    if let Err(e) = crate::core::runas::check_defaults(&defaults.run_as) {
        eprintln!("loom-provisioner: {e}");
        return None;
    }
    match Registry::load_logged(dirs, &defaults) {
        Ok(reg) => Some(reg),
        Err(e) => {
            eprintln!("loom-provisioner: {e}");
            None
        }
    }
}

pub fn plugins(args: &PluginsArgs) -> Exit {
    let Some(reg) = load_registry(&args.plugins_dirs, &args.run_as) else {
        return Exit::Usage;
    };
    let text = if args.json { plugins_json(&reg) } else { plugins_table(&reg) };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    Exit::Success
}

fn plugins_table(reg: &Registry) -> String {
    let mut s = String::new();
    if reg.plugins.is_empty() {
        s.push_str("no plugins registered\n");
    }
    for p in &reg.plugins {
        match &p.availability {
            Availability::Runnable(spec) => {
                let what = match &spec.ruby_class {
                    Some(class) => format!("Ruby class {class}, through loom-ruby-host"),
                    None => spec.executable.display().to_string(),
                };
                // Not root, every plugin runs as the supervisor's own user, whatever is configured.
                let user = (nix::unistd::geteuid().is_root().then(|| spec.run_as.describe()).flatten())
                    .map(|u| format!(", as {u}"))
                    .unwrap_or_default();
                s.push_str(&format!(
                    "{:<10} {:<24} runnable      {what} (instances {}, maxConcurrency {}{user})\n             manifest {}\n",
                    p.kind.as_str(),
                    p.name,
                    spec.instances,
                    spec.max_concurrency,
                    p.manifest.display()
                ));
            }
            Availability::NotRunnable(why) => s.push_str(&format!(
                "{:<10} {:<24} not runnable  {why}\n             manifest {}\n",
                p.kind.as_str(),
                p.name,
                p.manifest.display()
            )),
        }
    }
    if !reg.problems.is_empty() {
        s.push_str("\nproblems:\n");
        for p in &reg.problems {
            let sev = if p.severity == Severity::Error { "error" } else { "warning" };
            s.push_str(&format!("  {sev}: {p}\n"));
        }
    }
    s
}

fn plugins_json(reg: &Registry) -> String {
    use serde_json::json;
    let plugins: Vec<_> = reg
        .plugins
        .iter()
        .map(|p| match &p.availability {
            Availability::Runnable(spec) => json!({
                "name": p.name, "kind": p.kind, "manifest": p.manifest, "runnable": true,
                "executable": spec.executable, "args": spec.args, "instances": spec.instances,
                "maxConcurrency": spec.max_concurrency, "rubyClass": spec.ruby_class,
                "user": spec.run_as.user.as_ref().map(|u| &u.name),
                "group": spec.run_as.group.as_ref().map(|g| &g.name),
            }),
            Availability::NotRunnable(why) => json!({
                "name": p.name, "kind": p.kind, "manifest": p.manifest, "runnable": false, "reason": why,
            }),
        })
        .collect();
    let problems: Vec<_> = reg
        .problems
        .iter()
        .map(|p| {
            json!({
                "file": p.file, "plugin": p.plugin, "key": p.key, "message": p.message,
                "severity": if p.severity == Severity::Error { "error" } else { "warning" },
            })
        })
        .collect();
    format!("{}\n", json!({ "plugins": plugins, "problems": problems }))
}
