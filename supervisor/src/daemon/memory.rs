//! Giving memory back to the system after a spike.
//!
//! glibc's allocator keeps freed memory for reuse: its mmap threshold rises to the size of
//! the largest block freed (so after one 15 MB task, every 15 MB buffer comes from the heap
//! and stays there), and small blocks freed in its arenas are returned only by
//! `malloc_trim`. A daemon that takes a burst of large tasks would keep that burst's
//! memory for good. So [`tune`] fixes the threshold (large buffers are mapped, and
//! unmapped when freed) and [`trim`] returns free heap pages; the daemon calls it after
//! work, from its housekeeping. Elsewhere (musl, other systems) both do nothing.

/// Buffers at least this large are mapped on their own and unmapped when freed.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Fixes the allocator's mmap threshold. Call once, early.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; any value is accepted or refused.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Returns free heap pages to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks; it is safe from any thread.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// This process's resident memory, from `/proc/self/statm`.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten()?;
    Some(pages.saturating_mul(u64::try_from(page).ok()?))
}

/// Trims after a spike: when resident memory is more than `slack` above `baseline`.
#[derive(Debug)]
pub struct Trimmer {
    baseline: u64,
    slack: u64,
}

impl Trimmer {
    /// Takes the current resident memory as the baseline.
    pub fn new(slack: u64) -> Trimmer {
        Trimmer { baseline: resident_bytes().unwrap_or(0), slack }
    }

    /// Trims if resident memory is above the baseline by more than the slack.
    pub fn check(&self) {
        if resident_bytes().is_some_and(|now| now > self.baseline.saturating_add(self.slack)) {
            trim();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read() {
        let rss = resident_bytes().unwrap();
        assert!(rss > 1024 * 1024, "{rss}");
    }
}
