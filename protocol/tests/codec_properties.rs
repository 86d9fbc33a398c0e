//! Properties of the line codec and the writer, over generated streams: where a stream is
//! cut into reads must never change what is decoded from it. (The `line_codec` and
//! `message_decode` fuzz targets in fuzz/ check the same on arbitrary bytes.)
#![allow(clippy::expect_used)] // Test helpers: a failed expectation is a failed test.

use bytes::BytesMut;
use futures_util::StreamExt;
use loom_protocol::writer::{Outgoing, write_lines};
use loom_protocol::{
    CodecError, LineCodec, Message, Notification, Overflow, Request, RequestId, Response, ResponseError,
};
use proptest::prelude::*;
use serde_json::Value;
use tokio_util::codec::{Decoder, Encoder, FramedRead};

/// What the codec hands out: a line, or "a line was too long".
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Line(Vec<u8>),
    TooLong,
}

/// Feeds `stream` to a fresh codec in pieces of the given lengths (the rest in one
/// piece), draining it after each, then ends the stream.
fn decode_in_pieces(stream: &[u8], cuts: &[usize], limit: usize, overflow: Overflow) -> Vec<Item> {
    let mut codec = LineCodec::new(limit, overflow);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = stream;
    let mut pieces = Vec::new();
    for &cut in cuts {
        let (head, tail) = rest.split_at(cut.min(rest.len()));
        pieces.push(head);
        rest = tail;
    }
    pieces.push(rest);
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(line)) => out.push(Item::Line(line.to_vec())),
                Ok(None) => break,
                Err(CodecError::LineTooLong { .. }) => out.push(Item::TooLong),
                Err(e) => panic!("{e}"),
            }
        }
        assert!(buf.len() <= limit, "{} bytes held with a limit of {limit}", buf.len());
    }
    while let Some(line) = codec.decode_eof(&mut buf).expect("the end of a drained stream") {
        out.push(Item::Line(line.to_vec()));
    }
    out
}

/// A JSON value without floats (a float read back may differ in its last digit).
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z_-]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn request_id() -> impl Strategy<Value = RequestId> {
    prop_oneof![any::<i64>().prop_map(RequestId::Number), any::<String>().prop_map(RequestId::String)]
}

/// Any message the protocol can carry, with params or results of any shape.
fn message() -> impl Strategy<Value = Message> {
    let method = prop_oneof!["[a-z]{1,10}", any::<String>()];
    prop_oneof![
        (request_id(), method.clone(), json()).prop_map(|(id, m, p)| Request::new(id, m, &p).into()),
        (method, json()).prop_map(|(m, p)| Notification::new(m, &p).into()),
        (request_id(), json()).prop_map(|(id, r)| Response::ok(id, &r).into()),
        (proptest::option::of(request_id()), any::<i64>(), any::<String>(), proptest::option::of(json())).prop_map(
            |(id, code, message, data)| Response::err(
                id,
                ResponseError { code, message, data: data.filter(|d| !d.is_null()) }
            )
            .into()
        ),
    ]
}

/// A line that the codec may get: any bytes but a newline.
fn line(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..max)
}

/// `lines` joined by newlines, with or without a final one.
fn join(lines: &[Vec<u8>], final_newline: bool) -> Vec<u8> {
    let mut stream = lines.join(&b'\n');
    if final_newline && !lines.is_empty() {
        stream.push(b'\n');
    }
    stream
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any split of a valid stream of messages decodes to the same messages.
    #[test]
    fn any_split_of_a_message_stream_decodes_to_the_same_messages(
        msgs in prop::collection::vec(message(), 1..12),
        cuts in prop::collection::vec(0usize..96, 0..48),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            m.encode(&mut stream);
        }
        let items = decode_in_pieces(&stream, &cuts, loom_protocol::DEFAULT_MAX_LINE_BYTES, Overflow::Error);
        prop_assert_eq!(items.len(), msgs.len());
        for (item, sent) in items.iter().zip(&msgs) {
            let Item::Line(line) = item else { panic!("a message line was too long") };
            let got = Message::decode(line).expect("an encoded message decodes");
            prop_assert_eq!(got.to_line(), sent.to_line());
        }
    }

    /// An over-long line costs that line only (an error, or its head when truncating),
    /// the same wherever the reads split the stream, and the codec never holds more than
    /// the limit.
    #[test]
    fn over_long_lines_are_handled_the_same_wherever_the_split_falls(
        lines in prop::collection::vec(line(40), 0..12),
        final_newline in any::<bool>(),
        limit in 0usize..16,
        cuts in prop::collection::vec(0usize..24, 0..32),
    ) {
        let stream = join(&lines, final_newline);
        for overflow in [Overflow::Error, Overflow::Truncate] {
            let whole = decode_in_pieces(&stream, &[], limit, overflow);
            let split = decode_in_pieces(&stream, &cuts, limit, overflow);
            prop_assert_eq!(&split, &whole);
            let want: Vec<Item> = lines
                .iter()
                .enumerate()
                // Without a final newline, an empty last line is no line at all.
                .filter(|(i, l)| !(l.is_empty() && *i == lines.len() - 1 && !final_newline))
                .map(|(_, l)| match overflow {
                    _ if l.len() <= limit => Item::Line(l.clone()),
                    Overflow::Error => Item::TooLong,
                    Overflow::Truncate => Item::Line(l[..limit].to_vec()),
                })
                .collect();
            prop_assert_eq!(whole, want);
        }
    }

    /// What the codec's `Encoder` writes and what `write_lines` sends, in any grouping of
    /// lines per queued item, is read back by a `FramedRead` as the same messages.
    #[test]
    fn encoder_and_writer_round_trip(
        msgs in prop::collection::vec(message(), 1..12),
        groups in prop::collection::vec(1usize..4, 1..12),
    ) {
        let mut codec = LineCodec::new(usize::MAX, Overflow::Error);
        let mut encoded = BytesMut::new();
        for m in &msgs {
            codec.encode(m, &mut encoded).expect("encoding into memory");
        }
        let concatenated: Vec<u8> = msgs.iter().flat_map(Message::to_line).collect();
        prop_assert_eq!(&encoded[..], &concatenated[..]);

        let rt = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        let read_back: Vec<Vec<u8>> = rt.block_on(async {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let mut rest = &concatenated[..];
            let mut lines = msgs.iter().map(|m| m.to_line().len());
            for &n in groups.iter().cycle() {
                let len: usize = lines.by_ref().take(n).sum();
                if len == 0 {
                    break;
                }
                let (head, tail) = rest.split_at(len);
                tx.send(Outgoing::Line(head.to_vec())).expect("queue");
                rest = tail;
            }
            tx.send(Outgoing::Close).expect("queue");
            let (a, b) = tokio::io::duplex(1 << 10);
            let writer = tokio::spawn(write_lines(rx, a));
            let frames = FramedRead::new(b, LineCodec::new(usize::MAX, Overflow::Error));
            let got: Vec<Vec<u8>> = frames.map(|f| f.expect("a line").to_vec()).collect().await;
            writer.await.expect("writer task").expect("writes");
            got
        });
        prop_assert_eq!(read_back.len(), msgs.len());
        for (line, sent) in read_back.iter().zip(&msgs) {
            let got = Message::decode(line).expect("a written message decodes");
            prop_assert_eq!(got.to_line(), sent.to_line());
        }
    }
}
