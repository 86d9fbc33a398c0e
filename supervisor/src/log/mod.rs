//! The supervisor's own log: `tracing` to stderr, human-readable or JSON.
//!
//! Plugins' log notifications and stderr lines arrive as events with target
//! [`pump::PLUGIN_TARGET`] and the fields `plugin`, `pid` and `task_id`, through the
//! [`pump`] (a log thread, so no plugin waits on stderr) within per-plugin budgets
//! ([`limit`]).
//!
//! The lowest layer: uses only the protocol crate; every layer above may log.

pub mod journald;
pub mod limit;
pub mod pump;

use std::io::{IsTerminal, Write};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use loom_protocol::LogLevel;
use tracing_subscriber::Layer;
use tracing_subscriber::Registry;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::prelude::*;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// One readable line per event (colours on a terminal).
    #[default]
    Human,
    /// One JSON object per event, for log shippers.
    Json,
}

/// A bad `--log-level` directive.
#[derive(Debug, thiserror::Error)]
#[error("bad log level {directive:?}: {reason} (examples: \"info\", \"debug\", \"warn,loom::plugin=debug\")")]
pub struct BadLevel {
    directive: String,
    reason: String,
}

/// Parses a filter such as `info` or `warn,loom::plugin=debug`.
///
/// # Errors
/// [`BadLevel`] naming the directive.
pub fn parse_filter(directive: &str) -> Result<Targets, BadLevel> {
    // `Targets` reads a bare word as a target name enabled at every level; a mistyped
    // level ("inf") would silently log nothing else. A bare word must be a level here.
    if let Some(word) =
        directive.split(',').map(str::trim).find(|d| !d.contains('=') && LevelFilter::from_str(d).is_err())
    {
        return Err(BadLevel { directive: directive.to_owned(), reason: format!("{word:?} is not a level") });
    }
    Targets::from_str(directive).map_err(|e| BadLevel { directive: directive.to_owned(), reason: e.to_string() })
}

/// Where log lines go instead of straight to stderr (progress bars redraw around them).
type Route = Arc<dyn Fn(&[u8]) + Send + Sync>;

static ROUTE: RwLock<Option<Route>> = RwLock::new(None);

/// Sends every log line through `route` (or, with `None`, straight to stderr again).
pub fn route_stderr(route: Option<Route>) {
    *ROUTE.write().unwrap_or_else(std::sync::PoisonError::into_inner) = route;
}

/// A log event's bytes, written to stderr (or through the route) in one piece when the
/// formatter is done with it.
#[derive(Default)]
struct EventWriter {
    buf: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let route = ROUTE.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        match route {
            Some(route) => route(&self.buf),
            None => {
                let _ = std::io::stderr().lock().write_all(&self.buf);
            }
        }
    }
}

/// Installs the global subscriber. Does nothing if one is installed already (tests).
///
/// Colours only on a terminal, and not when `NO_COLOR` is set to anything but the empty
/// string (<https://no-color.org>). Under systemd with stderr connected to the journal,
/// each line carries its syslog priority and no timestamp ([`journald`]).
pub fn init(format: Format, filter: Targets) {
    let journal = journald::stderr_is_journal();
    let ansi = !journal && wants_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let layer = tracing_subscriber::fmt::layer().with_writer(EventWriter::default).with_ansi(ansi);
    let json =
        || tracing_subscriber::fmt::format().json().flatten_event(true).with_current_span(false).with_span_list(false);
    let layer: Box<dyn Layer<Registry> + Send + Sync> = match (format, journal) {
        (Format::Human, false) => layer.boxed(),
        (Format::Human, true) => layer
            .event_format(journald::Prioritised(tracing_subscriber::fmt::format().without_time().with_ansi(false)))
            .boxed(),
        (Format::Json, false) => layer.fmt_fields(JsonFields::new()).event_format(json()).boxed(),
        (Format::Json, true) => {
            layer.fmt_fields(JsonFields::new()).event_format(journald::Prioritised(json().without_time())).boxed()
        }
    };
    let _ = tracing_subscriber::registry().with(layer.with_filter(filter)).try_init();
}

/// Whether to colour the log: on a terminal, unless `NO_COLOR` is set and not empty.
fn wants_colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// The most detailed level `filter` lets through for plugin events: told to plugins in
/// the handshake so they need not send what would be dropped.
pub fn plugin_level(filter: &Targets) -> LogLevel {
    let level = [
        (LevelFilter::TRACE, LogLevel::Trace),
        (LevelFilter::DEBUG, LogLevel::Debug),
        (LevelFilter::INFO, LogLevel::Info),
        (LevelFilter::WARN, LogLevel::Warn),
    ]
    .into_iter()
    .find(|(lf, _)| lf.into_level().is_some_and(|l| filter.would_enable(crate::log::pump::PLUGIN_TARGET, &l)));
    level.map_or(LogLevel::Error, |(_, l)| l)
}

/// A duration as messages show it: "1.5 s", "30 s".
pub fn secs(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 { format!("{s:.0} s") } else { format!("{s:.1} s") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_level_follows_the_filter() {
        assert_eq!(plugin_level(&parse_filter("info").unwrap()), LogLevel::Info);
        assert_eq!(plugin_level(&parse_filter("warn,loom::plugin=trace").unwrap()), LogLevel::Trace);
        assert_eq!(plugin_level(&parse_filter("error").unwrap()), LogLevel::Error);
    }

    #[test]
    fn no_color_turns_colours_off_unless_empty() {
        use std::ffi::OsStr;
        assert!(wants_colour(true, None));
        assert!(wants_colour(true, Some(OsStr::new(""))));
        assert!(!wants_colour(true, Some(OsStr::new("1"))));
        assert!(!wants_colour(false, None));
    }

    #[test]
    fn bad_levels_name_the_directive() {
        let e = parse_filter("loud").unwrap_err().to_string();
        assert!(e.contains("\"loud\""), "{e}");
    }
}
