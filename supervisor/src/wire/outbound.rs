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
    /// `None` once closing: then nothing is written directly any more.
    pipe: Option<Arc<pipe::Sender>>,
    /// Lines queued for the writer and not yet completely written.
    queued: usize,
    /// Their bytes.
    queued_bytes: usize,
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
        let direct = Arc::new(Mutex::new(Direct { pipe: Some(Arc::clone(&stdin)), queued: 0, queued_bytes: 0 }));
        let writer = tokio::spawn(ended(write_queued(rx, stdin, Arc::clone(&direct))));
        (Outbound { queue: tx, direct: Some(direct) }, writer)
    }

    /// Sends one or more whole lines. Never waits; after the writer has failed or the
    /// stream was closed, the line is dropped (the caller learns of it from the writer's
    /// end and the process's exit).
    pub fn send(&self, mut line: Vec<u8>) {
        let Some(direct) = &self.direct else {
            let _ = self.queue.send(Outgoing::Line(line));
            return;
        };
        let mut st = lock(direct);
        if st.queued == 0
            && let Some(pipe) = &st.pipe
        {
            match pipe.try_write(&line) {
                Ok(n) if n == line.len() => return,
                // The rest moves to the front of the same buffer: a task may be megabytes.
                Ok(n) => drop(line.drain(..n)),
                // Full, or broken: the writer waits for room, or reports the error.
                Err(_) => {}
            }
        }
        // Queued under the lock, so that no direct write can overtake it.
        st.queued += 1;
        st.queued_bytes += line.len();
        let _ = self.queue.send(Outgoing::Line(line));
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
                    write_all(&pipe, &buf).await?;
                    buf.clear();
                    write_all(&pipe, &line).await?;
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
        write_all(&pipe, &buf).await?;
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

async fn write_all(pipe: &pipe::Sender, bytes: &[u8]) -> io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        pipe.writable().await?;
        match pipe.try_write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
