//! What this machine offers for putting plugins in cgroups, seen from outside the
//! supervisor: whether it can make cgroups at all (root, a cgroup v2 hierarchy mounted),
//! which limits it can enforce, and the plugin cgroups left in the tree.
//!
//! Tests that need cgroups skip with a message where the machine cannot have them (not
//! root, no cgroup v2): what the supervisor *should* manage is decided here, from the
//! machine, never from what the supervisor says, so a supervisor that stops making
//! cgroups fails the tests instead of skipping them.

use std::path::{Path, PathBuf};

/// Why the supervisor cannot put plugins in cgroups here, or `None` when it must.
pub fn cgroups_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: the supervisor makes cgroups as root or in a delegated subtree".into());
    }
    if v2_mount().is_none() {
        return Some("no cgroup v2 hierarchy is mounted".into());
    }
    None
}

/// Why a limit through `controller` ("memory" or "pids") cannot be enforced here, or
/// `None` when it must be: as root, with the controller on the v2 hierarchy or mounted as
/// cgroup v1.
pub fn controller_unavailable(controller: &str) -> Option<String> {
    if let Some(why) = cgroups_unavailable() {
        return Some(why);
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let v1 = mountinfo.lines().any(|l| {
        let after = l.split(" - ").nth(1).unwrap_or("");
        after.starts_with("cgroup ") && after.rsplit(' ').next().unwrap_or("").split(',').any(|o| o == controller)
    });
    let v2 = v2_mount()
        .and_then(|m| std::fs::read_to_string(m.join("cgroup.controllers")).ok())
        .is_some_and(|c| c.split_whitespace().any(|w| w == controller));
    (!v1 && !v2).then(|| format!("no {controller} controller, neither in cgroup v2 nor as cgroup v1"))
}

/// Prints why a test is skipped.
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

/// The folder of cgroup v2 `path` (as `/proc/<pid>/cgroup` gives it).
pub fn v2_folder(path: &str) -> PathBuf {
    let mount = v2_mount().expect("a cgroup v2 hierarchy");
    mount.join(path.trim_start_matches('/'))
}

/// Where the cgroup v2 hierarchy is mounted.
fn v2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|l| {
        let after = l.split(" - ").nth(1)?;
        let point = l.split(' ').nth(4)?;
        after.starts_with("cgroup2 ").then(|| PathBuf::from(point))
    })
}

/// The plugin cgroups (v2 and v1) of the plugin named `plugin` that are still in the
/// tree: folders `loom-plugins/<plugin>-<instance>-<n>-<supervisor pid>` under
/// /sys/fs/cgroup.
pub fn plugin_cgroups(plugin: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    find_plugin_folders(Path::new("/sys/fs/cgroup"), 0, &mut found);
    let prefix = format!("{plugin}-");
    found
        .into_iter()
        .flat_map(|base| std::fs::read_dir(base).into_iter().flatten().flatten().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // `<plugin>-<instance>-<n>-<pid>`: three numbers after the name.
            name.strip_prefix(&prefix)
                .is_some_and(|rest| rest.split('-').count() == 3 && rest.split('-').all(|n| n.parse::<u64>().is_ok()))
        })
        .collect()
}

/// `loom-plugins` folders up to a few levels down (the supervisor's own cgroup may be
/// nested: v1 memory cgroups here are).
fn find_plugin_folders(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    if depth > 4 {
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if entry.file_name() == "loom-plugins" {
            found.push(path);
        } else {
            find_plugin_folders(&path, depth + 1, found);
        }
    }
}
