//! Finds plugins: `<dir>/providers/<name>/<name>.json` and `<dir>/automators/<name>/<name>.json`,
//! the layout of Loom's seed, and Coopr's `<dir>/<name>/<name>.json` for manifests that
//! declare their types ([`crate::core::manifest_shape`]). One bad manifest is reported and
//! skipped; it never stops the others from loading. A plugin whose files cannot be
//! trusted, or that has no user to run as, registers as not runnable with the reason
//! ([`crate::core::vet`]); so does a Ruby plugin whose libraries are not installed
//! ([`crate::core::ruby`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use loom_protocol::PluginKind;
use serde_json::Value;

use crate::core::manifest::{self, Defaults, Entry, PluginSpec};
use crate::core::manifest_shape::{self, Declared};
use crate::core::trust::{self, Kind};

/// Every plugin found, runnable or not, and every problem met on the way.
#[derive(Debug, Default)]
pub struct Registry {
    /// Sorted by kind, then name.
    pub plugins: Vec<Registered>,
    /// Bad files and keys, in the order they were found.
    pub problems: Vec<Problem>,
    defaults: Defaults,
}

/// One registered plugin.
#[derive(Debug, Clone)]
pub struct Registered {
    /// Its name.
    pub name: String,
    /// Provider or automator.
    pub kind: PluginKind,
    /// Its manifest.
    pub manifest: PathBuf,
    /// Whether it can run.
    pub availability: Availability,
}

/// Whether a registered plugin can run, and if not, why.
#[derive(Debug, Clone)]
pub enum Availability {
    /// Ready to start.
    Runnable(Arc<PluginSpec>),
    /// Known but not runnable; the text says why.
    NotRunnable(String),
}

/// A problem found while loading, naming the file and (when it is about one) the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file or folder.
    pub file: PathBuf,
    /// The plugin entry it is about, when known.
    pub plugin: Option<String>,
    /// The key inside the entry, when it is about one.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// Whether the plugin could still load.
    pub severity: Severity,
}

