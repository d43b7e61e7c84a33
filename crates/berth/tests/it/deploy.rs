//! The ways users deploy berth, exercised: the container image of
//! `deploy/container/Containerfile` (its final stage built from the release binary, as
//! CI cannot pull the build stage's base image) run by Debian's docker daemon; the
//! compose stack of `deploy/compose/` brought up by Debian's docker-compose, pulling
//! through its docker.io port from a local distribution; and the systemd readiness
//! protocol a `Type=notify` unit relies on. The offline checks of every file under
//! `deploy/` (systemd-analyze, kustomize + kubernetes-validate, promtool, the
//! PrometheusRule generated from the alert rules) are `scripts/check-deploy`, which
//! `scripts/test` runs after the tests so CI prints what each check says.
//!
//! The image tests need root (their own dockerd): they say SKIPPED and why when not root.

use crate::cache::Distribution;
use crate::clients::{Dockerd, Podman, exec, not_root, rootfs_tar};
use crate::common::{KillOnDrop, client, free_port};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The repository root.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The berth binary the image is made of: `BERTH_RELEASE_BIN` (scripts/test sets it to
/// the `cargo install --locked` build), else this test build's binary.
fn image_binary() -> PathBuf {
    match std::env::var_os("BERTH_RELEASE_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            println!(
                "note: BERTH_RELEASE_BIN is not set; the image is made of the test build's binary"
            );
            PathBuf::from(env!("CARGO_BIN_EXE_berth"))
        }
    }
}

/// The line of the Containerfile's final stage that takes the build stage's root file
/// system, and what CI puts in its place (a tarball keeps the data directory's owner,
/// which a COPY from the build context would make root's).
const FINAL_STAGE_COPY: &str = "COPY --from=build /rootfs /";
const CI_ROOTFS: &str = "ADD rootfs.tar /";

