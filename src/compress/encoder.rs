//! One compressed stream's encoder: gzip, Brotli or zstd, flushed at the end of every write so a
//! browser decodes each event as soon as it arrives.

use super::{Encoding, Levels};
use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress};
use std::cell::RefCell;
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use zstd::zstd_safe::{CCtx, CParameter, InBuffer, OutBuffer, ResetDirective};

/// How far back an encoder looks for repeats: 4 KiB, a few dozen small events. A longer window
/// buys little on event streams and costs memory while the stream is active.
const WINDOW_BITS: u8 = 12;

/// A gzip member's header: no name, no time, unknown OS (RFC 1952).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// How many streams may hold a gzip or zstd compressor at once (`[server] max_compressors`; a gzip
/// one is about 230 KiB): past it, a stream compresses each write on its own with its thread's
/// spare compressor, which is correct and bounded but has no earlier events to find repeats in. A
/// busy topic wakes the compressor of every one of its streams, so without this bound their sum
/// grows with the streams.
static MAX_ACTIVE: AtomicUsize = AtomicUsize::new(crate::config::DEFAULT_MAX_COMPRESSORS);

/// The compressors held by streams now.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Sets how many streams may hold a compressor at once (from start-up and every reload); streams
/// that hold one past a lower bound keep it until they rest.
pub fn set_max_active(max: usize) {
    MAX_ACTIVE.store(max, Ordering::Relaxed);
}

/// A place among the compressors [`MAX_ACTIVE`] allows, given back when dropped.
struct Slot(());

