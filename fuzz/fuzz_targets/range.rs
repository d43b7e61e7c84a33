//! Fuzzes `server::range`: `resolve` of a blob GET's `Range` header against a size, and
//! `content_range` of an upload PATCH's `Content-Range`. Neither panics; a resolved part
//! is non-empty, inside the blob and asked for in bytes (another unit means the whole
//! blob), and a content range is at least one byte whose end fits in a `u64`.
//!
//! Input: UTF-8 text. The first line is a blob size in decimal (ignored if it is not a
//! number); the rest is the header value. The header is resolved against that size and
//! against the edge sizes 0, 1, 10, `u64::MAX - 1` and `u64::MAX`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use server::range::{RangeRequest, content_range, resolve};

/// Is the header's range unit (before the first `=`) `bytes`, in any case?
fn unit_is_bytes(header: &str) -> bool {
    header
        .trim()
        .split_once('=')
        .is_some_and(|(unit, _)| unit.trim().eq_ignore_ascii_case("bytes"))
}

fn check_resolve(header: &str, size: u64) {
    assert_eq!(resolve(None, size), RangeRequest::Whole);
    match resolve(Some(header), size) {
        RangeRequest::Part(r) => {
            assert!(
                r.start < r.end && r.end <= size,
                "Range {header:?} against size {size} resolved to {r:?}"
            );
            assert!(
                unit_is_bytes(header),
                "Range {header:?} in another unit than bytes resolved to {r:?}"
            );
        }
        // A unit the server does not know is ignored (RFC 9110 14.2), never `bytes`.
        RangeRequest::Whole => assert!(
            !unit_is_bytes(header),
            "a bytes Range {header:?} resolved to the whole blob"
        ),
        RangeRequest::Unsatisfiable => {}
    }
}

fn check_content_range(h: &str) {
    if let Some((start, len)) = content_range(h) {
        assert!(len >= 1, "Content-Range {h:?} gave length {len}");
        assert!(
            start.checked_add(len).is_some(),
            "Content-Range {h:?} gave start {start} + length {len}, past u64::MAX"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (first, header) = s.split_once('\n').unwrap_or(("", s));
    let mut sizes = vec![0, 1, 10, u64::MAX - 1, u64::MAX];
    if let Ok(n) = first.trim().parse::<u64>() {
        sizes.push(n);
    }
    for size in sizes {
        check_resolve(header, size);
    }
    check_content_range(header);
    check_content_range(s);
});
