//! `Accept-Encoding`: the encoding a client gets, by its q-values, then sluice's preference.

use super::Encoding;

/// The encoding to send to a client that sent `accept_encoding` (the field's values, joined), among
/// the route's `offered` encodings; `None` sends the stream as it is. An encoding the client ranks
/// higher wins; among equals, the earlier in [`Encoding::ALL`] (zstd, br, gzip). `*` stands for
/// every encoding the field does not name; `q=0` refuses.
pub fn negotiate(accept_encoding: &str, offered: &[Encoding]) -> Option<Encoding> {
    let mut best: Option<(u16, usize, Encoding)> = None;
    for encoding in Encoding::ALL {
        if !offered.contains(&encoding) {
            continue;
        }
        let Some(q) = weight(accept_encoding, encoding.token()) else {
            continue;
        };
        if q == 0 {
            continue;
        }
        let rank = Encoding::ALL
            .iter()
            .position(|e| *e == encoding)
            .unwrap_or(usize::MAX);
        if best.is_none_or(|(bq, brank, _)| q > bq || (q == bq && rank < brank)) {
            best = Some((q, rank, encoding));
        }
    }
    best.map(|(_, _, encoding)| encoding)
}

/// The weight (0 to 1000) the field gives `token`: its own entry, else `*`'s; `None` when neither
/// is there. A malformed entry is ignored, as if the client had not sent it.
fn weight(field: &str, token: &str) -> Option<u16> {
    let mut star = None;
    for entry in field.split(',') {
        let mut parts = entry.split(';');
        let name = parts.next().unwrap_or_default().trim();
        let mut q = Some(1000);
        for param in parts {
            if let Some((key, value)) = param.split_once('=') {
                if key.trim().eq_ignore_ascii_case("q") {
                    q = qvalue(value.trim());
                }
            }
        }
        let Some(q) = q else { continue };
        if name.eq_ignore_ascii_case(token) {
            return Some(q);
        }
        if name == "*" {
            star = Some(q);
        }
    }
    star
}

/// A q-value (`0`, `0.5`, `1.000`...) in thousandths; `None` when it is not one (RFC 9110, 12.4.2).
fn qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Encoding::{Brotli, Gzip, Zstd};

    const ALL: &[Encoding] = &Encoding::ALL;

    #[test]
    fn equal_weights_prefer_zstd_then_br_then_gzip() {
        assert_eq!(negotiate("gzip, deflate, br, zstd", ALL), Some(Zstd));
        assert_eq!(negotiate("gzip, deflate, br", ALL), Some(Brotli));
        assert_eq!(negotiate("gzip", ALL), Some(Gzip));
        assert_eq!(negotiate("GZIP", ALL), Some(Gzip));
        assert_eq!(negotiate("gzip, br, zstd", &[Gzip]), Some(Gzip));
    }

    #[test]
    fn q_values_rank_first() {
        assert_eq!(negotiate("zstd;q=0.5, gzip", ALL), Some(Gzip));
        assert_eq!(negotiate("gzip;q=0.8, br;q=0.9", ALL), Some(Brotli));
        assert_eq!(negotiate("br;q=0, gzip;q=0.001", ALL), Some(Gzip));
    }

    #[test]
    fn nothing_acceptable_sends_the_stream_as_it_is() {
        for field in ["", "identity", "deflate", "gzip;q=0", "*;q=0", "gzip;q=2"] {
            assert_eq!(negotiate(field, ALL), None, "{field:?}");
        }
        assert_eq!(negotiate("br", &[Gzip]), None);
    }

    #[test]
    fn star_covers_what_is_not_named() {
        assert_eq!(negotiate("*", ALL), Some(Zstd));
        assert_eq!(negotiate("zstd;q=0, *", ALL), Some(Brotli));
        assert_eq!(negotiate("gzip, *;q=0", ALL), Some(Gzip));
    }

    #[test]
    fn malformed_q_values_are_ignored() {
        for value in ["1.5", "0.1234", "x", "-1", "", "1.001"] {
            let field = format!("zstd;q={value}, gzip;q=0.5");
            assert_eq!(negotiate(&field, ALL), Some(Gzip), "{value:?}");
        }
        assert_eq!(qvalue("0.25"), Some(250));
        assert_eq!(qvalue("1.000"), Some(1000));
    }
}
