//! The `text/event-stream` wire format: encodes broker messages into SSE frames, once per message.
//!
//! A payload can never forge or break an event: `data:` is split on CR, LF and CRLF, so each line of
//! the payload becomes its own `data:` line and a blank line inside the payload stays inside the event.
//! A payload that is not valid UTF-8 is sent base64-encoded under the event type `<name>.base64`, so the
//! stream never carries invalid UTF-8 and a client can always tell binary from text.

use crate::route::{parse_template, Piece};
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use sluice_bridge::random_u64;
use std::time::Duration;

/// The reference parser of what this module writes, for tests and tools (sluice never parses SSE).
pub mod parser;
pub use parser::{parse, Parser};

/// The event type of a message without a configured name (what `EventSource.onmessage` receives).
pub const DEFAULT_EVENT: &str = "message";
/// Appended to the event type of a binary (non-UTF-8) payload, which is sent base64-encoded.
pub const BASE64_SUFFIX: &str = ".base64";

/// Appended to the event type of an MQTT retained message (the topic's current value, sent first).
pub const RETAINED_SUFFIX: &str = ".retained";
/// The event type that tells a client it did not get every event (see [`gap`]).
pub const GAP_EVENT: &str = "gap";

/// The SSE event type of a route: fixed text, optionally with `{topic}` inserted. Never empty and
/// free of control characters, so it cannot break the `event:` line it is written on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventName {
    pieces: Vec<Piece>,
}

impl EventName {
    /// Parses a route's `event`; the error says why it cannot be one.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("event cannot be empty (leave it out for the default \"message\")".into());
        }
        if text.chars().any(char::is_control) {
            return Err("event cannot contain control characters".into());
        }
        let pieces = parse_template(text)?;
        if let Some(Piece::Param(p)) = pieces
            .iter()
            .find(|p| matches!(p, Piece::Param(n) if n != "topic"))
        {
            return Err(format!("event can only insert {{topic}}, not {{{p}}}"));
        }
        Ok(Self { pieces })
    }

    /// The concrete topic itself (`event = "{topic}"`).
    pub fn topic() -> Self {
        Self {
            pieces: vec![Piece::Param("topic".into())],
        }
    }

    /// The event type for a message on `topic`.
    pub fn render(&self, topic: &str) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(l) => out.push_str(l),
                Piece::Param(_) => out.push_str(topic),
            }
        }
        out
    }
}

/// The frame written first on every stream: the reconnection delay, then a comment so the response
/// headers and first bytes are flushed at once. The delay is the configured one plus up to half of it
/// at random, so clients that lose their connections together do not all come back in one instant.
pub fn preamble(retry: Duration) -> Bytes {
    let base = retry.as_millis() as u64;
    let jitter = random_u64() % (base / 2).max(1);
    Bytes::from(format!("retry: {}\n: sluice\n\n", base + jitter))
}

/// Why a client did not get every event; the `reason` of a [`gap`] event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapReason {
    /// The `Last-Event-ID` was not made by this process for this topic (a previous process, another
    /// route, a malformed or a future id): nothing is known of what was missed.
    UnknownId,
    /// The events after the `Last-Event-ID` are no longer held (replay buffer, linger or the broker's
    /// retention ran out).
    Expired,
    /// The stream's queue was full and the `drop-oldest` policy discarded events.
    Overflow,
    /// The JetStream stream was deleted and created again: its ids start over, and what the old one
    /// held after the client's position is gone.
    StreamReplaced,
    /// The broker confirmed the topic's subscription only after the stream had opened (it was hung or
    /// away): what was published in between may be missing.
    LateSubscription,
    /// Sluice lost its connection to the broker and got it back: what was published meanwhile (and
    /// the broker does not keep) is missing.
    BrokerDisconnected,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::UnknownId => "unknown-id",
            GapReason::Expired => "expired",
            GapReason::Overflow => "overflow",
            GapReason::StreamReplaced => "stream-replaced",
            GapReason::LateSubscription => "late-subscription",
            GapReason::BrokerDisconnected => "broker-disconnected",
        }
    }
}

/// The `gap` event: `data` is `{"reason": "...", "lost": N}`, `lost` being `null` when unknown. It has
/// no `id:`, so the client's last event id stays where it was.
pub fn gap(reason: GapReason, lost: Option<u64>) -> Bytes {
    let lost = lost.map_or_else(|| "null".to_owned(), |n| n.to_string());
    Bytes::from(format!(
        "event: {GAP_EVENT}\ndata: {{\"reason\":\"{}\",\"lost\":{lost}}}\n\n",
        reason.as_str()
    ))
}

