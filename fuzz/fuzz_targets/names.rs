//! Fuzzes `oci::RepoName`, `oci::Tag` and `oci::Reference` parsing: what parses prints
//! back to a string that parses to the same value, and a repository name never holds a
//! path trick (`..`, an empty component, a `.`- or `_`-prefixed component).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci::{Digest, Reference, RepoName, Tag};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(name) = s.parse::<RepoName>() {
        assert_eq!(name.as_str(), s, "a name is kept as written");
        assert_eq!(name.to_string().parse::<RepoName>().as_ref(), Ok(&name));
        assert_eq!(name.as_str().parse::<RepoName>().as_ref(), Ok(&name));
        assert!(!s.is_empty() && s.len() <= 255, "length of {s:?}");
        assert!(!s.contains(".."), "{s:?} contains ..");
        assert!(!s.starts_with('/') && !s.ends_with('/'), "{s:?}");
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)),
            "{s:?} has a character outside [a-z0-9._/-]"
        );
        for c in name.components() {
            assert!(!c.is_empty(), "{s:?} has an empty component");
            assert!(
                !c.starts_with('.') && !c.starts_with('_') && !c.starts_with('-'),
                "{s:?} has a component starting with a separator: {c:?}"
            );
        }
        assert_eq!(Some(name.first_component()), name.components().next());
    }

    let tag = s.parse::<Tag>();
    if let Ok(t) = &tag {
        assert_eq!(t.as_str(), s);
        assert_eq!(t.to_string().parse::<Tag>().as_ref(), Ok(t));
        assert!((1..=128).contains(&s.len()), "tag length {}", s.len());
        assert!(!s.starts_with('.') && !s.starts_with('-'), "{s:?}");
        assert!(!s.contains('/') && !s.contains(':'), "{s:?}");
    }

    let digest = s.parse::<Digest>();
    match s.parse::<Reference>() {
        Ok(r) => {
            assert_eq!(r.to_string(), s, "a reference prints as written");
            assert_eq!(r.to_string().parse::<Reference>().as_ref(), Ok(&r));
            match &r {
                Reference::Tag(t) => assert_eq!(tag.as_ref(), Ok(t)),
                Reference::Digest(d) => assert_eq!(digest.as_ref(), Ok(d)),
            }
        }
        // A string is a reference exactly when it is a tag or (with a colon) a digest.
        Err(_) => assert!(
            tag.is_err() && digest.is_err(),
            "{s:?} is a tag or digest but not a reference"
        ),
    }
});
