//! CPU time used by this process and by the plugin processes it runs, so that a
//! throughput can also be stated as CPU time per task: how much work the code does for
//! each task, whatever share of the cores a busy host leaves it. (On a host loaded by
//! other builds, the pipelined rate varied 3x between runs minutes apart while the CPU
//! time per task varied by about a quarter.)

use std::time::Duration;

use nix::sys::resource::{UsageWho, getrusage};

/// A rate and the CPU time it took.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    /// Items (tasks, lines) per second of wall time.
    pub per_sec: f64,
    /// Microseconds of CPU time per item, every process of the measurement counted.
    pub cpu_us: f64,
}

impl Throughput {
    /// `items` done in `wall` using `cpu`.
    pub fn new(items: usize, wall: Duration, cpu: Duration) -> Throughput {
        Throughput { per_sec: items as f64 / wall.as_secs_f64(), cpu_us: cpu.as_secs_f64() * 1e6 / items as f64 }
    }
}

/// User and system time of every thread this process has run (ended threads included).
pub fn own() -> Duration {
    usage(UsageWho::RUSAGE_SELF)
}

/// User and system time of the children this process has waited for.
pub fn reaped_children() -> Duration {
    usage(UsageWho::RUSAGE_CHILDREN)
}

/// Time on a CPU of the threads of the running process `pid`, from the kernel's
/// nanosecond accounting (`/proc/PID/task/*/schedstat`); zero for a process that is gone.
pub fn process(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Duration::ZERO };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum();
    Duration::from_nanos(ns)
}

/// [`process`] of `pid` and of every process descending from it that still runs (a
/// daemon with its plugins, a PostgreSQL server with its backends).
pub fn tree(pid: u32) -> Duration {
    let mut total = Duration::ZERO;
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        total += process(p);
        todo.extend(children(p));
    }
    total
}

/// The running children of `pid` (none when it is gone).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| text.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

fn usage(who: UsageWho) -> Duration {
    getrusage(who).map_or(Duration::ZERO, |u| timeval(u.user_time()) + timeval(u.system_time()))
}

fn timeval(tv: nix::sys::time::TimeVal) -> Duration {
    let secs = u64::try_from(tv.tv_sec()).unwrap_or(0);
    let micros = u64::try_from(tv.tv_usec()).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_is_items_per_second_and_cpu_per_item() {
        let t = Throughput::new(1000, Duration::from_millis(10), Duration::from_millis(4));
        assert!((t.per_sec - 100_000.0).abs() < 1e-6);
        assert!((t.cpu_us - 4.0).abs() < 1e-9);
    }

    #[test]
    fn counts_this_process_and_a_running_one() {
        let before = own();
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {
            std::hint::black_box(0u64);
        }
        assert!(own() > before, "20 ms of spinning used no CPU time");
        assert!(process(std::process::id()) > Duration::ZERO);
        assert_eq!(process(u32::MAX), Duration::ZERO);
    }

    #[test]
    fn a_tree_counts_the_running_descendants() {
        // A shell whose child spins until killed.
        let mut shell =
            std::process::Command::new("sh").args(["-c", "sh -c 'while :; do :; done' & wait"]).spawn().unwrap();
        let pid = shell.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let child = loop {
            if let Some(&child) = children(pid).first() {
                break child;
            }
            assert!(std::time::Instant::now() < deadline, "the shell started no child");
            std::thread::sleep(Duration::from_millis(10));
        };
        while process(child) < Duration::from_millis(50) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // The spinning is the child's: the tree counts it, the shell alone does not.
        let (alone, whole) = (process(pid), tree(pid));
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child as i32), nix::sys::signal::Signal::SIGKILL);
        let _ = shell.wait();
        assert!(whole >= alone + Duration::from_millis(50), "tree {whole:?}, the shell alone {alone:?}");
        assert_eq!(tree(u32::MAX), Duration::ZERO);
    }
}
