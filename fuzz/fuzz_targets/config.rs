//! Fuzzes `berth::config::Config::parse` (strict TOML plus validation) on arbitrary
//! UTF-8: it never panics; refusing the text with an error is fine.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = berth::config::Config::parse(s, "fuzz") {
        // The error names where the text came from.
        let msg = format!("{e:#}");
        assert!(msg.contains("fuzz"), "error without its origin: {msg}");
    }
});
