//! Each plugin process in a cgroup of its own, so that everything it starts dies with it
//! whatever it did (`setsid`, a double fork), and so that its `limits` (memory, processes,
//! CPU) hold for it and its descendants together.
//!
//! **Where.** Under the supervisor's own cgroup v2 (read from `/proc/self/cgroup` and the
//! mount table), in `loom-plugins/<plugin>-<instance>-<n>-<supervisor pid>`, one cgroup
//! per process started:
//! - pure cgroup v2 at `/sys/fs/cgroup` (current systemd hosts): the supervisor must be
//!   root, or own its cgroup (systemd's `Delegate=yes`). The `memory`, `pids` and `cpu`
//!   controllers its cgroup has are enabled down to the plugins' cgroups; because v2 lets
//!   no process live in a cgroup whose children have controllers, a supervisor alone in
//!   its cgroup first moves itself into `<own>/supervisor` (as systemd's documentation asks
//!   of delegated services).
//! - mixed hierarchies (cgroup v1 controllers, and a v2 hierarchy without controllers at
//!   `/sys/fs/cgroup/unified`): the v2 cgroup holds and kills the process tree; `memoryMax`
//!   and `pidsMax` go through v1 cgroups of the same name under the supervisor's own v1
//!   `memory` and `pids` cgroups (as root; v1 is never delegated). `cpuWeight` needs v2.
//! - neither (no v2 hierarchy, or no right to write in it): no cgroups; the process-group
//!   sweep of old, said once in the log, and limits that need a controller are warned
//!   about, once per plugin.
//!
//! **Joining before exec.** The parent opens every `cgroup.procs` the child joins before
//! the fork ([`Joining`]); the child writes "0" (itself) to each between fork and exec: no
//! allocation there, and nothing the plugin runs is ever outside its cgroup. The kernel
//! checks that write against whoever opened the file (Linux 5.16, and the fix for
//! CVE-2021-4197 in older stable kernels), so a plugin running as another user joins too.
//!
//! **Ending.** [`Cgroup::kill`] kills every process at once (`cgroup.kill`, Linux 5.14;
//! before that the cgroup is frozen and each process gets SIGKILL), [`Cgroup::wait_empty`]
//! waits until none is left, [`Cgroup::remove`] removes the folders. A cgroup dropped
//! without that is killed and removed in the background. At its first start the supervisor
//! removes the cgroups of supervisors that are gone (the pid in the name), killing what was
//! left in them (say, after a SIGKILL of the daemon).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::core::manifest::Limits;

/// The folder the supervisor makes under its own cgroup for its plugins' cgroups.
pub const PLUGINS_FOLDER: &str = "loom-plugins";

/// Where a supervisor alone in its cgroup moves itself, so that controllers can be
/// enabled for its plugins' cgroups (cgroup v2 lets no process live beside child cgroups
/// that have controllers).
pub const SUPERVISOR_LEAF: &str = "supervisor";

/// Limit files a kernel may not have (no swap accounting, before Linux 4.19): skipped
/// where missing; the limit itself holds without them.
const OPTIONAL_FILES: [&str; 3] = ["memory.swap.max", "memory.oom.group", "memory.memsw.limit_in_bytes"];

/// The controllers limits use.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

// ---------------------------------------------------------------------------------------
// Reading /proc/self/cgroup and /proc/self/mountinfo.

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// `0` for cgroup v2.
    pub hierarchy: u32,
    /// The v1 controllers (`cpu,cpuacct` -> both; `name=systemd` stays as is); empty for v2.
    pub controllers: Vec<String>,
    /// The cgroup's path from the root of the hierarchy (as the cgroup namespace sees it).
    pub path: String,
}

/// Reads `/proc/<pid>/cgroup`. Lines that do not have its form are skipped.
pub fn parse_memberships(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            if !path.starts_with('/') {
                return None;
            }
            let controllers = controllers.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect();
            Some(Membership { hierarchy, controllers, path: path.to_owned() })
        })
        .collect()
}

/// A mounted cgroup file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// The cgroup at the root of the mount (`/` unless a subtree is bind-mounted).
    pub root: String,
    /// Where it is mounted.
    pub point: PathBuf,
    /// v2, or v1 with these super options (its controllers among them: `rw,memory`).
    pub v1_options: Option<Vec<String>>,
}

/// Reads `/proc/<pid>/mountinfo` for cgroup file systems: `id parent major:minor root
/// point options [optional fields...] - fstype source super-options`, with spaces and
/// other odd bytes in paths written as octal escapes (`\040`).
pub fn parse_mounts(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let (root, point) = (fields.get(3)?, fields.get(4)?);
            let fstype = fields.get(dash + 1)?;
            let v1_options = match *fstype {
                "cgroup2" => None,
                "cgroup" => Some(fields.get(dash + 3)?.split(',').map(str::to_owned).collect()),
                _ => return None,
            };
            Some(CgroupMount { root: unescape(root), point: PathBuf::from(unescape(point)), v1_options })
        })
        .collect()
}