/// The heartbeat comment sent on an idle stream, so proxies and clients see the connection alive.
pub fn heartbeat() -> Bytes {
    Bytes::from_static(b":\n\n")
}

/// The frame written to every stream when the server shuts down: a `retry:` between the configured
/// delay and three times it, so clients do not all reconnect in the same instant.
pub fn shutdown_retry(retry: Duration) -> Bytes {
    let base = retry.as_millis() as u64;
    let jitter = random_u64() % (2 * base.max(1));
    Bytes::from(format!("retry: {}\n\n", base + jitter))
}

/// The data of an event in a JSON envelope: `{"topic": ..., "data": "..."}` for a UTF-8 payload, or
/// `{"topic": ..., "data_base64": "..."}` for a binary one. JSON escapes line breaks, so it is one line.
pub fn envelope(topic: &str, payload: &[u8]) -> Vec<u8> {
    let body = match std::str::from_utf8(payload) {
        Ok(text) => serde_json::json!({ "topic": topic, "data": text }),
        Err(_) => serde_json::json!({
            "topic": topic,
            "data_base64": base64::engine::general_purpose::STANDARD.encode(payload),
        }),
    };
    body.to_string().into_bytes()
}

/// Encodes one event. `event` is the event type (`None` or `"message"` omits the field).
pub fn encode_event(event: Option<&str>, data: &[u8]) -> Bytes {
    encode_event_with_id(event, None, data)
}

/// Encodes one event with an `id:` (made by sluice, so free of CR, LF and NUL).
pub fn encode_event_with_id(event: Option<&str>, id: Option<&str>, data: &[u8]) -> Bytes {
    match std::str::from_utf8(data) {
        Ok(text) => encode_text(event, id, text),
        Err(_) => {
            let name = format!("{}{BASE64_SUFFIX}", event.unwrap_or(DEFAULT_EVENT));
            let encoded = base64::engine::general_purpose::STANDARD.encode(data);
            encode_text(Some(&name), id, &encoded)
        }
    }
}

fn encode_text(event: Option<&str>, id: Option<&str>, text: &str) -> Bytes {
    // Worst case every byte is a line break: each adds a "data: " prefix and a newline.
    let mut out = BytesMut::with_capacity(
        text.len() + 16 + event.map_or(0, |e| e.len() + 8) + id.map_or(0, |i| i.len() + 5),
    );
    if let Some(name) = event.filter(|e| *e != DEFAULT_EVENT) {
        out.put_slice(b"event: ");
        put_field_value(&mut out, name);
        out.put_u8(b'\n');
    }
    if let Some(id) = id {
        out.put_slice(b"id: ");
        put_field_value(&mut out, id);
        out.put_u8(b'\n');
    }
    for line in split_lines(text) {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// Writes a single-line field value; CR, LF and NUL (which would end or corrupt the field) become
/// U+FFFD. Used for names that can come from a broker, such as a topic inserted into the event type.
fn put_field_value(out: &mut BytesMut, value: &str) {
    if !value.contains(['\r', '\n', '\0']) {
        out.put_slice(value.as_bytes());
        return;
    }
    for c in value.chars() {
        let c = if matches!(c, '\r' | '\n' | '\0') {
            '\u{FFFD}'
        } else {
            c
        };
        let mut buf = [0u8; 4];
        out.put_slice(c.encode_utf8(&mut buf).as_bytes());
    }
}

/// Splits on CRLF, CR and LF, the three line endings an SSE parser recognises.
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(current)
            }
            Some(at) => {
                let skip = if current[at..].starts_with("\r\n") {
                    2
                } else {
                    1
                };
                rest = Some(&current[at + skip..]);
                Some(&current[..at])
            }
        }
    })
}

