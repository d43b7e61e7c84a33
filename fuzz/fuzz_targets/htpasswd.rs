//! Fuzzes `auth::users::parse` (htpasswd text with bcrypt entries): it never panics, and
//! every user it returns has a non-empty name without ':' or a line break and a hash
//! that bcrypt can read.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(users) = auth::users::parse(s, "fuzz") else {
        return;
    };
    for (user, hash) in &users {
        assert!(!user.is_empty(), "an empty user name");
        assert!(!user.contains(':'), "user name {user:?} holds ':'");
        assert!(!user.contains('\n'), "user name {user:?} holds a newline");
        assert!(
            hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$"),
            "user {user:?} has a non-bcrypt hash {hash:?}"
        );
        assert!(
            hash.parse::<bcrypt::HashParts>().is_ok(),
            "user {user:?}: {hash:?}"
        );
        assert!(!hash.contains('\n'));
    }
});
