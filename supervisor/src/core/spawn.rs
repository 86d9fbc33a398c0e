//! Starting a plugin process so that it can always be cleaned up.
//!
//! - Each plugin joins its cgroup ([`crate::core::cgroup`]) before exec, where the
//!   supervisor can make one, so everything it starts can be killed with it.
//! - Each plugin leads its own process group, so one signal reaches everything it started
//!   that stayed in the group (all that is left where there are no cgroups).
//! - Each plugin gets `PR_SET_PDEATHSIG = SIGKILL`, so it dies with the supervisor even when
//!   the supervisor is killed with SIGKILL. Linux sends that signal when the *thread* that
//!   forked the child exits, not the process; a tokio worker or blocking-pool thread can
//!   exit while the plugin should live on. So every plugin is forked by one dedicated
//!   thread that lives as long as the process.
//! - The environment is cleared to a small allowlist plus the manifest's `env`.
//! - When the supervisor is root, each plugin runs as its user and group
//!   ([`crate::core::runas`]): its group set and its supplementary groups cleared, then its user,
//!   in the child before exec. Every plugin gets `PR_SET_NO_NEW_PRIVS`, so no set-user-ID
//!   program it starts can raise its privileges again.
//! - Its manifest's `limits.openFiles` and `limits.coreSize` become resource limits.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::mpsc as std_mpsc;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::core::manifest::{Limits, PluginSpec};
use crate::core::runas::Identity;

/// Variables passed through from the supervisor's environment; everything else is dropped.
pub const ENV_ALLOWLIST: &[&str] =
    &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "RUST_BACKTRACE"];

/// Builds the command for one plugin process: piped stdio, cleared environment, the
/// plugin's folder as working directory; run as `identity` when given, with `HOME`,
/// `USER` and `LOGNAME` set to that user's (the manifest's `env` still comes last).
pub fn command(spec: &PluginSpec, identity: Option<&Identity>) -> Command {
    let mut cmd = Command::new(&spec.executable);
    cmd.args(&spec.args).current_dir(&spec.dir).env_clear().envs(allowed_env());
    if let Some(id) = identity {
        // std calls setgid, then setgroups(0, NULL) (clearing the supplementary groups),
        // then setuid, in the child, before the chdir and before the pre_exec closure.
        cmd.uid(id.uid).gid(id.gid).env("HOME", &id.home).env("USER", &id.user).env("LOGNAME", &id.user);
    }
    cmd.env(loom_protocol::ENV_PROTOCOL, "1")
        .env(loom_protocol::ENV_PLUGIN_NAME, &spec.name)
        .envs(&spec.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn allowed_env() -> Vec<(OsString, OsString)> {
    ENV_ALLOWLIST.iter().filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v))).collect()
}

/// What a child does to itself between fork and exec, besides what every plugin gets.
#[derive(Debug, Default)]
pub struct ChildSetup {
    /// Open `cgroup.procs` files it writes itself into ([`crate::core::cgroup::Joining`]);
    /// the caller keeps them open until [`spawn`] returns.
    pub cgroup_procs: Vec<RawFd>,
    /// `RLIMIT_NOFILE`, soft and hard; else the limit plugins start with
    /// ([`keep_open_files_limit_for_plugins`]).
    pub open_files: Option<u64>,
    /// `RLIMIT_CORE`, soft and hard.
    pub core_size: Option<u64>,
}

impl ChildSetup {
    /// The resource limits of `limits`, checked ([`check_rlimits`]).
    ///
    /// # Errors
    /// A limit the supervisor may not give: the text names the manifest key.
    pub fn with_rlimits(limits: &Limits) -> io::Result<ChildSetup> {
        check_rlimits(limits)?;
        Ok(ChildSetup { cgroup_procs: Vec::new(), open_files: limits.open_files, core_size: limits.core_size })
    }
}

/// Refuses, before the fork, resource limits the child could not set, so the error says
/// which key and why (from the child, only an errno would come back): above the
/// supervisor's own hard limit without root, or open files above the kernel's
/// `fs.nr_open`.
fn check_rlimits(limits: &Limits) -> io::Result<()> {
    use nix::sys::resource::{Resource, getrlimit};
    let root = nix::unistd::geteuid().is_root();
    for (key, resource, wanted) in [
        ("openFiles", Resource::RLIMIT_NOFILE, limits.open_files),
        ("coreSize", Resource::RLIMIT_CORE, limits.core_size),
    ] {
        let Some(wanted) = wanted else { continue };
        let (_, hard) = getrlimit(resource).map_err(io::Error::from)?;
        if !root && wanted > hard {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("limits.{key} is above the supervisor's own hard limit ({hard}), which only root may raise"),
            ));
        }
    }
    if let Some(wanted) = limits.open_files {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|t| t.trim().parse::<u64>().ok());
        if let Some(nr_open) = nr_open.filter(|n| wanted > *n) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("limits.openFiles is above the kernel's fs.nr_open ({nr_open})"),
            ));
        }
    }
    Ok(())
}