/// How bad a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The plugin (or file) was not loaded.
    Error,
    /// Loaded anyway.
    Warning,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(p) = &self.plugin {
            write!(f, ": plugin {p:?}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ": key {k:?}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A plugins folder that cannot be read at all.
#[derive(Debug, thiserror::Error)]
#[error("plugins folder {}: {source}", dir.display())]
pub struct LoadError {
    /// The folder.
    pub dir: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

impl Registry {
    /// Scans `dirs` in order. A plugin name seen twice for the same kind keeps the first.
    ///
    /// # Errors
    /// Only when one of `dirs` cannot be read at all; problems inside it are collected in
    /// [`Registry::problems`].
    pub fn load(dirs: &[PathBuf]) -> Result<Registry, LoadError> {
        Registry::load_with(dirs, &Defaults::default())
    }

    /// [`Registry::load_with`], then logs each problem found at its severity: what the
    /// daemon and the commands that start plugins do.
    ///
    /// # Errors
    /// As [`Registry::load`].
    pub fn load_logged(dirs: &[PathBuf], defaults: &Defaults) -> Result<Registry, LoadError> {
        let registry = Registry::load_with(dirs, defaults)?;
        for p in &registry.problems {
            match p.severity {
                Severity::Error => tracing::error!("{p}"),
                Severity::Warning => tracing::warn!("{p}"),
            }
        }
        Ok(registry)
    }

    /// [`Registry::load`], with `defaults` for the keys manifests leave out.
    ///
    /// # Errors
    /// As [`Registry::load`].
    pub fn load_with(dirs: &[PathBuf], defaults: &Defaults) -> Result<Registry, LoadError> {
        let mut reg = Registry { defaults: defaults.clone(), ..Registry::default() };
        for dir in dirs {
            std::fs::read_dir(dir).map_err(|source| LoadError { dir: dir.clone(), source })?;
            let mut found_any = false;
            for kind in [PluginKind::Provider, PluginKind::Automator] {
                let kind_dir = dir.join(format!("{kind}s"));
                if kind_dir.is_dir() {
                    found_any = true;
                    reg.scan_plugin_folders(&kind_dir, Some(kind));
                }
            }
            // Coopr's newer layout: <dir>/<plugin>/<plugin>.json, the kinds in the files.
            if !found_any {
                found_any = reg.scan_plugin_folders(dir, None);
            }
            if !found_any {
                reg.problems.push(Problem {
                    file: dir.clone(),
                    plugin: None,
                    key: None,
                    message: "has neither a providers/ nor an automators/ folder, nor plugin folders whose manifests \
                              declare providertypes or automatortypes; no plugins here"
                        .into(),
                    severity: Severity::Warning,
                });
            }
        }
        reg.mark_missing_ruby_libraries();
        reg.plugins.sort_by(|a, b| (a.kind.as_str(), &a.name).cmp(&(b.kind.as_str(), &b.name)));
        Ok(reg)
    }

    /// The plugin of `kind` named `name`.
    pub fn get(&self, kind: PluginKind, name: &str) -> Option<&Registered> {
        self.plugins.iter().find(|p| p.kind == kind && p.name == name)
    }

    /// Names of the registered plugins of `kind`, sorted.
    pub fn names(&self, kind: PluginKind) -> Vec<&str> {
        self.plugins.iter().filter(|p| p.kind == kind).map(|p| p.name.as_str()).collect()
    }

    /// Loads the manifests of every folder in `parent`, whose kind (when it is a
    /// `providers/` or `automators/` folder) is `kind`. Without a kind, only manifests that
    /// declare their types are taken. Whether any manifest was found.
    fn scan_plugin_folders(&mut self, parent: &Path, kind: Option<PluginKind>) -> bool {
        let mut found = false;
        for folder in sorted_entries(parent).into_iter().filter(|p| p.is_dir()) {
            for manifest in self.manifests_in(&folder) {
                if kind.is_none()
                    && !read_json(&manifest).is_ok_and(|v| v.as_object().is_some_and(manifest_shape::is_typed))
                {
                    continue;
                }
                found = true;
                self.load_manifest(&manifest, kind);
            }
        }
        found
    }

    /// `<folder>/<folder name>.json` when it exists; otherwise every JSON file in the
    /// folder that looks like a manifest (Loom read every `*.json`; plugins also keep data
    /// files there, which are skipped rather than reported).
    fn manifests_in(&mut self, folder: &Path) -> Vec<PathBuf> {
        if let Some(name) = folder.file_name() {
            let canonical = folder.join(format!("{}.json", name.to_string_lossy()));
            if canonical.is_file() {
                return vec![canonical];
            }
        }
        sorted_entries(folder)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json") && p.is_file())
            .filter(|p| read_json(p).is_ok_and(|v| manifest_shape::looks_like_manifest(&v)))
            .collect()
    }

    fn load_manifest(&mut self, path: &Path, folder_kind: Option<PluginKind>) {
        let doc = match read_json(path) {
            Ok(doc) => doc,
            Err(message) => return self.error(path, None, None, message),
        };
        let declarations = match manifest_shape::declared(&doc, folder_kind) {
            Ok(d) => d,
            Err(message) => return self.error(path, None, None, message),
        };
        for f in declarations.findings {
            match f.is_error {
                true => self.error(path, Some(&f.plugin), None, f.message),
                false => self.warn(path, &f.plugin, None, f.message),
            }
        }
        // A manifest others can write is not read further: its entries are listed as not
        // runnable, with the reason, whatever they say.
        let untrusted = trust::check(path, Kind::File).err().map(|e| format!("refused to run it: {e}"));
        for Declared { name, kind, body } in declarations.plugins {
            let name = &name.to_owned();
            if let Some(why) = &untrusted {
                self.refuse(path, name, kind, why.clone());
                continue;
            }
            let parsed = manifest::parse_entry_with(name, kind, path, body, &self.defaults);
            for w in parsed.warnings {
                self.problems.push(Problem {
                    file: path.to_path_buf(),
                    plugin: Some(name.clone()),
                    key: Some(w.key),
                    message: w.message,
                    severity: Severity::Warning,
                });
            }
            if let Some(existing) = self.get(kind, name) {
                let message = format!(
                    "a {kind} named {name:?} is already registered by {}; this one is ignored",
                    existing.manifest.display()
                );
                self.error(path, Some(name), None, message);
                continue;
            }
            let availability = match parsed.entry {
                Ok(Entry::Runnable(spec)) => match crate::core::vet::vet(&spec) {
                    Ok(vetted) => {
                        if let Some(note) = vetted.note {
                            self.warn(path, name, None, note);
                        }
                        Availability::Runnable(Arc::from(spec))
                    }
                    Err(why) => {
                        let why = why.to_string();
                        self.error(path, Some(name), None, why.clone());
                        Availability::NotRunnable(why)
                    }
                },
                Ok(Entry::NotRunnable(why)) => {
                    self.error(path, Some(name), None, why.clone());
                    Availability::NotRunnable(why)
                }
                Err(p) => {
                    let key = (!p.key.is_empty()).then_some(p.key.clone());
                    self.problems.push(Problem {
                        file: path.to_path_buf(),
                        plugin: Some(name.clone()),
                        key: key.clone(),
                        message: p.message.clone(),
                        severity: Severity::Error,
                    });
                    let at = key.map(|k| format!("key {k:?}: ")).unwrap_or_default();
                    Availability::NotRunnable(format!("bad manifest {}: {at}{}", path.display(), p.message))
                }
            };
            self.plugins.push(Registered { name: name.clone(), kind, manifest: path.to_path_buf(), availability });
        }
    }

    /// Marks the Ruby plugins whose code needs libraries that are not installed as not
    /// runnable, naming each library with the gem and the package that provide it. Asked
    /// of the Ruby host once per environment the plugins run in (the home of the user
    /// they run as, and the gem paths their manifests set, which decide which gems Ruby
    /// sees); when that fails, they stay runnable and the host reports the same when it
    /// starts.
    fn mark_missing_ruby_libraries(&mut self) {
        let ruby_specs: Vec<Arc<PluginSpec>> = self
            .plugins
            .iter()
            .filter_map(|p| match &p.availability {
                Availability::Runnable(spec) if spec.ruby_class.is_some() => Some(Arc::clone(spec)),
                _ => None,
            })
            .collect();
        let mut groups: BTreeMap<Vec<(String, String)>, Vec<Arc<PluginSpec>>> = BTreeMap::new();
        for spec in ruby_specs {
            groups.entry(gem_environment(&spec)).or_default().push(spec);
        }
        for (env, specs) in groups {
            let Some(host) = specs[0].args.first().map(PathBuf::from) else { continue };
            let mut dirs: Vec<PathBuf> = specs.iter().map(|s| s.dir.clone()).collect();
            dirs.sort();
            dirs.dedup();
            let missing = match crate::core::ruby::missing_libraries(&specs[0].executable, &host, &dirs, &env) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("could not ask loom-ruby-host which Ruby libraries the plugins need: {e}");
                    continue;
                }
            };
            for spec in specs {
                let Some(libs) = missing.get(&spec.dir).filter(|l| !l.is_empty()) else { continue };
                let class = spec.ruby_class.as_deref().unwrap_or_default();
                let why = format!("Ruby plugin (classname {class:?}) cannot load: {}", libs.join("; "));
                self.error(&spec.manifest, Some(&spec.name), None, why.clone());
                if let Some(p) = self.plugins.iter_mut().find(|p| p.kind == spec.kind && p.name == spec.name) {
                    p.availability = Availability::NotRunnable(why);
                }
            }
        }
    }

    /// Registers `name` as not runnable for `why`, unless the name is taken.
    fn refuse(&mut self, path: &Path, name: &str, kind: PluginKind, why: String) {
        if let Some(existing) = self.get(kind, name) {
            let message = format!(
                "a {kind} named {name:?} is already registered by {}; this one is ignored",
                existing.manifest.display()
            );
            return self.error(path, Some(name), None, message);
        }
        self.error(path, Some(name), None, why.clone());
        let availability = Availability::NotRunnable(why);
        self.plugins.push(Registered { name: name.to_owned(), kind, manifest: path.to_path_buf(), availability });
    }

    fn warn(&mut self, file: &Path, plugin: &str, key: Option<&str>, message: String) {
        self.problems.push(Problem {
            file: file.to_path_buf(),
            plugin: Some(plugin.to_owned()),
            key: key.map(str::to_owned),
            message,
            severity: Severity::Warning,
        });
    }

    fn error(&mut self, file: &Path, plugin: Option<&str>, key: Option<&str>, message: String) {
        self.problems.push(Problem {
            file: file.to_path_buf(),
            plugin: plugin.map(str::to_owned),
            key: key.map(str::to_owned),
            message,
            severity: Severity::Error,
        });
    }
}

/// What decides which gems a Ruby plugin sees: `HOME` (user-installed gems) as its process
/// gets it, and the gem and library paths its manifest's `env` sets.
fn gem_environment(spec: &PluginSpec) -> Vec<(String, String)> {
    let home = match crate::core::runas::resolve(&spec.run_as) {
        Ok(crate::core::runas::Plan::Switch(identity)) => Some(identity.home.display().to_string()),
        _ => std::env::var("HOME").ok(),
    };
    let mut env: Vec<(String, String)> = home.map(|h| ("HOME".to_owned(), h)).into_iter().collect();
    for key in ["GEM_HOME", "GEM_PATH", "RUBYLIB"] {
        if let Some(v) = spec.env.get(key) {
            env.push((key.to_owned(), v.clone()));
        }
    }
    env
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    v.sort();
    v
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    crate::wire::json::read_value(&text).map_err(|e| e.to_string())
}

/// The kind named by a folder called `providers` or `automators`, if any.
pub fn kind_of_folder(dir: &Path) -> Option<PluginKind> {
    match dir.file_name()?.to_str()? {
        "providers" => Some(PluginKind::Provider),
        "automators" => Some(PluginKind::Automator),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(root: &Path, rel: &str, text: &str) -> PathBuf {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p
    }

    /// Plugins run as nobody unless their manifest says otherwise.
    fn load(dirs: &[PathBuf]) -> Result<Registry, LoadError> {
        let run_as =
            crate::core::runas::RunAs::defaults(Some("nobody".into()), None, crate::core::runas::Origin::Config);
        Registry::load_with(dirs, &Defaults { run_as, ..Defaults::default() })
    }

    fn reason<'a>(reg: &'a Registry, kind: PluginKind, name: &str) -> &'a str {
        match &reg.get(kind, name).unwrap().availability {
            Availability::NotRunnable(why) => why,
            Availability::Runnable(_) => panic!("{name} is runnable"),
        }
    }

    #[test]
    fn loads_the_seed_layout_and_reports_each_problem_without_stopping() {
        let d = crate::core::trust::test_dir();
        let root = d.path();
        write(root, "providers/good/good.json", r#"{"good": {"executable": "sh"}}"#);
        write(root, "providers/ruby/ruby.json", r#"{"ruby": {"classname": "MyProvider"}}"#);
        write(root, "providers/broken/broken.json", r#"{"broken": {"executable": "sh", "#);
        write(root, "automators/bad/bad.json", r#"{"bad": {"executable": "sh", "instances": "two"}}"#);
        write(root, "automators/shell/shell.json", r#"{"shell": {"executable": "sh", "maxconcurrency": 2}}"#);
        // A data file beside a manifest that is not named after the folder: skipped quietly.
        write(root, "automators/odd/data.json", r#"{"some": "data"}"#);
        write(root, "automators/odd/plugin.json", r#"{"odd": {"executable": "sh"}}"#);

        let reg = load(&[root.to_path_buf()]).unwrap();
        let names: Vec<_> = reg.plugins.iter().map(|p| format!("{}/{}", p.kind, p.name)).collect();
        assert_eq!(names, ["automator/bad", "automator/odd", "automator/shell", "provider/good", "provider/ruby"]);

        let runnable = |kind, name| matches!(reg.get(kind, name).unwrap().availability, Availability::Runnable(_));
        assert!(runnable(PluginKind::Provider, "good"));
        assert!(runnable(PluginKind::Automator, "shell"));
        assert!(runnable(PluginKind::Automator, "odd"));
        // Runs through the Ruby host where Ruby and the host are found; says why not where not.
        match &reg.get(PluginKind::Provider, "ruby").unwrap().availability {
            Availability::Runnable(spec) => assert_eq!(spec.ruby_class.as_deref(), Some("MyProvider")),
            Availability::NotRunnable(why) => assert!(why.contains("MyProvider") && why.contains("Ruby"), "{why}"),
        }
        let Availability::NotRunnable(why) = &reg.get(PluginKind::Automator, "bad").unwrap().availability else {
            panic!()
        };
        assert!(why.contains("bad.json") && why.contains("\"instances\""), "{why}");

        let texts: Vec<String> = reg.problems.iter().map(ToString::to_string).collect();
        assert!(texts.iter().any(|t| t.contains("broken.json") && t.contains("not valid JSON")), "{texts:?}");
        assert!(
            texts
                .iter()
                .any(|t| t.contains("shell.json") && t.contains("\"maxconcurrency\"") && t.contains("did you mean")),
            "{texts:?}"
        );
        assert!(!texts.iter().any(|t| t.contains("data.json")), "{texts:?}");
    }

    #[test]
    fn loom_and_coopr_manifests_register_each_declared_type() {
        let d = crate::core::trust::test_dir();
        let root = d.path();
        // Coopr's fog provider: one file, several types, each its own class. Its "name"
        // and "description" are not plugins.
        write(
            root,
            "providers/fog/fog.json",
            r#"{"name": "fog", "description": "clouds", "providertypes": ["aws", "google"],
                "aws": {"name": "aws", "classname": "FogProviderAWS", "parameters": {"admin": {}}},
                "google": {"name": "google", "executable": "sh", "resourceTypes": {}}}"#,
        );
        // Two such files share "name" and "description" without colliding.
        write(
            root,
            "automators/shell_automator/shell_automator.json",
            r#"{"name": "shell", "description": "d", "automatortypes": ["shell"], "shell": {"name": "shell", "executable": "sh"}}"#,
        );
        write(
            root,
            "automators/docker_automator/docker_automator.json",
            r#"{"name": "docker", "description": "d", "automatortypes": ["docker"], "docker": {"executable": "sh"}}"#,
        );
        let reg = load(&[root.to_path_buf()]).unwrap();
        let names: Vec<_> = reg.plugins.iter().map(|p| format!("{}/{}", p.kind, p.name)).collect();
        assert_eq!(names, ["automator/docker", "automator/shell", "provider/aws", "provider/google"]);
        assert!(matches!(reg.get(PluginKind::Provider, "google").unwrap().availability, Availability::Runnable(_)));
        if let Availability::Runnable(spec) = &reg.get(PluginKind::Provider, "aws").unwrap().availability {
            assert_eq!(spec.ruby_class.as_deref(), Some("FogProviderAWS"));
        }
        // No warning for Loom's own keys, no plugin called "name".
        let texts: Vec<String> = reg.problems.iter().map(ToString::to_string).collect();
        assert!(!texts.iter().any(|t| t.contains("already registered") || t.contains("unknown")), "{texts:?}");
    }

    #[test]
    fn coopr_layout_without_kind_folders_takes_the_kinds_from_the_files() {
        let d = crate::core::trust::test_dir();
        let root = d.path();
        write(
            root,
            "shell/shell.json",
            r#"{"name": "shell", "automatortypes": ["shell"], "shell": {"executable": "sh"}}"#,
        );
        write(
            root,
            "fixed/fixed.json",
            r#"{"name": "fixed", "providertypes": ["fixed"], "fixed": {"executable": "sh"}}"#,
        );
        // A seed-style file here has no kind: said, and skipped.
        write(root, "odd/odd.json", r#"{"odd": {"executable": "sh"}}"#);
        let reg = load(&[root.to_path_buf()]).unwrap();
        let names: Vec<_> = reg.plugins.iter().map(|p| format!("{}/{}", p.kind, p.name)).collect();
        assert_eq!(names, ["automator/shell", "provider/fixed"]);
        assert!(reg.problems.is_empty(), "{:?}", reg.problems);
    }

    #[test]
    fn a_type_declared_without_its_entry_is_reported_and_the_others_load() {
        let d = crate::core::trust::test_dir();
        write(
            d.path(),
            "providers/p/p.json",
            r#"{"name": "p", "providertypes": ["here", "gone"], "here": {"executable": "sh"}, "extra": {}}"#,
        );
        let reg = load(&[d.path().to_path_buf()]).unwrap();
        assert_eq!(reg.names(PluginKind::Provider), ["here"]);
        let texts: Vec<String> = reg.problems.iter().map(ToString::to_string).collect();
        assert!(
            texts.iter().any(|t| t.contains(
                "p.json: plugin \"gone\": is declared in \"providertypes\", but the file has no \"gone\" entry"
            )),
            "{texts:?}"
        );
        assert!(texts.iter().any(|t| t.contains("plugin \"extra\": is in neither")), "{texts:?}");
    }

    #[test]
    fn duplicates_keep_the_first_and_say_so() {
        let a = crate::core::trust::test_dir();
        let b = crate::core::trust::test_dir();
        write(a.path(), "automators/x/x.json", r#"{"x": {"executable": "sh"}}"#);
        write(b.path(), "automators/x/x.json", r#"{"x": {"executable": "true"}}"#);
        let reg = load(&[a.path().to_path_buf(), b.path().to_path_buf()]).unwrap();
        assert_eq!(reg.plugins.len(), 1);
        assert!(reg.plugins[0].manifest.starts_with(a.path()));
        assert!(reg.problems.iter().any(|p| p.message.contains("already registered")));
    }

    #[test]
    fn untrusted_files_make_their_plugin_not_runnable_and_the_others_load() {
        use std::os::unix::fs::PermissionsExt;
        let chmod = |p: &Path, mode| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
        let d = crate::core::trust::test_dir();
        let root = d.path();
        let script = |rel: &str| {
            let p = write(root, rel, "#!/bin/sh\n");
            chmod(&p, 0o755);
            p
        };
        write(root, "automators/good/good.json", r#"{"good": {"executable": "run.sh"}}"#);
        script("automators/good/run.sh");
        // Written by anyone: whatever it says, it does not run.
        let open = write(root, "automators/open/open.json", r#"{"open": {"executable": "sh", "user": "root"}}"#);
        chmod(&open, 0o666);
        write(root, "automators/exe/exe.json", r#"{"exe": {"executable": "run.sh"}}"#);
        let exe = script("automators/exe/run.sh");
        chmod(&exe, 0o777);
        write(root, "automators/folder/folder.json", r#"{"folder": {"executable": "run.sh"}}"#);
        script("automators/folder/run.sh");
        chmod(&root.join("automators/folder"), 0o777);
        write(root, "automators/escape/escape.json", r#"{"escape": {"executable": "../good/run.sh"}}"#);

        let reg = load(&[root.to_path_buf()]).unwrap();
        assert!(matches!(reg.get(PluginKind::Automator, "good").unwrap().availability, Availability::Runnable(_)));
        let why = reason(&reg, PluginKind::Automator, "open");
        assert!(why.contains(&format!("fix: chmod go-w {}", open.display())), "{why}");
        let why = reason(&reg, PluginKind::Automator, "exe");
        assert!(why.contains(&format!("fix: chmod go-w {}", exe.display())), "{why}");
        let why = reason(&reg, PluginKind::Automator, "folder");
        assert!(why.contains(&format!("fix: chmod go-w {}", root.join("automators/folder").display())), "{why}");
        assert!(reason(&reg, PluginKind::Automator, "escape").contains("leads out of the plugin's folder"));
        // Each refusal is also a problem the log shows, naming the plugin.
        let texts: Vec<String> = reg.problems.iter().map(ToString::to_string).collect();
        for name in ["open", "exe", "folder"] {
            assert!(
                texts.iter().any(|t| t.contains(&format!("plugin {name:?}")) && t.contains("chmod go-w")),
                "{texts:?}"
            );
        }
    }

    #[test]
    fn as_root_a_plugin_without_a_user_does_not_run() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root");
            return;
        }
        let d = crate::core::trust::test_dir();
        write(d.path(), "automators/who/who.json", r#"{"who": {"executable": "sh"}}"#);
        write(d.path(), "automators/boss/boss.json", r#"{"boss": {"executable": "sh", "user": "root"}}"#);
        let reg = Registry::load(&[d.path().to_path_buf()]).unwrap();
        assert_eq!(reason(&reg, PluginKind::Automator, "who"), crate::core::runas::NO_USER);
        assert!(matches!(reg.get(PluginKind::Automator, "boss").unwrap().availability, Availability::Runnable(_)));
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_it() {
        let err = Registry::load(&[PathBuf::from("/no/such/plugins")]).unwrap_err();
        assert!(err.to_string().contains("/no/such/plugins"));
    }
}
