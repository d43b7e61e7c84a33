//! Fuzzes `oci::Digest` parsing and hashing: a parsed digest prints back to what was
//! parsed, and the digest of any bytes (whole or streamed in two pieces) parses back to
//! itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci::{Algorithm, Digest, Hasher};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(d) = s.parse::<Digest>()
    {
        assert_eq!(d.to_string(), s, "a digest prints as written");
        assert_eq!(d.to_string().parse::<Digest>().as_ref(), Ok(&d));
        let hex_len = match d.algorithm() {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        };
        assert_eq!(d.hex().len(), hex_len);
        assert!(
            d.hex()
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(s, format!("{}:{}", d.algorithm().as_str(), d.hex()));
        assert_eq!(d.same_algorithm_of(data).algorithm(), d.algorithm());
    }

    let d = Digest::sha256_of(data);
    let s = d.to_string();
    assert_eq!(s.parse::<Digest>().as_ref(), Ok(&d), "{s}");
    assert_eq!(d.algorithm(), Algorithm::Sha256);
    assert_eq!(d.same_algorithm_of(data), d);

    let (a, b) = data.split_at(data.len() / 2);
    let mut h = Hasher::new(Algorithm::Sha256);
    h.update(a);
    let before = h.clone().finish();
    h.update(b);
    assert_eq!(h.peek(), d);
    assert_eq!(h.finish(), d);
    assert_eq!(before, Digest::sha256_of(a));

    let mut h = Hasher::new(Algorithm::Sha512);
    h.update(data);
    let d512 = h.finish();
    assert_eq!(d512.to_string().parse::<Digest>().as_ref(), Ok(&d512));
    assert_eq!(d512.same_algorithm_of(data), d512);
});
