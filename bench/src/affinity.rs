//! Pinning this process (every thread of it) to one core, and unpinning it.
//!
//! Unpinned back-to-back round trips on this 2-core machine are bimodal (a wake-up on the
//! other core costs tens of microseconds when it has gone idle), so latency is measured
//! with this process, its threads and the plugins it starts on core 0, as
//! `../shared/peers/run.sh --pin` runs the peers. Throughput is measured on every core.
//! Children inherit the mask of the thread that starts them.

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// Restricts every thread of this process to `core`, or (`None`) allows every core
/// this process was allowed at startup.
///
/// # Errors
/// When the kernel refuses the mask (e.g. the core does not exist).
pub fn pin(core: Option<usize>, all: &CpuSet) -> Result<(), String> {
    let mut set = CpuSet::new();
    match core {
        Some(c) => set.set(c).map_err(|e| format!("cannot pin to core {c}: {e}"))?,
        None => set = *all,
    }
    // Threads started later inherit the mask of their creator; the ones running now are
    // listed in /proc/self/task.
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| format!("cannot list this process's threads: {e}"))?;
    for task in tasks.flatten() {
        if let Some(tid) = task.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            // A thread may have ended since the listing: ignore ESRCH.
            match sched_setaffinity(Pid::from_raw(tid), &set) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(format!("cannot set the CPU mask of thread {tid}: {e}")),
            }
        }
    }
    Ok(())
}

/// The cores this process may use now.
///
/// # Errors
/// When the kernel does not say.
pub fn startup_mask() -> Result<CpuSet, String> {
    sched_getaffinity(Pid::from_raw(0)).map_err(|e| format!("cannot read this process's CPU mask: {e}"))
}
