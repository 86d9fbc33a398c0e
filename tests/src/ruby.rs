//! Ruby plugins in a test's plugins folder: the fixture plugins under
//! `tests/fixtures/ruby`, and seed-style plugins a test writes.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::build::workspace;
use crate::plugins::{MARKER, Plugins, as_root_unless_named};

impl Plugins {
    /// Copies the fixture plugin folder `tests/fixtures/<rel>` (e.g. `ruby/providers/machines`)
    /// to `<kind>s/<name>/` here, adding the test marker to its manifest's `env`.
    pub fn copy_fixture(&self, rel: &str) -> PathBuf {
        let from = workspace().join("tests/fixtures").join(rel);
        let mut parts = rel.rsplit('/');
        let name = parts.next().expect("a folder");
        let kind_dir = parts.next().expect("providers or automators");
        let to = self.path().join(kind_dir).join(name);
        std::fs::create_dir_all(&to).expect("mkdir");
        for e in std::fs::read_dir(&from).expect("fixture folder").flatten() {
            let target = to.join(e.file_name());
            if e.path().extension().is_some_and(|x| x == "json") {
                let mut doc: Value = serde_json::from_slice(&std::fs::read(e.path()).expect("read")).expect("json");
                for entry in doc.as_object_mut().expect("object").values_mut() {
                    entry["env"] = json!({ MARKER: self.marker });
                    as_root_unless_named(entry);
                }
                std::fs::write(target, serde_json::to_vec_pretty(&doc).expect("json")).expect("write");
            } else {
                std::fs::copy(e.path(), target).expect("copy");
            }
        }
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