/// The Containerfile CI builds: the final stage of `deploy/container/Containerfile`,
/// from `FROM scratch` to the end, with [`FINAL_STAGE_COPY`] (exactly once) swapped for
/// [`CI_ROOTFS`]. Every other line is the users' own.
fn ci_containerfile() -> String {
    let text = std::fs::read_to_string(repo_root().join("deploy/container/Containerfile")).unwrap();
    let start = text
        .lines()
        .position(|l| l.trim() == "FROM scratch")
        .expect("the Containerfile has a final FROM scratch stage");
    let stage: Vec<&str> = text.lines().skip(start).collect();
    assert_eq!(
        stage
            .iter()
            .filter(|l| l.trim() == FINAL_STAGE_COPY)
            .count(),
        1,
        "the final stage takes its files in exactly one line"
    );
    assert!(
        !stage.iter().any(|l| {
            let l = l.trim_start();
            (l.starts_with("COPY") || l.starts_with("ADD")) && l.trim() != FINAL_STAGE_COPY
        }),
        "every file of the image comes from rootfs.sh"
    );
    let mut out: String = stage
        .iter()
        .map(|l| {
            if l.trim() == FINAL_STAGE_COPY {
                CI_ROOTFS
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

/// The build context CI builds the image from: rootfs.sh on the release binary, a
/// tarball of its output, and the Containerfile's final stage ([`ci_containerfile`]).
async fn image_context(dir: &Path) -> PathBuf {
    let ctx = dir.join("image");
    std::fs::create_dir_all(&ctx).unwrap();
    let rootfs = ctx.join("rootfs");
    let script = repo_root().join("deploy/container/rootfs.sh");
    let bin = image_binary();
    let r = exec(
        script.to_str().unwrap(),
        &[bin.to_str().unwrap(), rootfs.to_str().unwrap()],
        &[],
        None,
    )
    .await;
    assert!(r.ok, "rootfs.sh failed:\n{}", r.out);
    let r = exec(
        "tar",
        &[
            "--numeric-owner",
            "-C",
            rootfs.to_str().unwrap(),
            "-cf",
            ctx.join("rootfs.tar").to_str().unwrap(),
            ".",
        ],
        &[],
        None,
    )
    .await;
    assert!(r.ok, "tar failed:\n{}", r.out);
    std::fs::remove_dir_all(&rootfs).unwrap();
    std::fs::write(ctx.join("Containerfile"), ci_containerfile()).unwrap();
    ctx
}

/// Build the image as CI does, tagged `tag`, in `dockerd`.
async fn build_image(dockerd: &Dockerd, dir: &Path, tag: &str) {
    let ctx = image_context(dir).await;
    dockerd
        .ok(&[
            "build",
            "--tag",
            tag,
            "--file",
            ctx.join("Containerfile").to_str().unwrap(),
            ctx.to_str().unwrap(),
        ])
        .await;
}

/// Remove the images `refs` name (not berth's own, which a container runs), so the
/// next pull of them fetches everything again.
async fn forget(dockerd: &Dockerd, refs: &[&str]) {
    let mut args = vec!["rmi"];
    args.extend_from_slice(refs);
    dockerd.ok(&args).await;
    for r in refs {
        assert_eq!(
            dockerd.ok(&["images", "--quiet", r]).await.trim(),
            "",
            "{r}"
        );
    }
}

/// Wait until `url` (a `/v2/`) answers, 200 or 401 (users configured: the challenge
/// of the token flow), or fail showing `why()`.
async fn wait_for_v2(url: &str, why: impl AsyncFnOnce() -> String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client().get(url).send().await
            && (r.status() == 200 || r.status() == 401)
        {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("{url} never answered:\n{}", why().await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The container default configuration with the registry on `port` of the host's
/// loopback (the daemon has no bridge: containers share the host's network).
fn container_config(port: u16) -> String {
    let text = berth::config::container_default();
    assert!(text.contains("listen = \"0.0.0.0:5000\""));
    text.replace(
        "listen = \"0.0.0.0:5000\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    )
}

#[tokio::test]
async fn the_container_image_runs_as_documented_and_keeps_its_data() {
    if let Some(why) = not_root() {
        println!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dockerd = Dockerd::start(&[]).await;
    build_image(&dockerd, dir.path(), "berth:ci").await;

    // What the image is, as `docker inspect` shows it.
    let settings = dockerd
        .ok(&[
            "image",
            "inspect",
            "--format",
            IMAGE_SETTINGS_FORMAT,
            "berth:ci",
        ])
        .await;
    assert_eq!(settings.trim(), IMAGE_SETTINGS);
    // Its configuration is the container default (listening everywhere, the volume).
    dockerd.ok(&["create", "--name", "peek", "berth:ci"]).await;
    let peek = dir.path().join("peek.toml");
    dockerd
        .ok(&["cp", "peek:/etc/berth/berth.toml", peek.to_str().unwrap()])
        .await;
    assert_eq!(
        std::fs::read_to_string(&peek).unwrap(),
        berth::config::container_default()
    );
    dockerd.ok(&["rm", "peek"]).await;
    let version = dockerd
        .ok(&["run", "--rm", "--network", "none", "berth:ci", "--version"])
        .await;
    assert!(version.starts_with("berth "), "{version}");

    // Run it: a volume for the data, the configuration mounted read-only.
    let port = free_port();
    let conf = dir.path().join("berth.toml");
    std::fs::write(&conf, container_config(port)).unwrap();
    let mount = format!("{}:/etc/berth/berth.toml:ro", conf.display());
    dockerd
        .ok(&[
            "run",
            "--detach",
            "--name",
            "berth",
            "--network",
            "host",
            "--volume",
            "berth-data:/var/lib/berth",
            "--volume",
            &mount,
            "--read-only",
            "--cap-drop",
            "ALL",
            "--health-interval",
            "1s",
            "berth:ci",
        ])
        .await;
    let base = format!("http://127.0.0.1:{port}");
    wait_for_v2(&format!("{base}/v2/"), async || {
        dockerd.docker(&["logs", "berth"]).await.out
    })
    .await;

    // docker pushes an image into it and pulls it back.
    let tar = rootfs_tar(dir.path(), 17);
    dockerd
        .ok(&["import", tar.to_str().unwrap(), "imported:v1"])
        .await;
    let id = dockerd.id("imported:v1").await;
    let at = format!("127.0.0.1:{port}/ci/imported:v1");
    dockerd.ok(&["tag", "imported:v1", &at]).await;
    dockerd.ok(&["push", &at]).await;
    forget(&dockerd, &["imported:v1", &at]).await;
    dockerd.ok(&["pull", &at]).await;
    assert_eq!(dockerd.id(&at).await, id);

    // The health check (`berth health`, no shell in the image) reports healthy.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = dockerd
            .ok(&["inspect", "--format", "{{.State.Health.Status}}", "berth"])
            .await;
        if status.trim() == "healthy" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never healthy: {status}\n{}",
            dockerd
                .ok(&["inspect", "--format", "{{json .State.Health}}", "berth"])
                .await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // SIGHUP reloads the configuration inside the container (berth is PID 1).
    dockerd.ok(&["kill", "--signal", "HUP", "berth"]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !dockerd
        .ok(&["logs", "berth"])
        .await
        .contains("configuration reloaded")
    {
        assert!(std::time::Instant::now() < deadline, "no reload logged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The data survives a restart (and a graceful stop exits 0).
    dockerd.ok(&["stop", "berth"]).await;
    let code = dockerd
        .ok(&["inspect", "--format", "{{.State.ExitCode}}", "berth"])
        .await;
    assert_eq!(code.trim(), "0", "graceful stop");
    dockerd.ok(&["start", "berth"]).await;
    wait_for_v2(&format!("{base}/v2/"), async || {
        dockerd.docker(&["logs", "berth"]).await.out
    })
    .await;
    forget(&dockerd, &[&at]).await;
    dockerd.ok(&["pull", &at]).await;
    assert_eq!(dockerd.id(&at).await, id, "pulled after the restart");
    dockerd.ok(&["rm", "--force", "berth"]).await;
    dockerd.ok(&["volume", "rm", "berth-data"]).await;
}

/// What `docker image inspect` shows of the image's run-time settings.
const IMAGE_SETTINGS: &str = r#"10001:10001 {"/var/lib/berth":{}} SIGTERM ["/usr/bin/berth"] ["serve","--config","/etc/berth/berth.toml"] ["CMD","/usr/bin/berth","health","--config","/etc/berth/berth.toml"]"#;
const IMAGE_SETTINGS_FORMAT: &str = "{{.Config.User}} {{json .Config.Volumes}} {{.Config.StopSignal}} {{json .Config.Entrypoint}} {{json .Config.Cmd}} {{json .Config.Healthcheck.Test}}";

#[tokio::test]
async fn podman_builds_the_same_image() {
    if let Some(why) = not_root() {
        println!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx = image_context(dir.path()).await;
    let podman = Podman::new("podman", dir.path(), "");
    // Docker's image format: Podman's default OCI format has no HEALTHCHECK.
    podman
        .ok(&[
            "build",
            "--format",
            "docker",
            "--tag",
            "berth:ci",
            "--file",
            ctx.join("Containerfile").to_str().unwrap(),
            ctx.to_str().unwrap(),
        ])
        .await;
    let settings = podman
        .ok(&[
            "image",
            "inspect",
            "--format",
            IMAGE_SETTINGS_FORMAT,
            "berth:ci",
        ])
        .await;
    assert_eq!(settings.trim(), IMAGE_SETTINGS);
}

/// `deploy/compose/compose.yaml` with host networking for this daemon, which has no
/// bridge: its `ports:` list (which compose refuses beside `network_mode: host`) becomes
/// `network_mode: host`. Nothing else changes.
fn host_network_compose() -> String {
    let text = std::fs::read_to_string(repo_root().join("deploy/compose/compose.yaml")).unwrap();
    let mut out = Vec::new();
    let mut in_ports = false;
    let mut replaced = 0;
    for line in text.lines() {
        if line == "    ports:" {
            in_ports = true;
            replaced += 1;
            out.push("    network_mode: host".to_owned());
            continue;
        }
        if in_ports && line.starts_with("      - ") {
            continue;
        }
        in_ports = false;
        out.push(line.to_owned());
    }
    assert_eq!(replaced, 1, "compose.yaml publishes its ports in one list");
    out.join("\n") + "\n"
}

#[tokio::test]
async fn the_compose_stack_replaces_the_registry2_stack() {
    if let Some(why) = not_root() {
        println!("SKIPPED: {why}");
        return;
    }
    crate::common::require_tool("docker-compose");
    let dir = tempfile::tempdir().unwrap();
    let upstream = Distribution::start(None).await;
    let dockerd = Dockerd::start(&[]).await;
    build_image(&dockerd, dir.path(), "berth:latest").await;

    // The stack's berth.toml, its upstreams pointed at the local distribution (docker.io)
    // or nowhere, and each of its ports moved to a free one of this host.
    let shipped = std::fs::read_to_string(repo_root().join("deploy/compose/berth.toml")).unwrap();
    let mut ports = std::collections::BTreeMap::new();
    let mut conf = String::new();
    for line in shipped.lines() {
        let line = if let Some(rest) = line.strip_prefix("listen = \"0.0.0.0:") {
            let old: u16 = rest.split('"').next().unwrap().parse().unwrap();
            let new = free_port();
            ports.insert(old, new);
            format!("listen = \"127.0.0.1:{new}\"")
        } else if line.starts_with("url = \"https://registry-1.docker.io\"") {
            format!("url = \"http://{}\"", upstream.addr)
        } else if line.starts_with("url = \"https://") {
            "url = \"http://127.0.0.1:9\"".to_owned()
        } else {
            line.to_owned()
        };
        conf.push_str(&line);
        conf.push('\n');
    }
    assert_eq!(
        ports.keys().copied().collect::<Vec<_>>(),
        [5000, 5010, 5020, 5030, 5040, 5050, 9090],
        "the five caches, hosted and metrics on the classic ports"
    );
    let stack = dir.path().join("stack");
    std::fs::create_dir_all(&stack).unwrap();
    std::fs::write(stack.join("berth.toml"), conf).unwrap();
    // The users who may push, as docs/deploy.md has them created before the first `up`.
    crate::common::write_htpasswd(&stack.join("htpasswd"), &[("alice", "s3cret")]);
    std::fs::write(stack.join("compose.yaml"), host_network_compose()).unwrap();
    let host = dockerd.host();
    let compose = async |args: &[&str]| {
        let mut all = vec!["--project-name", "berthci", "--file", "compose.yaml"];
        all.extend_from_slice(args);
        let r = exec_in(&stack, "docker-compose", &all, &[("DOCKER_HOST", &host)]).await;
        assert!(r.ok, "docker-compose {args:?} failed:\n{}", r.out);
        r.out
    };
    compose(&["config", "--quiet"]).await;
    compose(&["up", "--detach", "--no-build"]).await;

    // An image only the upstream has, pulled by its Docker Hub name through the
    // docker.io port, as registry:2's proxy on 5000 served it.
    let tar = rootfs_tar(dir.path(), 23);
    dockerd
        .ok(&["import", tar.to_str().unwrap(), "imported:v1"])
        .await;
    let id = dockerd.id("imported:v1").await;
    let at_upstream = format!("{}/library/compose-test:v1", upstream.addr);
    dockerd.ok(&["tag", "imported:v1", &at_upstream]).await;
    dockerd.ok(&["push", &at_upstream]).await;
    forget(&dockerd, &["imported:v1", &at_upstream]).await;
    let hub = format!("http://127.0.0.1:{}", ports[&5000]);
    wait_for_v2(&format!("{hub}/v2/"), async || compose(&["logs"]).await).await;
    let through = format!("127.0.0.1:{}/library/compose-test:v1", ports[&5000]);
    dockerd.ok(&["pull", &through]).await;
    assert_eq!(dockerd.id(&through).await, id);
    // Hosted repositories on 5050; metrics on 9090 count the cache miss.
    let hosted_at = format!("127.0.0.1:{}", ports[&5050]);
    let hosted = format!("{hosted_at}/team/app:v1");
    dockerd.ok(&["tag", &through, &hosted]).await;
    // Not an open registry: pushing needs a user.
    let refused = dockerd.docker(&["push", &hosted]).await;
    assert!(!refused.ok, "an anonymous push was taken:\n{}", refused.out);
    let login = dockerd.login(&hosted_at, ("alice", "s3cret")).await;
    assert!(login.ok, "{}", login.out);
    dockerd.ok(&["push", &hosted]).await;
    let metrics =
        crate::common::get_text(&format!("http://127.0.0.1:{}/metrics", ports[&9090])).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("berth_cache_misses_total{upstream=\"docker.io\"}")),
        "{metrics}"
    );
    let ps = compose(&["ps"]).await;
    assert!(ps.contains("berthci_berth_1"), "{ps}");
    compose(&["down", "--volumes"]).await;
    let left = dockerd.ok(&["ps", "--all", "--quiet"]).await;
    assert!(left.trim().is_empty(), "containers left after down: {left}");
}

/// Run `program` in `dir`.
async fn exec_in(
    dir: &Path,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> crate::clients::Run {
    let mut all_env: Vec<(&str, &str)> = env.to_vec();
    let pwd = dir.to_str().unwrap();
    all_env.push(("PWD", pwd));
    let mut full = vec!["-C", pwd, program];
    full.extend_from_slice(args);
    // env -C DIR: coreutils runs the program in DIR.
    exec("env", &full, &all_env, None).await
}

/// How long berth may take to say something to the service manager: starting on an empty
/// store and reloading a small file take milliseconds; CI machines are slow.
const NOTIFY_WAIT: Duration = Duration::from_secs(20);

async fn next_message(sock: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(NOTIFY_WAIT, sock.recv(&mut buf))
        .await
        .expect("berth said nothing to NOTIFY_SOCKET")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn signal(child: &KillOnDrop, sig: libc::c_int) {
    assert!(crate::common::send_signal(child.0.id(), sig));
}

#[tokio::test]
async fn berth_tells_the_service_manager_when_it_is_ready_reloads_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&path).unwrap();
    let port = free_port();
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\npath = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);

    let ready = next_message(&sock).await;
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready.contains(&format!("STATUS=serving on 127.0.0.1:{port}")),
        "{ready:?}"
    );
    // Ready means serving: the first request after READY=1 is answered.
    let r = client()
        .get(format!("http://127.0.0.1:{port}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // systemctl reload: ExecReload sends SIGHUP.
    signal(&child, libc::SIGHUP);
    let reloading = next_message(&sock).await;
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    let done = next_message(&sock).await;
    assert!(done.lines().any(|l| l == "READY=1"), "{done:?}");
    assert!(done.contains("STATUS=configuration reloaded"), "{done:?}");

    // A broken file is refused, and berth is still ready on the old one.
    std::fs::write(&config, "[server]\nlisen = 1\n").unwrap();
    signal(&child, libc::SIGHUP);
    let _reloading = next_message(&sock).await;
    let kept = next_message(&sock).await;
    assert!(kept.lines().any(|l| l == "READY=1"), "{kept:?}");
    assert!(kept.contains("refused"), "{kept:?}");

    // systemctl stop: SIGTERM.
    signal(&child, libc::SIGTERM);
    let stopping = next_message(&sock).await;
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}
