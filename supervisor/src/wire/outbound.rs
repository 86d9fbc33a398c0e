//! The plugin's stdin: whole lines, in order, never waiting on the pipe.
//!
//! A caller's line is written straight into the pipe when nothing is queued before it
//! and the pipe has room (one `write`, no hand-off to another task, which on a
//! multi-threaded runtime can mean waking another thread). Otherwise it is queued for the
//! writer task, which batches what is queued into few writes. Lines are never
//! interleaved: a direct write happens only while the queue is empty, under a lock that
//! the queueing side holds too.
//!
//! For stdin that is not a pipe (tests use in-memory streams), every line goes through the
//! writer task.
//!
//! What reached the plugin: every line sent has a [`Mark`], where it starts in the stream.
//! When the process ends, [`Outbound::stop`] stops all writing and returns a [`Reach`]:
//! how far into the stream the plugin can have read. A line that starts at or beyond it
//! was never read at all (its write failed, `EPIPE` included, or it was still queued, or
//! it lay unread in the pipe when the last reader was gone), so the plugin cannot have
//! acted on it. A line the plugin may have begun to read counts as reached, even if its
//! end never arrived: a plugin decoding a JSON stream rather than lines acts at the
//! closing brace, and one that died reading a task (too long for it, say) must not have
//! that task sent to the next process uncounted. For streams that are not pipes, every
//! line sent counts as reached.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use loom_protocol::writer::{Outgoing, write_lines};
use tokio::io::AsyncWrite;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How much is gathered into one write at most.
const BATCH_BYTES: usize = 1 << 20;

/// The sending side of a plugin's stdin.
pub struct Outbound {
    queue: mpsc::UnboundedSender<Outgoing>,
    direct: Option<Arc<Mutex<Direct>>>,
}

struct Direct {
    /// `None` once closing or stopped: then nothing is written directly any more.
    pipe: Option<Arc<pipe::Sender>>,
    /// Lines queued for the writer and not yet completely written.
    queued: usize,
    /// Their bytes.
    queued_bytes: usize,
    /// Bytes of every line sent so far, written or not: where the last one ends.
    sent: u64,
    /// Bytes written into the pipe so far (the last line perhaps in part).
    written: u64,
    /// Set by [`Outbound::stop`]: nothing more is written, by anyone.
    stopped: bool,
}

/// Where a line starts in the stream of bytes sent to the plugin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark(u64);

/// How far into the stream the plugin can have read, as [`Outbound::stop`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Not known (a stream that is not a pipe): every line sent may have been read.
    Unknown,
    /// No more than this many bytes: a line starting there or beyond was never read.
    Bytes(u64),
}

impl Reach {
    /// Whether the plugin may have read any of the line starting at `mark`.
    pub fn reached(self, mark: Mark) -> bool {
        match self {
            Reach::Unknown => true,
            Reach::Bytes(n) => mark.0 < n,
        }
    }
}

impl Outbound {
    /// Any stream: every line goes through the writer task (returned).
    pub fn new(stdin: impl AsyncWrite + Unpin + Send + 'static) -> (Outbound, JoinHandle<WriterEnd>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Outbound { queue: tx, direct: None }, tokio::spawn(ended(write_lines(rx, stdin))))
    }

    /// A pipe: lines are written directly when possible. Must be called in a runtime.
    pub fn pipe(stdin: pipe::Sender) -> (Outbound, JoinHandle<WriterEnd>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stdin = Arc::new(stdin);
        let direct = Arc::new(Mutex::new(Direct {
            pipe: Some(Arc::clone(&stdin)),
            queued: 0,
            queued_bytes: 0,
            sent: 0,
            written: 0,
            stopped: false,
        }));
        let writer = tokio::spawn(ended(write_queued(rx, stdin, Arc::clone(&direct))));
        (Outbound { queue: tx, direct: Some(direct) }, writer)
    }

