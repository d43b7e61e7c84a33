//! Records the git commit berth is built from, for `berth --version`: the
//! `BERTH_GIT_COMMIT` variable when set (container builds, whose context has no .git),
//! else `git rev-parse --short=12 HEAD`, else `unknown` (a source tarball). It touches nothing but cargo's build instructions.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=BERTH_GIT_COMMIT");
    let commit = match std::env::var("BERTH_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
        _ => {
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                let dir = std::path::Path::new(&dir);
                // A new commit moves HEAD or the branch it names.
                for f in ["HEAD", "packed-refs"] {
                    println!("cargo:rerun-if-changed={}", dir.join(f).display());
                }
                if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    println!("cargo:rerun-if-changed={}", dir.join(r).display());
                }
            }
            match git(&["rev-parse", "--short=12", "HEAD"]) {
                Some(c) if !c.is_empty() => c,
                _ => "unknown".to_owned(),
            }
        }
    };
    println!("cargo:rustc-env=BERTH_GIT_COMMIT={commit}");
}
