//! systemd socket activation (`sd_listen_fds(3)`): with `loom-provisioner.socket`, systemd
//! binds the API's TCP socket and starts the daemon on the first connection (or at boot),
//! passing the socket as fd 3 with `LISTEN_FDS` (how many) and `LISTEN_PID` (for whom).
//! The daemon then serves on it instead of binding `listen`: connections that arrive while
//! it starts or restarts wait in the socket's backlog instead of being refused.
//!
//! Taken before anything else runs (no other thread exists yet, so the environment can be
//! changed), and the variables are removed either way: plugins, which inherit the
//! daemon's environment, must not take fd 3 for theirs.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{SockType, getsockopt, sockopt};
use nix::sys::stat::{SFlag, fstat};

/// `SD_LISTEN_FDS_START`: the first passed socket.
const FIRST_FD: i32 = 3;

/// The socket systemd passed.
#[derive(Debug)]
pub struct Activated {
    /// The listening socket (close-on-exec set, still blocking).
    pub listener: TcpListener,
    /// Its address.
    pub address: SocketAddr,
    /// How many more sockets were passed and are left unused (the unit should have one
    /// `ListenStream=`).
    pub unused: u32,
}

/// Why the passed socket cannot be used. The daemon exits 2 with this.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `LISTEN_PID` or `LISTEN_FDS` is not a number.
    #[error("socket activation: {name}={value:?} is not a number")]
    Variable {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// fd 3 is not what systemd passes for a `ListenStream=` on an IP address.
    #[error(
        "socket activation: fd 3 (LISTEN_FDS={fds}) {problem}; loom-provisioner.socket needs one ListenStream= with an \
         IP address and port (a Unix socket path is not supported: use listen = \"unix:...\" without the socket unit)"
    )]
    Socket {
        /// `LISTEN_FDS`.
        fds: u32,
        /// What is wrong with it.
        problem: String,
    },
}

/// Takes the socket systemd passed, if it passed one to this process, and removes
/// `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` from the environment.
///
/// # Safety
/// No other thread may be running (the environment is changed), and nothing in the
/// process may have taken fd 3 yet.
///
/// # Errors
/// [`ActivationError`] when the variables say there is a socket for this process and fd 3
/// is not a listening TCP socket, or when they cannot be read.
pub unsafe fn take_from_env() -> Result<Option<Activated>, ActivationError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: the caller promises that no other thread runs, so none reads the
        // environment meanwhile.
        unsafe { std::env::remove_var(name) };
    }
    let Some(count) = passed_to(pid.as_deref(), fds.as_deref(), std::process::id())? else {
        return Ok(None);
    };
    // The unused ones too: no plugin may inherit them. (A bogus huge count costs no more
    // than the open-files limit's worth of failed calls.)
    let passed = i32::try_from(count.min(1 << 20)).unwrap_or(1 << 20);
    for fd in FIRST_FD + 1..FIRST_FD + passed {
        // SAFETY: only borrowed for the call; an fd that is not open fails with EBADF.
        let _ = fcntl(unsafe { BorrowedFd::borrow_raw(fd) }, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
    let fail = |problem: String| ActivationError::Socket { fds: count, problem };
    // SAFETY: only borrowed while it is checked; the caller promises nothing else owns it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(FIRST_FD) };
    let stat = fstat(borrowed).map_err(|e| fail(format!("cannot be read: {e}")))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(fail("is not a socket".into()));
    }
    match getsockopt(&borrowed, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(other) => return Err(fail(format!("is a {other:?} socket, not a stream socket"))),
        Err(e) => return Err(fail(format!("cannot be read: {e}"))),
    }
    if !getsockopt(&borrowed, sockopt::AcceptConn).map_err(|e| fail(format!("cannot be read: {e}")))? {
        return Err(fail("is not listening (ListenStream=, not Accept=yes)".into()));
    }
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| fail(format!("cannot set close-on-exec: {e}")))?;
    // SAFETY: fd 3 is an open socket (checked above) that nothing else in this process owns.
    let listener = TcpListener::from(unsafe { OwnedFd::from_raw_fd(FIRST_FD) });
    // A Unix socket has no IP address: std refuses to read it.
    let address = listener.local_addr().map_err(|e| fail(format!("is not a TCP socket ({e})")))?;
    Ok(Some(Activated { listener, address, unused: count - 1 }))
}

/// How many sockets were passed to the process `me`: none when the variables are absent,
/// `LISTEN_FDS` is 0, or `LISTEN_PID` names another process (the variables leaked from a
/// parent).
fn passed_to(pid: Option<&str>, fds: Option<&str>, me: u32) -> Result<Option<u32>, ActivationError> {
    let (Some(pid), Some(fds)) = (pid, fds) else { return Ok(None) };
    let number = |name, value: &str| {
        value.trim().parse::<u32>().map_err(|_| ActivationError::Variable { name, value: value.to_owned() })
    };
    if number("LISTEN_PID", pid)? != me {
        return Ok(None);
    }
    Ok(Some(number("LISTEN_FDS", fds)?).filter(|&n| n > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sockets_passed_to_this_process_count() {
        assert_eq!(passed_to(None, None, 7).unwrap(), None);
        assert_eq!(passed_to(Some("7"), None, 7).unwrap(), None);
        assert_eq!(passed_to(None, Some("1"), 7).unwrap(), None);
        assert_eq!(passed_to(Some("8"), Some("1"), 7).unwrap(), None, "another process's");
        assert_eq!(passed_to(Some("7"), Some("0"), 7).unwrap(), None);
        assert_eq!(passed_to(Some("7"), Some("1"), 7).unwrap(), Some(1));
        assert_eq!(passed_to(Some("7"), Some("2"), 7).unwrap(), Some(2));
    }

    #[test]
    fn bad_numbers_are_named() {
        let e = passed_to(Some("seven"), Some("1"), 7).unwrap_err().to_string();
        assert!(e.contains("LISTEN_PID=\"seven\""), "{e}");
        let e = passed_to(Some("7"), Some("-1"), 7).unwrap_err().to_string();
        assert!(e.contains("LISTEN_FDS=\"-1\""), "{e}");
    }
}
