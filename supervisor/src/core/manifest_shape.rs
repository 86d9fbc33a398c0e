//! The two shapes of a manifest file, and the plugins each one declares.
//!
//! - The seed guide's: `{"<name>": {...}, ...}`. Every key is a plugin, of the kind of
//!   the folder the file is in (`providers/` or `automators/`).
//! - Loom's and Coopr's: `{"name": "fog", "description": ..., "providertypes": ["aws",
//!   "google"], "aws": {...}, "google": {...}}` (or `automatortypes`). Each declared type
//!   is a plugin, of the kind its list says, whatever the folder; `name` and
//!   `description` describe the file, not a plugin. One file may declare several types,
//!   each handled by its own class.
//!
//! Each entry (`{...}`) is then read by [`crate::core::manifest`].

use loom_protocol::PluginKind;
use serde_json::{Map, Value};

/// The keys that say a file is in Loom's and Coopr's shape, with the kind each declares.
const TYPE_LISTS: [(&str, PluginKind); 2] =
    [("providertypes", PluginKind::Provider), ("automatortypes", PluginKind::Automator)];

/// Keys of Loom's and Coopr's shape that describe the file.
const FILE_KEYS: [&str; 2] = ["name", "description"];

/// One plugin a manifest declares.
#[derive(Debug, PartialEq)]
pub struct Declared<'a> {
    /// Its name: the key of its entry.
    pub name: &'a str,
    /// Provider or automator.
    pub kind: PluginKind,
    /// Its entry.
    pub body: &'a Value,
}

/// A finding about one declared name that does not stop the others.
#[derive(Debug, PartialEq, Eq)]
pub struct Finding {
    /// The plugin (type) it is about.
    pub plugin: String,
    /// What is wrong, never quoting a value.
    pub message: String,
    /// Whether the plugin is lost (an error) or only something is ignored (a warning).
    pub is_error: bool,
}

/// What a manifest declares.
#[derive(Debug, Default, PartialEq)]
pub struct Declarations<'a> {
    /// The plugins, in the file's order.
    pub plugins: Vec<Declared<'a>>,
    /// Problems with single names.
    pub findings: Vec<Finding>,
}

/// Whether `doc` is in Loom's and Coopr's shape.
pub fn is_typed(doc: &Map<String, Value>) -> bool {
    TYPE_LISTS.iter().any(|(key, _)| doc.contains_key(*key))
}

/// Whether `doc` looks like a manifest at all (and not a data file a plugin keeps beside
/// it): Loom's and Coopr's shape, or entries that each name an executable or a class.
pub fn looks_like_manifest(doc: &Value) -> bool {
    doc.as_object().is_some_and(|o| {
        !o.is_empty()
            && (is_typed(o) || o.values().all(|e| e.get("executable").is_some() || e.get("classname").is_some()))
    })
}

/// The plugins `doc` declares; `folder_kind` is the kind of the folder it was found in,
/// when that folder says one.
///
/// # Errors
/// When the file as a whole cannot be used, saying why (never quoting a value): not an
/// object, empty, a type list that is not a list of names, or the seed's shape outside a
/// `providers/` or `automators/` folder.
pub fn declared(doc: &Value, folder_kind: Option<PluginKind>) -> Result<Declarations<'_>, String> {
    let Some(doc) = doc.as_object().filter(|o| !o.is_empty()) else {
        return Err(
            "expected an object: {\"<plugin name>\": {...}}, or Loom's {\"name\": ..., \"providertypes\": [...], ...}"
                .into(),
        );
    };
    if is_typed(doc) {
        return typed(doc);
    }
    let Some(kind) = folder_kind else {
        return Err(
            "declares neither providertypes nor automatortypes, and is not in a providers/ or automators/ folder: \
                    the kind of its plugins is unknown"
                .into(),
        );
    };
    let plugins = doc.iter().map(|(name, body)| Declared { name, kind, body }).collect();
    Ok(Declarations { plugins, findings: Vec::new() })
}

