//! The storm itself: a thread that SIGKILLs one live process of each storm plugin every
//! tick, and watches each killed process until its parent (the daemon) has reaped it.
//!
//! It never signals a process that is not a storm plugin's: it takes pids from the pid
//! files the plugin's processes write as they start, keeps only those carrying the test's
//! marker, and signals through a pidfd checked to hold that very process.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{StormPlugin, random};
use crate::plugins::Plugins;

/// The thread that kills; [`Killer::stop`] ends it.
pub struct Killer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Kills>,
}

/// What the killer did and saw.
#[derive(Debug, Default)]
pub struct Kills {
    /// Per plugin (in the order given): kills that hit a live process (the signal was
    /// delivered to a process that was running, not a zombie).
    pub hits: Vec<u64>,
    /// Per plugin: ticks when none of its processes was alive to kill.
    pub idle_ticks: Vec<u64>,
    /// Every process killed, by pid: how many times a process with that pid was killed
    /// (a busy host can go round the pids during a long storm).
    pub killed: HashMap<u32, usize>,
    /// The longest a killed process stayed unreaped (from the kill until its /proc entry
    /// went), so the longest any of them could have been a zombie.
    pub longest_unreaped: Duration,
    /// Killed processes not reaped when the killer stopped, with the time since the kill.
    pub unreaped: Vec<(u32, Duration)>,
}

impl Killer {
    /// Starts killing the processes of `plugins` (registered in `folder`), one of each
    /// plugin every `every`.
    pub fn start(folder: &Plugins, plugins: &[&StormPlugin], every: Duration) -> Killer {
        let stop = Arc::new(AtomicBool::new(false));
        let targets: Vec<Targets> = plugins.iter().map(|p| Targets::new(p.pids.clone())).collect();
        let marker = format!("{}={}", crate::plugins::MARKER, folder.marker);
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || storm(targets, &marker, every, &flag));
        Killer { stop, thread }
    }

    /// Stops the storm and says what it did.
    pub fn stop(self) -> Kills {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the killer thread")
    }
}

/// The killer thread: a kill per plugin per tick until `stop`.
fn storm(mut targets: Vec<Targets>, marker: &str, every: Duration, stop: &AtomicBool) -> Kills {
    let mut kills = Kills { hits: vec![0; targets.len()], idle_ticks: vec![0; targets.len()], ..Kills::default() };
    let mut dying: Vec<(Process, Instant)> = Vec::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        for (i, t) in targets.iter_mut().enumerate() {
            match t.kill_one(marker) {
                Some(p) => {
                    kills.hits[i] += 1;
                    *kills.killed.entry(p.pid).or_default() += 1;
                    dying.push((p, Instant::now()));
                }
                None => kills.idle_ticks[i] += 1,
            }
        }
        watch_reaping(&mut dying, &mut kills);
        // The storm's own cadence, not a wait for anything.
        next += every;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    watch_reaping(&mut dying, &mut kills);
    kills.unreaped = dying.iter().map(|(p, at)| (p.pid, at.elapsed())).collect();
    kills
}

/// Drops from `dying` the processes whose parent has reaped them, noting how long that took.
fn watch_reaping(dying: &mut Vec<(Process, Instant)>, kills: &mut Kills) {
    dying.retain(|(p, at)| {
        let gone = Process::read(p.pid).is_none_or(|now| now.start != p.start);
        if gone {
            kills.longest_unreaped = kills.longest_unreaped.max(at.elapsed());
        }
        !gone
    });
}

/// One plugin's processes, as its pid file lists them.
struct Targets {
    pids: PathBuf,
    /// How far the pid file was read.
    read: u64,
    /// Processes listed and not yet killed or found gone.
    live: Vec<Process>,
}

impl Targets {
    fn new(pids: PathBuf) -> Targets {
        Targets { pids, read: 0, live: Vec::new() }
    }

    /// Kills one of the live processes, picked at random; the one it killed, if any.
    fn kill_one(&mut self, marker: &str) -> Option<Process> {
        self.read_new(marker);
        while !self.live.is_empty() {
            let i = usize::try_from(random() % self.live.len() as u64).unwrap_or(0);
            let p = self.live.swap_remove(i);
            if p.kill() {
                return Some(p);
            }
        }
        None
    }

    /// Adds the processes started since the last look that carry the test's marker (a
    /// pid in the file may belong to someone else by now).
    fn read_new(&mut self, marker: &str) {
        let Ok(mut file) = std::fs::File::open(&self.pids) else { return };
        let mut text = String::new();
        if file.seek(std::io::SeekFrom::Start(self.read)).and_then(|_| file.read_to_string(&mut text)).is_err() {
            return;
        }
        // Whole lines only: a line being written is read next time.
        let complete = text.rfind('\n').map_or(0, |end| end + 1);
        self.read += complete as u64;
        for line in text[..complete].lines() {
            if let Some(p) = line.trim().parse().ok().and_then(Process::read).filter(|p| p.carries(marker)) {
                self.live.push(p);
            }
        }
    }
}

/// A process as /proc shows it: pid, state letter and start time (which tells it from a
/// later process given the same pid).
struct Process {
    pid: u32,
    state: char,
    start: u64,
}

impl Process {
    /// The process with this pid now, if any.
    fn read(pid: u32) -> Option<Process> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) S ppid ...`: the command may hold spaces and parentheses. After it,
        // the state is field 3 of proc_pid_stat(5), the start time field 22.
        let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
        Some(Process { pid, state: fields.first()?.chars().next()?, start: fields.get(19)?.parse().ok()? })
    }

    fn carries(&self, marker: &str) -> bool {
        std::fs::read(format!("/proc/{}/environ", self.pid))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
    }

    /// SIGKILL, through a pidfd so that it can only reach this very process: true when it
    /// was alive (not a zombie) and the signal was delivered.
    fn kill(&self) -> bool {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, self.pid, 0) };
        let Ok(fd) = i32::try_from(fd) else { return false };
        if fd < 0 {
            return false;
        }
        // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The pidfd holds whatever process has this pid now: it must be ours, and alive.
        // Then the signal reaches that process or, if it died meanwhile, none.
        if Process::read(self.pid).is_none_or(|now| now.start != self.start || now.state == 'Z') {
            return false;
        }
        // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, no siginfo, no flags.
        let sent = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                nix::libc::SIGKILL,
                std::ptr::null::<nix::libc::siginfo_t>(),
                0,
            )
        };
        sent == 0
    }
}