impl Slot {
    fn take() -> Option<Slot> {
        ACTIVE
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_ACTIVE.load(Ordering::Relaxed)).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream's own compressor, with its place.
struct Leased<T> {
    value: T,
    _slot: Slot,
}

thread_local! {
    /// Each thread's spare compressors (with their level), reset before every use.
    static SPARE_DEFLATE: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
    static SPARE_ZSTD: RefCell<Option<(i32, CCtx<'static>)>> = const { RefCell::new(None) };
}

/// The encoder of one stream's body.
pub struct Encoder {
    state: State,
    /// Whether it may take one of the places [`MAX_ACTIVE`] allows (always, but in tests of the
    /// spare path).
    leases: bool,
}

enum State {
    /// A raw deflate stream inside one gzip member. The compressor is dropped after each write that
    /// ends byte-aligned (see [`Encoder::encode`]); the next write continues the same deflate stream
    /// with a fresh one.
    Gzip {
        level: u32,
        deflate: Option<Leased<Box<Compress>>>,
        /// Of everything compressed so far, for the member's trailer.
        crc: Crc,
        header_sent: bool,
    },
    /// A sequence of zstd frames: one ends when the stream goes idle, the next starts afresh.
    Zstd {
        level: i32,
        cctx: Option<Leased<CCtx<'static>>>,
        /// A frame was written: an empty body still gets one, as a zstd body is at least a frame.
        framed: bool,
    },
    /// One Brotli stream: its format has no way to continue with a fresh encoder.
    Brotli {
        writer: Option<Box<brotli::CompressorWriter<Vec<u8>>>>,
    },
}

impl Encoder {
    pub fn new(encoding: Encoding, levels: &Levels) -> Self {
        let state = match encoding {
            Encoding::Gzip => State::Gzip {
                level: levels.gzip,
                deflate: None,
                crc: Crc::new(),
                header_sent: false,
            },
            Encoding::Zstd => State::Zstd {
                level: levels.zstd,
                cctx: None,
                framed: false,
            },
            Encoding::Brotli => State::Brotli {
                writer: Some(Box::new(brotli::CompressorWriter::new(
                    Vec::new(),
                    4096,
                    levels.br,
                    u32::from(WINDOW_BITS),
                ))),
            },
        };
        Self {
            state,
            leases: true,
        }
    }

    /// Compresses `frames` and flushes: what to send, which decodes to all of `frames`. `rest`: the
    /// stream goes idle (the write carried no event), so the encoder gives back its working state
    /// and keeps only what continuing the body needs.
    pub fn encode(&mut self, frames: &[Bytes], rest: bool) -> io::Result<Bytes> {
        let mut out = Vec::new();
        match &mut self.state {
            State::Gzip {
                level,
                deflate,
                crc,
                header_sent,
            } => {
                header_once(header_sent, &mut out);
                for frame in frames {
                    crc.update(frame);
                }
                if deflate.is_none() && self.leases {
                    *deflate = Slot::take().map(|slot| Leased {
                        value: new_deflate(*level),
                        _slot: slot,
                    });
                }
                match deflate.as_mut() {
                    Some(compress) => {
                        // A partial flush ends the data's last code a few bits into the output,
                        // without the four bytes of an empty stored block; a sync flush aligns to a
                        // byte, so the next write can start with another compressor.
                        let flush = if rest {
                            FlushCompress::Sync
                        } else {
                            FlushCompress::Partial
                        };
                        deflate_frames(&mut compress.value, frames, flush, &mut out)?;
                        if rest {
                            *deflate = None;
                        }
                    }
                    // Every place is taken: this write alone, byte-aligned, with the spare.
                    None => with_spare_deflate(*level, |spare| {
                        deflate_frames(spare, frames, FlushCompress::Sync, &mut out)
                    })?,
                }
            }
            State::Zstd {
                level,
                cctx,
                framed,
            } => {
                *framed = true;
                if cctx.is_none() && self.leases {
                    if let Some(slot) = Slot::take() {
                        *cctx = Some(Leased {
                            value: new_zstd(*level)?,
                            _slot: slot,
                        });
                    }
                }
                match cctx.as_mut() {
                    Some(working) => {
                        zstd_frames(&mut working.value, frames, &mut out, rest)?;
                        if rest {
                            *cctx = None;
                        }
                    }
                    // Every place is taken: this write as a whole frame, with the spare.
                    None => {
                        with_spare_zstd(*level, |spare| zstd_frames(spare, frames, &mut out, true))?
                    }
                }
            }
            State::Brotli { writer } => {
                let writer = writer.as_mut().ok_or_else(finished)?;
                for frame in frames {
                    writer.write_all(frame)?;
                }
                writer.flush()?;
                out = std::mem::take(writer.get_mut());
            }
        }
        Ok(Bytes::from(out))
    }

    /// Ends the body: the last bytes to send. The encoder encodes nothing after it.
    pub fn finish(&mut self) -> io::Result<Bytes> {
        let mut out = Vec::new();
        match &mut self.state {
            State::Gzip {
                level,
                deflate,
                crc,
                header_sent,
            } => {
                header_once(header_sent, &mut out);
                match deflate.take() {
                    Some(mut compress) => {
                        deflate_into(&mut compress.value, &[], &mut out, FlushCompress::Finish)?
                    }
                    None => with_spare_deflate(*level, |spare| {
                        deflate_into(spare, &[], &mut out, FlushCompress::Finish)
                    })?,
                }
                out.extend_from_slice(&crc.sum().to_le_bytes());
                out.extend_from_slice(&crc.amount().to_le_bytes());
            }
            State::Zstd {
                level,
                cctx,
                framed,
            } => {
                // The frames before the current one ended when their stream went idle; a body with
                // no frame at all gets an empty one.
                match cctx.take() {
                    Some(mut cctx) => zstd_flush(&mut cctx.value, &mut out, true)?,
                    None if !*framed => {
                        with_spare_zstd(*level, |spare| zstd_flush(spare, &mut out, true))?
                    }
                    None => {}
                }
                *framed = true;
            }
            State::Brotli { writer } => {
                if let Some(writer) = writer.take() {
                    out = writer.into_inner();
                }
            }
        }
        Ok(Bytes::from(out))
    }

    /// Whether the encoder holds working state (it gives it back when its stream goes idle).
    pub fn is_active(&self) -> bool {
        match &self.state {
            State::Gzip { deflate, .. } => deflate.is_some(),
            State::Zstd { cctx, .. } => cctx.is_some(),
            State::Brotli { writer } => writer.is_some(),
        }
    }
}

fn finished() -> io::Error {
    io::Error::other("the compressed body has ended")
}

/// Writes the gzip member's header first, once.
fn header_once(header_sent: &mut bool, out: &mut Vec<u8>) {
    if !std::mem::replace(header_sent, true) {
        out.extend_from_slice(&GZIP_HEADER);
    }
}

/// Deflates `frames` into `out`, the last one with `flush` (one call for a lone event, the usual
/// write).
fn deflate_frames(
    compress: &mut Compress,
    frames: &[Bytes],
    flush: FlushCompress,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let (last, before) = frames
        .split_last()
        .map_or((&[][..], &[][..]), |(l, b)| (&l[..], b));
    for frame in before {
        deflate_into(compress, frame, out, FlushCompress::None)?;
    }
    deflate_into(compress, last, out, flush)
}

/// Runs `write` with this thread's spare deflate compressor at `level`, reset first: what it writes
/// refers to nothing before it.
fn with_spare_deflate(
    level: u32,
    write: impl FnOnce(&mut Compress) -> io::Result<()>,
) -> io::Result<()> {
    SPARE_DEFLATE.with(|spare| {
        let mut spare = spare.borrow_mut();
        let compress = match &mut *spare {
            Some((made_at, compress)) if *made_at == level => {
                compress.reset();
                compress
            }
            other => &mut other.insert((level, *new_deflate(level))).1,
        };
        write(compress)
    })
}

/// Compresses `frames` into `out` and flushes; `end` also ends the frame.
fn zstd_frames(
    cctx: &mut CCtx<'static>,
    frames: &[Bytes],
    out: &mut Vec<u8>,
    end: bool,
) -> io::Result<()> {
    for frame in frames {
        zstd_into(cctx, frame, out)?;
    }
    zstd_flush(cctx, out, end)
}

/// Runs `write` with this thread's spare zstd compressor at `level`, starting a new frame.
fn with_spare_zstd(
    level: i32,
    write: impl FnOnce(&mut CCtx<'static>) -> io::Result<()>,
) -> io::Result<()> {
    SPARE_ZSTD.with(|spare| {
        let mut spare = spare.borrow_mut();
        let cctx = match &mut *spare {
            Some((made_at, cctx)) if *made_at == level => {
                cctx.reset(ResetDirective::SessionOnly)
                    .map_err(zstd_error)?;
                cctx
            }
            other => &mut other.insert((level, new_zstd(level)?)).1,
        };
        write(cctx)
    })
}

fn new_deflate(level: u32) -> Box<Compress> {
    // Raw deflate: the gzip header and trailer are written here, around every compressor the
    // stream uses.
    Box::new(Compress::new_with_window_bits(
        Compression::new(level),
        false,
        WINDOW_BITS,
    ))
}

/// Compresses `input` into `out` with `flush`, growing `out` as needed.
fn deflate_into(
    compress: &mut Compress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    flush: FlushCompress,
) -> io::Result<()> {
    loop {
        // Events compress to a fraction of their size; a flush adds a few bytes.
        out.reserve(input.len() / 2 + 64);
        let before = compress.total_in();
        compress
            .compress_vec(input, out, flush)
            .map_err(io::Error::other)?;
        let consumed = usize::try_from(compress.total_in() - before).unwrap_or(input.len());
        input = &input[consumed.min(input.len())..];
        // Done when the input is taken and the compressor stopped with room left: a flush that
        // stops with no room may have more to write.
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(());
        }
    }
}

fn new_zstd(level: i32) -> io::Result<CCtx<'static>> {
    let mut cctx = CCtx::try_create().ok_or_else(|| io::Error::other("zstd: out of memory"))?;
    for parameter in [
        CParameter::CompressionLevel(level),
        CParameter::WindowLog(u32::from(WINDOW_BITS)),
        // Tables no larger than the window: level 1's own are sized for a 512 KiB one (119 KiB of
        // state against 70 KiB, for the same size on the wire).
        CParameter::HashLog(u32::from(WINDOW_BITS)),
        CParameter::ChainLog(u32::from(WINDOW_BITS)),
        CParameter::ChecksumFlag(false),
    ] {
        cctx.set_parameter(parameter).map_err(zstd_error)?;
    }
    Ok(cctx)
}

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))
}

