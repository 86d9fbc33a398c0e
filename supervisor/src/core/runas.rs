//! Whom a plugin runs as.
//!
//! When the supervisor runs as root, each plugin runs as the user (and group) its manifest
//! names in `user` and `group`, else as the configured default (`[defaults] user` and
//! `group` in the daemon's configuration, `--plugin-user` and `--plugin-group` on the
//! command line); never as root unless its own manifest says `"user": "root"`. A plugin
//! with no user anywhere does not run, and the reason names the keys to set. Names are
//! looked up before the process is forked (the child only makes system calls), and again
//! at every start, so a changed user database applies at the next start.
//!
//! When the supervisor is not root it cannot switch users: every plugin runs as the
//! supervisor's own user, and a manifest naming someone else gets a warning.

use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User};

/// Where a name was set, for messages that say which key to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The plugin's manifest (`user`, `group`).
    Manifest,
    /// `[defaults]` in the daemon's configuration.
    Config,
    /// `--plugin-user`, `--plugin-group`.
    CommandLine,
}

impl Origin {
    /// The key that set `what` ("user" or "group").
    pub fn key(self, what: &str) -> String {
        match self {
            Origin::Manifest => format!("\"{what}\" in the manifest"),
            Origin::Config => format!("`{what}` under [defaults] in the daemon's configuration"),
            Origin::CommandLine => format!("--plugin-{what}"),
        }
    }
}

/// A user or group name (or number), and where it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The name, or a number.
    pub name: String,
    /// Where it was set.
    pub origin: Origin,
}

/// Whom a plugin should run as, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunAs {
    /// The user; `None` when nothing names one.
    pub user: Option<Setting>,
    /// The group; `None` for the user's own group.
    pub group: Option<Setting>,
}

impl RunAs {
    /// The defaults given by `origin`.
    pub fn defaults(user: Option<String>, group: Option<String>, origin: Origin) -> RunAs {
        RunAs { user: user.map(|name| Setting { name, origin }), group: group.map(|name| Setting { name, origin }) }
    }

    /// A manifest's `user` and `group` over `defaults`. A manifest that names a user gets
    /// that user's own group unless it names a group too: the default group belongs with
    /// the default user.
    pub fn merge(user: Option<String>, group: Option<String>, defaults: &RunAs) -> RunAs {
        let group = group.map(|name| Setting { name, origin: Origin::Manifest });
        match user {
            Some(name) => RunAs { user: Some(Setting { name, origin: Origin::Manifest }), group },
            None => RunAs { user: defaults.user.clone(), group: group.or_else(|| defaults.group.clone()) },
        }
    }

    /// `nobody`, `nobody:daemon`, or `None` when nothing is configured.
    pub fn describe(&self) -> Option<String> {
        let user = self.user.as_ref().map(|u| u.name.as_str());
        match (user, &self.group) {
            (None, None) => None,
            (u, None) => u.map(str::to_owned),
            (u, Some(g)) => Some(format!("{}:{}", u.unwrap_or(""), g.name)),
        }
    }
}

/// A user to switch to for one start, looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id.
    pub uid: u32,
    /// The group id; supplementary groups are cleared.
    pub gid: u32,
    /// The user's name (for `USER` and `LOGNAME`).
    pub user: String,
    /// The user's home (for `HOME`).
    pub home: PathBuf,
}

/// How a plugin will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// As `Identity` (the supervisor is root).
    Switch(Identity),
    /// As the supervisor's own user; the note says why a configured user is not used.
    Stay {
        /// A warning for the log, when the configuration names someone else.
        note: Option<String>,
    },
}

/// Shown when the supervisor is root and nothing names a user.
pub const NO_USER: &str = "the supervisor runs as root, and plugins run as root only when their manifest says \"user\": \"root\"; \
     name the user this plugin should run as: \"user\" in its manifest, `user` under [defaults] in the daemon's configuration, \
     or --plugin-user for run, plugins, check and cluster";

