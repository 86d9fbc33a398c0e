//! Taking over stdin and stdout for the protocol.
//!
//! Two problems, two fixes:
//!
//! - Speed: `tokio::io::stdin()`/`stdout()` push every read and write through tokio's
//!   blocking thread pool (measured here at about 30 us per round trip against about 6 us
//!   for epoll-driven pipes). When fd 0 and fd 1 are pipes, the SDK drives them with
//!   epoll. Epoll needs `O_NONBLOCK`, and setting it on fd 0 would change the open file
//!   description shared with whoever else holds the pipe, so each pipe is reopened through
//!   `/proc/self/fd/N`, which yields a new description of the same pipe (as rmcp's
//!   `stdio_pipes()` does). Anything that is not a pipe (a terminal, while debugging)
//!   falls back to the blocking pool.
//! - Safety: a stray `println!` in plugin code, or in a library it uses, would corrupt the
//!   protocol stream. After the take-over, fd 1 points at stderr and fd 0 at /dev/null,
//!   so such output lands in the supervisor's log instead.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::stat::{SFlag, fstat};
use tokio::io::{AsyncRead, AsyncWrite};

/// The protocol's input and output, and the log channel when the supervisor gave one.
pub(crate) struct ProtocolIo {
    pub input: Box<dyn AsyncRead + Unpin + Send>,
    pub output: Box<dyn AsyncWrite + Unpin + Send>,
    pub log: Option<Box<dyn AsyncWrite + Unpin + Send>>,
}

/// Takes fds 0 and 1 for the protocol and points them at /dev/null and stderr.
/// Must run inside a tokio runtime.
pub(crate) fn take() -> io::Result<ProtocolIo> {
    let (input, input_private) = private_description(0, false)?;
    let (output, output_private) = private_description(1, true)?;
    let devnull = File::open("/dev/null")?;
    redirect(devnull.as_fd(), 0)?;
    redirect(io::stderr().as_fd(), 1)?;
    Ok(ProtocolIo { input: reader(input, input_private)?, output: writer(output, output_private)?, log: log_channel() })
}

/// The pipe named by `LOOM_LOG_FD` (see PROTOCOL.md, "The log channel"), reopened as a
/// private description like stdout; the inherited descriptor is closed so that programs
/// this plugin starts do not hold the pipe open. `None` when the variable is unset or does
/// not name a pipe: then log lines share stdout.
fn log_channel() -> Option<Box<dyn AsyncWrite + Unpin + Send>> {
    let fd: i32 = std::env::var(loom_protocol::ENV_LOG_FD).ok()?.parse().ok().filter(|fd| *fd > 2)?;
    // SAFETY: only borrowed to check it; nothing else in this process owns this number.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    if !is_fifo(borrowed) {
        return None;
    }
    let file = File::options().write(true).open(format!("/proc/self/fd/{fd}")).ok()?;
    // SAFETY: the inherited descriptor was handed to this process for this use and is
    // owned by nothing else; the reopened one above stays valid.
    unsafe { nix::libc::close(fd) };
    tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(file)).ok().map(|s| Box::new(s) as _)
}

/// An fd for the same file as `fd`: a fresh open file description when `fd` is a pipe
/// (second value `true`), else a duplicate that shares the description.
fn private_description(fd: i32, write: bool) -> io::Result<(OwnedFd, bool)> {
    // SAFETY: fds 0 and 1 are open for the life of the process (they are only replaced,
    // with dup2, after this).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    if is_fifo(borrowed) {
        let reopened = File::options().read(!write).write(write).open(format!("/proc/self/fd/{fd}"));
        if let Ok(file) = reopened {
            return Ok((OwnedFd::from(file), true));
        }
    }
    Ok((borrowed.try_clone_to_owned()?, false))
}

fn is_fifo(fd: BorrowedFd<'_>) -> bool {
    fstat(fd).is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFIFO)
}

fn redirect(from: BorrowedFd<'_>, to: i32) -> io::Result<()> {
    // SAFETY: dup2 onto fd 0 or 1 replaces them atomically; nothing in this process owns
    // them as an `OwnedFd` (std's stdin/stdout only borrow them).
    let rc = unsafe { nix::libc::dup2(from.as_raw_fd(), to) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn reader(fd: OwnedFd, private: bool) -> io::Result<Box<dyn AsyncRead + Unpin + Send>> {
    if private {
        return Ok(Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?));
    }
    Ok(Box::new(tokio::fs::File::from_std(File::from(fd))))
}

fn writer(fd: OwnedFd, private: bool) -> io::Result<Box<dyn AsyncWrite + Unpin + Send>> {
    if private {
        return Ok(Box::new(tokio::net::unix::pipe::Sender::from_owned_fd(fd)?));
    }
    Ok(Box::new(tokio::fs::File::from_std(File::from(fd))))
}
