//! Newline framing with a length limit, as a `tokio-util` codec.
//!
//! [`LineCodec`] splits a byte stream at `\n` and hands out each line as raw bytes (not
//! `String`: a line that is not UTF-8 is a bad message to report, not a reason to stop
//! reading). A line longer than the limit is handled by the codec's [`Overflow`] policy:
//! the protocol channel treats it as an error, a free-text channel such as stderr cuts it.
//!
//! Unlike `tokio_util::codec::LinesCodec`, an over-long line does not yield a spurious
//! `None` afterwards: after [`CodecError::LineTooLong`] the codec skips to the next newline
//! and decoding goes on, so the caller decides whether the stream is still usable.

use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::message::Message;

/// What to do with a line longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Return [`CodecError::LineTooLong`] once, then skip the rest of that line.
    Error,
    /// Return the first `max` bytes as a line, then skip the rest of that line.
    Truncate,
}

/// Newline-delimited frames of at most `max` bytes (newline excluded).
#[derive(Debug, Clone)]
pub struct LineCodec {
    max: usize,
    overflow: Overflow,
    /// How far the buffer has been searched for a newline already.
    scanned: usize,
    /// Inside an over-long line whose head was already dealt with.
    skipping: bool,
}

/// An error while reading lines.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A line exceeded the limit (only with [`Overflow::Error`]).
    #[error("a line exceeded the limit of {limit} bytes")]
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// Reading or writing the underlying stream failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl LineCodec {
    /// A codec for lines of at most `max` bytes, with the given overflow policy.
    pub fn new(max: usize, overflow: Overflow) -> Self {
        LineCodec { max, overflow, scanned: 0, skipping: false }
    }

    /// The line-length limit in bytes.
    pub fn max_length(&self) -> usize {
        self.max
    }
}

impl Decoder for LineCodec {
    type Item = BytesMut;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        loop {
            let newline = memchr::memchr(b'\n', &buf[self.scanned..]).map(|i| i + self.scanned);
            match newline {
                Some(at) if self.skipping => {
                    // End of an over-long line whose head was already reported: drop it.
                    let _ = buf.split_to(at + 1);
                    self.scanned = 0;
                    self.skipping = false;
                }
                Some(at) if at <= self.max => {
                    let mut line = buf.split_to(at + 1);
                    line.truncate(at);
                    self.scanned = 0;
                    return Ok(Some(line));
                }
                // The newline came too late: this line is over-long.
                Some(_) => return self.overflow(buf),
                None if self.skipping => {
                    buf.clear();
                    self.scanned = 0;
                    return Ok(None);
                }
                None if buf.len() > self.max => return self.overflow(buf),
                None => {
                    self.scanned = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        if let Some(line) = self.decode(buf)? {
            return Ok(Some(line));
        }
        // A last line without a newline still counts: a plugin may exit mid-line.
        self.scanned = 0;
        if buf.is_empty() || self.skipping {
            buf.clear();
            self.skipping = false;
            return Ok(None);
        }
        Ok(Some(buf.split()))
    }
}

impl LineCodec {
    /// Handles a line that is longer than `max`: its first `max` bytes are in `buf`.
    fn overflow(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        let head = buf.split_to(self.max);
        self.scanned = 0;
        // If the newline is the very next byte the line ends here; otherwise skip to it.
        if buf.first() == Some(&b'\n') {
            let _ = buf.split_to(1);
        } else {
            self.skipping = true;
        }
        match self.overflow {
            Overflow::Error => Err(CodecError::LineTooLong { limit: self.max }),
            Overflow::Truncate => Ok(Some(head)),
        }
    }
}

impl Encoder<&Message> for LineCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        let mut writer = dst.writer();
        serde_json::to_writer(&mut writer, msg).map_err(std::io::Error::other)?;
        writer.into_inner().put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(codec: &mut LineCodec, input: &[&[u8]]) -> Vec<Result<String, String>> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in input {
            buf.extend_from_slice(chunk);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(l)) => out.push(Ok(String::from_utf8_lossy(&l).into_owned())),
                    Ok(None) => break,
                    Err(e) => out.push(Err(e.to_string())),
                }
            }
        }
        while let Ok(Some(l)) = codec.decode_eof(&mut buf) {
            out.push(Ok(String::from_utf8_lossy(&l).into_owned()));
        }
        out
    }

    #[test]
    fn splits_lines_across_chunks() {
        let mut c = LineCodec::new(100, Overflow::Error);
        let got = lines(&mut c, &[b"ab", b"c\nde", b"f\n\nlast"]);
        let want: Vec<Result<String, String>> =
            vec![Ok("abc".into()), Ok("def".into()), Ok("".into()), Ok("last".into())];
        assert_eq!(got, want);
    }

    #[test]
    fn over_long_line_errors_once_then_decoding_goes_on() {
        let mut c = LineCodec::new(4, Overflow::Error);
        let got = lines(&mut c, &[b"ok\nthis-is-too-long", b"-still\nfine\n"]);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], Ok("ok".into()));
        assert!(got[1].as_ref().is_err_and(|e| e.contains("limit of 4 bytes")));
        assert_eq!(got[2], Ok("fine".into()));
    }

    #[test]
    fn exactly_max_is_fine_and_max_plus_one_is_not() {
        let mut c = LineCodec::new(4, Overflow::Error);
        assert_eq!(lines(&mut c, &[b"abcd\n"]), vec![Ok("abcd".to_owned())]);
        let mut c = LineCodec::new(4, Overflow::Error);
        let got = lines(&mut c, &[b"abcde\nx\n"]);
        assert!(got[0].is_err());
        assert_eq!(got[1], Ok("x".into()));
    }

    #[test]
    fn truncate_mode_keeps_the_head() {
        let mut c = LineCodec::new(3, Overflow::Truncate);
        let got = lines(&mut c, &[b"abcdefgh", b"ij\nxy\n"]);
        assert_eq!(got, vec![Ok("abc".to_owned()), Ok("xy".to_owned())]);
    }

    #[test]
    fn invalid_utf8_is_a_line_not_an_error() {
        let mut c = LineCodec::new(10, Overflow::Error);
        let mut buf = BytesMut::from(&b"\xff\xfe\n"[..]);
        assert_eq!(c.decode(&mut buf).unwrap().as_deref(), Some(&b"\xff\xfe"[..]));
    }

    #[tokio::test]
    async fn works_as_a_framed_reader() {
        use futures_util::StreamExt;
        let data: &[u8] = b"{\"jsonrpc\":\"2.0\",\"method\":\"log\"}\nnot json\n";
        let mut framed = tokio_util::codec::FramedRead::new(data, LineCodec::new(1024, Overflow::Error));
        let first = framed.next().await.unwrap().unwrap();
        assert!(matches!(Message::decode(&first), Ok(Message::Notification(_))));
        let second = framed.next().await.unwrap().unwrap();
        assert!(Message::decode(&second).is_err());
        assert!(framed.next().await.is_none());
    }
}
