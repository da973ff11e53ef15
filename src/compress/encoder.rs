//! One compressed stream's encoder: gzip, Brotli or zstd, flushed at the end of every write so a
//! browser decodes each event as soon as it arrives.

use super::{Encoding, Levels};
use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress};
use std::io::{self, Write};
use zstd::zstd_safe::{CCtx, CParameter, InBuffer, OutBuffer};

/// How far back an encoder looks for repeats: 4 KiB, a few dozen small events. A longer window
/// buys little on event streams and costs memory while the stream is active.
const WINDOW_BITS: u8 = 12;

/// A gzip member's header: no name, no time, unknown OS (RFC 1952).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// The encoder of one stream's body.
pub struct Encoder {
    state: State,
}

enum State {
    /// A raw deflate stream inside one gzip member. The compressor is dropped after each write that
    /// ends byte-aligned (see [`Encoder::encode`]); the next write continues the same deflate stream
    /// with a fresh one.
    Gzip {
        level: u32,
        deflate: Option<Box<Compress>>,
        /// Of everything compressed so far, for the member's trailer.
        crc: Crc,
        header_sent: bool,
    },
    /// A sequence of zstd frames: one ends when the stream goes idle, the next starts afresh.
    Zstd {
        level: i32,
        cctx: Option<CCtx<'static>>,
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
        Self { state }
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
                let compress = gzip_begin(*level, deflate, header_sent, &mut out);
                // A partial flush ends the data's last code a few bits into the output, without the
                // four bytes of an empty stored block; a sync flush aligns to a byte, so the next
                // write can start a new compressor.
                let flush = if rest {
                    FlushCompress::Sync
                } else {
                    FlushCompress::Partial
                };
                // The last frame goes in with the flush: one call for a lone event, the usual write.
                let (last, before) = frames
                    .split_last()
                    .map_or((&[][..], &[][..]), |(l, b)| (&l[..], b));
                for frame in before {
                    crc.update(frame);
                    deflate_into(compress, frame, &mut out, FlushCompress::None)?;
                }
                crc.update(last);
                deflate_into(compress, last, &mut out, flush)?;
                if rest {
                    *deflate = None;
                }
            }
            State::Zstd {
                level,
                cctx,
                framed,
            } => {
                *framed = true;
                if cctx.is_none() {
                    *cctx = Some(new_zstd(*level)?);
                }
                if let Some(working) = cctx.as_mut() {
                    for frame in frames {
                        zstd_into(working, frame, &mut out)?;
                    }
                    zstd_flush(working, &mut out, rest)?;
                }
                if rest {
                    *cctx = None;
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
                let compress = gzip_begin(*level, deflate, header_sent, &mut out);
                deflate_into(compress, &[], &mut out, FlushCompress::Finish)?;
                *deflate = None;
                out.extend_from_slice(&crc.sum().to_le_bytes());
                out.extend_from_slice(&crc.amount().to_le_bytes());
            }
            State::Zstd {
                level,
                cctx,
                framed,
            } => {
                // The frames before the current one ended when their stream went idle.
                let current = match cctx.take() {
                    Some(cctx) => Some(cctx),
                    None if !*framed => Some(new_zstd(*level)?),
                    None => None,
                };
                if let Some(mut cctx) = current {
                    zstd_flush(&mut cctx, &mut out, true)?;
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

/// A gzip stream's compressor, made afresh if it rested, after the member's header if nothing was
/// sent yet.
fn gzip_begin<'a>(
    level: u32,
    deflate: &'a mut Option<Box<Compress>>,
    header_sent: &mut bool,
    out: &mut Vec<u8>,
) -> &'a mut Compress {
    if !std::mem::replace(header_sent, true) {
        out.extend_from_slice(&GZIP_HEADER);
    }
    deflate.get_or_insert_with(|| new_deflate(level))
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
