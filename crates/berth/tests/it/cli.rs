//! The command line as a user meets it: help texts, the embedded default config, and
//! refusal of broken configuration files at start-up with the key named.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn berth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth"))
}

fn output(cmd: &mut Command) -> (bool, String) {
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
