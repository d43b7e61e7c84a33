//! Fuzzes `distribution::parse_challenge` on `WWW-Authenticate` values: it never panics, the
//! scheme and parameter names come out lowercased and trimmed, and a challenge written
//! back out (scheme, then `key="value"` with `\` escapes) parses to the same challenge.
#![no_main]

use libfuzzer_sys::fuzz_target;
use distribution::{Challenge, parse_challenge};

/// `scheme k1="v1", k2="v2"` in sorted key order, quoting `"` and `\` in values.
fn render(c: &Challenge) -> String {
    let mut keys: Vec<&String> = c.params.keys().collect();
    keys.sort();
    let params: Vec<String> = keys
        .into_iter()
        .map(|k| {
            let v = c.params[k].replace('\\', "\\\\").replace('"', "\\\"");
            format!("{k}=\"{v}\"")
        })
        .collect();
    if params.is_empty() {
        c.scheme.clone()
    } else {
        format!("{} {}", c.scheme, params.join(", "))
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Some(c) = parse_challenge(s) else {
        assert!(
            s.trim().is_empty(),
            "only an empty header has no challenge, not {s:?}"
        );
        return;
    };
    assert!(!c.scheme.is_empty());
    assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
    assert!(
        !c.scheme.contains(char::is_whitespace),
        "scheme {:?}",
        c.scheme
    );
    for k in c.params.keys() {
        assert!(!k.is_empty(), "an empty parameter name in {s:?}");
        assert_eq!(k.as_str(), k.trim(), "an untrimmed parameter name");
        assert_eq!(*k, k.to_ascii_lowercase());
        assert!(!k.contains('='), "parameter name {k:?} holds '='");
        assert!(!k.starts_with(','), "parameter name {k:?} starts with ','");
    }
    let again = render(&c);
    assert_eq!(
        parse_challenge(&again).as_ref(),
        Some(&c),
        "{s:?} parsed, written back as {again:?}, parses differently"
    );
});
