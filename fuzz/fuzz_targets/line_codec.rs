//! The line codec (`loom_protocol::LineCodec`), in both overflow modes, fed the stream in
//! arbitrary pieces.
//!
//! Input: byte 0 picks the line limit (0 to 127 bytes, or the protocol's 16 MiB default
//! when its top bit is set), byte 1 seeds how the rest is cut into chunks, the rest is the
//! stream. Checked against a model that splits the whole stream at once:
//! - every complete line and the unterminated last line come out, in order, wherever the
//!   cuts fall; a line over the limit is one error (`Overflow::Error`) or its first `limit`
//!   bytes (`Overflow::Truncate`), and decoding goes on after it;
//! - between calls the codec never holds more than `limit` bytes of an unfinished line;
//! - nothing panics.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use loom_fuzz::Cuts;
use loom_protocol::{CodecError, DEFAULT_MAX_LINE_BYTES, LineCodec, Overflow};
use tokio_util::codec::Decoder;

/// What the codec hands out: a line, or "a line was too long".
#[derive(Debug, PartialEq)]
enum Item {
    Line(Vec<u8>),
    TooLong,
}

fuzz_target!(|data: &[u8]| {
    let [limit, seed, stream @ ..] = data else { return };
    let limit = if limit & 0x80 != 0 { DEFAULT_MAX_LINE_BYTES } else { usize::from(*limit) };
    for overflow in [Overflow::Error, Overflow::Truncate] {
        let got = decode_in_pieces(stream, limit, overflow, *seed);
        let want = model(stream, limit, overflow);
        assert_eq!(got, want, "limit {limit}, {overflow:?}");
    }
});

/// Feeds `stream` to a codec chunk by chunk, draining it after each, then ends the stream.
fn decode_in_pieces(stream: &[u8], limit: usize, overflow: Overflow, seed: u8) -> Vec<Item> {
    let mut codec = LineCodec::new(limit, overflow);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in Cuts::new(seed).split(stream) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(line)) => out.push(Item::Line(line.to_vec())),
                Ok(None) => break,
                Err(CodecError::LineTooLong { limit: l }) => {
                    assert_eq!(l, limit);
                    out.push(Item::TooLong);
                }
                Err(CodecError::Io(e)) => panic!("an I/O error out of a byte buffer: {e}"),
            }
        }
        // Bounded memory: an unfinished line is kept only up to the limit.
        assert!(buf.len() <= limit, "{} bytes held with a limit of {limit}", buf.len());
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(line)) => out.push(Item::Line(line.to_vec())),
            Ok(None) => break,
            Err(e) => panic!("decode_eof after the stream was drained: {e}"),
        }
    }
    assert!(buf.is_empty(), "{} bytes left after the end of the stream", buf.len());
    out
}

/// The lines of the whole stream at once: split at `\n`, the last piece a line if it is
/// not empty, each over-long line handled by `overflow`.
fn model(stream: &[u8], limit: usize, overflow: Overflow) -> Vec<Item> {
    let mut pieces: Vec<&[u8]> = stream.split(|b| *b == b'\n').collect();
    if pieces.last().is_some_and(|p| p.is_empty()) {
        pieces.pop();
    }
    pieces
        .into_iter()
        .map(|line| match overflow {
            _ if line.len() <= limit => Item::Line(line.to_vec()),
            Overflow::Error => Item::TooLong,
            Overflow::Truncate => Item::Line(line[..limit].to_vec()),
        })
        .collect()
}