/// `\040` -> ` `: the escapes of /proc/self/mountinfo.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The supervisor's own cgroups as folders: its v2 cgroup, and its v1 `memory` and
/// `pids` cgroups where those controllers are mounted as v1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Located {
    /// Its cgroup v2 folder.
    pub v2: Option<PathBuf>,
    /// Its v1 `memory` cgroup folder.
    pub v1_memory: Option<PathBuf>,
    /// Its v1 `pids` cgroup folder.
    pub v1_pids: Option<PathBuf>,
}

/// Finds the folders of the cgroups in `memberships` through `mounts`. A cgroup outside
/// every mount of its hierarchy (a container that sees only a subtree) has no folder.
pub fn locate(mounts: &[CgroupMount], memberships: &[Membership]) -> Located {
    let folder = |m: &Membership, is_mount: &dyn Fn(&CgroupMount) -> bool| {
        mounts.iter().filter(|mount| is_mount(mount)).find_map(|mount| {
            let rel = Path::new(&m.path).strip_prefix(&mount.root).ok()?;
            Some(mount.point.join(rel))
        })
    };
    let v2 = memberships.iter().find(|m| m.hierarchy == 0 && m.controllers.is_empty());
    let v1 = |controller: &str| {
        let m = memberships.iter().find(|m| m.hierarchy != 0 && m.controllers.iter().any(|c| c == controller))?;
        folder(m, &|mount| mount.v1_options.as_ref().is_some_and(|o| o.iter().any(|c| c == controller)))
    };
    Located {
        v2: v2.and_then(|m| folder(m, &|mount| mount.v1_options.is_none())),
        v1_memory: v1("memory"),
        v1_pids: v1("pids"),
    }
}

// ---------------------------------------------------------------------------------------
// What goes where.

/// How a cgroup's processes are killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillBy {
    /// Writing `cgroup.kill` (Linux 5.14).
    CgroupKill,
    /// Freezing it (`cgroup.freeze`, Linux 5.2), then SIGKILL to every process listed.
    Freeze,
    /// SIGKILL to every process listed, again until none is left.
    Signals,
}

/// The controllers enabled for the plugins' v2 cgroups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct V2Controllers {
    /// `memory`.
    pub memory: bool,
    /// `pids`.
    pub pids: bool,
    /// `cpu`.
    pub cpu: bool,
}

impl V2Controllers {
    /// From the text of `cgroup.controllers` or `cgroup.subtree_control`.
    pub fn parse(text: &str) -> V2Controllers {
        let has = |c: &str| text.split_whitespace().any(|w| w == c);
        V2Controllers { memory: has("memory"), pids: has("pids"), cpu: has("cpu") }
    }

    /// `+memory +pids +cpu`, for `cgroup.subtree_control`; empty when none.
    fn enable_line(self) -> String {
        let on = [self.memory, self.pids, self.cpu];
        CONTROLLERS.iter().zip(on).filter(|(_, on)| *on).map(|(c, _)| format!("+{c}")).collect::<Vec<_>>().join(" ")
    }

    fn any(self) -> bool {
        self.memory || self.pids || self.cpu
    }
}

