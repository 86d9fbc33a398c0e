//! The supervisor's folders are layers, and imports point one way: `cli` -> `daemon` ->
//! `cluster` -> `journal` -> `core` -> `wire` -> `log` (-> the protocol crate). This test
//! reads every source file and fails on a path into a higher layer (`crate::daemon::...`
//! from `core/`, say), in code or in tests beside it; comments may name any module.
//! `lib.rs` and `main.rs` sit above every layer. Within a layer, files import each other
//! without circles: a second test follows every `crate::` and `super::` path (outside the
//! tests beside the code) from file to file and fails on a cycle.

use std::path::{Path, PathBuf};

/// Lowest first.
const LAYERS: [&str; 7] = ["log", "wire", "core", "journal", "cluster", "daemon", "cli"];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layers named by `crate::<layer>` paths in `line`, outside a comment.
fn named_layers(line: &str) -> Vec<&str> {
    let code = line.split("//").next().unwrap_or("");
    code.match_indices("crate::")
        .filter(|(i, _)| !code[..*i].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        .filter_map(|(i, m)| {
            let rest = &code[i + m.len()..];
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
            rank(&rest[..end]).map(|_| &rest[..end])
        })
        .collect()
}

#[test]
fn no_module_imports_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut checked = 0;
    let mut violations = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap_or(file);
        let Some(own) = relative.iter().next().and_then(|c| c.to_str()).and_then(rank) else {
            continue;
        };
        checked += 1;
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            for layer in named_layers(line) {
                if rank(layer).is_some_and(|r| r > own) {
                    violations.push(format!("{}:{}: {} uses crate::{layer}", relative.display(), n + 1, LAYERS[own]));
                }
            }
        }
    }
    assert!(checked > 30, "only {checked} files found under {}", src.display());
    assert!(violations.is_empty(), "imports into a higher layer:\n{}", violations.join("\n"));
}

#[test]
fn the_check_sees_a_violation() {
    assert_eq!(named_layers("use crate::daemon::config::Config;"), ["daemon"]);
    assert_eq!(named_layers("let x = crate::cli::interrupt(); // crate::core"), ["cli"]);
    assert!(named_layers("/// see [`crate::daemon`]").is_empty());
    assert!(named_layers("use loom_crate::daemon;").is_empty());
}

/// The file a module path (segments after `crate::`) leads to: the deepest module that
/// exists, as `a/b.rs` or `a/b/mod.rs`; `None` for the crate root.
fn resolve(src: &Path, segments: &[&str]) -> Option<PathBuf> {
    let mut dir = src.to_path_buf();
    let mut found = None;
    for segment in segments {
        let file = dir.join(format!("{segment}.rs"));
        let folder = dir.join(segment);
        if file.is_file() {
            found = Some(file);
            break;
        } else if folder.join("mod.rs").is_file() {
            found = Some(folder.join("mod.rs"));
            dir = folder;
        } else {
            break;
        }
    }
    found
}

/// The module path of `file` (relative to `src`), as segments.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut segments: Vec<String> = relative.iter().filter_map(|c| c.to_str()).map(str::to_owned).collect();
    if segments.last().is_some_and(|s| s == "mod") {
        segments.pop();
    }
    segments
}

/// The files `file` imports (paths through `crate::` and `super::`), its tests left out.
fn imports(src: &Path, file: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let module = module_of(src, file);
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        for (start, prefix) in line.match_indices("crate::").chain(line.match_indices("super::")) {
            if line[..start].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &line[start + prefix.len()..];
            let path: Vec<&str> = rest
                .split("::")
                .map(|s| s.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or(""))
                .take_while(|s| !s.is_empty())
                .collect();
            let mut full: Vec<&str> = if prefix == "super::" {
                module.iter().take(module.len().saturating_sub(1)).map(String::as_str).collect()
            } else {
                Vec::new()
            };
            full.extend(path);
            if let Some(target) = resolve(src, &full)
                && target != file
            {
                out.push(target);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn no_import_circles_between_files() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let graph: Vec<(PathBuf, Vec<PathBuf>)> = files.iter().map(|f| (f.clone(), imports(&src, f))).collect();
    let edges: usize = graph.iter().map(|(_, to)| to.len()).sum();
    assert!(edges > 50, "only {edges} imports found: the reader is broken");
    // Depth-first search; a grey node met again closes a cycle.
    let index = |p: &Path| graph.iter().position(|(f, _)| f == p);
    let mut colour = vec![0u8; graph.len()];
    let mut cycles = Vec::new();
    fn visit(
        n: usize,
        graph: &[(PathBuf, Vec<PathBuf>)],
        index: &dyn Fn(&Path) -> Option<usize>,
        colour: &mut [u8],
        stack: &mut Vec<usize>,
        cycles: &mut Vec<String>,
        src: &Path,
    ) {
        colour[n] = 1;
        stack.push(n);
        for to in &graph[n].1 {
            let Some(m) = index(to) else { continue };
            if colour[m] == 1 {
                let from = stack.iter().position(|&s| s == m).unwrap_or(0);
                let names: Vec<String> = stack[from..]
                    .iter()
                    .chain(std::iter::once(&m))
                    .map(|&i| graph[i].0.strip_prefix(src).unwrap_or(&graph[i].0).display().to_string())
                    .collect();
                cycles.push(names.join(" -> "));
            } else if colour[m] == 0 {
                visit(m, graph, index, colour, stack, cycles, src);
            }
        }
        stack.pop();
        colour[n] = 2;
    }
    for n in 0..graph.len() {
        if colour[n] == 0 {
            visit(n, &graph, &index, &mut colour, &mut Vec::new(), &mut cycles, &src);
        }
    }
    assert!(cycles.is_empty(), "import circles:\n{}", cycles.join("\n"));
}