/// Why a plugin may not run as configured. Each message names the key to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunAsError {
    /// The supervisor is root and nothing names a user ([`NO_USER`]).
    #[error("{}", NO_USER)]
    NoUser,
    /// A default (not the plugin's manifest) names root, found when a plugin starts.
    #[error(
        "{} names root, and plugins run as root only when their own manifest says \"user\": \"root\"; name an unprivileged user there",
        .0.key("user")
    )]
    RootUser(Origin),
    /// A default (not the plugin's manifest) names the root group, found when a plugin
    /// starts.
    #[error("{} names the root group, which only a plugin's own manifest may ask for", .0.key("group"))]
    RootGroup(Origin),
    /// A default names root, found when the defaults are checked ([`check_defaults`]).
    #[error("{} names root; plugins run as root only when their own manifest says \"user\": \"root\"", .0.key("user"))]
    RootUserDefault(Origin),
    /// A default names the root group, found when the defaults are checked
    /// ([`check_defaults`]).
    #[error("{} names the root group; only a plugin's own manifest may", .0.key("group"))]
    RootGroupDefault(Origin),
    /// No such user on this host.
    #[error(
        "user {:?} ({}) does not exist on this host; create it (useradd --system {}) or name another",
        .0.name,
        .0.origin.key("user"),
        .0.name
    )]
    UnknownUser(Setting),
    /// No such group on this host.
    #[error("group {:?} ({}) does not exist on this host", .0.name, .0.origin.key("group"))]
    UnknownGroup(Setting),
    /// The user database could not be read.
    #[error("cannot look up user {:?} ({}): {source}", setting.name, setting.origin.key("user"))]
    UserLookup {
        /// The name, and where it was set.
        setting: Setting,
        /// Why.
        source: nix::Error,
    },
    /// The group database could not be read.
    #[error("cannot look up group {:?} ({}): {source}", setting.name, setting.origin.key("group"))]
    GroupLookup {
        /// The name, and where it was set.
        setting: Setting,
        /// Why.
        source: nix::Error,
    },
}

/// Decides how a plugin configured with `run_as` runs now, looking names up.
///
/// # Errors
/// [`RunAsError`], as root only: no user configured, a user or group that does not exist
/// or cannot be looked up, or root named by a default rather than by the manifest.
pub fn resolve(run_as: &RunAs) -> Result<Plan, RunAsError> {
    resolve_as(run_as, nix::unistd::geteuid().as_raw())
}

fn resolve_as(run_as: &RunAs, euid: u32) -> Result<Plan, RunAsError> {
    if euid != 0 {
        return Ok(Plan::Stay { note: stay_note(run_as, euid) });
    }
    let Some(user) = &run_as.user else { return Err(RunAsError::NoUser) };
    let pw = lookup_user(user)?;
    if pw.uid.is_root() && user.origin != Origin::Manifest {
        return Err(RunAsError::RootUser(user.origin));
    }
    let gid = match &run_as.group {
        None => pw.gid.as_raw(),
        Some(g) => {
            let gr = lookup_group(g)?;
            if gr.gid.as_raw() == 0 && g.origin != Origin::Manifest {
                return Err(RunAsError::RootGroup(g.origin));
            }
            gr.gid.as_raw()
        }
    };
    Ok(Plan::Switch(Identity { uid: pw.uid.as_raw(), gid, user: pw.name, home: pw.dir }))
}

/// Checks defaults before they are used: each name exists and is not root.
///
/// # Errors
/// [`RunAsError`]: a name that does not exist or cannot be looked up, or root ([`RunAsError::RootUserDefault`],
/// [`RunAsError::RootGroupDefault`]); the message names the key.
pub fn check_defaults(run_as: &RunAs) -> Result<(), RunAsError> {
    if let Some(u) = &run_as.user
        && lookup_user(u)?.uid.is_root()
    {
        return Err(RunAsError::RootUserDefault(u.origin));
    }
    if let Some(g) = &run_as.group
        && lookup_group(g)?.gid.as_raw() == 0
    {
        return Err(RunAsError::RootGroupDefault(g.origin));
    }
    Ok(())
}

/// Not root: say so when the configuration names a user other than the supervisor's own
/// (asking for root without being root is the usual way to run in a checkout, so no note).
fn stay_note(run_as: &RunAs, euid: u32) -> Option<String> {
    let user = run_as.user.as_ref()?;
    let named = lookup_user(user).ok();
    if named.as_ref().is_some_and(|pw| pw.uid.is_root() || pw.uid.as_raw() == euid) {
        return None;
    }
    let me = User::from_uid(Uid::from_raw(euid)).ok().flatten().map_or_else(|| format!("uid {euid}"), |u| u.name);
    Some(format!(
        "{} names user {:?}, but the supervisor is not root and cannot switch users: the plugin runs as {me}",
        user.origin.key("user"),
        user.name
    ))
}

fn lookup_user(s: &Setting) -> Result<User, RunAsError> {
    let found = match s.name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(&s.name),
    };
    match found {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(RunAsError::UnknownUser(s.clone())),
        Err(source) => Err(RunAsError::UserLookup { setting: s.clone(), source }),
    }
}