    /// Sends one or more whole lines and returns where they start in the stream (compare it
    /// with the [`Reach`] of [`Outbound::stop`]). Never waits; after the writer has failed,
    /// the stream was closed or writing stopped, the line is dropped (the caller learns of
    /// it from the writer's end and the process's exit, and the line is not reached).
    pub fn send(&self, mut line: Vec<u8>) -> Mark {
        let Some(direct) = &self.direct else {
            let _ = self.queue.send(Outgoing::Line(line));
            return Mark(0);
        };
        let mut st = lock(direct);
        let mark = Mark(st.sent);
        st.sent += line.len() as u64;
        if st.queued == 0
            && let Some(pipe) = &st.pipe
        {
            match pipe.try_write(&line) {
                Ok(n) if n == line.len() => {
                    st.written += n as u64;
                    return mark;
                }
                // The rest moves to the front of the same buffer: a task may be megabytes.
                Ok(n) => {
                    st.written += n as u64;
                    drop(line.drain(..n));
                }
                // Full, or broken: the writer waits for room, or reports the error.
                Err(_) => {}
            }
        }
        // Queued under the lock, so that no direct write can overtake it.
        st.queued += 1;
        st.queued_bytes += line.len();
        let _ = self.queue.send(Outgoing::Line(line));
        mark
    }

    /// Bytes waiting for the plugin to read them (0 for streams that are not pipes, which
    /// are not counted): a plugin that stops reading its stdin makes this grow.
    pub fn queued_bytes(&self) -> usize {
        self.direct.as_ref().map_or(0, |d| lock(d).queued_bytes)
    }

    /// Closes the stream once everything sent before has been written.
    pub fn close(&self) {
        // No direct write after this: the pipe closes when the writer has written the rest.
        let _closing = self.direct.as_ref().map(|direct| {
            let mut st = lock(direct);
            st.pipe = None;
            st
        });
        let _ = self.queue.send(Outgoing::Close);
    }
}

impl Outbound {
    /// Stops all writing, for good, and says how far into the stream the plugin can have
    /// read: what was written, less what is still unread in the pipe if no process can
    /// read it any more (the plugin is gone, and nothing it started holds its stdin). A
    /// line the writer was in the middle of stays cut. Called when the process has ended;
    /// later calls return the same reach or less.
    pub fn stop(&self) -> Reach {
        let Some(direct) = &self.direct else { return Reach::Unknown };
        let mut st = lock(direct);
        st.stopped = true;
        // Whichever holds the pipe still (after `close`, only the writer), the count of
        // bytes written is ours; the unread rest can be asked of our end only while we hold it.
        let unread = st.pipe.take().and_then(|pipe| unread_by_anyone(&pipe)).unwrap_or(0);
        Reach::Bytes(st.written.saturating_sub(unread))
    }
}

/// Bytes left in the pipe that no process can read any more: `None` while some process
/// still holds its read end (it may read them yet), or when the kernel does not say.
fn unread_by_anyone(pipe: &pipe::Sender) -> Option<u64> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::{AsFd, AsRawFd};
    // On the write end of a pipe, POLLERR means: no reader left.
    let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::empty())];
    let no_reader =
        poll(&mut fds, PollTimeout::ZERO).ok()? > 0 && fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLERR));
    if !no_reader {
        return None;
    }
    nix::ioctl_read_bad!(fionread, nix::libc::FIONREAD, nix::libc::c_int);
    let mut unread: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer, which points at one; the fd is
    // open for as long as `pipe` is borrowed.
    unsafe { fionread(pipe.as_raw_fd(), &mut unread) }.ok()?;
    u64::try_from(unread).ok()
}

/// Why the stdin writer stopped.
#[derive(Debug)]
pub enum WriterEnd {
    /// Stdin was closed on purpose.
    Closed,
    /// Writing failed: the plugin stopped reading its stdin or exited.
    Failed(io::Error),
}

async fn ended(writing: impl Future<Output = io::Result<()>>) -> WriterEnd {
    match writing.await {
        Ok(()) => WriterEnd::Closed,
        Err(e) => WriterEnd::Failed(e),
    }
}

