//! What the fuzz targets share.

use std::fmt::Display;

/// Whether a whole read's error is one of the two things valid JSON may
/// hold that the sparse parse only scans where no rule reads, and so
/// accepts: an unpaired `\u` surrogate escape (Go's decoder, like the API
/// server's, accepts one too) or a number beyond an f64's range (RFC 8259
/// leaves range to implementations; a whole `Value` cannot hold it). The
/// sparse parse has checked every escape's four hex digits by then, so
/// "hex escape" can only be a surrogate's pairing.
pub fn only_scanned(e: &impl Display) -> bool {
    let e = e.to_string();
    [
        "unicode code point",
        "surrogate",
        "end of hex escape",
        "number out of range",
    ]
    .iter()
    .any(|skipped| e.contains(skipped))
}
