//! Lines for journald when systemd connected stderr to it: each line starts with its
//! syslog priority (`<3>` for an error ... `<7>` for debug), which journald takes off and
//! stores as the entry's priority, so `journalctl -p warning` finds warnings; and no
//! timestamp, which journald records itself.
//!
//! See sd-daemon(3) (the prefixes) and systemd.exec(5) (`JOURNAL_STREAM`).

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Whether stderr is the stream systemd connected to the journal.
///
/// systemd sets `JOURNAL_STREAM=DEV:INODE` of that stream; it is compared with stderr's
/// own, so a process started from the service whose stderr was redirected elsewhere (a
/// `cluster` command piped into a file) keeps its usual format.
pub fn stderr_is_journal() -> bool {
    std::env::var("JOURNAL_STREAM").ok().is_some_and(|v| matches_stream(&v, std::io::stderr()))
}

fn matches_stream(value: &str, fd: impl std::os::fd::AsFd) -> bool {
    let Some((dev, ino)) = value.split_once(':') else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

/// The syslog priority of a level: error 3, warning 4, info 6, debug and trace 7
/// (tracing has no level for 5, "notice").
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// An event format with the priority prefix in front of another format's line.
pub struct Prioritised<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Prioritised<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_stream_is_recognised_by_device_and_inode_only() {
        let file = tempfile::tempfile().unwrap();
        let meta = file.metadata().unwrap();
        assert!(matches_stream(&format!("{}:{}", meta.dev(), meta.ino()), &file));
        assert!(!matches_stream(&format!("{}:{}", meta.dev(), meta.ino() + 1), &file));
        for bad in ["", "1", "a:b", ":", "1:2:3"] {
            assert!(!matches_stream(bad, &file), "{bad}");
        }
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        let got: Vec<u8> = [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG, Level::TRACE].map(priority).into();
        assert_eq!(got, [3, 4, 6, 7, 7]);
    }
}