fn lock(direct: &Mutex<Direct>) -> MutexGuard<'_, Direct> {
    // Nothing under this lock can panic half-way.
    direct.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The writer task of a pipe: writes queued lines in batches, then lets direct writes
/// resume once the queue is empty.
async fn write_queued(
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    pipe: Arc<pipe::Sender>,
    direct: Arc<Mutex<Direct>>,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let (mut lines, mut bytes, mut closing) = (0usize, 0usize, false);
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                // A large line is written from its own buffer, after what is gathered.
                Outgoing::Line(line) if line.len() >= BATCH_BYTES => {
                    if !write_all(&pipe, &direct, &buf).await? || !write_all(&pipe, &direct, &line).await? {
                        return Ok(());
                    }
                    buf.clear();
                    lines += 1;
                    bytes += line.len();
                }
                Outgoing::Line(line) => {
                    buf.extend_from_slice(&line);
                    lines += 1;
                    bytes += line.len();
                }
                Outgoing::Close => closing = true,
            }
            if !closing && buf.len() < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if !write_all(&pipe, &direct, &buf).await? {
            return Ok(());
        }
        buf.clear();
        let mut st = lock(&direct);
        st.queued -= lines;
        st.queued_bytes -= bytes;
        drop(st);
        if closing {
            break;
        }
    }
    Ok(())
}

