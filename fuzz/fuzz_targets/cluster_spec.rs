//! The cluster spec (`ClusterSpec::from_text`, what `cluster up` reads, and
//! `ClusterSpec::from_value`, what the API and the journal read), as JSON and as TOML, and
//! the plans built from an accepted spec.
//!
//! Input: the text of a spec; every input is tried as JSON and as TOML. Checked:
//! - an accepted spec survives its stored form (`to_value`, then `from_value`) unchanged;
//!   it has at most `MAX_NODES` nodes, with distinct ids and hostnames; its node groups run
//!   only services it defines;
//! - the `up` and `down` plans of an accepted spec list each step once, after the steps it
//!   waits for, and each step's stored key reads back as the same step;
//! - a refused spec says why, each problem on one line without control characters (no
//!   line breaks, no terminal escapes), and no problem depends on the
//!   values of `provider.fields` (they carry credentials): the same spec with every string
//!   there replaced gives the same problems;
//! - nothing panics.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use loom_supervisor::inputs::plan::{self, Plan, StepKey};
use loom_supervisor::inputs::{ClusterSpec, MAX_NODES, SpecFormat};
use serde_json::Value;

const BASE: &str = "/srv/specs";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for format in [SpecFormat::Json, SpecFormat::Toml] {
        match ClusterSpec::from_text(text, format, "spec", Path::new(BASE)) {
            Ok(spec) => check_spec(&spec),
            Err(e) => {
                assert!(!e.problems.is_empty(), "a refused spec says why");
                // One line each, with nothing a terminal would act on.
                assert!(e.problems.iter().all(|p| !p.is_empty() && !p.chars().any(char::is_control)), "{e:?}");
            }
        }
        let value = match format {
            SpecFormat::Json => serde_json::from_str::<Value>(text).ok(),
            SpecFormat::Toml => toml::from_str::<Value>(text).ok(),
        };
        if let Some(value) = value {
            check_fields_never_shown(&value);
        }
    }
});

fn check_spec(spec: &ClusterSpec) {
    let stored = ClusterSpec::from_value(&spec.to_value(), "stored", Path::new("/elsewhere"));
    assert_eq!(stored.as_ref(), Ok(spec), "a spec reads back from its stored form");

    let nodes = spec.nodes();
    let total: u64 = spec.node_groups.iter().map(|g| u64::from(g.count)).sum();
    assert_eq!(nodes.len() as u64, total);
    assert!(total <= MAX_NODES, "{total} nodes");
    let ids: HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids.len(), nodes.len(), "node ids are distinct");
    let hostnames: HashSet<&str> = nodes.iter().map(|n| n.hostname.as_str()).collect();
    assert_eq!(hostnames.len(), nodes.len(), "hostnames are distinct");
    for g in &spec.node_groups {
        assert!(g.services.iter().all(|s| spec.services.contains_key(s)), "group {} runs an unknown service", g.name);
    }

    let marks = plan::Marks::new();
    check_plan(&plan::up(spec, &marks));
    check_plan(&plan::down(spec, &marks, &HashMap::new(), false));
    check_plan(&plan::down(spec, &marks, &HashMap::new(), true));
}

fn check_plan(plan: &Plan) {
    let mut seen = HashSet::new();
    for (i, step) in plan.steps.iter().enumerate() {
        assert!(seen.insert(&step.key), "{} is planned twice", step.key);
        assert!(step.after.iter().all(|&j| j < i), "{} waits for a later step", step.key);
        assert_eq!(StepKey::decode(&step.key.encode()).as_ref(), Some(&step.key), "stored key of {}", step.key);
    }
}

/// The problems of `value` and of `value` with its provider fields' strings replaced are
/// the same.
fn check_fields_never_shown(value: &Value) {
    let Some(fields) = value.get("provider").and_then(|p| p.get("fields")) else { return };
    let mut other = value.clone();
    let mut replaced = fields.clone();
    replace_strings(&mut replaced);
    other["provider"]["fields"] = replaced;
    let problems = |v: &Value| ClusterSpec::from_value(v, "spec", Path::new(BASE)).err().map(|e| e.problems);
    assert_eq!(problems(&other), problems(value), "problems depend on provider fields' values");
}

fn replace_strings(v: &mut Value) {
    match v {
        Value::String(s) => *s = format!("other-{}", s.len()),
        Value::Array(items) => items.iter_mut().for_each(replace_strings),
        Value::Object(map) => map.values_mut().for_each(replace_strings),
        _ => {}
    }
}
