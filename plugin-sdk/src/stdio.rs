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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::stat::{SFlag, fstat};
use tokio::io::{AsyncRead, AsyncWrite};

/// The protocol's input and output, and the log channel when the supervisor gave one.
pub(crate) struct ProtocolIo {
    pub input: Box<dyn AsyncRead + Unpin + Send>,
    pub output: Box<dyn AsyncWrite + Unpin + Send>,
    /// `Err` when `LOOM_LOG_FD` names a descriptor that is not the log channel: then log
    /// lines share stdout.
    pub log: Result<Option<Box<dyn AsyncWrite + Unpin + Send>>, LogFdRefused>,
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

/// The log channel: the pipe the supervisor hands over as fd 3 and names in `LOOM_LOG_FD`
/// (PROTOCOL.md, section 1), reopened as a private description like stdout. The inherited
/// descriptor is then closed, so that programs this plugin starts do not hold the pipe
/// open.
///
/// `Ok(None)` when the variable is unset. `Err` says why a descriptor it names was not
/// used (then log lines share stdout, as without the variable); such a descriptor is left
/// alone, never closed. A second call in the same process (a second `serve`) finds the
/// number closed, or reused by something this process opened, and refuses it.
fn log_channel() -> Result<Option<Box<dyn AsyncWrite + Unpin + Send>>, LogFdRefused> {
    let Ok(value) = std::env::var(loom_protocol::ENV_LOG_FD) else { return Ok(None) };
    let fd = log_fd_number(&value)?;
    let file = adopt_log_fd(fd)?;
    let sender = tokio::net::unix::pipe::Sender::from_file(file).map_err(|e| LogFdRefused::Reopen(fd, e))?;
    Ok(Some(Box::new(sender)))
}

/// Why the descriptor `LOOM_LOG_FD` names was not used as the log channel.
#[derive(Debug)]
pub(crate) enum LogFdRefused {
    /// The variable is not the protocol's descriptor number.
    NotTheProtocols,
    /// Fd 0, 1 or 2: the protocol's own streams.
    Standard(i32),
    /// No such open descriptor.
    NotOpen(i32),
    /// Open, but not inherited: close-on-exec is set, so this process opened it itself
    /// (a descriptor handed across exec never has the flag) and something here owns it.
    NotInherited(i32),
    /// Not a pipe.
    NotAPipe(i32),
    /// A pipe, but not open for writing (the read end).
    NotWritable(i32),
    /// Reopening it, or registering the reopened pipe with the runtime, failed.
    Reopen(i32, io::Error),
}

impl std::fmt::Display for LogFdRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let var = loom_protocol::ENV_LOG_FD;
        match self {
            LogFdRefused::NotTheProtocols => write!(f, "{var} does not name fd {}", loom_protocol::LOG_FD),
            LogFdRefused::Standard(fd) => write!(f, "{var} names fd {fd}, a standard stream"),
            LogFdRefused::NotOpen(fd) => write!(f, "{var} names fd {fd}, which is not open"),
            LogFdRefused::NotInherited(fd) => {
                write!(f, "{var} names fd {fd}, which this process opened (close-on-exec is set)")
            }
            LogFdRefused::NotAPipe(fd) => write!(f, "{var} names fd {fd}, which is not a pipe"),
            LogFdRefused::NotWritable(fd) => write!(f, "{var} names fd {fd}, which is not open for writing"),
            LogFdRefused::Reopen(fd, e) => write!(f, "{var} names fd {fd}, which cannot be reopened: {e}"),
        }
    }
}

/// The descriptor number in `LOOM_LOG_FD`, which the protocol fixes at
/// [`loom_protocol::LOG_FD`].
fn log_fd_number(value: &str) -> Result<i32, LogFdRefused> {
    value.parse().ok().filter(|fd| *fd == loom_protocol::LOG_FD).ok_or(LogFdRefused::NotTheProtocols)
}

