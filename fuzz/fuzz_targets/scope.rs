//! Fuzzes `auth::Scope` parsing (`repository:<name>:<actions>`, `registry:catalog:*`):
//! it never panics, a repository scope names a valid repository and at least one
//! action, and a scope printed with `Display` parses back to the same scope.
#![no_main]

use auth::token::Resource;
use auth::{Action, Scope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(scope) = s.parse::<Scope>() else {
        return;
    };
    match &scope.resource {
        Resource::Repository(name) => {
            assert!(s.starts_with("repository:"), "{s:?}");
            assert_eq!(name.as_str().parse::<oci::RepoName>().as_ref(), Ok(name));
            assert!(
                [Action::Pull, Action::Push, Action::Delete]
                    .iter()
                    .any(|a| scope.actions.contains(*a)),
                "{s:?} parsed with no action"
            );
        }
        Resource::Catalog => assert_eq!(s, "registry:catalog:*"),
    }
    let printed = scope.to_string();
    let again = printed.parse::<Scope>();
    assert_eq!(again.as_ref(), Ok(&scope), "{s:?} printed as {printed:?}");
    assert_eq!(again.unwrap().to_string(), printed, "printing is stable");
});