/// Joins queued frames into one buffer so a client that fell behind gets one write, not one per event.
pub fn coalesce(frames: &mut Vec<Bytes>) -> Bytes {
    match frames.len() {
        0 => Bytes::new(),
        1 => frames.pop().unwrap_or_default(),
        _ => {
            let len = frames.iter().map(Bytes::len).sum();
            let mut out = BytesMut::with_capacity(len);
            for frame in frames.drain(..) {
                out.put_slice(&frame);
            }
            out.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).expect("utf-8")
    }

    /// What a browser dispatches for `stream`, as (event type, data).
    fn parse(stream: &str) -> Vec<(String, String)> {
        super::parse(stream)
            .into_iter()
            .map(|e| (e.event, e.data))
            .collect()
    }

    #[test]
    fn single_line() {
        assert_eq!(text(encode_event(None, b"hello")), "data: hello\n\n");
        assert_eq!(
            text(encode_event(Some("reading"), b"21.5")),
            "event: reading\ndata: 21.5\n\n"
        );
        assert_eq!(text(encode_event(Some("message"), b"x")), "data: x\n\n");
    }

    #[test]
    fn every_line_ending_splits_and_round_trips() {
        let payload = "a\nb\r\nc\rd\n\ne";
        let frame = text(encode_event(None, payload.as_bytes()));
        assert_eq!(
            frame,
            "data: a\ndata: b\ndata: c\ndata: d\ndata: \ndata: e\n\n"
        );
        assert_eq!(
            parse(&frame),
            vec![("message".into(), "a\nb\nc\nd\n\ne".into())]
        );
    }

    #[test]
    fn payload_cannot_forge_fields_or_events() {
        let payload = "x\n\nevent: admin\ndata: forged\nid: 99\nretry: 1\n";
        let frame = text(encode_event(Some("reading"), payload.as_bytes()));
        let events = parse(&frame);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, "reading");
        assert_eq!(
            events[0].1,
            "x\n\nevent: admin\ndata: forged\nid: 99\nretry: 1\n"
        );
    }

    #[test]
    fn empty_payload_is_still_an_event() {
        assert_eq!(
            parse(&text(encode_event(None, b""))),
            vec![("message".into(), "".into())]
        );
    }

    #[test]
    fn binary_is_base64_under_a_suffixed_type() {
        let frame = text(encode_event(Some("blob"), &[0xff, 0x00, 0x80]));
        assert_eq!(frame, "event: blob.base64\ndata: /wCA\n\n");
        let frame = text(encode_event(None, &[0xc3]));
        assert_eq!(frame, "event: message.base64\ndata: ww==\n\n");
    }

    #[test]
    fn event_names_cannot_break_lines() {
        let frame = text(encode_event(Some("a\nb\rc\0"), b"x"));
        assert_eq!(frame, "event: a\u{FFFD}b\u{FFFD}c\u{FFFD}\ndata: x\n\n");
    }

    #[test]
    fn ids_follow_the_event_type() {
        let frame = text(encode_event_with_id(Some("reading"), Some("7"), b"x"));
        assert_eq!(frame, "event: reading\nid: 7\ndata: x\n\n");
        assert_eq!(
            text(encode_event_with_id(None, Some("a.b.1"), b"x")),
            "id: a.b.1\ndata: x\n\n"
        );
    }

    #[test]
    fn envelopes_are_one_json_line() {
        let data = envelope("a/b", b"x\ny");
        assert_eq!(data, br#"{"data":"x\ny","topic":"a/b"}"#.to_vec());
        let frame = text(encode_event(None, &data));
        assert_eq!(frame.lines().count(), 2, "{frame:?}");
        assert_eq!(
            envelope("t", &[0xff]),
            br#"{"data_base64":"/w==","topic":"t"}"#.to_vec()
        );
    }

    #[test]
    fn gap_events_carry_json() {
        assert_eq!(
            text(gap(GapReason::Expired, Some(12))),
            "event: gap\ndata: {\"reason\":\"expired\",\"lost\":12}\n\n"
        );
        assert_eq!(
            parse(&text(gap(GapReason::UnknownId, None))),
            vec![(
                "gap".into(),
                "{\"reason\":\"unknown-id\",\"lost\":null}".into()
            )]
        );
    }

    #[test]
    fn the_opening_retry_is_jittered_upwards() {
        for _ in 0..50 {
            let frame = text(preamble(Duration::from_millis(2000)));
            let millis: u64 = frame
                .strip_prefix("retry: ")
                .and_then(|rest| rest.split('\n').next())
                .and_then(|n| n.parse().ok())
                .expect("a retry line");
            assert!((2000..3000).contains(&millis), "{millis}");
        }
    }

    #[test]
    fn leading_spaces_survive() {
        assert_eq!(
            parse(&text(encode_event(None, b"  two"))),
            vec![("message".into(), "  two".into())]
        );
    }

    #[test]
    fn coalescing_concatenates_in_order() {
        let mut frames = vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")];
        assert_eq!(coalesce(&mut frames), Bytes::from_static(b"ab"));
        assert!(frames.is_empty());
    }
}
