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
            // A new commit moves HEAD or the branch it names (a loose ref, or one in
            // packed-refs; in a worktree, refs live in the common directory). Only
            // files that exist are named: cargo reruns a script whose named file is
            // missing on every build.
            let mut watch = Vec::new();
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                watch.push(std::path::Path::new(&dir).join("HEAD"));
            }
            if let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
            {
                let common = std::path::Path::new(&common);
                watch.push(common.join("packed-refs"));
                if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    watch.push(common.join(r));
                }
            }
            for f in watch.iter().filter(|f| f.exists()) {
                println!("cargo:rerun-if-changed={}", f.display());
            }
            match git(&["rev-parse", "--short=12", "HEAD"]) {
                Some(c) if !c.is_empty() => c,
                _ => "unknown".to_owned(),
            }
        }
    };
    println!("cargo:rustc-env=BERTH_GIT_COMMIT={commit}");
}
