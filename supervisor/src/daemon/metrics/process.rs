//! The standard process metrics (`process_*`, as Prometheus' client libraries name
//! them), read from `/proc/self` at each scrape. A value that cannot be read is left
//! out, never guessed.

use std::fmt::Write;

/// Appends `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_start_time_seconds`, `process_open_fds` and
/// `process_max_fds`.
pub fn render(out: &mut String) {
    let stat = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| Stat::parse(&s));
    let ticks = sysconf(nix::unistd::SysconfVar::CLK_TCK);
    let page = sysconf(nix::unistd::SysconfVar::PAGE_SIZE);
    if let (Some(st), Some(ticks)) = (&stat, ticks) {
        gauge(out, "process_cpu_seconds_total", "counter", "User and system CPU time spent, in seconds.", {
            (st.utime + st.stime) as f64 / ticks as f64
        });
        if let Some(boot) = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(boot_time) {
            let start = boot as f64 + st.start_ticks as f64 / ticks as f64;
            gauge(
                out,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
                start,
            );
        }
    }
    if let (Some(st), Some(page)) = (&stat, page) {
        gauge(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size, in bytes.",
            (st.rss_pages * page) as f64,
        );
    }
    if let Some(st) = &stat {
        gauge(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size, in bytes.", st.vsize as f64);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // Less one: the folder read holds one itself.
        let open = fds.count().saturating_sub(1);
        gauge(out, "process_open_fds", "gauge", "Open file descriptors.", open as f64);
    }
    if let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        gauge(out, "process_max_fds", "gauge", "The limit of open file descriptors.", soft as f64);
    }
}

fn gauge(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

fn sysconf(var: nix::unistd::SysconfVar) -> Option<u64> {
    nix::unistd::sysconf(var).ok().flatten().and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0)
}

/// The fields of `/proc/self/stat` used here (proc(5)).
#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

impl Stat {
    fn parse(text: &str) -> Option<Stat> {
        // The command name (field 2) is in parentheses and may hold spaces and ')': the
        // fields that follow start after the last ')', at field 3.
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            start_ticks: field(22)?,
            vsize: field(23)?,
            rss_pages: field(24)?,
        })
    }
}

/// `btime` of `/proc/stat`: when the machine booted, in seconds since the epoch.
fn boot_time(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name_whatever_it_holds() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 7777 123456789 2048 18446744073709551615";
        let st = Stat::parse(line).unwrap();
        assert_eq!(st, Stat { utime: 250, stime: 50, start_ticks: 7777, vsize: 123_456_789, rss_pages: 2048 });
        assert_eq!(Stat::parse("42 (x) S 1"), None);
        assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\nprocesses 5\n"), Some(1_700_000_000));
    }

    #[test]
    fn this_process_reports_each_metric_once() {
        let mut out = String::new();
        render(&mut out);
        for name in [
            "process_cpu_seconds_total",
            "process_start_time_seconds",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
        ] {
            let samples: Vec<&str> = out.lines().filter(|l| l.starts_with(&format!("{name} "))).collect();
            assert_eq!(samples.len(), 1, "{name} in\n{out}");
            let value: f64 = samples[0].split(' ').nth(1).unwrap().parse().unwrap();
            // A test process may not have used a whole clock tick of CPU yet.
            assert!(value > 0.0 || name == "process_cpu_seconds_total" && value == 0.0, "{name} in\n{out}");
        }
    }
}
