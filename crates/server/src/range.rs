//! Parsing of the headers that carry byte ranges: `Range: bytes=...` on blob GETs and
//! `Content-Range: <start>-<end>` on upload PATCHes.

use std::ops::Range;

/// What a blob GET's `Range` header asks for, resolved against the blob's size.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No range: the whole blob.
    Whole,
    /// One satisfiable range (half-open).
    Part(Range<u64>),
    /// Malformed, multiple, or not satisfiable for this size.
    Unsatisfiable,
}

/// Resolve a `Range` header value against a blob of `size` bytes. A range unit other
/// than `bytes` is ignored (RFC 9110 §14.2: a server MUST ignore a Range header field
/// with a unit it does not understand), so the whole blob is sent.
pub fn resolve(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(h) = header else {
        return RangeRequest::Whole;
    };
    let Some((unit, spec)) = h.trim().split_once('=') else {
        return RangeRequest::Unsatisfiable;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeRequest::Whole;
    }
    if spec.contains(',') {
        return RangeRequest::Unsatisfiable;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Unsatisfiable;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    let range = match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            Some(0) | None => return RangeRequest::Unsatisfiable,
            Some(n) => size.saturating_sub(n)..size,
        },
        (start, "") => match num(start) {
            Some(s) => s..size,
            None => return RangeRequest::Unsatisfiable,
        },
        (start, end) => match (num(start), num(end)) {
            (Some(s), Some(e)) if s <= e => s..(e.saturating_add(1)).min(size),
            _ => return RangeRequest::Unsatisfiable,
        },
    };
    if range.start >= size || range.is_empty() {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Part(range)
}

/// Parse an upload `Content-Range`: `<start>-<end>` (inclusive), also accepting the
/// `bytes ` prefix and `/total` suffix some clients send. Returns (start, length).
pub fn content_range(h: &str) -> Option<(u64, u64)> {
    let h = h.trim();
    let h = h.strip_prefix("bytes ").unwrap_or(h).trim();
    let h = h.split('/').next()?;
    let (a, b) = h.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end: u64 = b.trim().parse().ok()?;
    if end < start {
        return None;
    }
    // The exclusive end must fit in a u64 (`0-18446744073709551615` would cover 2^64
    // bytes), so start + length never overflows downstream.
    Some((start, end.checked_add(1)? - start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(resolve(None, 10), RangeRequest::Whole);
        assert_eq!(resolve(Some("bytes=0-4"), 10), RangeRequest::Part(0..5));
        assert_eq!(resolve(Some("bytes=5-"), 10), RangeRequest::Part(5..10));
        assert_eq!(resolve(Some("bytes=-3"), 10), RangeRequest::Part(7..10));
        assert_eq!(resolve(Some("bytes=8-100"), 10), RangeRequest::Part(8..10));
        assert_eq!(resolve(Some("bytes=-100"), 10), RangeRequest::Part(0..10));
        for bad in [
            "bytes=10-",
            "bytes=5-4",
            "bytes=a-b",
            "bytes=0-1,3-4",
            "bytes=-0",
            "bytes=-",
            "bytes=+1-2",
        ] {
            assert_eq!(resolve(Some(bad), 10), RangeRequest::Unsatisfiable, "{bad}");
        }
        assert_eq!(resolve(Some("bytes=0-0"), 0), RangeRequest::Unsatisfiable);
        // Units the server does not understand are ignored: the whole body.
        assert_eq!(resolve(Some("items=0-1"), 10), RangeRequest::Whole);
        assert_eq!(resolve(Some("Bytes=0-1"), 10), RangeRequest::Part(0..2));
    }

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("0-99"), Some((0, 100)));
        assert_eq!(content_range("bytes 100-199/*"), Some((100, 100)));
        assert_eq!(content_range("5-4"), None);
        assert_eq!(content_range("x"), None);
        assert_eq!(content_range("0-18446744073709551615"), None);
        assert_eq!(content_range("1-18446744073709551615"), None);
        assert_eq!(
            content_range("1-18446744073709551614"),
            Some((1, u64::MAX - 1))
        );
    }
}
