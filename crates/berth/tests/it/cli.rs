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
    let _ = child.kill();
    let _ = child.wait();
    assert!(answered, "berth serve did not answer on 127.0.0.1:5000");
    assert!(
        dir.path().join("berth-data").is_dir(),
        "no ./berth-data created"
    );
}