fn zstd_into(cctx: &mut CCtx<'static>, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let mut input = InBuffer::around(input);
    while input.pos() < input.src.len() {
        out.reserve(input.src.len() - input.pos() + 64);
        let mut output = OutBuffer::around_pos(out, out.len());
        cctx.compress_stream(&mut output, &mut input)
            .map_err(zstd_error)?;
    }
    Ok(())
}

/// Flushes what `cctx` holds into `out`; `end` also ends the frame.
fn zstd_flush(cctx: &mut CCtx<'static>, out: &mut Vec<u8>, end: bool) -> io::Result<()> {
    loop {
        out.reserve(256);
        let mut output = OutBuffer::around_pos(out, out.len());
        let left = if end {
            cctx.end_stream(&mut output)
        } else {
            cctx.flush_stream(&mut output)
        }
        .map_err(zstd_error)?;
        if left == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn frames(n: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| {
                let data = format!(
                    r#"{{"device":"sensor-{}","site":"plant-north","temperature":{}.{},"ts":{}}}"#,
                    i % 7,
                    18 + i % 5,
                    i % 10,
                    1_764_620_000_000u64 + i as u64 * 37
                );
                Bytes::from(format!("id: {i}\ndata: {data}\n\n"))
            })
            .collect()
    }

    fn decode(encoding: Encoding, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match encoding {
            Encoding::Gzip => flate2::read::GzDecoder::new(body).read_to_end(&mut out),
            Encoding::Zstd => zstd::stream::read::Decoder::new(body)
                .expect("zstd decoder")
                .read_to_end(&mut out),
            Encoding::Brotli => brotli::Decompressor::new(body, 4096).read_to_end(&mut out),
        }
        .expect("a valid body");
        out
    }

    /// Every write decodes on its own to what it was given, with the writes before it (the client
    /// can read each event at once), and the finished body is a valid, complete one.
    #[test]
    fn every_write_decodes_at_once_and_the_body_is_whole() {
        for encoding in Encoding::ALL {
            let mut encoder = Encoder::new(encoding, &Levels::default());
            let (mut body, mut plain) = (Vec::new(), Vec::new());
            for (i, batch) in frames(40).chunks(3).enumerate() {
                // Every fourth write is idle: the encoder gives back its state and goes on.
                let rest = i % 4 == 3;
                body.extend_from_slice(&encoder.encode(batch, rest).expect("encode"));
                assert_eq!(encoder.is_active(), !rest || encoding == Encoding::Brotli);
                plain.extend(batch.iter().flat_map(|f| f.iter().copied()));
                let mut partial = Vec::new();
                match encoding {
                    Encoding::Gzip => {
                        let mut d = flate2::write::GzDecoder::new(&mut partial);
                        d.write_all(&body).expect("gzip so far");
                        d.flush().expect("flush");
                    }
                    Encoding::Zstd => {
                        let mut d = zstd::stream::write::Decoder::new(&mut partial).expect("zstd");
                        d.write_all(&body).expect("zstd so far");
                        d.flush().expect("flush");
                    }
                    Encoding::Brotli => {
                        let mut d = brotli::DecompressorWriter::new(&mut partial, 4096);
                        d.write_all(&body).expect("br so far");
                        d.flush().expect("flush");
                    }
                }
                assert_eq!(partial, plain, "{encoding:?} after write {i}");
            }
            body.extend_from_slice(&encoder.finish().expect("finish"));
            assert_eq!(decode(encoding, &body), plain, "{encoding:?} finished");
        }
    }

    /// Past `max_compressors`, a stream writes with its thread's spare compressor, write by write: every
    /// write still decodes at once, the body is whole, and the stream holds no compressor.
    #[test]
    fn a_stream_without_a_place_writes_with_the_spare_and_holds_nothing() {
        for encoding in [Encoding::Gzip, Encoding::Zstd] {
            let mut encoder = Encoder {
                leases: false,
                ..Encoder::new(encoding, &Levels::default())
            };
            // Another stream of the thread uses the spare between this one's writes.
            let mut other = Encoder {
                leases: false,
                ..Encoder::new(encoding, &Levels::default())
            };
            let (mut body, mut plain) = (Vec::new(), Vec::new());
            for batch in frames(12).chunks(2) {
                body.extend_from_slice(&encoder.encode(batch, false).expect("encode"));
                assert!(!encoder.is_active(), "{encoding:?}");
                other.encode(batch, false).expect("the other stream");
                plain.extend(batch.iter().flat_map(|f| f.iter().copied()));
            }
            body.extend_from_slice(&encoder.finish().expect("finish"));
            assert_eq!(decode(encoding, &body), plain, "{encoding:?}");
        }
    }

    #[test]
    fn a_body_with_no_write_finishes_valid_and_empty() {
        for encoding in Encoding::ALL {
            let body = Encoder::new(encoding, &Levels::default())
                .finish()
                .expect("finish");
            assert!(decode(encoding, &body).is_empty(), "{encoding:?}");
        }
    }

    #[test]
    fn repeated_events_compress_well() {
        let events = frames(200);
        let plain: usize = events.iter().map(Bytes::len).sum();
        for encoding in Encoding::ALL {
            let mut encoder = Encoder::new(encoding, &Levels::default());
            let sent: usize = events
                .iter()
                .map(|e| {
                    encoder
                        .encode(std::slice::from_ref(e), false)
                        .expect("encode")
                        .len()
                })
                .sum();
            // Each event flushed on its own still gets under half its size.
            assert!(sent * 2 < plain, "{encoding:?}: {sent} of {plain} bytes");
        }
    }
}
