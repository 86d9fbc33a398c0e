//! systemd's notification protocol: `READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`,
//! `RELOADING=1`, as datagrams to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace). Without `$NOTIFY_SOCKET` (not under systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where to send notifications, if anywhere.
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`.
    pub fn from_env() -> Notifier {
        let target = std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty());
        let socket = target.and_then(|t| match UnixDatagram::unbound() {
            Ok(s) => Some((s, t)),
            Err(e) => {
                tracing::warn!("cannot create a socket for systemd notifications: {e}");
                None
            }
        });
        Notifier { socket }
    }

    /// Sends `state` (lines of `KEY=value`). Errors are logged, not returned: a missing
    /// listener must not stop the daemon.
    pub fn send(&self, state: &str) {
        let Some((socket, target)) = &self.socket else { return };
        let sent = match target.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|a| socket.send_to_addr(state.as_bytes(), &a))
            }
            None => socket.send_to(state.as_bytes(), target),
        };
        if let Err(e) = sent {
            tracing::warn!("cannot notify systemd at {target}: {e}");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// `RELOADING=1` with the monotonic time systemd asks for.
    pub fn reloading(&self) {
        let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
            .unwrap_or(0);
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading"));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// `STATUS=...`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

/// Half the watchdog period systemd set (`$WATCHDOG_USEC`, for this process per
/// `$WATCHDOG_PID`), or `None` when there is no watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim() != std::process::id().to_string()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier { socket: Some((UnixDatagram::unbound().unwrap(), path.display().to_string())) };
        n.ready("3 plugins ready");
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=3 plugins ready");
        n.reloading();
        let len = listener.recv(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..len]).starts_with("RELOADING=1\nMONOTONIC_USEC="));
    }

    #[test]
    fn without_a_socket_nothing_happens() {
        Notifier { socket: None }.ready("x");
    }
}
