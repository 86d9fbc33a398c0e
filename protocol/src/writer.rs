//! The sending side of a line channel: many producers, one writer task.
//!
//! Producers queue whole lines on an unbounded channel; [`write_lines`] drains whatever is
//! queued into one buffer and writes it with one `write` call, so a burst of messages
//! costs one system call instead of one each, and no producer ever waits on the pipe.

use std::task::Poll;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;

/// A message for [`write_lines`].
#[derive(Debug)]
pub enum Outgoing {
    /// Bytes to write: one or more complete lines, newlines included.
    Line(Vec<u8>),
    /// Write everything queued before this, then close the stream.
    Close,
}

/// How much is gathered into one write at most.
const BATCH_BYTES: usize = 1 << 20;

/// Writes queued lines to `out` until [`Outgoing::Close`] arrives or every sender is gone,
/// then drops `out` (closing it).
///
/// # Errors
/// The first write error; the stream is dropped and the rest of the queue discarded.
pub async fn write_lines(queue: UnboundedReceiver<Outgoing>, out: impl AsyncWrite + Unpin) -> std::io::Result<()> {
    let (_none, urgent) = tokio::sync::mpsc::unbounded_channel();
    write_prioritized(urgent, queue, out).await
}

/// Most bytes of the ordinary lane written in one go, so that an urgent line waits for
/// at most this much (plus what the pipe holds) behind a flood of ordinary ones.
const ORDINARY_BATCH_BYTES: usize = 16 * 1024;

/// As [`write_lines`], with a second lane whose lines go out first: whatever is queued on
/// `urgent` is written before anything more from `ordinary`. A plugin answers on the
/// urgent lane and logs on the ordinary one, so a flood of log lines cannot hold back an
/// answer by more than one batch. Ends when `ordinary` is closed or says
/// [`Outgoing::Close`] (everything queued on `urgent` before that is written first); a
/// `Close` on `urgent` is ignored, and `urgent` closing early is fine.
///
/// # Errors
/// The first write error; the stream is dropped and the rest of both queues discarded.
pub async fn write_prioritized(
    mut urgent: UnboundedReceiver<Outgoing>,
    mut ordinary: UnboundedReceiver<Outgoing>,
    mut out: impl AsyncWrite + Unpin,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut closing = false;
    let mut urgent_open = true;
    loop {
        let first = std::future::poll_fn(|cx| {
            while urgent_open {
                match urgent.poll_recv(cx) {
                    // Only the ordinary lane ends the stream.
                    Poll::Ready(Some(Outgoing::Close)) => {}
                    Poll::Ready(Some(m)) => return Poll::Ready(Some(m)),
                    Poll::Ready(None) => urgent_open = false,
                    Poll::Pending => break,
                }
            }
            ordinary.poll_recv(cx)
        })
        .await;
        let Some(first) = first else { break };
        match first {
            Outgoing::Line(line) => buf.extend_from_slice(&line),
            Outgoing::Close => closing = true,
        }
        while let Ok(m) = urgent.try_recv() {
            if let Outgoing::Line(line) = m {
                buf.extend_from_slice(&line);
            }
        }
        while !closing && buf.len() < BATCH_BYTES {
            let room = buf.len() < ORDINARY_BATCH_BYTES || !urgent_open;
            if !room {
                break;
            }
            match ordinary.try_recv() {
                Ok(Outgoing::Line(line)) => buf.extend_from_slice(&line),
                Ok(Outgoing::Close) => closing = true,
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            out.write_all(&buf).await?;
            out.flush().await?;
            buf.clear();
        }
        if closing {
            break;
        }
    }
    drop(out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn writes_everything_queued_before_close_then_closes() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (a, mut b) = tokio::io::duplex(1 << 16);
        for i in 0..100 {
            tx.send(Outgoing::Line(format!("{i}\n").into_bytes())).unwrap();
        }
        tx.send(Outgoing::Close).unwrap();
        tx.send(Outgoing::Line(b"after close\n".to_vec())).unwrap();
        write_lines(rx, a).await.unwrap();
        let mut text = String::new();
        b.read_to_string(&mut text).await.unwrap();
        assert_eq!(text.lines().count(), 100);
        assert!(text.ends_with("99\n"));
    }

    #[tokio::test]
    async fn urgent_lines_overtake_queued_ordinary_ones() {
        let (urgent_tx, urgent) = tokio::sync::mpsc::unbounded_channel();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // A flood far larger than one ordinary batch, then an urgent line.
        for i in 0..10_000 {
            tx.send(Outgoing::Line(format!("log {i:05} {}\n", "x".repeat(40)).into_bytes())).unwrap();
        }
        // A Close on the urgent lane does not end the stream.
        urgent_tx.send(Outgoing::Close).unwrap();
        urgent_tx.send(Outgoing::Line(b"answer\n".to_vec())).unwrap();
        tx.send(Outgoing::Close).unwrap();
        let (a, mut b) = tokio::io::duplex(1 << 24);
        write_prioritized(urgent, rx, a).await.unwrap();
        let mut text = String::new();
        b.read_to_string(&mut text).await.unwrap();
        let at = text.lines().position(|l| l == "answer").unwrap();
        assert!(at * 52 <= ORDINARY_BATCH_BYTES, "the answer came after {at} log lines");
        assert_eq!(text.lines().count(), 10_001, "nothing lost");
    }

    #[tokio::test]
    async fn a_broken_stream_is_an_error() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (a, b) = tokio::io::duplex(16);
        drop(b);
        tx.send(Outgoing::Line(b"x\n".to_vec())).unwrap();
        assert!(write_lines(rx, a).await.is_err());
    }
}