fn typed(doc: &Map<String, Value>) -> Result<Declarations<'_>, String> {
    let mut out = Declarations::default();
    let mut listed: Vec<&str> = Vec::new();
    for (list, kind) in TYPE_LISTS {
        let Some(value) = doc.get(list) else { continue };
        let Some(names) = value.as_array() else {
            return Err(format!("key {list:?}: expected a list of type names"));
        };
        for name in names {
            let Some(name) = name.as_str() else {
                return Err(format!("key {list:?}: expected a list of type names, found a non-string"));
            };
            if listed.contains(&name) {
                out.findings.push(error(name, format!("is declared twice (in {list:?}); declared once")));
                continue;
            }
            listed.push(name);
            match doc.get_key_value(name) {
                Some((name, body)) if !FILE_KEYS.contains(&name.as_str()) => {
                    out.plugins.push(Declared { name, kind, body });
                }
                Some(_) => {
                    out.findings.push(error(name, format!("cannot be a type name: {name:?} describes the file")))
                }
                None => out
                    .findings
                    .push(error(name, format!("is declared in {list:?}, but the file has no {name:?} entry"))),
            }
        }
    }
    for key in doc.keys() {
        let known = FILE_KEYS.contains(&key.as_str()) || TYPE_LISTS.iter().any(|(l, _)| l == key);
        if !known && !listed.contains(&key.as_str()) {
            out.findings.push(Finding {
                plugin: key.clone(),
                message: "is in neither providertypes nor automatortypes; ignored".into(),
                is_error: false,
            });
        }
    }
    Ok(out)
}

fn error(plugin: &str, message: String) -> Finding {
    Finding { plugin: plugin.to_owned(), message, is_error: true }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(d: &Declarations<'_>) -> Vec<String> {
        d.plugins.iter().map(|p| format!("{}/{}", p.kind, p.name)).collect()
    }

    #[test]
    fn the_seed_shape_takes_the_folders_kind() {
        let doc = json!({"a": {"executable": "x"}, "b": {"classname": "B"}});
        let d = declared(&doc, Some(PluginKind::Automator)).unwrap();
        assert_eq!(names(&d), ["automator/a", "automator/b"]);
        assert!(declared(&doc, None).unwrap_err().contains("kind of its plugins is unknown"));
    }

    #[test]
    fn loom_and_coopr_files_declare_one_plugin_per_type_of_the_listed_kind() {
        // Coopr's fog provider: six types, each its own class, in one file.
        let doc = json!({
            "name": "fog", "description": "Multi-cloud",
            "providertypes": ["aws", "google"],
            "aws": {"name": "aws", "classname": "FogProviderAWS", "parameters": {}},
            "google": {"name": "google", "classname": "FogProviderGoogle"}
        });
        // The folder's kind does not matter: the list says.
        let d = declared(&doc, Some(PluginKind::Automator)).unwrap();
        assert_eq!(names(&d), ["provider/aws", "provider/google"]);
        assert!(d.findings.is_empty(), "{:?}", d.findings);
        assert_eq!(d.plugins[0].body["classname"], "FogProviderAWS");

        let both = json!({"name": "x", "automatortypes": ["shell"], "providertypes": ["p"], "shell": {}, "p": {}});
        assert_eq!(names(&declared(&both, None).unwrap()), ["provider/p", "automator/shell"]);
    }

    #[test]
    fn problems_with_one_type_leave_the_others() {
        let doc = json!({
            "name": "n", "providertypes": ["ok", "gone", "ok", "name"], "ok": {}, "stray": {}
        });
        let d = declared(&doc, None).unwrap();
        assert_eq!(names(&d), ["provider/ok"]);
        let said: Vec<_> = d.findings.iter().map(|f| format!("{} {} {}", f.plugin, f.is_error, f.message)).collect();
        assert_eq!(
            said,
            [
                "gone true is declared in \"providertypes\", but the file has no \"gone\" entry",
                "ok true is declared twice (in \"providertypes\"); declared once",
                "name true cannot be a type name: \"name\" describes the file",
                "stray false is in neither providertypes nor automatortypes; ignored",
            ]
        );
        let bad = json!({"name": "n", "automatortypes": "shell"});
        assert!(declared(&bad, None).unwrap_err().contains("\"automatortypes\": expected a list"));
        assert!(declared(&json!({}), None).is_err() && declared(&json!([1]), None).is_err());
    }

    #[test]
    fn data_files_do_not_look_like_manifests() {
        assert!(looks_like_manifest(&json!({"name": "fog", "providertypes": []})));
        assert!(looks_like_manifest(&json!({"p": {"classname": "P"}})));
        assert!(!looks_like_manifest(&json!({"some": "data"})));
        assert!(!looks_like_manifest(&json!({})));
    }
}
