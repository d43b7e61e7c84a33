//! Crash-safety tests (written next).

#[test]
fn zz_measure() {
    use sha2::Digest as _;
    let t = std::time::Instant::now();
    let mut v = vec![0u8; 64 << 20];
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for c in v.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    eprintln!("gen 64MiB: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let h = sha2::Sha256::digest(&v);
    eprintln!("sha 64MiB: {:?} {}", t.elapsed(), h[0]);
}
