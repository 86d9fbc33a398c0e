//! The commands the automator runs on the machine, kept in one place.
//!
//! Remote layout, under the work folder:
//! - `scripts/`: the uploaded scripts folder;
//! - `tasks/<taskId>.json`: each action's task, readable by the login user only;
//! - `run/<taskId>.pid`: the process group of a running script, to kill it on cancel.

use loom_plugin_ssh::shell_quote;

pub struct Remote {
    /// The work folder, absolute or relative to the login user's home.
    pub work_dir: String,
    /// Run scripts (and the kill on cancel) through `sudo -E -n`.
    pub sudo: bool,
}

impl Remote {
    fn dir(&self, sub: &str) -> String {
        shell_quote(&format!("{}/{sub}", self.work_dir.trim_end_matches('/')))
    }

    /// Creates the folders and, with `upload`, replaces `scripts/` with the tar archive on
    /// stdin. `flock` keeps concurrent BOOTSTRAPs of one host from interleaving.
    pub fn bootstrap_command(&self, upload: bool) -> String {
        let work = shell_quote(&self.work_dir);
        let prepare = format!(
            "umask 022 && mkdir -p {work} {run} && mkdir -p -m 700 {tasks}",
            run = self.dir("run"),
            tasks = self.dir("tasks")
        );
        if !upload {
            return prepare;
        }
        format!(
            "{prepare} && flock {lock} sh -c 'rm -rf \"$1/scripts\" && tar -xf - -C \"$1\"' sh {work}",
            lock = self.dir(".bootstrap.lock")
        )
    }

    /// Writes stdin to `tasks/<taskId>.json`, readable by the login user only.
    pub fn upload_task_command(&self, task_id: &str) -> String {
        format!(
            "umask 077 && mkdir -p {tasks} && cat > {file}",
            tasks = self.dir("tasks"),
            file = self.task_file(task_id)
        )
    }

    fn task_file(&self, task_id: &str) -> String {
        self.dir(&format!("tasks/{}.json", file_name(task_id)))
    }

    fn pid_file(&self, task_id: &str) -> String {
        self.dir(&format!("run/{}.pid", file_name(task_id)))
    }

    /// Absolute scripts stay; others are relative to `scripts/`.
    pub fn script_path(&self, script: &str) -> String {
        if script.starts_with('/') {
            script.to_owned()
        } else {
            format!("{}/scripts/{}", self.work_dir.trim_end_matches('/'), script.trim_start_matches("./"))
        }
    }

    /// Runs the script from the scripts folder, recording the shell's process group
    /// (sshd makes it a session leader) so that a cancel can kill everything it started.
    pub fn run_command(&self, task_id: &str, script: &str, args: &str) -> String {
        let sudo = if self.sudo { "sudo -E -n " } else { "" };
        let quoted = shell_quote(script);
        let run = format!("if [ -x {quoted} ]; then {sudo}{quoted} {args}; else {sudo}sh {quoted} {args}; fi");
        format!(
            "echo $$ > {pid}; cd {scripts} 2>/dev/null || cd {work}; export LOOM_TASK_JSON={task} LOOM_TASK_ID={id}; {run}; rc=$?; rm -f {pid}; exit $rc",
            pid = self.pid_file(task_id),
            scripts = self.dir("scripts"),
            work = shell_quote(&self.work_dir),
            task = self.task_file(task_id),
            id = shell_quote(task_id),
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
        assert_eq!(r.script_path("install.sh"), "/var/cache/loom/scripts/install.sh");
        assert_eq!(r.script_path("/opt/x.sh"), "/opt/x.sh");
        let cmd = r.run_command("t/1 x", "/var/cache/loom/scripts/a.sh", "'8080'");
        assert!(cmd.contains("sudo -E -n /var/cache/loom/scripts/a.sh '8080'"), "{cmd}");
        assert!(cmd.contains("run/t_1_x.pid"), "{cmd}");
        assert!(r.kill_command("t").contains("sudo -n kill -TERM"));
        let root = Remote { work_dir: ".cache/loom".into(), sudo: false };
        assert!(!root.run_command("t", "a", "").contains("sudo"));
        assert!(root.bootstrap_command(true).contains("flock"));
    }
}
