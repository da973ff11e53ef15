//! The reference SSE parser for tests and tools: reads a `text/event-stream` as a browser's
//! `EventSource` does (the WHATWG "interpreting an event stream" rules). Sluice itself never parses
//! SSE; this is the one reading of its output that its unit tests, property tests and black-box
//! tests share.
//!
//! It is incremental: [`Parser::feed`] takes bytes as they arrive, split anywhere (inside a UTF-8
//! character or between the CR and LF of a line end), and queues every event as it is dispatched.

use std::collections::VecDeque;

/// One event as a browser dispatches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The event type (`message` when the event named none).
    pub event: String,
    /// The data lines joined by LF.
    pub data: String,
    /// The `id:` field of this event, if it had one (a browser's `lastEventId` carries the last id
    /// of the stream on: see [`Parser::last_event_id`]).
    pub id: Option<String>,
}

/// An incremental parser of one event stream.
#[derive(Debug, Default)]
pub struct Parser {
    /// The bytes of the line being read (a line is decoded once complete).
    line: Vec<u8>,
    /// The last byte fed was a CR: an LF right after it ends no other line.
    after_cr: bool,
    /// A line was completed already: a byte order mark is skipped only at the very start.
    started: bool,
    event_type: String,
    data: String,
    /// The `id:` of the event being read.
    id: Option<String>,
    last_event_id: String,
    retry: Option<u64>,
    comments: usize,
    invalid_utf8: bool,
    events: VecDeque<Event>,
}

/// Every event that `stream` dispatches (an event not ended by a blank line is not).
pub fn parse(stream: &str) -> Vec<Event> {
    let mut parser = Parser::new();
    parser.feed(stream.as_bytes());
    parser.events.into()
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `bytes`, the next part of the stream, queueing the events it completes.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
        }
        while let Some(at) = bytes.iter().position(|b| matches!(b, b'\r' | b'\n')) {
            self.line.extend_from_slice(&bytes[..at]);
            let cr = bytes[at] == b'\r';
            bytes = &bytes[at + 1..];
            if cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.end_line();
        }
        self.line.extend_from_slice(bytes);
    }

    /// The oldest event dispatched and not taken yet.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The reconnection time the stream set last (`retry:`, in milliseconds).
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// How many comment lines (`:` first) were read: heartbeats and sluice's preamble.
    pub fn comments(&self) -> usize {
        self.comments
    }

    /// The last event id as a browser keeps it (and sends as `Last-Event-ID`): the last `id:` field
    /// of a dispatched block, whether or not the block had data.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Whether a line was not valid UTF-8 (a browser decodes it with U+FFFD, and so does this).
    pub fn invalid_utf8(&self) -> bool {
        self.invalid_utf8
    }

    fn end_line(&mut self) {
        let bytes = std::mem::take(&mut self.line);
        let mut line = String::from_utf8(bytes).unwrap_or_else(|e| {
            self.invalid_utf8 = true;
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        });
        if !std::mem::replace(&mut self.started, true) && line.starts_with('\u{FEFF}') {
            line.drain(..'\u{FEFF}'.len_utf8());
        }
        self.process(&line);
    }

    fn process(&mut self, line: &str) {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            self.comments += 1;
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => value.clone_into(&mut self.event_type),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => {
                value.clone_into(&mut self.last_event_id);
                self.id = Some(value.to_owned());
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(millis) = value.parse() {
                    self.retry = Some(millis);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        let id = self.id.take();
        let event_type = std::mem::take(&mut self.event_type);
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        self.events.push_back(Event {
            event: if event_type.is_empty() {
                "message".to_owned()
            } else {
                event_type
            },
            data,
            id,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event: &str, data: &str, id: Option<&str>) -> Event {
        Event {
            event: event.into(),
            data: data.into(),
            id: id.map(str::to_owned),
        }
    }

    #[test]
    fn fields_comments_and_blank_lines() {
        let stream =
            "retry: 1500\n: sluice\n\nevent: a\nid: 7\ndata: x\ndata:  y\n\ndata\n\nfoo: bar\n\n";
        let mut parser = Parser::new();
        parser.feed(stream.as_bytes());
        assert_eq!(parser.retry(), Some(1500));
        assert_eq!(parser.comments(), 1);
        assert_eq!(parser.next_event(), Some(event("a", "x\n y", Some("7"))));
        assert_eq!(parser.next_event(), Some(event("message", "", None)));
        assert_eq!(
            parser.next_event(),
            None,
            "a block without data is no event"
        );
        assert_eq!(parser.last_event_id(), "7");
    }

    #[test]
    fn every_line_ending_and_a_cr_lf_split_between_chunks() {
        let stream = b"data: a\r\ndata: b\rdata: c\n\r\n";
        let whole = parse(std::str::from_utf8(stream).expect("utf-8"));
        assert_eq!(whole, [event("message", "a\nb\nc", None)]);
        for at in 0..=stream.len() {
            let mut parser = Parser::new();
            parser.feed(&stream[..at]);
            parser.feed(&stream[at..]);
            assert_eq!(parser.next_event().as_ref(), whole.first(), "split at {at}");
            assert_eq!(parser.next_event(), None, "split at {at}");
        }
    }

    #[test]
    fn an_event_without_its_blank_line_is_not_dispatched() {
        assert_eq!(parse("data: x\n"), []);
        assert_eq!(parse("data: x"), []);
    }

    #[test]
    fn ids_with_nul_and_bad_retries_are_ignored() {
        let mut parser = Parser::new();
        parser.feed(b"id: 1\nretry: 20\n\nid: a\0b\nretry: 3x\nretry: +5\nretry:\ndata: d\n\n");
        assert_eq!(parser.next_event(), Some(event("message", "d", None)));
        assert_eq!(parser.last_event_id(), "1");
        assert_eq!(parser.retry(), Some(20));
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped_once() {
        assert_eq!(
            parse("\u{FEFF}data: x\n\n\u{FEFF}data: y\n\n"),
            [event("message", "x", None)],
            "a second BOM makes a field named \\u{{FEFF}}data"
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_and_noted() {
        let mut parser = Parser::new();
        parser.feed(b"data: \xe2\x82");
        parser.feed(b"\xac\n\n");
        assert!(!parser.invalid_utf8(), "a character split between chunks");
        assert_eq!(
            parser.next_event(),
            Some(event("message", "\u{20AC}", None))
        );
        parser.feed(b"data: \xff\n\n");
        assert!(parser.invalid_utf8());
        assert_eq!(
            parser.next_event(),
            Some(event("message", "\u{FFFD}", None))
        );
    }
}