fn lookup_group(s: &Setting) -> Result<Group, RunAsError> {
    let found = match s.name.parse::<u32>() {
        Ok(gid) => Group::from_gid(Gid::from_raw(gid)),
        Err(_) => Group::from_name(&s.name),
    };
    match found {
        Ok(Some(g)) => Ok(g),
        Ok(None) => Err(RunAsError::UnknownGroup(s.clone())),
        Err(source) => Err(RunAsError::GroupLookup { setting: s.clone(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(user: Option<&str>, group: Option<&str>) -> RunAs {
        RunAs::merge(user.map(str::to_owned), group.map(str::to_owned), &RunAs::default())
    }

    #[test]
    fn as_root_a_named_user_runs_with_its_own_group_and_home() {
        let Plan::Switch(id) = resolve_as(&manifest(Some("nobody"), None), 0).unwrap() else { panic!() };
        assert_eq!((id.uid, id.gid, id.user.as_str()), (65534, 65534, "nobody"));
        assert_eq!(id.home, PathBuf::from("/nonexistent"));
        let Plan::Switch(id) = resolve_as(&manifest(Some("65534"), Some("daemon")), 0).unwrap() else { panic!() };
        assert_eq!((id.uid, id.gid), (65534, 1));
        let Plan::Switch(id) = resolve_as(&manifest(Some("root"), None), 0).unwrap() else { panic!() };
        assert_eq!((id.uid, id.gid), (0, 0), "the manifest may ask for root");
    }

    #[test]
    fn as_root_without_a_user_nothing_runs() {
        let why = resolve_as(&RunAs::default(), 0).unwrap_err().to_string();
        assert!(why.contains("[defaults]") && why.contains("--plugin-user") && why.contains("\"user\": \"root\""));
        // A group alone is not a user.
        assert!(resolve_as(&manifest(None, Some("daemon")), 0).is_err());
    }

    #[test]
    fn defaults_apply_but_never_make_a_plugin_root() {
        let defaults = RunAs::defaults(Some("nobody".into()), Some("daemon".into()), Origin::Config);
        let merged = RunAs::merge(None, None, &defaults);
        let Plan::Switch(id) = resolve_as(&merged, 0).unwrap() else { panic!() };
        assert_eq!((id.uid, id.gid), (65534, 1));
        // A manifest's own user brings its own group, not the default one.
        let Plan::Switch(id) = resolve_as(&RunAs::merge(Some("nobody".into()), None, &defaults), 0).unwrap() else {
            panic!()
        };
        assert_eq!(id.gid, 65534);

        for origin in [Origin::Config, Origin::CommandLine] {
            let root = RunAs::defaults(Some("root".into()), None, origin);
            let why = resolve_as(&RunAs::merge(None, None, &root), 0).unwrap_err().to_string();
            assert!(why.contains("names root") && why.contains(&origin.key("user")), "{why}");
            assert!(check_defaults(&root).unwrap_err().to_string().contains("names root"));
            let zero = RunAs::defaults(Some("nobody".into()), Some("0".into()), origin);
            assert!(resolve_as(&zero, 0).unwrap_err().to_string().contains("root group"));
            assert!(check_defaults(&zero).is_err());
        }
        assert!(check_defaults(&defaults).is_ok());
    }

    #[test]
    fn unknown_names_say_which_key_set_them() {
        let why = resolve_as(&manifest(Some("no-such-user-x"), None), 0).unwrap_err().to_string();
        assert!(why.contains("\"no-such-user-x\" (\"user\" in the manifest) does not exist"), "{why}");
        let why = resolve_as(&manifest(Some("nobody"), Some("no-such-group-x")), 0).unwrap_err().to_string();
        assert!(why.contains("group \"no-such-group-x\""), "{why}");
        let cli = RunAs::defaults(Some("no-such-user-x".into()), None, Origin::CommandLine);
        assert!(check_defaults(&cli).unwrap_err().to_string().contains("--plugin-user"));
    }

    #[test]
    fn not_root_plugins_run_as_the_supervisor_and_a_foreign_user_is_noted() {
        assert_eq!(resolve_as(&RunAs::default(), 1000).unwrap(), Plan::Stay { note: None });
        assert_eq!(resolve_as(&manifest(Some("root"), None), 1000).unwrap(), Plan::Stay { note: None });
        assert_eq!(resolve_as(&manifest(Some("nobody"), None), 65534).unwrap(), Plan::Stay { note: None });
        let Plan::Stay { note: Some(note) } = resolve_as(&manifest(Some("nobody"), None), 1000).unwrap() else {
            panic!()
        };
        assert!(note.contains("cannot switch users"), "{note}");
    }
}
