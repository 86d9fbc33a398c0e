//! Whether a file the supervisor runs, or takes its orders from, can be trusted — decided
//! as sshd's `StrictModes` decides it: the file, and every folder on its way from `/`, must
//! be owned by root or by the user the supervisor runs as, and writable by no one else.
//! Anyone else who could write one of them could change what the supervisor runs (as
//! root, when it runs as root).
//!
//! Symbolic links are followed one name at a time, so the folders holding each link and
//! every folder on the way to its target are checked as well. A folder writable by every
//! user is refused even with the sticky bit (as sshd refuses it): keep plugins and the data
//! folder out of /tmp.
//!
//! Only metadata is read, never contents, and messages name files, never what is in them.
//! A check passes or refuses; it never changes anything on disk.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// What a checked path must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A folder (the data folder).
    Folder,
    /// A regular file the supervisor reads (a manifest) or a plugin loads (a script).
    File,
    /// A regular file the supervisor executes: also executable by its owner, and without
    /// set-user-ID or set-group-ID bits.
    Executable,
    /// A regular file holding a secret (the API token): also not readable by other users,
    /// nor by a group other than the daemon's own.
    Secret,
}

/// Why a path cannot be trusted: what is wrong, with which file, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Untrusted(pub String);

/// The most symbolic links followed for one path (Linux's own limit).
const MAX_LINKS: usize = 40;

/// The users whose files the supervisor trusts: root and the one it runs as.
#[derive(Debug, Clone, Copy)]
pub struct Owners {
    /// The supervisor's effective user id.
    pub uid: u32,
    /// The supervisor's effective group id (a secret may be readable by this group).
    pub gid: u32,
}

impl Owners {
    /// Root and the user this process runs as.
    pub fn current() -> Owners {
        Owners { uid: nix::unistd::geteuid().as_raw(), gid: nix::unistd::getegid().as_raw() }
    }

    fn trusts(self, uid: u32) -> bool {
        uid == 0 || uid == self.uid
    }

    /// "root", or "root or loom-provisioner".
    fn describe(self) -> String {
        if self.uid == 0 { "root".into() } else { format!("root or {}", user_name(self.uid)) }
    }
}

/// Checks `path` as [`Kind`] says, and every folder on its way from `/`, following
/// symbolic links. Returns the path with every link resolved (the file that was checked).
///
/// # Errors
/// [`Untrusted`], naming the file or folder at fault, what is wrong with it and the fix;
/// also when a name on the way does not exist or cannot be read.
pub fn check(path: &Path, kind: Kind) -> Result<PathBuf, Untrusted> {
    check_for(path, kind, Owners::current())
}

/// [`check`], trusting `owners`.
///
/// # Errors
/// As [`check`].
pub fn check_for(path: &Path, kind: Kind, owners: Owners) -> Result<PathBuf, Untrusted> {
    let asked = std::path::absolute(path).map_err(|e| Untrusted(format!("cannot check {}: {e}", path.display())))?;
    let mut resolved = PathBuf::from("/");
    let mut pending: VecDeque<OsString> = names(&asked).into();
    let mut links = 0;
    let walk = Walk { asked: &asked, owners };
    walk.entry(&resolved, Kind::Folder)?;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            // `resolved` holds no links, so its parent is the real parent (already checked).
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&name);
        let md = std::fs::symlink_metadata(&candidate).map_err(|e| walk.unreadable(&candidate, &e))?;
        if md.file_type().is_symlink() {
            // The link sits in `resolved`, a checked folder: only a trusted user can
            // replace it. Its target is walked name by name like the rest.
            links += 1;
            if links > MAX_LINKS {
                return Err(Untrusted(format!(
                    "{}: more than {MAX_LINKS} symbolic links on the way (a loop?)",
                    asked.display()
                )));
            }
            let target = std::fs::read_link(&candidate).map_err(|e| walk.unreadable(&candidate, &e))?;
            if target.has_root() {
                resolved = PathBuf::from("/");
            }
            for n in names(&target).into_iter().rev() {
                pending.push_front(n);
            }
            continue;
        }
        resolved = candidate;
        if !pending.is_empty() {
            walk.check_metadata(&resolved, &md, Kind::Folder)?;
        }
    }
    walk.entry(&resolved, kind)?;
    Ok(resolved)
}

