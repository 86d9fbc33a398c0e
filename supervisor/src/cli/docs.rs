//! `loom-provisioner completions SHELL` and `loom-provisioner man --out DIR`: shell
//! completions and man pages made from the command line's own definition, so they never
//! fall behind it. The Debian package installs both; `cargo install` users run them once.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::cli::exit::Exit;

/// `completions` arguments.
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// `man` arguments.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// The folder to write the pages to (created if missing): loom-provisioner.1 and one
    /// page per subcommand, loom-provisioner-serve.1, loom-provisioner-cluster-up.1, ...
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Writes the completion script for `args.shell` to stdout.
pub fn completions(args: &CompletionsArgs) -> Exit {
    let mut command = super::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "loom-provisioner", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Ok(()) => Exit::Success,
        Err(e) => {
            eprintln!("loom-provisioner: cannot write the completions to stdout: {e}");
            Exit::Failed
        }
    }
}

/// Writes the man pages into `args.out`, printing each file's path.
pub fn man(args: &ManArgs) -> Exit {
    match write_pages(&args.out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            Exit::Success
        }
        Err(e) => {
            eprintln!("loom-provisioner: {e}");
            Exit::Failed
        }
    }
}

/// Every page, the top-level command's and each (nested) subcommand's, in `out`; their
/// paths. Errors name the file or folder.
fn write_pages(out: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    // Built, so that subcommands carry their full names (loom-provisioner-cluster-up), and
    // without clap's `help` subcommand, which has nothing to say in a man page.
    let mut command = super::Cli::command().disable_help_subcommand(true);
    command.build();
    let mut files = Vec::new();
    let mut stack = vec![command];
    while let Some(command) = stack.pop() {
        stack.extend(command.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
        let man = clap_mangen::Man::new(command);
        let path = out.join(man.get_filename());
        let mut page = Vec::new();
        man.render(&mut page).map_err(|e| format!("cannot render {}: {e}", path.display()))?;
        std::fs::write(&path, page).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        files.push(path);
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pages(dir.path()).unwrap();
        let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for name in ["loom-provisioner.1", "loom-provisioner-serve.1", "loom-provisioner-cluster-up.1"] {
            assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("-help")), "no page for clap's help: {names:?}");
        let top = std::fs::read_to_string(dir.path().join("loom-provisioner.1")).unwrap();
        assert!(top.contains(".TH loom-provisioner 1"), "{top}");
        assert!(top.contains("serve") && top.contains("cluster"), "{top}");
    }

    #[test]
    fn a_folder_that_cannot_be_made_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let e = write_pages(&file.join("man")).unwrap_err();
        assert!(e.contains("a-file/man"), "{e}");
    }
}