/// The files to write in a plugin process's cgroups for its limits, and the limits that
/// cannot be enforced here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// In its v2 cgroup: (file, value).
    pub v2: Vec<(&'static str, String)>,
    /// In its v1 `memory` cgroup.
    pub v1_memory: Vec<(&'static str, String)>,
    /// In its v1 `pids` cgroup.
    pub v1_pids: Vec<(&'static str, String)>,
    /// (manifest key, why not).
    pub unenforced: Vec<(&'static str, String)>,
}

/// Where the limits can go: v2 controllers first, v1 `memory` and `pids` else.
pub fn plan(limits: &Limits, v2: V2Controllers, v1_memory: bool, v1_pids: bool) -> Plan {
    let mut plan = Plan::default();
    if let Some(bytes) = limits.memory_max {
        if v2.memory {
            // No swap beyond the limit: a leak should end, not thrash the disk. The whole
            // cgroup is killed together, so no half of a plugin lives on.
            plan.v2.extend([
                ("memory.max", bytes.to_string()),
                ("memory.swap.max", "0".to_owned()),
                ("memory.oom.group", "1".to_owned()),
            ]);
        } else if v1_memory {
            plan.v1_memory.extend([
                ("memory.limit_in_bytes", bytes.to_string()),
                ("memory.memsw.limit_in_bytes", bytes.to_string()),
            ]);
        } else {
            plan.unenforced
                .push(("memoryMax", "the supervisor has no memory controller (cgroup v2 or v1) to use".to_owned()));
        }
    }
    if let Some(n) = limits.pids_max {
        if v2.pids {
            plan.v2.push(("pids.max", n.to_string()));
        } else if v1_pids {
            plan.v1_pids.push(("pids.max", n.to_string()));
        } else {
            plan.unenforced
                .push(("pidsMax", "the supervisor has no pids controller (cgroup v2 or v1) to use".to_owned()));
        }
    }
    if let Some(w) = limits.cpu_weight {
        if v2.cpu {
            plan.v2.push(("cpu.weight", w.to_string()));
        } else {
            plan.unenforced.push((
                "cpuWeight",
                "it needs the cpu controller of cgroup v2, which the supervisor's cgroup does not have".to_owned(),
            ));
        }
    }
    plan
}

// ---------------------------------------------------------------------------------------
// The supervisor's cgroups, set up once.

/// Where this supervisor makes its plugins' cgroups; set up once per process.
#[derive(Debug)]
pub struct Hierarchy {
    /// `<own v2 cgroup>/loom-plugins`.
    base: PathBuf,
    kill_by: KillBy,
    v2: V2Controllers,
    /// `<own v1 memory cgroup>/loom-plugins`, where v2 has no memory controller.
    v1_memory: Option<PathBuf>,
    /// `<own v1 pids cgroup>/loom-plugins`, where v2 has no pids controller.
    v1_pids: Option<PathBuf>,
}

static HIERARCHY: OnceLock<Option<Hierarchy>> = OnceLock::new();

/// Removes the supervisor's empty `loom-plugins` folders, once its hierarchy is set up
/// (never setting it up: the stale sweep calls this while it does).
fn tidy() {
    if let Some(Some(h)) = HIERARCHY.get() {
        h.tidy();
    }
}

/// The supervisor's hierarchy, set up at the first call; `None` where no cgroup can be
/// made (logged once, with why).
pub fn hierarchy() -> Option<&'static Hierarchy> {
    HIERARCHY
        .get_or_init(|| match Hierarchy::set_up() {
            Ok(h) => {
                tracing::info!("each plugin process runs in a cgroup of its own under {} ({})", h.base.display(), h.describe());
                Some(h)
            }
            Err(why) => {
                tracing::warn!(
                    "plugin processes are not put in cgroups ({why}): a descendant that leaves its plugin's process group \
                     (setsid) can outlive the plugin, and memoryMax, pidsMax and cpuWeight are not enforced; run the \
                     supervisor as root, or under systemd with Delegate=yes"
                );
                None
            }
        })
        .as_ref()
}

impl Hierarchy {
    fn set_up() -> Result<Hierarchy, String> {
        let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {e}"));
        let located =
            locate(&parse_mounts(&read("/proc/self/mountinfo")?), &parse_memberships(&read("/proc/self/cgroup")?));
        let own = located.v2.ok_or("no cgroup v2 hierarchy holding the supervisor is mounted")?;
        let base = own.join(PLUGINS_FOLDER);
        make_dir(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
        // It may exist already, made by another supervisor (root's, say).
        nix::unistd::access(&base, nix::unistd::AccessFlags::W_OK)
            .map_err(|e| format!("cannot write in {}: {}", base.display(), io::Error::from(e)))?;
        let kill_by = if base.join("cgroup.kill").exists() {
            KillBy::CgroupKill
        } else if base.join("cgroup.freeze").exists() {
            KillBy::Freeze
        } else {
            KillBy::Signals
        };
        let v2 = enable_controllers(&own, &base);
        // v1 is never delegated: its folders are the supervisor's to use only when it may
        // write in them (as root).
        let v1_base = |own: Option<PathBuf>, covered: bool| {
            let own = own.filter(|_| !covered)?;
            nix::unistd::access(&own, nix::unistd::AccessFlags::W_OK).ok()?;
            Some(own.join(PLUGINS_FOLDER))
        };
        let hierarchy = Hierarchy {
            base,
            kill_by,
            v2,
            v1_memory: v1_base(located.v1_memory, v2.memory),
            v1_pids: v1_base(located.v1_pids, v2.pids),
        };
        hierarchy.remove_stale();
        hierarchy.tidy();
        Ok(hierarchy)
    }

    /// Makes `base` (one of its `loom-plugins` folders) if a supervisor removed it when it
    /// emptied, with the controllers for its children in the v2 one.
    fn ensure(&self, base: &Path) -> io::Result<()> {
        make_dir(base)?;
        if base == self.base && self.v2.any() {
            write_file(&base.join("cgroup.subtree_control"), &self.v2.enable_line())?;
        }
        Ok(())
    }

    /// Removes its `loom-plugins` folders where empty, so that nothing of the supervisor
    /// stays in the cgroup tree once its plugins are gone (another supervisor's plugins
    /// keep a folder busy: then it stays).
    fn tidy(&self) {
        for base in [Some(&self.base), self.v1_memory.as_ref(), self.v1_pids.as_ref()].into_iter().flatten() {
            let _ = std::fs::remove_dir(base);
        }
    }

    /// "cgroup v2 with memory, pids; pidsMax through cgroup v1".
    fn describe(&self) -> String {
        let on = [self.v2.memory, self.v2.pids, self.v2.cpu];
        let v2: Vec<_> = CONTROLLERS.iter().zip(on).filter(|(_, on)| *on).map(|(c, _)| *c).collect();
        let mut text = if v2.is_empty() {
            "cgroup v2 without controllers".to_owned()
        } else {
            format!("cgroup v2 with {}", v2.join(", "))
        };
        let v1: Vec<_> = [("memoryMax", &self.v1_memory), ("pidsMax", &self.v1_pids)]
            .into_iter()
            .filter_map(|(key, base)| base.as_ref().map(|_| key))
            .collect();
        if !v1.is_empty() {
            text.push_str(&format!("; {} through cgroup v1", v1.join(" and ")));
        }
        text
    }

    /// Kills and removes what supervisors that no longer exist left in `loom-plugins`
    /// (their pid ends each name): a supervisor killed with SIGKILL cleans up nothing.
    fn remove_stale(&self) {
        let me = std::process::id();
        let stale = |name: &str| {
            let pid: u32 = name.rsplit_once('-').and_then(|(_, pid)| pid.parse().ok())?;
            (pid != me && !Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        };
        let mut removed = 0;
        for (base, kill_by) in [
            (Some(&self.base), self.kill_by),
            (self.v1_memory.as_ref(), KillBy::Signals),
            (self.v1_pids.as_ref(), KillBy::Signals),
        ] {
            let Some(base) = base else { continue };
            let Ok(entries) = std::fs::read_dir(base) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if entry.path().is_dir() && name.to_str().and_then(stale).is_some() {
                    let group = Cgroup::adopt(entry.path(), kill_by);
                    group.kill();
                    group.wait_empty_blocking(Duration::from_secs(5));
                    if group.remove().is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        if removed > 0 {
            tracing::info!("removed {removed} plugin cgroups left by supervisors that are gone, with what ran in them");
        }
    }
}

/// Enables the controllers `own` has (of memory, pids, cpu) for `base`'s children: in
/// `own`'s `cgroup.subtree_control` (moving the supervisor into `own/supervisor` first
/// when it is alone in `own`), then in `base`'s. Returns what is enabled; why not is
/// logged once.
fn enable_controllers(own: &Path, base: &Path) -> V2Controllers {
    let available = V2Controllers::parse(&std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default());
    if !available.any() {
        return V2Controllers::default();
    }
    let line = available.enable_line();
    let mut result = write_file(&own.join("cgroup.subtree_control"), &line);
    if matches!(&result, Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY)) && alone_in(own) {
        // cgroup v2's rule: no processes beside child cgroups with controllers.
        let leaf = own.join(SUPERVISOR_LEAF);
        result = make_dir(&leaf)
            .and_then(|()| write_file(&leaf.join("cgroup.procs"), "0"))
            .and_then(|()| write_file(&own.join("cgroup.subtree_control"), &line));
        if result.is_ok() {
            tracing::info!(
                "moved the supervisor into {} so that its plugins' cgroups can have controllers",
                leaf.display()
            );
        }
    }
    match result.and_then(|()| write_file(&base.join("cgroup.subtree_control"), &line)) {
        Ok(()) => available,
        Err(e) => {
            tracing::warn!(
                "cannot enable the {} controllers for the plugins' cgroups ({e}): memoryMax, pidsMax and cpuWeight \
                 go through cgroup v1 where it is mounted, else are not enforced",
                line.replace('+', "")
            );
            V2Controllers::default()
        }
    }
}

/// Whether the supervisor is the only process in cgroup `dir`.
fn alone_in(dir: &Path) -> bool {
    let me = std::process::id().to_string();
    std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|t| t.lines().all(|l| l.trim() == me))
}

// ---------------------------------------------------------------------------------------
// One plugin process's cgroups.

/// The cgroups of one plugin process: its v2 cgroup, and its v1 `memory` and `pids`
/// cgroups when its limits need them. Dropped without [`Cgroup::remove`], it is killed and
/// removed in the background.
#[derive(Debug)]
pub struct Cgroup {
    /// The v2 cgroup first, then the v1 ones.
    dirs: Vec<PathBuf>,
    kill_by: KillBy,
    memory: Option<Memory>,
    removed: bool,
}

/// Where a memory limit's kills are counted.
#[derive(Debug)]
struct Memory {
    /// `memory.events` (v2) or `memory.oom_control` (v1): both have a line `oom_kill N`.
    events: PathBuf,
    limit: u64,
}

/// The open `cgroup.procs` files a new child writes itself into before exec; close (drop)
/// it once the child has started.
#[derive(Debug)]
pub struct Joining(Vec<OwnedFd>);

impl Joining {
    /// The descriptors, for the child.
    pub fn fds(&self) -> Vec<RawFd> {
        self.0.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

/// Manifest keys already warned about, per plugin: a plugin restarting a thousand times
/// warns once.
/// The limits that need a cgroup controller and were asked for.
fn asked(limits: &Limits) -> impl Iterator<Item = (&'static str, u64)> {
    [("memoryMax", limits.memory_max), ("pidsMax", limits.pids_max), ("cpuWeight", limits.cpu_weight)]
        .into_iter()
        .filter_map(|(key, v)| v.map(|v| (key, v)))
}

fn warn_unenforced(plugin: &str, key: &'static str, why: &str) {
    static WARNED: Mutex<Option<HashSet<(String, &'static str)>>> = Mutex::new(None);
    let first = WARNED.lock().is_ok_and(|mut w| w.get_or_insert_with(HashSet::new).insert((plugin.to_owned(), key)));
    if first {
        tracing::warn!(plugin, "limits.{key} is not enforced: {why}; the plugin runs without it");
    }
}

impl Cgroup {
    /// For a plugin whose manifest says `keepDescendants`: it runs without a cgroup, so
    /// that what it starts may outlive it. Said once per plugin in the log, with the limits
    /// that need a cgroup and are therefore not enforced.
    pub fn refused_by_manifest(plugin: &str, limits: &Limits) {
        static TOLD: Mutex<Option<HashSet<String>>> = Mutex::new(None);
        let first = TOLD.lock().is_ok_and(|mut t| t.get_or_insert_with(HashSet::new).insert(plugin.to_owned()));
        if first {
            tracing::info!(
                plugin,
                "runs without a cgroup (its manifest says keepDescendants): what it starts may outlive it; \
                 a stop or a crash ends only its process group"
            );
        }
        for (key, _) in asked(limits) {
            warn_unenforced(plugin, key, "the manifest says keepDescendants, so the plugin has no cgroup");
        }
    }

    /// Makes the cgroups of one process of `plugin` (instance `instance`) and writes its
    /// limits. `Ok(None)` where the supervisor cannot make cgroups (logged once); limits
    /// that cannot be enforced here are logged once per plugin and left out.
    ///
    /// # Errors
    /// A folder that cannot be made or a limit that cannot be written: the text names the
    /// file. What was made is removed.
    pub fn create(plugin: &str, instance: usize, limits: &Limits) -> Result<Option<(Cgroup, Joining)>, String> {
        let Some(h) = hierarchy() else {
            for (key, _) in asked(limits) {
                warn_unenforced(plugin, key, "the supervisor cannot make cgroups here");
            }
            return Ok(None);
        };
        let plan = plan(limits, h.v2, h.v1_memory.is_some(), h.v1_pids.is_some());
        for (key, why) in &plan.unenforced {
            warn_unenforced(plugin, key, why);
        }
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let name = format!("{plugin}-{instance}-{}-{}", SEQUENCE.fetch_add(1, Ordering::Relaxed), std::process::id());
        let mut group = Cgroup { dirs: Vec::new(), kill_by: h.kill_by, memory: None, removed: false };
        let mut joining = Vec::new();
        // On an error, `group` is dropped: what was made is removed.
        let v2 = group.make(h, &h.base, &name, &plan.v2, &mut joining)?;
        if plan.v2.iter().any(|(file, _)| *file == "memory.max") {
            group.memory = limits.memory_max.map(|limit| Memory { events: v2.join("memory.events"), limit });
        }
        if let Some(base) = h.v1_memory.as_ref().filter(|_| !plan.v1_memory.is_empty()) {
            let v1 = group.make(h, base, &name, &plan.v1_memory, &mut joining)?;
            group.memory = limits.memory_max.map(|limit| Memory { events: v1.join("memory.oom_control"), limit });
        }
        if let Some(base) = h.v1_pids.as_ref().filter(|_| !plan.v1_pids.is_empty()) {
            group.make(h, base, &name, &plan.v1_pids, &mut joining)?;
        }
        Ok(Some((group, Joining(joining))))
    }

    /// Makes cgroup `base/name`, writes `files` in it and opens its `cgroup.procs` for the
    /// child to join. Returns its folder.
    fn make(
        &mut self,
        h: &Hierarchy,
        base: &Path,
        name: &str,
        files: &[(&'static str, String)],
        joining: &mut Vec<OwnedFd>,
    ) -> Result<PathBuf, String> {
        let dir = base.join(name);
        if dir.exists() {
            // Left by an earlier supervisor with this pid (pids come round, and in a
            // container they repeat): its processes must not share this one's cgroup.
            tracing::warn!("emptying and removing the cgroup {} left by an earlier supervisor", dir.display());
            let stale = Cgroup::adopt(dir.clone(), h.kill_by);
            stale.kill();
            stale.wait_empty_blocking(Duration::from_secs(10));
            stale.remove().map_err(|e| format!("cannot remove the stale cgroup {}: {e}", dir.display()))?;
        }
        let made = (0..3)
            .map(|_| h.ensure(base).and_then(|()| make_dir(&dir)))
            // Another supervisor may remove `base` between the two, when it empties.
            .find(|r| !matches!(r, Err(e) if e.kind() == io::ErrorKind::NotFound))
            .unwrap_or_else(|| Err(io::ErrorKind::NotFound.into()));
        made.map_err(|e| format!("cannot create the plugin's cgroup {}: {e}", dir.display()))?;
        self.dirs.push(dir.clone());
        for (file, value) in files {
            let path = dir.join(file);
            if OPTIONAL_FILES.contains(file) && !path.exists() {
                continue;
            }
            write_file(&path, value).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        let procs = dir.join("cgroup.procs");
        let fd =
            OpenOptions::new().write(true).open(&procs).map_err(|e| format!("cannot open {}: {e}", procs.display()))?;
        joining.push(OwnedFd::from(fd));
        Ok(dir)
    }

    /// A cgroup found on disk (a stale one), to kill and remove.
    fn adopt(dir: PathBuf, kill_by: KillBy) -> Cgroup {
        Cgroup { dirs: vec![dir], kill_by, memory: None, removed: false }
    }

    /// The v2 cgroup's folder.
    pub fn path(&self) -> &Path {
        self.dirs.first().map_or(Path::new(""), PathBuf::as_path)
    }

    /// Sends SIGKILL to every process in the cgroup at once (`cgroup.kill`), or freezes it
    /// and signals each process listed (older kernels; see [`Cgroup::wait_empty`], which
    /// repeats it). Errors are logged: the caller has nothing better to do.
    pub fn kill(&self) {
        if self.kill_by == KillBy::CgroupKill {
            if let Err(e) = write_file(&self.path().join("cgroup.kill"), "1") {
                tracing::warn!("cannot kill the processes of {}: {e}", self.path().display());
            }
            return;
        }
        let freeze = self.kill_by == KillBy::Freeze && write_file(&self.path().join("cgroup.freeze"), "1").is_ok();
        self.signal(Signal::SIGKILL);
        if freeze {
            // Frozen processes still die of SIGKILL; thawing lets nothing new run.
            let _ = write_file(&self.path().join("cgroup.freeze"), "0");
        }
    }

    /// Sends `signal` to every process listed in the cgroup (v1 ones included).
    pub fn signal(&self, signal: Signal) {
        for pid in self.dirs.iter().flat_map(|d| procs(d)) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
        }
    }

    /// Whether no process is left in any of its cgroups.
    pub fn is_empty(&self) -> bool {
        self.dirs.iter().all(|d| procs(d).is_empty())
    }

    /// Waits until no process is left, up to `limit`, killing again (without
    /// `cgroup.kill`, a process may have forked between the listing and the signal).
    /// True if it emptied. Cancelling it leaves the cgroup as it is.
    pub async fn wait_empty(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(1);
        loop {
            if self.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if self.kill_by != KillBy::CgroupKill {
                self.kill();
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// [`Cgroup::wait_empty`], blocking the thread.
    fn wait_empty_blocking(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(1);
        while !self.is_empty() {
            if Instant::now() >= deadline {
                return false;
            }
            if self.kill_by != KillBy::CgroupKill {
                self.kill();
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        true
    }

    /// The memory limit, and how many processes it killed so far.
    pub fn memory_kills(&self) -> Option<(u64, u64)> {
        let memory = self.memory.as_ref()?;
        let text = std::fs::read_to_string(&memory.events).ok()?;
        Some((memory.limit, oom_kills(&text)))
    }

    /// Removes its folders (child cgroups a plugin made first). Call once it is empty.
    ///
    /// # Errors
    /// The first folder that could not be removed; the rest are still tried, and the
    /// drop retries in the background.
    pub fn remove(mut self) -> io::Result<()> {
        let mut result = Ok(());
        for dir in &self.dirs {
            if let Err(e) = remove_tree(dir) {
                result = result.and(Err(e));
            }
        }
        if result.is_ok() {
            tidy();
        }
        self.removed = result.is_ok();
        result
    }
}

impl Drop for Cgroup {
    /// A cgroup nobody removed (its process was dropped while starting, say): kill what is
    /// in it, and remove it on a thread of its own once it is empty.
    fn drop(&mut self) {
        if self.removed || self.dirs.is_empty() {
            return;
        }
        self.kill();
        let group = Cgroup { dirs: std::mem::take(&mut self.dirs), kill_by: self.kill_by, memory: None, removed: true };
        if group.is_empty() && group.dirs.iter().all(|d| remove_tree(d).is_ok()) {
            tidy();
            return;
        }
        let spawned = std::thread::Builder::new().name("loom-cgroup-rm".into()).spawn(move || {
            let emptied = group.wait_empty_blocking(Duration::from_secs(30));
            match group.dirs.iter().find_map(|d| remove_tree(d).err()) {
                Some(e) => {
                    tracing::warn!(
                        "cannot remove the plugin cgroup {} (emptied: {emptied}): {e}",
                        group.path().display()
                    )
                }
                None => tidy(),
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start a thread to remove a plugin cgroup: {e}");
        }
    }
}

/// `oom_kill N` in `memory.events` (v2) or `memory.oom_control` (v1); 0 without it.
pub fn oom_kills(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == "oom_kill")
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The pids in `dir/cgroup.procs`; none when it cannot be read (the cgroup is gone).
fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Creates `dir`; one that exists is fine.
fn make_dir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Removes cgroup `dir` and the cgroups under it, deepest first (a cgroup's files go with
/// it; only its folder is removed). One already gone is fine.
fn remove_tree(dir: &Path) -> io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path())?;
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// One write of `value` to a cgroup file (each write is one command to the kernel).
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut f: File = OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/self/cgroup and /proc/self/mountinfo of a process on these machines: v1
    /// controllers, and cgroup v2 without controllers at /sys/fs/cgroup/unified.
    const MIXED_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/\n0::/\n";
    const MIXED_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime shared:9 - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
";

    /// A systemd service with Delegate=yes on a current host: pure cgroup v2.
    const PURE_CGROUP: &str = "0::/system.slice/loom-provisioner.service\n";
    const PURE_MOUNTS: &str = "\
25 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn proc_self_cgroup_is_read_line_by_line() {
        let m = parse_memberships(MIXED_CGROUP);
        assert_eq!(m.len(), 5);
        assert_eq!(m[0], Membership { hierarchy: 9, controllers: vec!["name=systemd".into()], path: "/".into() });
        assert_eq!(m[2].controllers, ["memory"]);
        assert_eq!(m[2].path, "/process_api/abc");
        assert_eq!(m[3].controllers, ["cpu", "cpuacct"]);
        assert_eq!(m[4], Membership { hierarchy: 0, controllers: vec![], path: "/".into() });
        // A path may hold a colon; junk lines are skipped.
        let odd = parse_memberships("0::/a:b/c\nnot a line\nx::/\n3:pids:relative\n");
        assert_eq!(odd, [Membership { hierarchy: 0, controllers: vec![], path: "/a:b/c".into() }]);
    }

    #[test]
    fn the_mount_table_gives_cgroup_mounts_with_their_root_and_controllers() {
        let mounts = parse_mounts(MIXED_MOUNTS);
        assert_eq!(mounts.len(), 5, "tmpfs and ext4 are not cgroups: {mounts:?}");
        assert_eq!(mounts[0].point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(mounts[0].v1_options.as_deref(), Some(&["rw".to_owned(), "cpu".into(), "cpuacct".into()][..]));
        assert_eq!(mounts[2].point, Path::new("/sys/fs/cgroup/pids"), "optional fields before the dash");
        assert_eq!(
            mounts[4],
            CgroupMount { root: "/".into(), point: "/sys/fs/cgroup/unified".into(), v1_options: None }
        );
        // Octal escapes (a space), and a bind mount of a subtree.
        let bind = "50 22 0:23 /system.slice /mnt/cg\\040tree rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mounts(bind),
            [CgroupMount { root: "/system.slice".into(), point: "/mnt/cg tree".into(), v1_options: None }]
        );
        assert_eq!(unescape("a\\134b\\0"), "a\\b\\0", "a backslash escaped; a short escape kept");
    }

    #[test]
    fn the_supervisors_cgroups_are_found_through_the_mounts() {
        let mixed = locate(&parse_mounts(MIXED_MOUNTS), &parse_memberships(MIXED_CGROUP));
        assert_eq!(
            mixed,
            Located {
                v2: Some("/sys/fs/cgroup/unified".into()),
                v1_memory: Some("/sys/fs/cgroup/memory/process_api/abc".into()),
                v1_pids: Some("/sys/fs/cgroup/pids".into()),
            }
        );
        let pure = locate(&parse_mounts(PURE_MOUNTS), &parse_memberships(PURE_CGROUP));
        assert_eq!(pure.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/system.slice/loom-provisioner.service")));
        assert_eq!((pure.v1_memory, pure.v1_pids), (None, None));
        // A bind mount of a subtree: paths inside it map through its root; outside, none.
        let bind = parse_mounts("50 22 0:23 /system.slice /mnt/cg rw - cgroup2 cgroup2 rw\n");
        let inside = locate(&bind, &parse_memberships(PURE_CGROUP));
        assert_eq!(inside.v2.as_deref(), Some(Path::new("/mnt/cg/loom-provisioner.service")));
        let outside = locate(&bind, &parse_memberships("0::/user.slice/x.scope\n"));
        assert_eq!(outside.v2, None);
        let lookalike = locate(&bind, &parse_memberships("0::/system.slice2/x\n"));
        assert_eq!(lookalike.v2, None, "path components, not text, are compared");
        // v1 only (no cgroup2 mounted): no v2 folder.
        let v1_only: Vec<_> = parse_mounts(MIXED_MOUNTS).into_iter().filter(|m| m.v1_options.is_some()).collect();
        assert_eq!(locate(&v1_only, &parse_memberships(MIXED_CGROUP)).v2, None);
    }

    #[test]
    fn controllers_are_read_and_enabled_by_name() {
        let c = V2Controllers::parse("cpuset cpu io memory hugetlb pids rdma misc\n");
        assert_eq!(c, V2Controllers { memory: true, pids: true, cpu: true });
        assert_eq!(c.enable_line(), "+memory +pids +cpu");
        let some = V2Controllers::parse("cpuset io memory");
        assert_eq!(some.enable_line(), "+memory");
        assert!(!V2Controllers::parse("hugetlb").any(), "these machines' unified hierarchy");
    }

    fn limits() -> Limits {
        Limits {
            memory_max: Some(64 << 20),
            pids_max: Some(32),
            cpu_weight: Some(50),
            open_files: None,
            core_size: None,
        }
    }

    #[test]
    fn on_cgroup_v2_with_controllers_every_limit_goes_in_the_plugins_cgroup() {
        let all = V2Controllers { memory: true, pids: true, cpu: true };
        let p = plan(&limits(), all, true, true);
        let v2: Vec<_> = p.v2.iter().map(|(f, v)| format!("{f}={v}")).collect();
        assert_eq!(
            v2,
            ["memory.max=67108864", "memory.swap.max=0", "memory.oom.group=1", "pids.max=32", "cpu.weight=50"]
        );
        assert!(p.v1_memory.is_empty() && p.v1_pids.is_empty() && p.unenforced.is_empty(), "{p:?}");
        assert_eq!(plan(&Limits::default(), all, true, true), Plan::default(), "no limits, nothing written");
    }

    #[test]
    fn on_mixed_hierarchies_memory_and_pids_go_through_v1_and_cpu_weight_is_not_enforced() {
        let p = plan(&limits(), V2Controllers::default(), true, true);
        assert!(p.v2.is_empty());
        let v1: Vec<_> = p.v1_memory.iter().chain(&p.v1_pids).map(|(f, v)| format!("{f}={v}")).collect();
        assert_eq!(v1, ["memory.limit_in_bytes=67108864", "memory.memsw.limit_in_bytes=67108864", "pids.max=32"]);
        assert_eq!(p.unenforced.len(), 1);
        assert_eq!(p.unenforced[0].0, "cpuWeight");
        // No controller anywhere: each limit is named.
        let none = plan(&limits(), V2Controllers::default(), false, false);
        let keys: Vec<_> = none.unenforced.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["memoryMax", "pidsMax", "cpuWeight"]);
        // v2 wins where it has the controller.
        let split = plan(&limits(), V2Controllers { memory: false, pids: true, cpu: false }, true, true);
        assert_eq!(split.v2, [("pids.max", "32".to_owned())]);
        assert_eq!(split.v1_memory.len(), 2);
        assert!(split.v1_pids.is_empty());
    }

    #[test]
    fn memory_kills_are_read_from_v2_events_and_v1_oom_control() {
        let v2 = "low 0\nhigh 0\nmax 17\noom 2\noom_kill 1\noom_group_kill 1\n";
        assert_eq!(oom_kills(v2), 1);
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"), 3);
        assert_eq!(oom_kills(""), 0);
    }

    /// Why the real-cgroup tests below cannot run here, or `None`.
    fn no_real_cgroups() -> Option<&'static str> {
        if !nix::unistd::geteuid().is_root() {
            return Some("not root");
        }
        let mounts = parse_mounts(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
        if !mounts.iter().any(|m| m.v1_options.is_none()) {
            return Some("no cgroup v2 hierarchy is mounted");
        }
        None
    }

    /// Starts `sh -c script` in `group`, joining it before exec as plugins do.
    async fn start_in(group: &Cgroup, joining: &Joining, script: &str) -> tokio::process::Child {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", script]);
        let setup = crate::core::spawn::ChildSetup { cgroup_procs: joining.fds(), ..Default::default() };
        let child = crate::core::spawn::spawn(cmd, None, setup).await.expect("sh starts");
        // Wait until the shell and what it starts are all in.
        let deadline = Instant::now() + Duration::from_secs(30);
        while procs(group.path()).len() < 3 {
            assert!(Instant::now() < deadline, "the processes never showed in {}", group.path().display());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        child
    }

    #[tokio::test]
    async fn every_way_of_killing_empties_a_cgroup_that_holds_a_setsid_grandchild() {
        if let Some(why) = no_real_cgroups() {
            eprintln!("SKIPPED: {why}");
            return;
        }
        assert!(hierarchy().is_some(), "root with cgroup v2 mounted: the supervisor must make cgroups");
        for (i, how) in [KillBy::CgroupKill, KillBy::Freeze, KillBy::Signals].into_iter().enumerate() {
            let (mut group, joining) = Cgroup::create("unit-kill", i, &Limits::default()).unwrap().unwrap();
            if how == KillBy::CgroupKill && group.kill_by != how {
                eprintln!("no cgroup.kill on this kernel; testing the others");
                continue;
            }
            group.kill_by = how;
            let mut child = start_in(&group, &joining, "setsid sleep 600 & sleep 600 & wait").await;
            let inside = procs(group.path());
            assert!(inside.contains(&(child.id().unwrap() as i32)), "{inside:?}");
            group.kill();
            assert!(group.wait_empty(Duration::from_secs(30)).await, "{how:?} left {:?}", procs(group.path()));
            let _ = child.wait().await;
            for pid in inside {
                let gone = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "));
                assert!(gone, "{how:?}: process {pid} survived");
            }
            let path = group.path().to_path_buf();
            group.remove().unwrap();
            assert!(!path.exists(), "{how:?}: {} is removed", path.display());
        }
    }

    #[tokio::test]
    async fn a_cgroup_left_under_the_same_name_is_emptied_before_a_new_process_joins() {
        if let Some(why) = no_real_cgroups() {
            eprintln!("SKIPPED: {why}");
            return;
        }
        // A supervisor that had this pid before left a cgroup with a process in it.
        let (old, joining) = Cgroup::create("unit-reused", 0, &Limits::default()).unwrap().unwrap();
        let mut child = start_in(&old, &joining, "setsid sleep 600 & sleep 600 & wait").await;
        let leftover = procs(old.path());
        let (dir, name) = (old.path().to_path_buf(), old.path().file_name().unwrap().to_string_lossy().into_owned());
        std::mem::forget(old); // as if its supervisor died: nothing kills or removes it
        let h = hierarchy().unwrap();
        let mut new = Cgroup { dirs: Vec::new(), kill_by: h.kill_by, memory: None, removed: false };
        let made = new.make(h, &h.base, &name, &[], &mut Vec::new()).unwrap();
        assert_eq!(made, dir);
        assert!(procs(&made).is_empty(), "the new process would share a cgroup with {leftover:?}");
        let _ = child.wait().await;
        new.kill();
        new.remove().unwrap();
    }

    #[tokio::test]
    async fn a_dropped_cgroup_is_killed_and_removed() {
        if let Some(why) = no_real_cgroups() {
            eprintln!("SKIPPED: {why}");
            return;
        }
        let (group, joining) = Cgroup::create("unit-drop", 0, &Limits::default()).unwrap().unwrap();
        let mut child = start_in(&group, &joining, "setsid sleep 600 & sleep 600 & wait").await;
        let path = group.path().to_path_buf();
        drop(group);
        let _ = child.wait().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while path.exists() {
            assert!(Instant::now() < deadline, "{} is still there", path.display());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
