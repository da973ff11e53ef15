//! Compressed streams: which encoding a client gets ([`negotiate`]) and the per-stream encoders
//! that flush every write ([`encoder`]).
//!
//! Each compressed stream has its own encoder state, so an event is compressed against what that
//! client already received (the repeated JSON shapes are where the gain is). Compressing each event
//! once for every subscriber, as independent blocks, was measured and loses most of that gain: see
//! the README's "Compressed streams". An encoder's state exists only while its stream is active:
//! after a write that carried no event (a heartbeat, the preamble) it is given back, and an idle
//! stream keeps only a few counters. At most `[server] max_compressors` streams hold one at once.

pub mod encoder;
pub mod negotiate;

pub use encoder::Encoder;
pub use negotiate::negotiate;

/// A content coding sluice can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    Gzip,
    Brotli,
    Zstd,
}

impl Encoding {
    /// Every encoding, in sluice's order of preference when the client ranks them equally.
    pub const ALL: [Encoding; 3] = [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip];

    /// The `content-encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
        }
    }

    /// The encoding named `token` (as in `compress = [...]` and `Accept-Encoding`).
    pub fn from_token(token: &str) -> Option<Encoding> {
        Encoding::ALL
            .into_iter()
            .find(|e| e.token().eq_ignore_ascii_case(token))
    }
}

/// The compression level of each encoding (`[server] compression_level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Levels {
    /// zlib levels 1 to 9. At 1 (zlib-ng's quick strategy) an event costs well under a microsecond
    /// and gets most of the ratio; the higher levels cost several times more per event.
    pub gzip: u32,
    /// Brotli quality 0 to 11. Below 2, Brotli does not compress a small flushed write at all; 3 and
    /// above cost several times more per event.
    pub br: u32,
    /// zstd levels 1 to 19.
    pub zstd: i32,
}

impl Default for Levels {
    fn default() -> Self {
        Self {
            gzip: 1,
            br: 2,
            zstd: 1,
        }
    }
}