/// Takes over the inherited log channel `fd`: checks that it is what the protocol hands
/// over (open, inherited across exec, a pipe open for writing), reopens it as a private
/// description, and closes `fd`. On any `Err`, `fd` is left as it was.
fn adopt_log_fd(fd: i32) -> Result<File, LogFdRefused> {
    if (0..=2).contains(&fd) {
        return Err(LogFdRefused::Standard(fd));
    }
    // Asked of the raw number, before anything treats it as an open descriptor.
    // SAFETY: F_GETFD reads a flag; on a number that is not open it fails with EBADF.
    let fd_flags = unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) };
    if fd_flags < 0 {
        return Err(LogFdRefused::NotOpen(fd));
    }
    if fd_flags & nix::libc::FD_CLOEXEC != 0 {
        return Err(LogFdRefused::NotInherited(fd));
    }
    // SAFETY: `fd` is open (checked above) and stays open while borrowed here: it came
    // through exec, so nothing in this process has claimed it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    if !is_fifo(borrowed) {
        return Err(LogFdRefused::NotAPipe(fd));
    }
    let access = fcntl(borrowed, FcntlArg::F_GETFL).map(|fl| OFlag::from_bits_truncate(fl) & OFlag::O_ACCMODE);
    if !matches!(access, Ok(OFlag::O_WRONLY | OFlag::O_RDWR)) {
        return Err(LogFdRefused::NotWritable(fd));
    }
    let file =
        File::options().write(true).open(format!("/proc/self/fd/{fd}")).map_err(|e| LogFdRefused::Reopen(fd, e))?;
    // SAFETY: the supervisor handed `fd` to this process for this use, it is open and
    // inherited (checked above), and nothing else here owns it; `file` is a new
    // description and stays valid.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(file)
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::IntoRawFd;

    use nix::fcntl::FdFlag;

    use super::*;

    /// A pipe (read end, write end), both close-on-exec as this process opens everything.
    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap()
    }

    /// Makes `fd` look inherited: close-on-exec cleared, as on a descriptor that came
    /// through exec.
    fn as_inherited(fd: &OwnedFd) {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
    }

    /// Offers `fd` for adoption; the outcome, and whether `fd` is still open on the same
    /// file afterwards (neither closed, nor closed and its number reused). It is closed
    /// here when it was left open, and left alone when not (then something else may own
    /// the number).
    fn offer(fd: OwnedFd) -> (Result<File, LogFdRefused>, bool) {
        let ino = fstat(&fd).unwrap().st_ino;
        let raw = fd.into_raw_fd();
        let outcome = adopt_log_fd(raw);
        // SAFETY: F_GETFD on a number that is not open fails with EBADF; borrowed only
        // once known open.
        let open = unsafe { nix::libc::fcntl(raw, nix::libc::F_GETFD) } >= 0
            && fstat(unsafe { BorrowedFd::borrow_raw(raw) }).is_ok_and(|st| st.st_ino == ino);
        if open {
            // SAFETY: still the descriptor this test opened, owned by nothing else.
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
        }
        (outcome, open)
    }

    #[test]
    fn only_the_protocols_number_is_taken_from_the_variable() {
        assert_eq!(log_fd_number("3").unwrap(), loom_protocol::LOG_FD);
        for value in ["0", "1", "2", "4", "-1", "", " 3", "3 ", "0x3", "three", "99999999999"] {
            assert!(matches!(log_fd_number(value), Err(LogFdRefused::NotTheProtocols)), "{value:?}");
        }
    }

    #[test]
    fn takes_an_inherited_write_end_and_closes_the_inherited_number() {
        let (read, write) = pipe();
        as_inherited(&write);
        let raw = write.into_raw_fd();
        let mut file = adopt_log_fd(raw).unwrap();
        file.write_all(b"a log line\n").unwrap();
        drop(file);
        // Every write end is closed (the reopened one just now, the inherited number by
        // the adoption): the reader sees the line, then end of file rather than EAGAIN.
        let mut read = File::from(read);
        fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let mut got = String::new();
        read.read_to_string(&mut got).expect("end of file: the inherited write end was closed");
        assert_eq!(got, "a log line\n");
        // Gone, or reused by another thread, which opens everything close-on-exec.
        assert!(adopt_log_fd(raw).is_err());
    }

    #[test]
    fn leaves_a_descriptor_this_process_opened_open() {
        let (_read, write) = pipe();
        let (refused, open) = offer(write);
        assert!(matches!(refused, Err(LogFdRefused::NotInherited(_))), "{refused:?}");
        assert!(open, "the SDK closed a descriptor it does not own");
    }

    #[test]
    fn leaves_the_read_end_of_a_pipe_open() {
        let (read, _write) = pipe();
        as_inherited(&read);
        let (refused, open) = offer(read);
        assert!(matches!(refused, Err(LogFdRefused::NotWritable(_))), "{refused:?}");
        assert!(open, "the SDK closed the read end of a pipe");
    }

    #[test]
    fn leaves_what_is_not_a_pipe_open() {
        let file = OwnedFd::from(File::options().write(true).open("/dev/null").unwrap());
        as_inherited(&file);
        let (refused, open) = offer(file);
        assert!(matches!(refused, Err(LogFdRefused::NotAPipe(_))), "{refused:?}");
        assert!(open, "the SDK closed a descriptor that is not a pipe");
    }

    #[test]
    fn refuses_a_number_that_is_not_open_and_the_standard_streams() {
        // Above any open-files limit: never open.
        assert!(matches!(adopt_log_fd(i32::MAX), Err(LogFdRefused::NotOpen(_))));
        assert!(matches!(adopt_log_fd(-1), Err(LogFdRefused::NotOpen(_))));
        for fd in 0..=2 {
            assert!(matches!(adopt_log_fd(fd), Err(LogFdRefused::Standard(_))), "fd {fd}");
        }
    }

    #[test]
    fn refusals_name_the_variable_and_the_cause() {
        let text = LogFdRefused::NotInherited(7).to_string();
        assert_eq!(text, "LOOM_LOG_FD names fd 7, which this process opened (close-on-exec is set)");
        assert_eq!(LogFdRefused::NotTheProtocols.to_string(), "LOOM_LOG_FD does not name fd 3");
    }
}