/// The names of `path`, `..` kept (it is resolved against the real folder, not the text).
fn names(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

struct Walk<'a> {
    asked: &'a Path,
    owners: Owners,
}

impl Walk<'_> {
    fn entry(&self, path: &Path, kind: Kind) -> Result<(), Untrusted> {
        let md = std::fs::symlink_metadata(path).map_err(|e| self.unreadable(path, &e))?;
        self.check_metadata(path, &md, kind)
    }

    fn unreadable(&self, path: &Path, e: &std::io::Error) -> Untrusted {
        if e.kind() == std::io::ErrorKind::NotFound {
            Untrusted(format!("{} does not exist", self.subject(path)))
        } else {
            Untrusted(format!("cannot read {}: {e}", self.subject(path)))
        }
    }

    /// How to name `path` in a message: itself, or a folder on the way to the file asked
    /// about, or where that file leads through links.
    fn subject(&self, path: &Path) -> String {
        if path == self.asked {
            path.display().to_string()
        } else if self.asked.starts_with(path) {
            format!("{}, a folder on the way to {},", path.display(), self.asked.display())
        } else {
            format!("{} (on the way to {} through symbolic links)", path.display(), self.asked.display())
        }
    }

    fn check_metadata(&self, path: &Path, md: &Metadata, kind: Kind) -> Result<(), Untrusted> {
        let who = self.subject(path);
        let fail = |text: String| Err(Untrusted(text));
        let shown = path.display();
        let mode = md.permissions().mode() & 0o7777;
        match kind {
            Kind::Folder if !md.is_dir() => return fail(format!("{who} is not a folder")),
            Kind::File | Kind::Executable | Kind::Secret if md.is_dir() => {
                return fail(format!("{who} is a folder, not a file"));
            }
            Kind::File | Kind::Executable | Kind::Secret if !md.is_file() => {
                return fail(format!("{who} is not a regular file"));
            }
            _ => {}
        }
        if !self.owners.trusts(md.uid()) {
            return fail(format!(
                "{who} is owned by {} (uid {}), not by {}, so that user could change what the supervisor runs; fix: chown root {shown} (or move it)",
                user_name(md.uid()),
                md.uid(),
                self.owners.describe()
            ));
        }
        if mode & 0o002 != 0 && mode & 0o1000 != 0 && md.is_dir() {
            return fail(format!(
                "{who} is writable by every user (mode {mode:04o}); the sticky bit does not make it a safe place: move {} to a folder only {} can write",
                self.asked.display(),
                self.owners.describe()
            ));
        }
        if mode & 0o022 != 0 {
            let by = match (mode & 0o020 != 0, mode & 0o002 != 0) {
                (true, true) => "its group and every user",
                (true, false) => "its group",
                _ => "every user",
            };
            return fail(format!(
                "{who} is writable by {by} (mode {mode:04o}), so they could change what the supervisor runs; fix: chmod go-w {shown}"
            ));
        }
        match kind {
            Kind::Executable if mode & 0o6000 != 0 => fail(format!(
                "{who} has the set-user-ID or set-group-ID bit (mode {mode:04o}), which no plugin needs; fix: chmod ug-s {shown}"
            )),
            Kind::Executable if mode & 0o100 == 0 => {
                fail(format!("{who} is not executable (mode {mode:04o}); fix: chmod u+x {shown}"))
            }
            Kind::Secret if mode & 0o004 != 0 => fail(format!(
                "{who} is readable by every user (mode {mode:04o}); fix: chmod 0600 {shown} (or 0640 with the daemon's group)"
            )),
            Kind::Secret if mode & 0o040 != 0 && md.gid() != self.owners.gid && md.gid() != 0 => fail(format!(
                "{who} is readable by group {} (mode {mode:04o}), which the daemon does not run as; fix: chmod g-r {shown}, or chgrp it to the daemon's group",
                group_name(md.gid())
            )),
            _ => Ok(()),
        }
    }
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name)
}

fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| format!("gid {gid}"), |g| g.name)
}

/// A temporary folder in a place the checks trust, for tests: `target/tmp` of this build
/// (the system's /tmp is writable by every user, so nothing under it passes).
#[cfg(test)]
pub(crate) fn test_dir() -> tempfile::TempDir {
    // target/<profile>/deps/<test binary> -> target/tmp
    let exe = std::env::current_exe().expect("current_exe");
    let base = exe.ancestors().nth(3).expect("target folder").join("tmp");
    std::fs::create_dir_all(&base).expect("target/tmp");
    tempfile::tempdir_in(base).expect("tempdir")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn file(p: &Path, mode: u32) -> PathBuf {
        std::fs::write(p, "#!/bin/sh\n").unwrap();
        chmod(p, mode);
        p.to_path_buf()
    }

    fn refused(path: &Path, kind: Kind) -> String {
        check(path, kind).expect_err(&path.display().to_string()).0
    }

    /// The tests build files owned by the user running them; when that is not root, that
    /// user is who the checks trust.
    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn a_safe_file_passes_and_comes_back_resolved() {
        let d = test_dir();
        let exe = file(&d.path().join("plugin"), 0o755);
        assert_eq!(check(&exe, Kind::Executable).unwrap(), exe);
        symlink("plugin", d.path().join("link")).unwrap();
        assert_eq!(check(&d.path().join("link"), Kind::Executable).unwrap(), exe);
        assert_eq!(check(d.path(), Kind::Folder).unwrap(), d.path());
        // System paths through links (/bin -> usr/bin on merged-/usr systems).
        assert!(check(Path::new("/bin/sh"), Kind::Executable).is_ok());
    }

    #[test]
    fn writable_files_and_folders_are_refused_with_the_fix() {
        let d = test_dir();
        let exe = file(&d.path().join("plugin"), 0o777);
        let why = refused(&exe, Kind::Executable);
        assert!(why.contains("writable by its group and every user (mode 0777)"), "{why}");
        assert!(why.ends_with(&format!("fix: chmod go-w {}", exe.display())), "{why}");
        chmod(&exe, 0o775);
        assert!(refused(&exe, Kind::Executable).contains("writable by its group (mode 0775)"));
        chmod(&exe, 0o755);

        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let inner = file(&sub.join("plugin"), 0o755);
        chmod(&sub, 0o757);
        let why = refused(&inner, Kind::Executable);
        assert!(why.starts_with(&format!("{}, a folder on the way to {}", sub.display(), inner.display())), "{why}");
        assert!(why.contains(&format!("fix: chmod go-w {}", sub.display())), "{why}");
    }

    #[test]
    fn a_sticky_world_writable_folder_is_refused_too() {
        let d = test_dir();
        let sticky = d.path().join("sticky");
        std::fs::create_dir(&sticky).unwrap();
        let inner = file(&sticky.join("plugin"), 0o755);
        chmod(&sticky, 0o1777);
        let why = refused(&inner, Kind::Executable);
        assert!(why.contains("sticky bit does not make it a safe place"), "{why}");
        assert!(why.contains(&format!("move {}", inner.display())), "{why}");
        // The system's /tmp is such a folder.
        assert!(refused(Path::new("/tmp"), Kind::Folder).contains("sticky"));
    }

    #[test]
    fn files_of_other_users_are_refused() {
        if me() != 0 {
            eprintln!("SKIPPED: giving a file to another user needs root");
            return;
        }
        let d = test_dir();
        let exe = file(&d.path().join("plugin"), 0o755);
        std::os::unix::fs::chown(&exe, Some(65534), None).unwrap();
        let why = refused(&exe, Kind::Executable);
        assert!(why.contains("owned by nobody (uid 65534), not by root"), "{why}");
        assert!(why.ends_with(&format!("fix: chown root {} (or move it)", exe.display())), "{why}");
        // The supervisor's own user is trusted when it is not root.
        assert!(check_for(&exe, Kind::Executable, Owners { uid: 65534, gid: 65534 }).is_ok());
    }

    #[test]
    fn links_are_followed_and_their_targets_checked() {
        let d = test_dir();
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        let target = file(&open.join("real"), 0o755);
        chmod(&open, 0o777);
        let plugin = d.path().join("plugin");
        std::fs::create_dir(&plugin).unwrap();
        let link = plugin.join("exe");
        symlink(&target, &link).unwrap();
        let why = refused(&link, Kind::Executable);
        assert!(why.starts_with(&format!("{} (on the way to {}", open.display(), link.display())), "{why}");

        // A writable target file behind a link in a safe folder.
        chmod(&open, 0o755);
        chmod(&target, 0o666);
        let why = refused(&link, Kind::Executable);
        assert!(why.contains(&format!("fix: chmod go-w {}", target.display())), "{why}");

        // A link in an unsafe folder, to a safe file: the link could be replaced.
        chmod(&target, 0o755);
        let hop = open.join("hop");
        symlink(&target, &hop).unwrap();
        chmod(&open, 0o777);
        std::fs::remove_file(&link).unwrap();
        symlink(&hop, &link).unwrap();
        assert!(refused(&link, Kind::Executable).contains(&format!("fix: chmod go-w {}", open.display())));

        // Dangling links and loops.
        chmod(&open, 0o755);
        symlink(d.path().join("nowhere"), plugin.join("dangling")).unwrap();
        assert!(refused(&plugin.join("dangling"), Kind::Executable).contains("nowhere"));
        symlink("loop", plugin.join("loop")).unwrap();
        assert!(refused(&plugin.join("loop"), Kind::Executable).contains("a loop?"));
    }

    #[test]
    fn executables_need_the_bit_and_no_setuid() {
        let d = test_dir();
        let exe = file(&d.path().join("plugin"), 0o4755);
        let why = refused(&exe, Kind::Executable);
        assert!(why.contains("set-user-ID") && why.contains("fix: chmod ug-s"), "{why}");
        chmod(&exe, 0o2755);
        assert!(refused(&exe, Kind::Executable).contains("chmod ug-s"));
        chmod(&exe, 0o644);
        assert!(refused(&exe, Kind::Executable).contains("not executable"));
        assert!(check(&exe, Kind::File).is_ok(), "a script an interpreter loads needs no bit");
        assert!(refused(d.path(), Kind::Executable).contains("is a folder, not a file"));
        assert!(refused(&exe, Kind::Folder).contains("is not a folder"));
    }

    #[test]
    fn secrets_must_not_be_readable_by_others() {
        let d = test_dir();
        let token = file(&d.path().join("token"), 0o644);
        let why = refused(&token, Kind::Secret);
        assert!(why.contains("readable by every user") && why.contains("fix: chmod 0600"), "{why}");
        chmod(&token, 0o600);
        assert!(check(&token, Kind::Secret).is_ok());
        chmod(&token, 0o640);
        // Readable by the daemon's own group (or root's) is how a service account reads it.
        assert!(check(&token, Kind::Secret).is_ok());
        if me() == 0 {
            std::os::unix::fs::chown(&token, None, Some(65534)).unwrap();
            let why = check_for(&token, Kind::Secret, Owners { uid: 0, gid: 0 }).unwrap_err().0;
            assert!(why.contains("readable by group nogroup") && why.contains("chmod g-r"), "{why}");
        }
    }
}
