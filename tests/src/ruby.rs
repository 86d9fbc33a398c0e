//! Ruby plugins in a test's plugins folder: the fixture plugins under
//! `tests/fixtures/ruby`, and seed-style plugins a test writes.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::build::workspace;
use crate::plugins::{MARKER, Plugins, as_root_unless_named};

impl Plugins {
    /// Copies the fixture plugin folder `tests/fixtures/<rel>` (e.g. `ruby/providers/machines`)
    /// to `<kind>s/<name>/` here, with its subfolders, adding the test marker to the `env`
    /// of each entry of its manifest (of either shape).
    pub fn copy_fixture(&self, rel: &str) -> PathBuf {
        self.copy_fixture_with(rel, &json!({}))
    }

    /// [`Plugins::copy_fixture`], with `extra` keys (such as `settings`) merged into each
    /// entry of the manifest.
    pub fn copy_fixture_with(&self, rel: &str, extra: &Value) -> PathBuf {
        let from = workspace().join("tests/fixtures").join(rel);
        let mut parts = rel.rsplit('/');
        let name = parts.next().expect("a folder");
        let kind_dir = parts.next().expect("providers or automators");
        let to = self.path().join(kind_dir).join(name);
        copy_tree(&from, &to, &|doc: &mut Value| {
            // Loom's and Coopr's manifests hold strings ("name", "description") and lists
            // beside their entries; entries are the objects.
            for entry in doc.as_object_mut().expect("object").values_mut().filter(|v| v.is_object()) {
                entry["env"] = json!({ MARKER: self.marker });
                crate::tasks::merge(entry, extra.clone());
                as_root_unless_named(entry);
            }
        });
        to
    }

    /// Writes a seed-style Ruby plugin: `<kind>s/<name>/<name>.rb` with `code`, and its
    /// manifest naming `classname`.
    pub fn add_ruby(&self, kind: &str, name: &str, classname: &str, code: &str) -> PathBuf {
        let manifest = self.add(kind, name, json!({"classname": classname}));
        let folder = manifest.parent().expect("folder").to_path_buf();
        std::fs::write(folder.join(format!("{name}.rb")), code).expect("write the .rb");
        folder
    }
}

/// Copies the folder `from` to `to` with its subfolders; the `.json` files at the top go
/// through `manifest`.
fn copy_tree(from: &std::path::Path, to: &std::path::Path, manifest: &dyn Fn(&mut Value)) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("fixture folder").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &target, &|_: &mut Value| {});
        } else if e.path().extension().is_some_and(|x| x == "json") {
            let mut doc: Value = serde_json::from_slice(&std::fs::read(e.path()).expect("read")).expect("json");
            manifest(&mut doc);
            std::fs::write(target, serde_json::to_vec_pretty(&doc).expect("json")).expect("write");
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}
