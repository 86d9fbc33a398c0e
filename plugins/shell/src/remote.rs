//! The commands the automator runs on the machine, kept in one place.
//!
//! Remote layout, under the work folder:
//! - `scripts/`: the uploaded scripts folder;
//! - `tasks/<taskId>.json`: each action's task, readable by the login user only;
//! - `run/<taskId>.pid`: the process group of a running script, to kill it on cancel.
//!
//! A relative work folder is under the login user's home; every path handed to the remote
//! shell is made absolute there (`"$HOME"/...`), so changing directory never breaks one.

use loom_plugin_ssh::shell_quote;

/// Exit status of [`Remote::action_command`] when the action could not start.
pub const SETUP_FAILED: u32 = 125;
/// First words of the stderr line saying the task file could not be written.
pub const UPLOAD_FAILED: &str = "loom-shell: cannot store the task file";
/// First words of the stderr line saying the script is missing.
pub const NO_SCRIPT: &str = "loom-shell: no such script";

pub struct Remote {
    /// The work folder, absolute or relative to the login user's home.
    pub work_dir: String,
    /// Run scripts (and the kill on cancel) through `sudo -E -n`.
    pub sudo: bool,
}

impl Remote {
    /// `sub` under the work folder, as one absolute shell word.
    fn path(&self, sub: &str) -> String {
        let rel = join(&self.work_dir, sub);
        if rel.starts_with('/') { shell_quote(&rel) } else { format!("\"$HOME\"/{}", shell_quote(&rel)) }
    }

    /// `sub` under the work folder, for people.
    pub fn display(&self, sub: &str) -> String {
        let rel = join(&self.work_dir, sub);
        if rel.starts_with('/') { rel } else { format!("~/{rel}") }
    }

    /// Creates the folders and, with `upload`, replaces `scripts/` with the tar archive on
    /// stdin. `flock` keeps concurrent BOOTSTRAPs of one host from interleaving.
    pub fn bootstrap_command(&self, upload: bool) -> String {
        let work = self.path("");
        let prepare = format!(
            "umask 022 && mkdir -p {work} {run} && mkdir -p -m 700 {tasks}",
            run = self.path("run"),
            tasks = self.path("tasks")
        );
        if !upload {
            return prepare;
        }
        format!(
            "{prepare} && flock {lock} sh -c 'rm -rf \"$1/scripts\" && tar -xf - -C \"$1\"' sh {work}",
            lock = self.path(".bootstrap.lock")
        )
    }

    fn task_file(&self, task_id: &str) -> String {
        self.path(&format!("tasks/{}.json", file_name(task_id)))
    }

    fn pid_file(&self, task_id: &str) -> String {
        self.path(&format!("run/{}.pid", file_name(task_id)))
    }

    /// The script as a shell word: absolute scripts stay; others are in `scripts/`.
    pub fn script_word(&self, script: &str) -> String {
        if script.starts_with('/') {
            shell_quote(script)
        } else {
            self.path(&format!("scripts/{}", script.trim_start_matches("./")))
        }
    }

    /// The script's path, for people.
    pub fn script_display(&self, script: &str) -> String {
        if script.starts_with('/') {
            script.to_owned()
        } else {
            self.display(&format!("scripts/{}", script.trim_start_matches("./")))
        }
    }

    /// Runs the script from the scripts folder, recording the shell's process group
    /// (sshd makes it a session leader) so that a cancel can kill everything it started.
    pub fn run_command(&self, task_id: &str, script: &str, args: &str) -> String {
        let sudo = if self.sudo { "sudo -E -n " } else { "" };
        let word = self.script_word(script);
        let run = format!("if [ -x {word} ]; then {sudo}{word} {args}; else {sudo}sh {word} {args}; fi");
        format!(
            "echo $$ > {pid}; cd {scripts} 2>/dev/null || cd {work}; export LOOM_TASK_JSON={task} LOOM_TASK_ID={id}; {run}; rc=$?; rm -f {pid}; exit $rc",
            pid = self.pid_file(task_id),
            scripts = self.path("scripts"),
            work = self.path(""),
            task = self.task_file(task_id),
            id = shell_quote(task_id),
        )
    }

    /// The whole action in one command (each command costs the remote login shell's
    /// start-up): stores stdin as `tasks/<taskId>.json` (readable by the login user only),
    /// checks that the script exists, then runs it as [`Remote::run_command`] does. The
    /// first two fail with [`SETUP_FAILED`] and a line starting with [`UPLOAD_FAILED`] or
    /// [`NO_SCRIPT`] on stderr.
    pub fn action_command(&self, task_id: &str, script: &str, args: &str) -> String {
        format!(
            "(umask 077 && mkdir -p {tasks} && cat > {task}) || {{ echo '{UPLOAD_FAILED}' >&2; exit {SETUP_FAILED}; }}; [ -f {word} ] || {{ echo '{NO_SCRIPT}' >&2; exit {SETUP_FAILED}; }}; {run}",
            tasks = self.path("tasks"),
            task = self.task_file(task_id),
            word = self.script_word(script),
            run = self.run_command(task_id, script, args),
        )
    }

    /// Kills the process group of a running script: TERM, a second's grace, KILL.
    pub fn kill_command(&self, task_id: &str) -> String {
        let sudo = if self.sudo { "sudo -n " } else { "" };
        let pid = self.pid_file(task_id);
        format!(
            "p=$(cat {pid} 2>/dev/null) && [ -n \"$p\" ] && {{ {sudo}kill -TERM -- -$p; sleep 1; {sudo}kill -KILL -- -$p; rm -f {pid}; }} 2>/dev/null; true"
        )
    }
}

fn join(dir: &str, sub: &str) -> String {
    let dir = dir.trim_end_matches('/');
    if sub.is_empty() { dir.to_owned() } else { format!("{dir}/{sub}") }
}

/// A task id made safe for a file name.
fn file_name(task_id: &str) -> String {
    task_id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_commands() {
        let r = Remote { work_dir: "/var/cache/loom".into(), sudo: true };
        assert_eq!(r.script_word("install.sh"), "/var/cache/loom/scripts/install.sh");
        assert_eq!(r.script_word("/opt/x.sh"), "/opt/x.sh");
        let cmd = r.run_command("t/1 x", "a.sh", "'8080'");
        assert!(cmd.contains("sudo -E -n /var/cache/loom/scripts/a.sh '8080'"), "{cmd}");
        assert!(cmd.contains("run/t_1_x.pid"), "{cmd}");
        assert!(r.kill_command("t").contains("sudo -n kill -TERM"));
        let home = Remote { work_dir: ".cache/loom".into(), sudo: false };
        assert_eq!(home.script_word("a.sh"), "\"$HOME\"/.cache/loom/scripts/a.sh");
        assert_eq!(home.script_display("a.sh"), "~/.cache/loom/scripts/a.sh");
        assert!(!home.run_command("t", "a", "").contains("sudo"));
        assert!(home.run_command("t", "a", "").contains("LOOM_TASK_JSON=\"$HOME\"/.cache/loom/tasks/t.json"));
        assert!(home.bootstrap_command(true).contains("flock"));
        let all = r.action_command("t", "a.sh", "x");
        assert!(
            all.starts_with("(umask 077 && mkdir -p /var/cache/loom/tasks && cat > /var/cache/loom/tasks/t.json)"),
            "{all}"
        );
        assert!(
            all.contains("[ -f /var/cache/loom/scripts/a.sh ] || { echo 'loom-shell: no such script' >&2; exit 125; }"),
            "{all}"
        );
        assert!(all.ends_with(&r.run_command("t", "a.sh", "x")), "{all}");
    }
}
