//! The command line as a user meets it: help texts, the embedded default config, and
//! refusal of broken configuration files at start-up with the key named.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn berth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth"))
}

/// Run `cmd`: whether it succeeded, and its stdout then stderr.
pub(crate) fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn help_describes_every_command_and_flag() {
    let (ok, text) = output(berth().arg("--help"));
    assert!(ok);
    for word in [
        "serve",
        "default-config",
        "check-config",
        "gc",
        "retention",
        "fsck",
    ] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
    let (ok, text) = output(berth().args(["serve", "--help"]));
    assert!(ok);
    assert!(
        text.contains("--config") && text.contains("127.0.0.1:5000"),
        "{text}"
    );
}

#[test]
fn broken_config_is_refused_at_start_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\nlisten = \"127.0.0.1:0\"\nport = 5\n", "port"),
        ("[server]\nlisten = \"not an address\"\n", "listen"),
        ("[storage]\nkind = \"floppy\"\n", "floppy"),
        ("[storage]\nfsync = \"yes\"\n", "fsync"),
        ("[sever]\n", "sever"),
        ("this is not toml", "invalid configuration"),
        (
            "[[upstream]]\nname = \"x.io\"\nurl = \"http://x.io\"\npinned = [\"no-tag\"]\n",
            "pinned",
        ),
    ];
    for (text, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let (ok, out) = output(berth().arg("serve").arg("--config").arg(&path));
        assert!(!ok, "serve accepted {text:?}");
        assert!(
            out.contains(key),
            "error for {text:?} does not name {key:?}: {out}"
        );
        let (ok, _) = output(berth().arg("check-config").arg("--config").arg(&path));
        assert!(!ok);
    }
    let (ok, out) = output(berth().args(["serve", "--config", "/nonexistent/berth.toml"]));
    assert!(!ok && out.contains("/nonexistent/berth.toml"), "{out}");
}

#[test]
fn example_config_checks_clean() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/berth.example.toml"
    );
    let (ok, out) = output(berth().args(["check-config", "--config", example]));
    assert!(ok, "{out}");
    let (ok, out) = output(berth().arg("default-config"));
    assert!(ok && out.contains("listen = \"127.0.0.1:5000\""), "{out}");
}

