//! The load generator's SSE reading: an HTTP/1.1 chunked decoder and an event counter that parses
//! the harness's payloads (`EPOCH SEQ MICROS padding`) for loss, order and latency.

use crate::stats::Stats;

/// Decodes `transfer-encoding: chunked` incrementally (or passes a close-delimited body through).
#[derive(Default)]
pub struct Dechunker {
    /// A close-delimited body: no chunk framing.
    passthrough: bool,
    /// Bytes left in the current chunk's data.
    remaining: usize,
    /// Bytes of a chunk-size line (or the CRLF after data) not yet complete.
    line: Vec<u8>,
    /// Expecting the CRLF that follows chunk data.
    after_data: bool,
}

impl Dechunker {
    pub fn passthrough() -> Self {
        Self {
            passthrough: true,
            ..Self::default()
        }
    }

    /// Appends the decoded body bytes of `input` to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if self.passthrough {
            out.extend_from_slice(input);
            return;
        }
        while !input.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(input.len());
                out.extend_from_slice(&input[..take]);
                self.remaining -= take;
                input = &input[take..];
                if self.remaining == 0 {
                    self.after_data = true;
                }
                continue;
            }
            let Some(nl) = input.iter().position(|b| *b == b'\n') else {
                self.line.extend_from_slice(input);
                return;
            };
            self.line.extend_from_slice(&input[..nl]);
            input = &input[nl + 1..];
            let line = std::mem::take(&mut self.line);
            if self.after_data {
                self.after_data = false;
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            let size = text.trim().split(';').next().unwrap_or("0");
            self.remaining = usize::from_str_radix(size, 16).unwrap_or(0);
        }
    }
}

/// Counts the events of one subscriber.
pub struct EventCounter {
    buf: Vec<u8>,
    /// The epoch of the last event seen (none yet: `u64::MAX`).
    epoch: u64,
    last_seq: u64,
    pub events: u64,
}

impl Default for EventCounter {
    fn default() -> Self {
        Self {
            buf: Vec::new(),
            epoch: u64::MAX,
            last_seq: 0,
            events: 0,
        }
    }
}

fn number(field: Option<&[u8]>) -> Option<u64> {
    let field = field?;
    let mut n: u64 = 0;
    for b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

impl EventCounter {
    /// Feeds decoded SSE bytes; records every complete event in `stats`.
    pub fn feed(&mut self, data: &[u8], stats: &Stats, sample_latency: bool) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(end) = find(&self.buf[start..], b"\n\n") {
            let block = &self.buf[start..start + end];
            start += end + 2;
            let Some(at) = find(block, b"data: ") else {
                continue;
            };
            let line = &block[at + 6..];
            let line = &line[..line.iter().position(|b| *b == b'\n').unwrap_or(line.len())];
            let mut fields = line.split(|b| *b == b' ');
            let (Some(epoch), Some(seq), Some(micros)) = (
                number(fields.next()),
                number(fields.next()),
                number(fields.next()),
            ) else {
                continue;
            };
            self.events += 1;
            stats.record(
                epoch,
                seq,
                micros,
                &mut self.epoch,
                &mut self.last_seq,
                sample_latency,
            );
        }
        self.buf.drain(..start);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_across_splits() {
        let wire = b"5\r\nhello\r\n3\r\nabc\r\n";
        for split in 0..wire.len() {
            let mut d = Dechunker::default();
            let mut out = Vec::new();
            d.feed(&wire[..split], &mut out);
            d.feed(&wire[split..], &mut out);
            assert_eq!(out, b"helloabc", "split at {split}");
        }
    }
}
