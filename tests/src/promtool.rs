//! Prometheus' own check of a metrics text: `promtool check metrics` (Debian's
//! `prometheus` package; `.ci/run` installs it).

use std::io::Write;
use std::process::{Command, Stdio};

/// Panics with promtool's findings when it reports any problem (lint findings too), or
/// when promtool is not installed.
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool: {e}; install Debian's prometheus package (.ci/run does)"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = text.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("promtool");
    let _ = writer.join();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\non:\n{text}");
}

/// The sum of every sample of `name` (all label sets) in a metrics text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