/// Writes `bytes` whole; false if writing was stopped first ([`Outbound::stop`]), perhaps
/// half-way. Each write happens under the lock, so that [`Outbound::stop`] sees exactly
/// what was written.
async fn write_all(pipe: &pipe::Sender, direct: &Mutex<Direct>, bytes: &[u8]) -> io::Result<bool> {
    let mut written = 0;
    while written < bytes.len() {
        pipe.writable().await?;
        let mut st = lock(direct);
        if st.stopped {
            return Ok(false);
        }
        match pipe.try_write(&bytes[written..]) {
            Ok(n) => {
                written += n;
                st.written += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pipe_pair() -> (pipe::Sender, std::fs::File) {
        let (read, write) = nix::unistd::pipe().unwrap();
        (pipe::Sender::from_owned_fd(write).unwrap(), std::fs::File::from(read))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_stay_whole_and_in_order_when_the_pipe_fills() {
        let (sender, mut read) = pipe_pair();
        let (out, writer) = Outbound::pipe(sender);
        // Far more than a pipe holds: some lines go direct, the rest through the queue.
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            read.read_to_string(&mut text).unwrap();
            text
        });
        for i in 0..20_000 {
            // Now and then one larger than a batch, which is written from its own buffer.
            let len = if i % 5000 == 4999 { BATCH_BYTES + 7 } else { i % 300 };
            out.send(format!("line {i:05} {}\n", "y".repeat(len)).into_bytes());
        }
        out.close();
        assert!(matches!(writer.await.unwrap(), WriterEnd::Closed));
        drop(out);
        let text = reader.join().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 20_000);
        for (i, l) in lines.iter().enumerate() {
            let len = if i % 5000 == 4999 { BATCH_BYTES + 7 } else { i % 300 };
            assert!(l.starts_with(&format!("line {i:05} ")) && l.len() == 11 + len, "line {i}: {l:.40}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_waits_for_the_plugin_to_read_is_counted() {
        let (sender, mut read) = pipe_pair();
        let (out, writer) = Outbound::pipe(sender);
        let line = vec![b'x'; 4095].into_iter().chain([b'\n']).collect::<Vec<u8>>();
        for _ in 0..64 {
            out.send(line.clone());
        }
        // A pipe holds 64 KiB: a quarter of it has not gone.
        assert!(out.queued_bytes() >= 64 * 4096 - (1 << 16), "{}", out.queued_bytes());
        out.close();
        let reader = std::thread::spawn(move || {
            let mut text = Vec::new();
            read.read_to_end(&mut text).unwrap();
            text.len()
        });
        assert!(matches!(writer.await.unwrap(), WriterEnd::Closed));
        assert_eq!(out.queued_bytes(), 0, "all written");
        assert_eq!(reader.join().unwrap(), 64 * 4096);
    }

    /// Bytes written into the pipe so far.
    fn written(out: &Outbound) -> u64 {
        out.direct.as_ref().map_or(0, |d| lock(d).written)
    }

    /// Waits until `cond` holds: the writer task runs on another thread.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let began = std::time::Instant::now();
        while !cond() {
            assert!(began.elapsed() < std::time::Duration::from_secs(60), "{what}: not after a minute");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_line_reaches_the_plugin_only_if_it_could_be_read_whole() {
        let (sender, mut read) = pipe_pair();
        let (out, writer) = Outbound::pipe(sender);
        let read_one = out.send(b"read\n".to_vec());
        let mut got = [0u8; 5];
        read.read_exact(&mut got).unwrap();
        let unread = out.send(b"unread\n".to_vec());
        until("the second line written", || out.queued_bytes() == 0).await;
        // Larger than the pipe: written in part, the rest waits for room.
        let cut = out.send([vec![b'c'; 200_000], vec![b'\n']].concat());
        until("a part of the long line written", || written(&out) > 12).await;
        drop(read);
        // No reader left: this one's write fails (EPIPE).
        let failed = out.send(b"failed\n".to_vec());
        assert!(matches!(writer.await.unwrap(), WriterEnd::Failed(e) if e.kind() == io::ErrorKind::BrokenPipe));
        let reach = out.stop();
        assert_eq!(reach, Reach::Bytes(5), "what was read");
        assert!(reach.reached(read_one));
        for (what, mark) in [("left in the pipe", unread), ("cut", cut), ("failed", failed)] {
            assert!(!reach.reached(mark), "a line {what} did not reach the plugin: {reach:?} {mark:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_line_the_plugin_began_to_read_counts_as_reached_though_its_end_never_came() {
        let (sender, mut read) = pipe_pair();
        let (out, _writer) = Outbound::pipe(sender);
        let first = out.send(b"{\"id\":1}\n".to_vec());
        let second = out.send(b"{\"id\":2}\n".to_vec());
        until("both lines written", || out.queued_bytes() == 0).await;
        // The plugin reads the first line and the second up to its closing brace (a JSON
        // stream decoder acts there), then dies before the newline.
        let mut got = [0u8; 17];
        read.read_exact(&mut got).unwrap();
        assert_eq!(&got[9..], b"{\"id\":2}");
        drop(read);
        let reach = out.stop();
        assert_eq!(reach, Reach::Bytes(17));
        assert!(reach.reached(first) && reach.reached(second), "{reach:?}");
        let after = out.send(b"{\"id\":3}\n".to_vec());
        assert!(!reach.reached(after), "nothing written after the stop was read");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn while_a_process_still_holds_the_pipe_what_was_written_counts_as_reached() {
        let (sender, mut read) = pipe_pair();
        let (out, _writer) = Outbound::pipe(sender);
        let written = out.send(b"unread yet\n".to_vec());
        until("the line written", || out.queued_bytes() == 0).await;
        // A process that escaped the plugin's group may still read it.
        let reach = out.stop();
        assert!(reach.reached(written), "{reach:?}");
        // Nothing is written after the stop.
        let after = out.send(b"after\n".to_vec());
        assert!(!reach.reached(after));
        drop(out);
        let mut text = String::new();
        read.read_to_string(&mut text).unwrap();
        assert_eq!(text, "unread yet\n");
    }

    #[tokio::test]
    async fn close_ends_the_stream_after_what_was_sent() {
        let (sender, mut read) = pipe_pair();
        let (out, writer) = Outbound::pipe(sender);
        out.send(b"a\n".to_vec());
        out.close();
        out.send(b"after close\n".to_vec());
        assert!(matches!(writer.await.unwrap(), WriterEnd::Closed));
        // The writer's copy is gone; `out` still holds none (closing dropped it).
        let mut text = String::new();
        read.read_to_string(&mut text).unwrap();
        assert_eq!(text, "a\n");
    }
}