/// Spawns `cmd` as the leader of a new process group with the parent-death signal set,
/// in its cgroups and with its resource limits (`setup`), on the long-lived spawner
/// thread.
///
/// # Errors
/// The spawn error (executable missing, not executable, a cgroup or limit the child
/// could not take: an errno only), or an error if the spawner thread is gone (it only
/// ends with the process).
///
/// # Cancellation
/// If the returned future is dropped after the spawn happened, the child is killed by
/// `kill_on_drop` and reaped by tokio.
///
/// `log_fd`, when given, becomes the child's fd [`loom_protocol::LOG_FD`] (the log
/// channel); the caller keeps it open until this returns and then closes its copy.
pub async fn spawn(mut cmd: Command, log_fd: Option<BorrowedFd<'_>>, setup: ChildSetup) -> io::Result<Child> {
    let supervisor_pid = std::process::id();
    let open_files = setup.open_files.map(|n| (n, n)).or_else(|| PLUGIN_OPEN_FILES.get().copied());
    let ChildSetup { cgroup_procs, core_size, .. } = setup;
    cmd.process_group(0).kill_on_drop(true);
    let log_fd = log_fd.map(|fd| fd.as_raw_fd());
    if log_fd.is_some() {
        cmd.env(loom_protocol::ENV_LOG_FD, loom_protocol::LOG_FD.to_string());
    }
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (prctl, getppid, write, setrlimit, dup2, fcntl); it
    // does not allocate (its errors come from errno: `io::Error::from(Errno)` and
    // `from_raw_os_error` hold a number, not a box; `cgroup_procs` was built before the
    // fork and is only read).
    unsafe {
        cmd.pre_exec(move || {
            // The kernel clears the parent-death signal when the credentials change, and
            // std changes them (Command::uid/gid) before this closure: set it here, after.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            nix::sys::prctl::set_no_new_privs().map_err(io::Error::from)?;
            // The supervisor may have died between fork and prctl: then nobody would kill us.
            // (ESRCH rather than a message: building an error with text allocates, and
            // allocating is not async-signal-safe here; nobody is left to read it anyway.)
            if nix::unistd::getppid().as_raw() as u32 != supervisor_pid {
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            // Into the cgroups before exec: nothing the plugin runs is ever outside them.
            // "0" is the writer itself; the kernel checks the opener's rights.
            for &fd in &cgroup_procs {
                if nix::libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some((soft, hard)) = open_files {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
                    .map_err(io::Error::from)?;
            }
            if let Some(bytes) = core_size {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, bytes, bytes)
                    .map_err(io::Error::from)?;
            }
            if let Some(fd) = log_fd {
                // dup2 onto the same number would keep close-on-exec set: clear it instead.
                let rc = if fd == loom_protocol::LOG_FD {
                    nix::libc::fcntl(fd, nix::libc::F_SETFD, 0)
                } else {
                    nix::libc::dup2(fd, loom_protocol::LOG_FD)
                };
                if rc < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (reply, answer) = oneshot::channel();
    let request = SpawnRequest { cmd, runtime: tokio::runtime::Handle::current(), reply };
    spawner().send(request).map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answer.await.map_err(|_| io::Error::other("the spawner thread dropped the request"))?
}

/// The open-files limits (soft, hard) the supervisor started with, given back to its
/// plugins: the daemon raises its own soft limit for its connections, but a plugin that
/// uses `select()` breaks on descriptors over 1024 (why systemd keeps the soft limit low).
static PLUGIN_OPEN_FILES: OnceLock<(u64, u64)> = OnceLock::new();

/// Records the open-files limits plugins start with; the first call wins. Call before
/// raising the supervisor's own.
pub fn keep_open_files_limit_for_plugins(soft: u64, hard: u64) {
    let _ = PLUGIN_OPEN_FILES.set((soft, hard));
}

struct SpawnRequest {
    cmd: Command,
    runtime: tokio::runtime::Handle,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// The sender half lives in a static, so the thread's loop never ends before the process.
fn spawner() -> &'static std_mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<std_mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = std_mpsc::channel::<SpawnRequest>();
        let thread = std::thread::Builder::new().name("loom-spawner".into()).spawn(move || {
            for mut req in rx {
                // Register the child's pipes and exit watcher with the caller's runtime.
                let _guard = req.runtime.enter();
                let result = req.cmd.spawn();
                // If the caller went away, dropping the child kills it (kill_on_drop).
                let _ = req.reply.send(result);
            }
        });
        if let Err(e) = thread {
            // Without the thread every spawn fails with "the spawner thread is gone".
            tracing::error!("cannot start the plugin spawner thread: {e}");
        }
        tx
    })
}

/// A started child's pid and its three pipes.
pub struct Pipes {
    /// Its process id.
    pub pid: u32,
    /// Where the messages to it go.
    pub stdin: tokio::process::ChildStdin,
    /// Where its messages come from.
    pub stdout: tokio::process::ChildStdout,
    /// Its free text.
    pub stderr: tokio::process::ChildStderr,
}

/// Takes the pid and pipes of a child [`spawn`]ed from a [`command`].
///
/// # Errors
/// When it exited before its pid was read, or its pipes were taken already.
pub fn take_pipes(child: &mut Child) -> io::Result<Pipes> {
    let pid = child.id().ok_or_else(|| io::Error::other("the plugin exited before its pid was read"))?;
    let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(io::Error::other("the plugin's pipes were not set up"));
    };
    Ok(Pipes { pid, stdin, stdout, stderr })
}

/// Sends `signal` to the process group led by `pid`. A group that no longer exists is
/// not an error.
pub fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid, "cannot send {signal} to process group {pid}: {e}"),
    }
}
