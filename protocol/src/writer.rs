//! The sending side of a line channel: many producers, one writer task.
//!
//! Producers queue whole lines on an unbounded channel; [`write_lines`] drains whatever is
//! queued into one buffer and writes it with one `write` call, so a burst of messages
//! costs one system call instead of one each, and no producer ever waits on the pipe.

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
pub async fn write_lines(
    mut queue: UnboundedReceiver<Outgoing>,
    mut out: impl AsyncWrite + Unpin,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut closing = false;
    while let Some(first) = queue.recv().await {
        match first {
            Outgoing::Line(line) => buf.extend_from_slice(&line),
            Outgoing::Close => closing = true,
        }
        while !closing && buf.len() < BATCH_BYTES {
            match queue.try_recv() {
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
    async fn a_broken_stream_is_an_error() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (a, b) = tokio::io::duplex(16);
        drop(b);
        tx.send(Outgoing::Line(b"x\n".to_vec())).unwrap();
        assert!(write_lines(rx, a).await.is_err());
    }
}
