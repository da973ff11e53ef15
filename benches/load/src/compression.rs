//! Compressed streams in the harness: the encoding subscribers ask for, their streaming decoder,
//! and the `--compression-cost` measurement (gzip against the plain stream, alternately).

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

/// The `accept-encoding` subscribers send for the run under way (none: the plain stream). A run
/// with one also has sluice's bench route `compress = true`.
static ENCODING: AtomicU8 = AtomicU8::new(0);

const ENCODINGS: [&str; 3] = ["gzip", "br", "zstd"];

/// Sets what the next runs' subscribers ask for.
pub fn set_encoding(encoding: Option<&str>) {
    let index = encoding
        .and_then(|e| ENCODINGS.iter().position(|x| *x == e))
        .map_or(0, |i| i as u8 + 1);
    ENCODING.store(index, Ordering::Relaxed);
}

/// What subscribers ask for now.
pub fn encoding() -> Option<&'static str> {
    match ENCODING.load(Ordering::Relaxed) {
        0 => None,
        i => ENCODINGS.get(usize::from(i) - 1).copied(),
    }
}

/// A streaming decoder of a compressed body, chosen by its `content-encoding`. gzip is inflated
/// directly (after its 10-byte header; sluice writes no optional header fields), with no buffer of
/// its own: a thousand subscribers decode on the same two cores as the server they measure.
pub enum Decoder {
    Gzip {
        inflate: flate2::Decompress,
        header_left: usize,
    },
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Decoder {
    /// The decoder of a response head (lower-cased) that names a content encoding.
    pub fn for_head(head: &str) -> Option<Self> {
        let encoding = head
            .lines()
            .find_map(|l| l.strip_prefix("content-encoding:"))?
            .trim();
        Some(match encoding {
            "gzip" => Decoder::Gzip {
                inflate: flate2::Decompress::new(false),
                header_left: 10,
            },
            "br" => Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            "zstd" => Decoder::Zstd(zstd::stream::write::Decoder::new(Vec::new()).ok()?),
            _ => return None,
        })
    }

    /// Decodes `data` into `out` (replacing its content); false when the body is not valid.
    pub fn decode(&mut self, data: &[u8], out: &mut Vec<u8>) -> bool {
        let (written, decoded) = match self {
            Decoder::Gzip {
                inflate,
                header_left,
            } => {
                let skip = (*header_left).min(data.len());
                *header_left -= skip;
                return inflate_all(inflate, &data[skip..], out);
            }
            Decoder::Brotli(d) => (d.write_all(data).and_then(|()| d.flush()), d.get_mut()),
            Decoder::Zstd(d) => (d.write_all(data).and_then(|()| d.flush()), d.get_mut()),
        };
        out.clear();
        std::mem::swap(out, decoded);
        written.is_ok()
    }
}

/// Inflates all of `input` into `out` (replacing its content); false when it is not valid deflate.
/// The trailer that ends the body (CRC and length) is left unread.
fn inflate_all(inflate: &mut flate2::Decompress, mut input: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    loop {
        out.reserve(input.len() * 8 + 256);
        let before = inflate.total_in();
        match inflate.decompress_vec(input, out, flate2::FlushDecompress::Sync) {
            Ok(flate2::Status::StreamEnd) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
        let used = (inflate.total_in() - before) as usize;
        input = &input[used.min(input.len())..];
        if input.is_empty() && out.len() < out.capacity() {
            return true;
        }
    }
}

/// The medians of one variant's runs: wire bytes per event, idle KiB per subscriber, p99 ms at
/// 100 msg/s, delivered events/s and CPU s per million events at saturation.
#[derive(Default)]
struct Measured {
    bytes: Vec<f64>,
    idle_kib: Vec<f64>,
    /// p99 at 1 msg/s: one event's fan-out on an otherwise idle machine.
    p99_one_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    ceiling: Vec<f64>,
    cpu: Vec<f64>,
    /// The load generator's CPU per million events in the 100 msg/s phase (it decodes too).
    client_cpu: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The compression benchmark (see `--compression-cost`).
pub async fn cost(repeats: usize, quick: bool, encodings: &[String]) -> Vec<crate::Row> {
    let (n, step, seconds) = if quick { (200, 2, 2) } else { (1000, 10, 10) };
    let mut variants = vec![None];
    variants.extend(
        ENCODINGS
            .into_iter()
            .filter(|e| encodings.iter().any(|x| x == e))
            .map(Some),
    );
    let mut measured: Vec<Measured> = variants.iter().map(|_| Measured::default()).collect();
    let mut rows = Vec::new();
    let phases = crate::Phases {
        latency_messages: if quick { 3 } else { 10 },
        rate_seconds: seconds,
        stalled_fraction: 0.0,
    };
    for round in 0..repeats {
        for (variant, runs) in variants.iter().zip(measured.iter_mut()) {
            let label = variant.unwrap_or("plain");
            set_encoding(*variant);
            eprintln!("compression cost, round {}: {label}", round + 1);
            let kind = crate::servers::Kind::SluiceMemory;
            match crate::fan_out(kind, crate::Proto::H1, n, &phases).await {
                Ok(fanned) => {
                    for mut row in fanned {
                        if row.test == "latency" {
                            runs.p99_one_ms.push(row.p99_ms);
                            crate::report(&mut rows, vec![row]);
                            continue;
                        }
                        runs.bytes.push(row.wire_bytes_per_event);
                        runs.idle_kib.push(row.rss_per_sub_kib);
                        runs.p99_ms.push(row.p99_ms);
                        runs.client_cpu.push(row.client_cpu_per_million);
                        row.note = format!("{label}: {:.1} B/event", row.wire_bytes_per_event);
                        crate::report(&mut rows, vec![row]);
                    }
                }
                Err(e) => eprintln!("  failed: {e:#}"),
            }
            let saturated =
                crate::saturation(kind, n, step, crate::Scrape::Off, Some(2000.0)).await;
            match saturated {
                Ok(mut row) => {
                    runs.ceiling.push(row.delivered_per_s);
                    runs.cpu.push(row.cpu_per_million);
                    row.note = label.to_owned();
                    crate::report(&mut rows, vec![row]);
                }
                Err(e) => eprintln!("  failed: {e:#}"),
            }
        }
    }
    set_encoding(None);
    let plain = &measured[0];
    let (bytes, p99_one, p99, ceiling) = (
        median(&plain.bytes),
        median(&plain.p99_one_ms),
        median(&plain.p99_ms),
        median(&plain.ceiling),
    );
    eprintln!("compression cost, medians of {repeats} rounds at {n} subscribers:");
    eprintln!("| stream | bytes/event | vs plain | idle KiB/sub | p99 ms at 1/s | vs plain | p99 ms at 100/s | vs plain | client CPU s/M at 100/s | ceiling ev/s | vs plain | CPU s/M ev |");
    for (variant, runs) in variants.iter().zip(&measured) {
        eprintln!(
            "| {} | {:.1} | {:.2}x smaller | {:.2} | {:.2} | {:.2}x | {:.2} | {:.2}x | {:.2} | {:.0} | {:.2}x | {:.2} |",
            variant.unwrap_or("plain"),
            median(&runs.bytes),
            bytes / median(&runs.bytes),
            median(&runs.idle_kib),
            median(&runs.p99_one_ms),
            median(&runs.p99_one_ms) / p99_one,
            median(&runs.p99_ms),
            median(&runs.p99_ms) / p99,
            median(&runs.client_cpu),
            median(&runs.ceiling),
            median(&runs.ceiling) / ceiling,
            median(&runs.cpu),
        );
    }
    rows
}