/// `berth serve` with no arguments: data in ./berth-data, listening on 127.0.0.1:5000.
#[test]
fn serve_without_config_uses_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    if std::net::TcpListener::bind("127.0.0.1:5000").is_err() {
        panic!("port 5000 is in use on this machine; the default-config test needs it free");
    }
    let mut child = berth()
        .arg("serve")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut answered = false;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:5000") {
            use std::io::{Read, Write};
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            answered = resp.starts_with("HTTP/1.1 200");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The README's push and pull, exactly as written there, against this first run:
    // without users the default lets anyone push.
    let quickstart = readme_push_and_pull();
    let push_pull = answered.then(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(crate::skopeo::build_image(
            &dir.path().join("layout"),
            "v1",
            "amd64",
            7,
            4096,
        ));
        quickstart
            .iter()
            .map(|line| {
                let out = Command::new("sh")
                    .arg("-c")
                    .arg(line)
                    .current_dir(dir.path())
                    .output()
                    .unwrap();
                (line.clone(), out)
            })
            .collect::<Vec<_>>()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(answered, "berth serve did not answer on 127.0.0.1:5000");
    assert!(
        dir.path().join("berth-data").is_dir(),
        "no ./berth-data created"
    );
    for (line, out) in push_pull.unwrap() {
        assert!(
            out.status.success(),
            "README command failed: {line}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pushed = crate::skopeo::layout_manifest(&dir.path().join("layout"), "v1");
    let pulled = crate::skopeo::layout_manifest(&dir.path().join("out"), "v1");
    assert_eq!(
        pushed.0, pulled.0,
        "the README's pull brings back what it pushed"
    );
}

/// The README's skopeo push and pull of `team/app:v1` (the two lines after "Push and
/// pull with any OCI client"), as written there.
fn readme_push_and_pull() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let lines: Vec<String> = readme
        .lines()
        .filter(|l| l.starts_with("skopeo copy") && l.contains("127.0.0.1:5000/team/app:v1"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "the README's quickstart push and pull: {lines:?}"
    );
    lines
}

/// `berth serve` with a configuration, expected to refuse to start: its output.
fn refused(dir: &std::path::Path, config: &str) -> String {
    let file = dir.join("refused.toml");
    std::fs::write(&file, config).unwrap();
    let mut child = berth()
        .args(["serve", "--config"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth serve started on {config}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{config}");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Issue 15: storage that cannot work is refused at start, by name, rather than by
/// the first push: a read-only or full data directory, a missing S3 bucket, wrong keys.
/// An S3 endpoint without `path_style` gets path-style addressing, and the start-up log
/// names the store really in use.
#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_storage_it_cannot_use() {
    use crate::common::*;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("[server]\nlisten = \"127.0.0.1:{port}\"\n");
    let fs_at =
        |path: &std::path::Path| format!("{listen}[storage]\npath = {:?}\n", path.join("data"));
    if let Some(_ro) = Tmpfs::mount(&dir.path().join("ro"), "ro,size=1m") {
        let out = refused(dir.path(), &fs_at(&dir.path().join("ro")));
        assert!(
            out.contains(&format!("{}", dir.path().join("ro").display())),
            "{out}"
        );
        assert!(out.contains("Read-only file system"), "{out}");
    }
    let full = dir.path().join("full");
    if let Some(_full) = Tmpfs::mount(&full, "size=1m") {
        std::fs::create_dir_all(full.join("data/.tmp")).unwrap();
        // Fill it to the last block.
        let _ = std::fs::write(full.join("filler"), vec![0u8; 2 * 1024 * 1024]);
        let out = refused(dir.path(), &fs_at(&full));
        assert!(
            out.contains(&format!("storage at {} is ", full.join("data").display())),
            "{out}"
        );
        assert!(
            out.contains("full") || out.contains("No space left"),
            "{out}"
        );
    }

    let Ok(endpoint) = std::env::var("BERTH_TEST_S3_ENDPOINT") else {
        eprintln!(
            "SKIPPED (S3 half): BERTH_TEST_S3_ENDPOINT is not set; scripts/test starts SeaweedFS"
        );
        return;
    };
    let o = store::s3::test_options();
    let s3 = |bucket: &str, secret: &str| {
        format!(
            "{listen}[storage]\nkind = \"s3\"\nbucket = {bucket:?}\nendpoint = {endpoint:?}\nprefix = {:?}\naccess_key_id = {:?}\nsecret_access_key = {secret:?}\n",
            o.prefix.as_deref().unwrap(),
            o.access_key_id.as_deref().unwrap(),
        )
    };
    let secret = o.secret_access_key.clone().unwrap();
    let out = refused(dir.path(), &s3("no-such-bucket", &secret));
    for part in ["no-such-bucket", endpoint.as_str(), "does not exist"] {
        assert!(out.contains(part), "{part:?} missing from: {out}");
    }
    let out = refused(dir.path(), &s3(&o.bucket, "wrong-secret"));
    assert!(out.contains("access denied"), "{out}");

    // The right bucket, with an endpoint and no path_style: it serves, on the bucket.
    let config = dir.path().join("s3.toml");
    std::fs::write(
        &config,
        format!(
            "{}[[access]]\nrepositories = \"**\"\nusers = [\"anonymous\"]\nallow = [\"pull\", \"push\"]\n",
            s3(&o.bucket, &secret)
        ),
    )
    .unwrap();
    let log = dir.path().join("s3.log");
    let base = format!("http://127.0.0.1:{port}");
    let _server = serve_process(&config, &base, Some(&log), &[]).await;
    let d = digest_of(b"on the bucket");
    let r = client()
        .post(format!("{base}/v2/s3/app/blobs/uploads/?digest={d}"))
        .body(&b"on the bucket"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let logged = std::fs::read_to_string(&log).unwrap();
    let named = format!(
        "s3://{}/{} at {endpoint}",
        o.bucket,
        o.prefix.as_deref().unwrap()
    );
    assert!(logged.contains(&named), "{named} not in: {logged}");
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let (ok, text) = output(berth().arg("--version"));
    assert!(ok, "{text}");
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let want = match head {
        Some(c) => format!("berth {} (commit {c})", env!("CARGO_PKG_VERSION")),
        // Built from a tarball: no git to compare with.
        None => format!("berth {} (commit unknown)", env!("CARGO_PKG_VERSION")),
    };
    assert_eq!(text.trim(), want);
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definitions() {
    for (shell, marker) in [
        ("bash", "_berth()"),
        ("zsh", "#compdef berth"),
        ("fish", "complete -c berth"),
    ] {
        let (ok, text) = output(berth().args(["completions", shell]));
        assert!(ok, "{shell}: {text}");
        assert!(text.contains(marker), "{shell}: {text}");
        for sub in ["serve", "hosts-toml", "health", "default-config"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let (ok, text) = output(berth().args(["completions", "tcsh"]));
    assert!(!ok && text.contains("tcsh"), "{text}");
    let (ok, man) = output(berth().arg("man"));
    assert!(ok, "{man}");
    assert!(
        man.starts_with(".ie") || man.contains(".TH berth 1"),
        "{man}"
    );
    assert!(man.contains(".TH berth 1"), "{man}");
    for sub in ["serve", "fsck", "health", "completions"] {
        assert!(man.contains(sub), "the man page lacks {sub}");
    }
    // The page renders: groff (from man-db's dependencies) reads it without a warning.
    if Command::new("groff").arg("--version").output().is_ok() {
        let mut child = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(man.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && warnings.is_empty(), "{warnings}");
    } else {
        println!("SKIPPED: rendering the man page: groff is not installed");
    }
}

#[test]
fn the_container_default_config_listens_everywhere_and_stores_in_the_volume() {
    let (ok, text) = output(berth().args(["default-config", "--container"]));
    assert!(ok, "{text}");
    assert!(text.contains("listen = \"0.0.0.0:5000\""), "{text}");
    assert!(text.contains("path = \"/var/lib/berth\""), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("berth.toml");
    std::fs::write(&file, &text).unwrap();
    let (ok, out) = output(berth().arg("check-config").arg("--config").arg(&file));
    assert!(ok, "{out}");
}

#[tokio::test]
async fn health_is_zero_for_a_serving_berth_and_one_otherwise() {
    let s = crate::common::TestServer::start().await;
    let probe = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("health")
            .args(args)
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = probe(vec!["--url".into(), s.url("/v2/")]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.starts_with("healthy: GET ") && text.contains("HTTP 200"),
        "{text}"
    );

    // From a configuration that listens on every address: the probe goes to loopback.
    let dir = tempfile::tempdir().unwrap();
    let port = s
        .url("")
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let file = dir.path().join("berth.toml");
    std::fs::write(&file, format!("[server]\nlisten = \"0.0.0.0:{port}\"\n")).unwrap();
    let (code, text) = probe(vec!["--config".into(), file.display().to_string()]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("http://127.0.0.1:{port}/v2/")),
        "{text}"
    );

    // A registry that wants credentials is up: 401 is healthy.
    let users = tempfile::tempdir().unwrap();
    let htpasswd = users.path().join("htpasswd");
    crate::common::write_htpasswd(&htpasswd, &[("alice", "pw")]);
    let locked = crate::common::TestServer::start_with(|c| {
        c.auth.htpasswd = Some(htpasswd.clone());
        c.access = vec![crate::common::rule("**", &["alice"], &["pull"])];
    })
    .await;
    let (code, text) = probe(vec!["--url".into(), locked.url("/v2/")]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("HTTP 401"), "{text}");

    // Nothing listening: unhealthy, exit 1, and why.
    let closed = format!("http://127.0.0.1:{}/v2/", crate::common::free_port());
    let (code, text) = probe(vec![
        "--url".into(),
        closed,
        "--timeout".into(),
        "1s".into(),
    ])
    .await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.starts_with("unhealthy: GET ") && text.contains("no answer"),
        "{text}"
    );
}
