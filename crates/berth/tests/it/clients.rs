//! The clients users have, as they run them, against berth: Debian's docker.io daemon
//! and CLI (a `dockerd` of the test's own: data root, exec root, socket, vfs, no
//! iptables, no bridge), podman, buildah, containerd's `ctr` and skopeo. Each pushes and
//! pulls back the same image ID or digest, multi-layer and multi-platform, by tag and by
//! digest, logs in through berth's token flow and is refused a push it has no right to.
//! Images are made offline: `docker build` and `podman build` FROM scratch, `docker
//! import`, `buildah from scratch`, umoci. The Docker Hub mirror (dockerd
//! `registry-mirrors` to the docker.io upstream's dedicated listener) and podman's
//! path-prefix `[[registry.mirror]]` pull from a real upstream, distribution 2.8.
//!
//! The daemons need root (dockerd, containerd) or root storage (rootful podman and
//! buildah): a test says SKIPPED and why when it is not root; every other failure to
//! start is a failure, because `.ci/run` installs and may run all of them.

use crate::cache::Distribution;
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// A client's exit status and its output (stdout then stderr).
pub(crate) struct Run {
    pub ok: bool,
    pub out: String,
}

/// Run `program` to completion off the runtime's threads.
pub(crate) async fn exec(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> Run {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} ran for 5 minutes"))
        .unwrap();
    Run {
        ok: out.status.success(),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `Some(reason)` when the daemons cannot run here.
pub(crate) fn not_root() -> Option<&'static str> {
    #[allow(unsafe_code)] // reason: geteuid has no safe wrapper in std; it cannot fail
    let uid = unsafe { libc::geteuid() };
    (uid != 0).then_some("the daemons and rootful storage of these clients need root")
}

/// A build context: `files` pseudo-random files (one layer each) and a Dockerfile that
/// copies them FROM scratch.
fn build_context(dir: &Path, seed: u64, files: usize) -> PathBuf {
    let ctx = dir.join(format!("ctx-{seed}"));
    std::fs::create_dir_all(&ctx).unwrap();
    let mut dockerfile = String::from("FROM scratch\n");
    for i in 0..files {
        let name = format!("f{i}.bin");
        std::fs::write(
            ctx.join(&name),
            pseudo_random(seed * 100 + i as u64, 64 * 1024),
        )
        .unwrap();
        dockerfile.push_str(&format!("COPY {name} /data/{name}\n"));
    }
    dockerfile.push_str(&format!("CMD [\"/data/f0.bin\"]\nLABEL seed=\"{seed}\"\n"));
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx
}

/// A tar of a tiny root file system, for `docker import` and `podman import`.
pub(crate) fn rootfs_tar(dir: &Path, seed: u64) -> PathBuf {
    let path = dir.join(format!("rootfs-{seed}.tar"));
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for (name, len) in [("etc/hostname", 16), ("data/payload.bin", 100 * 1024)] {
        let bytes = pseudo_random(seed + len as u64, len);
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &bytes[..]).unwrap();
    }
    b.finish().unwrap();
    path
}

/// The digest berth holds under `repo:tag` (a HEAD, with every manifest type accepted).
async fn tagged_digest(s: &TestServer, repo: &str, tag: &str, creds: (&str, &str)) -> String {
    let r = client()
        .head(s.url(&format!("/v2/{repo}/manifests/{tag}")))
        .basic_auth(creds.0, Some(creds.1))
        .header(
            "accept",
            [
                oci::media::OCI_INDEX,
                oci::media::OCI_MANIFEST,
                oci::media::DOCKER_LIST,
                oci::media::DOCKER_MANIFEST,
            ]
            .join(", "),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{repo}:{tag} is not in berth");
    r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Does berth hold no tag `tag` in `repo`?
async fn untagged(s: &TestServer, repo: &str, tag: &str, creds: (&str, &str)) -> bool {
    let r = client()
        .head(s.url(&format!("/v2/{repo}/manifests/{tag}")))
        .basic_auth(creds.0, Some(creds.1))
        .send()
        .await
        .unwrap();
    r.status() == 404
}

/// A client's push that must have been refused for lack of rights.
fn assert_refused(r: &Run) {
    assert!(!r.ok, "the push went through: {}", r.out);
    assert!(
        r.out.contains("denied") || r.out.contains("unauthorized"),
        "refused, but not for want of rights: {}",
        r.out
    );
}

/// The users' server of a client test, with its address and the directory the test
/// works in; `None` (with the reason printed) where the clients cannot run.
async fn users_server() -> Option<(tempfile::TempDir, TestServer, String)> {
    if let Some(why) = not_root() {
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().to_owned();
    let s = TestServer::start_with(|c| with_users(c, &users)).await;
    let host = s.addr.to_string();
    Some((dir, s, host))
}

/// The two users of the client tests: alice may push and pull everywhere, bob only pull.
const ALICE: (&str, &str) = ("alice", "alice-pw");
const BOB: (&str, &str) = ("bob", "bob-pw");

fn with_users(c: &mut berth::config::Config, dir: &Path) {
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(&htpasswd, &[ALICE, BOB]);
    c.auth.htpasswd = Some(htpasswd);
    c.access = vec![
        rule("**", &["alice"], &["pull", "push"]),
        rule("**", &["bob"], &["pull"]),
    ];
}

/// A `dockerd` of the test's own, stopped (SIGTERM, so it stops its containerd too) and
/// removed when dropped.
pub(crate) struct Dockerd {
    child: Option<std::process::Child>,
    socket: PathBuf,
    cli: PathBuf,
    dir: tempfile::TempDir,
}

/// Debian's docker CLI (20.10, as the daemon), ahead of any other `docker` on PATH.
fn docker_cli() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

impl Dockerd {
    /// Start dockerd with `flags` added (`--registry-mirror ...`); wait until it answers.
    pub(crate) async fn start(flags: &[&str]) -> Dockerd {
        require_tool("dockerd");
        // Short paths: the sockets (its own and its containerd's) must fit in sun_path.
        let dir = tempfile::Builder::new()
            .prefix("dk")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let socket = d.join("d.sock");
        let cli = d.join("cli");
        std::fs::create_dir_all(&cli).unwrap();
        let log = std::fs::File::create(d.join("log")).unwrap();
        let mut args: Vec<String> = vec![
            format!("--data-root={}", d.join("root").display()),
            format!("--exec-root={}", d.join("exec").display()),
            format!("--pidfile={}", d.join("pid").display()),
            format!("--host=unix://{}", socket.display()),
            "--storage-driver=vfs".into(),
            "--iptables=false".into(),
            "--ip-masq=false".into(),
            "--bridge=none".into(),
            "--userland-proxy=false".into(),
        ];
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        let child = std::process::Command::new("dockerd")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot run dockerd");
        let mut daemon = Dockerd {
            child: Some(child),
            socket,
            cli,
            dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if daemon.docker(&["version"]).await.ok {
                return daemon;
            }
            if let Some(Ok(Some(status))) = daemon.child.as_mut().map(|c| c.try_wait()) {
                panic!("dockerd exited ({status}):\n{}", daemon.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "dockerd did not answer within 60 s:\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// `DOCKER_HOST` for this daemon, for tools that speak its API (docker-compose).
    pub(crate) fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The docker CLI against this daemon, with its own credential store.
    pub(crate) async fn docker(&self, args: &[&str]) -> Run {
        self.docker_with(args, None).await
    }

    async fn docker_with(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let host = format!("unix://{}", self.socket.display());
        exec(
            docker_cli(),
            args,
            &[
                ("DOCKER_HOST", &host),
                ("DOCKER_CONFIG", self.cli.to_str().unwrap()),
                // The classic builder: Debian's daemon, no buildx plugin needed.
                ("DOCKER_BUILDKIT", "0"),
            ],
            stdin,
        )
        .await
    }

    /// Run docker; its output, or a failure showing it.
    pub(crate) async fn ok(&self, args: &[&str]) -> String {
        let r = self.docker(args).await;
        assert!(r.ok, "docker {args:?} failed:\n{}", r.out);
        r.out
    }

    pub(crate) async fn login(&self, host: &str, (user, password): (&str, &str)) -> Run {
        self.docker_with(
            &["login", "--username", user, "--password-stdin", host],
            Some(password),
        )
        .await
    }

    /// The image ID of `reference`.
    pub(crate) async fn id(&self, reference: &str) -> String {
        let out = self
            .ok(&["image", "inspect", "--format", "{{.Id}}", reference])
            .await;
        let id = out.trim();
        assert!(
            id.starts_with("sha256:") && id.len() == 71,
            "{reference}: {out:?}"
        );
        id.to_owned()
    }

    /// Remove every image, so the next pull fetches everything again (the top-level
    /// ones: their parents, a classic build's intermediate images, go with them).
    pub(crate) async fn forget_images(&self) {
        let ids = self.ok(&["images", "--quiet"]).await;
        let mut ids: Vec<&str> = ids.split_whitespace().collect();
        ids.sort();
        ids.dedup();
        if !ids.is_empty() {
            let mut args = vec!["rmi", "--force"];
            args.extend(ids);
            self.ok(&args).await;
        }
        assert_eq!(self.ok(&["images", "--all", "--quiet"]).await.trim(), "");
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        crate::common::send_signal(child.id(), libc::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // dockerd leaves its network namespace mounted under the exec root; unmounted,
        // the temporary directory (about 160 MB of vfs layers) can be removed with it.
        let netns = self.dir.path().join("exec/netns/default");
        if netns.exists() {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&netns)
                .status();
        }
    }
}

/// docker pushes what it built and imported, through `docker login` and berth's token
/// flow, pulls it back with the same image ID, by tag and by digest, pushes a manifest
/// list with `docker manifest` and pulls its amd64 image; bob, who may only pull, is
/// refused the push.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_pushes_and_pulls_through_the_token_flow() {
    let Some((dir, s, host)) = users_server().await else {
        return;
    };
    let dockerd = Dockerd::start(&[]).await;
    let ctx = build_context(dir.path(), 1, 3);
    dockerd
        .ok(&["build", "--tag", "built:v1", ctx.to_str().unwrap()])
        .await;
    let tar = rootfs_tar(dir.path(), 2);
    dockerd
        .ok(&["import", tar.to_str().unwrap(), "imported:v1"])
        .await;
    let app = format!("{host}/team/app:v1");
    let imp = format!("{host}/team/imported:v1");
    dockerd.ok(&["tag", "built:v1", &app]).await;
    dockerd.ok(&["tag", "imported:v1", &imp]).await;
    let built_id = dockerd.id("built:v1").await;
    let imported_id = dockerd.id("imported:v1").await;

    // No login: the push is refused (docker asks for credentials).
    let r = dockerd.docker(&["push", &app]).await;
    assert_refused(&r);
    // A wrong password is refused at login.
    let r = dockerd.login(&host, ("alice", "wrong")).await;
    assert!(
        !r.ok && r.out.contains("invalid username or password"),
        "{}",
        r.out
    );
    // bob may pull, not push.
    let r = dockerd.login(&host, BOB).await;
    assert!(r.ok, "{}", r.out);
    let r = dockerd.docker(&["push", &app]).await;
    assert_refused(&r);
    assert!(untagged(&s, "team/app", "v1", ALICE).await);

    // alice pushes both (three layers, and one imported layer).
    assert!(dockerd.login(&host, ALICE).await.ok);
    let pushed = dockerd.ok(&["push", &app]).await;
    dockerd.ok(&["push", &imp]).await;
    let digest = tagged_digest(&s, "team/app", "v1", ALICE).await;
    assert!(pushed.contains(&digest), "docker reported {pushed}");

    // Pulled back into an empty daemon: the same image IDs, the registry's digest.
    dockerd.forget_images().await;
    dockerd.ok(&["pull", &app]).await;
    dockerd.ok(&["pull", &imp]).await;
    assert_eq!(dockerd.id(&app).await, built_id);
    assert_eq!(dockerd.id(&imp).await, imported_id);
    let repo_digests = dockerd
        .ok(&["image", "inspect", "--format", "{{.RepoDigests}}", &app])
        .await;
    assert!(repo_digests.contains(&digest), "{repo_digests}");
    let layers = dockerd
        .ok(&[
            "image",
            "inspect",
            "--format",
            "{{len .RootFS.Layers}}",
            &app,
        ])
        .await;
    assert_eq!(layers.trim(), "3");
    // By digest, into an empty daemon.
    dockerd.forget_images().await;
    let by_digest = format!("{host}/team/app@{digest}");
    dockerd.ok(&["pull", &by_digest]).await;
    assert_eq!(dockerd.id(&by_digest).await, built_id);

    // A manifest list over both (the imported one annotated as arm64): docker pulls the
    // amd64 entry.
    dockerd.ok(&["pull", &imp]).await;
    let multi = format!("{host}/team/multi:v1");
    dockerd
        .ok(&["manifest", "create", "--insecure", &multi, &app, &imp])
        .await;
    dockerd
        .ok(&["manifest", "annotate", "--arch", "arm64", &multi, &imp])
        .await;
    let pushed = dockerd
        .ok(&["manifest", "push", "--insecure", &multi])
        .await;
    let list = tagged_digest(&s, "team/multi", "v1", ALICE).await;
    assert!(pushed.contains(&list), "docker reported {pushed}");
    dockerd.forget_images().await;
    dockerd.ok(&["pull", &multi]).await;
    assert_eq!(dockerd.id(&multi).await, built_id, "the amd64 entry");
    dockerd.forget_images().await;
    dockerd
        .ok(&["pull", "--platform", "linux/arm64", &multi])
        .await;
    assert_eq!(dockerd.id(&multi).await, imported_id, "the arm64 entry");
}

/// A berth whose docker.io upstream is `upstream`, with its dedicated listener; with
/// users, anonymous callers may pull from the cache (as a Docker Hub mirror needs: the
/// daemon sends no credentials to mirrors) and nothing else.
async fn mirror_for(upstream: &Distribution, users: Option<&Path>) -> (TestServer, String) {
    let url = format!("http://{}", upstream.addr);
    let users = users.map(Path::to_owned);
    let s = TestServer::start_with(move |c| {
        c.upstreams = vec![upstream_config("docker.io", &url, Duration::from_secs(1))];
        if let Some(dir) = &users {
            with_users(c, dir);
            c.access
                .insert(0, rule("docker.io/**", &["anonymous"], &["pull"]));
        }
    })
    .await;
    let dedicated = dedicated_listener(&s, "docker.io").await.to_string();
    (s, dedicated)
}

/// The cache counters of docker.io in `/metrics`.
async fn counters(s: &TestServer) -> (f64, f64, f64) {
    let text = crate::ops::scrape(s).await;
    let get = |name: &str| {
        crate::ops::sample(&text, &format!("{name}{{upstream=\"docker.io\"}}")).unwrap_or(0.0)
    };
    (
        get("berth_cache_misses_total"),
        get("berth_cache_hits_total"),
        get("berth_cache_stale_serves_total"),
    )
}

/// dockerd with `registry-mirrors` pointing at the docker.io upstream's dedicated
/// listener pulls Docker Hub names through berth, with and without users configured:
/// a miss, a hit, and a stale tag served while the upstream is down, each counted in
/// `/metrics`. With users, a direct pull from the listener logs in through the token
/// flow, which names the repositories as docker does (`library/<name>`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_pulls_docker_hub_names_through_the_mirror() {
    if let Some(why) = not_root() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    for users in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let upstream = Distribution::start(None).await;
        let (s, mirror) = mirror_for(&upstream, users.then_some(dir.path())).await;
        // The daemon.json of docs/clients.md.
        let daemon_json = dir.path().join("daemon.json");
        std::fs::write(
            &daemon_json,
            format!("{{\n  \"registry-mirrors\": [\"http://{mirror}\"]\n}}\n"),
        )
        .unwrap();
        let dockerd = Dockerd::start(&[&format!("--config-file={}", daemon_json.display())]).await;
        // The image exists only upstream (a name Docker Hub does not have, so a fallback
        // to the real Docker Hub could never succeed).
        let ctx = build_context(dir.path(), 3, 2);
        dockerd
            .ok(&["build", "--tag", "built:v1", ctx.to_str().unwrap()])
            .await;
        let id = dockerd.id("built:v1").await;
        let at_upstream = format!("{}/library/berth-mirror-test:latest", upstream.addr);
        dockerd.ok(&["tag", "built:v1", &at_upstream]).await;
        dockerd.ok(&["push", &at_upstream]).await;
        dockerd.forget_images().await;

        // Miss: docker asks the mirror for library/berth-mirror-test.
        dockerd.ok(&["pull", "berth-mirror-test"]).await;
        assert_eq!(dockerd.id("berth-mirror-test").await, id, "users: {users}");
        let (misses, _, _) = counters(&s).await;
        assert!(
            misses >= 3.0,
            "manifest, config and layers missed: {misses}"
        );
        // Hit: again into an empty daemon, from the cache.
        dockerd.forget_images().await;
        dockerd.ok(&["pull", "berth-mirror-test"]).await;
        let (misses_after, hits, _) = counters(&s).await;
        assert_eq!(misses_after, misses, "nothing missed the second time");
        assert!(hits >= 3.0, "{hits}");
        // Stale: the tag's TTL (1 s) is over and the upstream is gone.
        drop(upstream);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        dockerd.forget_images().await;
        dockerd.ok(&["pull", "berth-mirror-test"]).await;
        assert_eq!(dockerd.id("berth-mirror-test").await, id);
        let (_, _, stale) = counters(&s).await;
        assert!(stale >= 1.0, "users: {users}: {stale}");

        if users {
            // Straight at the listener, as a registry: docker logs in, and its token for
            // `repository:library/berth-mirror-test:pull` works there.
            dockerd.forget_images().await;
            assert!(dockerd.login(&mirror, BOB).await.ok);
            let direct = format!("{mirror}/library/berth-mirror-test:latest");
            dockerd.ok(&["pull", &direct]).await;
            assert_eq!(dockerd.id(&direct).await, id);
            // Nobody may push into a cache, whatever the rules say.
            assert!(dockerd.login(&mirror, ALICE).await.ok);
            dockerd
                .ok(&["tag", &direct, &format!("{mirror}/library/evil:1")])
                .await;
            let r = dockerd
                .docker(&["push", &format!("{mirror}/library/evil:1")])
                .await;
            assert!(!r.ok, "pushed into a cache: {}", r.out);
        }
    }
}

/// Rootful podman with storage of its own under `dir` (vfs), its own auth file and
/// registries.conf.
pub(crate) struct Podman {
    program: &'static str,
    root: PathBuf,
}

impl Podman {
    pub(crate) fn new(program: &'static str, dir: &Path, registries: &str) -> Podman {
        require_tool(program);
        let root = dir.join(program);
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::write(root.join("auth.json"), "{}").unwrap();
        std::fs::write(root.join("registries.conf"), registries).unwrap();
        Podman { program, root }
    }

    async fn run(&self, args: &[&str]) -> Run {
        let r = |p: &str| self.root.join(p).to_str().unwrap().to_owned();
        let (storage, run, tmp) = (r("storage"), r("run"), r("tmp"));
        let mut all = vec![
            "--root",
            &storage,
            "--runroot",
            &run,
            "--storage-driver",
            "vfs",
        ];
        if self.program == "podman" {
            all.extend(["--tmpdir", &tmp]);
        }
        all.extend_from_slice(args);
        let (auth, conf) = (r("auth.json"), r("registries.conf"));
        exec(
            self.program,
            &all,
            &[
                ("REGISTRY_AUTH_FILE", &auth),
                ("CONTAINERS_REGISTRIES_CONF", &conf),
                ("TMPDIR", &tmp),
            ],
            None,
        )
        .await
    }

    pub(crate) async fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args).await;
        assert!(r.ok, "{} {args:?} failed:\n{}", self.program, r.out);
        r.out
    }

    async fn login(&self, host: &str, (user, password): (&str, &str)) -> Run {
        self.run(&[
            "login",
            "--tls-verify=false",
            "--username",
            user,
            "--password",
            password,
            host,
        ])
        .await
    }

    async fn id(&self, reference: &str) -> String {
        let args: &[&str] = if self.program == "buildah" {
            &["inspect", "--type", "image", "--format", "{{.FromImageID}}"]
        } else {
            &["image", "inspect", "--format", "{{.Id}}"]
        };
        let mut args = args.to_vec();
        args.push(reference);
        let out = self.ok(&args).await;
        let id = out.trim().trim_start_matches("sha256:");
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{reference} has no image ID: {out:?}"
        );
        id.to_owned()
    }
}

/// podman builds two platforms FROM scratch, logs in through the token flow, pushes one
/// image and an OCI index over both, pulls them back with the same IDs (by tag, by
/// digest, per platform), finds them with `podman search`, and is refused a push as bob.
/// Through a `[[registry.mirror]]` whose location is berth's path prefix for docker.io
/// it pulls a Docker Hub name from the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn podman_pushes_pulls_searches_and_mirrors_through_a_path_prefix() {
    if let Some(why) = not_root() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let upstream = Distribution::start(None).await;
    let url = format!("http://{}", upstream.addr);
    let users = dir.path().to_owned();
    let s = TestServer::start_with(move |c| {
        with_users(c, &users);
        c.upstreams = vec![upstream_config("docker.io", &url, Duration::from_secs(60))];
    })
    .await;
    let host = s.addr.to_string();
    let podman = Podman::new(
        "podman",
        dir.path(),
        &format!(
            "unqualified-search-registries = [\"docker.io\"]\n\
             [[registry]]\nprefix = \"docker.io\"\nlocation = \"registry-1.docker.io\"\n\
             [[registry.mirror]]\nlocation = \"{host}/docker.io\"\ninsecure = true\n\
             [[registry]]\nlocation = \"{host}\"\ninsecure = true\n\
             [[registry]]\nlocation = \"{}\"\ninsecure = true\n",
            upstream.addr
        ),
    );
    let ctx = build_context(dir.path(), 4, 2);
    let ctx = ctx.to_str().unwrap();
    podman
        .ok(&[
            "build",
            "--arch",
            "amd64",
            "--tag",
            "localhost/m-amd64",
            ctx,
        ])
        .await;
    let ctx_arm = build_context(dir.path(), 5, 1);
    podman
        .ok(&[
            "build",
            "--arch",
            "arm64",
            "--variant",
            "v8",
            "--tag",
            "localhost/m-arm64",
            ctx_arm.to_str().unwrap(),
        ])
        .await;
    let (amd_id, arm_id) = (
        podman.id("localhost/m-amd64").await,
        podman.id("localhost/m-arm64").await,
    );
    let app = format!("{host}/pod/app:v1");
    let multi = format!("{host}/pod/multi:v1");
    // For the mirror below: an image only the upstream has.
    let at_upstream = format!("{}/library/berth-podman:v1", upstream.addr);
    podman
        .ok(&[
            "push",
            "--tls-verify=false",
            "localhost/m-amd64",
            &at_upstream,
        ])
        .await;

    // bob may not push.
    let r = podman.login(&host, ("bob", "wrong")).await;
    assert!(!r.ok, "{}", r.out);
    assert!(podman.login(&host, BOB).await.ok);
    let r = podman
        .run(&["push", "--tls-verify=false", "localhost/m-amd64", &app])
        .await;
    assert_refused(&r);
    assert!(untagged(&s, "pod/app", "v1", ALICE).await);

    // alice pushes an image and an index over both platforms.
    assert!(podman.login(&host, ALICE).await.ok);
    podman
        .ok(&["push", "--tls-verify=false", "localhost/m-amd64", &app])
        .await;
    podman
        .ok(&["manifest", "create", "localhost/multi:v1"])
        .await;
    podman
        .ok(&[
            "manifest",
            "add",
            "localhost/multi:v1",
            "containers-storage:localhost/m-amd64",
        ])
        .await;
    podman
        .ok(&[
            "manifest",
            "add",
            "--arch",
            "arm64",
            "--variant",
            "v8",
            "--os",
            "linux",
            "localhost/multi:v1",
            "containers-storage:localhost/m-arm64",
        ])
        .await;
    podman
        .ok(&[
            "manifest",
            "push",
            "--all",
            "--tls-verify=false",
            "localhost/multi:v1",
            &format!("docker://{multi}"),
        ])
        .await;
    let digest = tagged_digest(&s, "pod/app", "v1", ALICE).await;
    let index = client()
        .get(s.url("/v2/pod/multi/manifests/v1"))
        .basic_auth(ALICE.0, Some(ALICE.1))
        .header("accept", oci::media::OCI_INDEX)
        .send()
        .await
        .unwrap();
    let index: serde_json::Value = index.json().await.unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");

    // Back into empty storage: the same IDs by tag, by digest and per platform.
    podman.ok(&["rmi", "--all", "--force"]).await;
    podman.ok(&["pull", "--tls-verify=false", &app]).await;
    assert_eq!(podman.id(&app).await, amd_id);
    let by_digest = format!("{host}/pod/app@{digest}");
    podman.ok(&["rmi", "--all", "--force"]).await;
    podman.ok(&["pull", "--tls-verify=false", &by_digest]).await;
    assert_eq!(podman.id(&by_digest).await, amd_id);
    podman.ok(&["rmi", "--all", "--force"]).await;
    podman
        .ok(&["pull", "--tls-verify=false", "--arch", "arm64", &multi])
        .await;
    assert_eq!(podman.id(&multi).await, arm_id);

    // podman search lists what alice may pull, through a Bearer token.
    let found = podman
        .ok(&["search", "--tls-verify=false", &format!("{host}/pod/")])
        .await;
    for name in ["pod/app", "pod/multi"] {
        assert!(found.contains(&format!("{host}/{name}")), "{found}");
    }

    // A Docker Hub name through the path-prefix mirror: the image lives upstream only.
    podman.ok(&["rmi", "--all", "--force"]).await;
    podman
        .ok(&["pull", "docker.io/library/berth-podman:v1"])
        .await;
    assert_eq!(podman.id("docker.io/library/berth-podman:v1").await, amd_id);
    let (misses, _, _) = counters(&s).await;
    assert!(misses >= 1.0, "pulled through berth's cache: {misses}");
}

/// buildah builds FROM scratch, logs in through the token flow, pushes, and pulls the
/// same image ID back, by tag and by digest, and per platform from a manifest list it
/// pushed; bob is refused the push.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buildah_pushes_and_pulls_through_the_token_flow() {
    let Some((dir, s, host)) = users_server().await else {
        return;
    };
    let buildah = Podman::new(
        "buildah",
        dir.path(),
        &format!("[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"),
    );
    let ctx = build_context(dir.path(), 6, 2);
    // Two layers: a commit per layer, the second from the first.
    let c = buildah.ok(&["from", "scratch"]).await;
    let c = c.trim();
    buildah
        .ok(&["copy", c, ctx.join("f0.bin").to_str().unwrap(), "/data/"])
        .await;
    buildah
        .ok(&[
            "config",
            "--cmd",
            "/data/f0.bin",
            "--arch",
            "amd64",
            "--os",
            "linux",
            c,
        ])
        .await;
    buildah.ok(&["commit", c, "localhost/one:v1"]).await;
    let c = buildah.ok(&["from", "localhost/one:v1"]).await;
    let c = c.trim();
    buildah
        .ok(&["copy", c, ctx.join("f1.bin").to_str().unwrap(), "/data/"])
        .await;
    buildah.ok(&["commit", c, "localhost/two:v1"]).await;
    let id = buildah.id("localhost/two:v1").await;
    let app = format!("{host}/bld/app:v1");

    assert!(buildah.login(&host, BOB).await.ok);
    let r = buildah
        .run(&[
            "push",
            "--tls-verify=false",
            "localhost/two:v1",
            &format!("docker://{app}"),
        ])
        .await;
    assert!(!r.ok, "bob pushed: {}", r.out);
    assert!(untagged(&s, "bld/app", "v1", ALICE).await);

    assert!(buildah.login(&host, ALICE).await.ok);
    buildah
        .ok(&[
            "push",
            "--tls-verify=false",
            "localhost/two:v1",
            &format!("docker://{app}"),
        ])
        .await;
    let digest = tagged_digest(&s, "bld/app", "v1", ALICE).await;
    let manifest: serde_json::Value = client()
        .get(s.url(&format!("/v2/bld/app/manifests/{digest}")))
        .basic_auth(ALICE.0, Some(ALICE.1))
        .header("accept", oci::media::OCI_MANIFEST)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        manifest["layers"].as_array().unwrap().len(),
        2,
        "{manifest}"
    );
    buildah.ok(&["rmi", "--all", "--force"]).await;
    buildah.ok(&["pull", "--tls-verify=false", &app]).await;
    assert_eq!(buildah.id(&app).await, id);
    buildah.ok(&["rmi", "--all", "--force"]).await;
    let by_digest = format!("{host}/bld/app@{digest}");
    buildah
        .ok(&["pull", "--tls-verify=false", &by_digest])
        .await;
    assert_eq!(buildah.id(&by_digest).await, id);

    // Multi-platform: an arm64 image beside it, and a manifest list over both.
    let c = buildah.ok(&["from", "scratch"]).await;
    let c = c.trim();
    buildah
        .ok(&["copy", c, ctx.join("f1.bin").to_str().unwrap(), "/data/"])
        .await;
    buildah
        .ok(&["config", "--arch", "arm64", "--os", "linux", c])
        .await;
    buildah.ok(&["commit", c, "localhost/arm:v1"]).await;
    let arm_id = buildah.id("localhost/arm:v1").await;
    buildah
        .ok(&["manifest", "create", "localhost/both:v1"])
        .await;
    for image in [by_digest.as_str(), "localhost/arm:v1"] {
        buildah
            .ok(&[
                "manifest",
                "add",
                "localhost/both:v1",
                &format!("containers-storage:{image}"),
            ])
            .await;
    }
    let both = format!("{host}/bld/both:v1");
    buildah
        .ok(&[
            "manifest",
            "push",
            "--all",
            "--tls-verify=false",
            "localhost/both:v1",
            &format!("docker://{both}"),
        ])
        .await;
    buildah.ok(&["rmi", "--all", "--force"]).await;
    buildah
        .ok(&["pull", "--tls-verify=false", "--arch", "arm64", &both])
        .await;
    assert_eq!(buildah.id(&both).await, arm_id);
    buildah.ok(&["rmi", "--all", "--force"]).await;
    buildah
        .ok(&["pull", "--tls-verify=false", "--arch", "amd64", &both])
        .await;
    assert_eq!(buildah.id(&both).await, id);
}

/// ctr (with a containerd of its own) and skopeo log in with `--user` / `--creds`
/// through the token flow: they pull a single image and a multi-platform index by tag
/// and by digest, push as alice, and are refused the push as bob.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctr_and_skopeo_log_in_through_the_token_flow() {
    use crate::skopeo::{build_multi_layout, p, require_tools, skopeo};
    require_tools();
    let Some((dir, s, host)) = users_server().await else {
        return;
    };
    let src = dir.path().join("src");
    let (_, index_digest, _) = build_multi_layout(&src).await;
    let alice = format!("{}:{}", ALICE.0, ALICE.1);
    let bob = format!("{}:{}", BOB.0, BOB.1);
    let from = format!("oci:{}:multi", p(&src));

    // skopeo: bob is refused, alice pushes the whole index.
    let r = exec(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--all",
            "--dest-tls-verify=false",
            "--dest-creds",
            &bob,
            &from,
            &format!("docker://{host}/ctr/multi:v1"),
        ],
        &[],
        None,
    )
    .await;
    assert_refused(&r);
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--dest-creds",
        &alice,
        &from,
        &format!("docker://{host}/ctr/multi:v1"),
    ])
    .await;
    assert_eq!(
        tagged_digest(&s, "ctr/multi", "v1", ALICE).await,
        index_digest
    );
    let inspected = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &bob,
        &format!("docker://{host}/ctr/multi@{index_digest}"),
    ])
    .await;
    assert_eq!(digest_of(&inspected).to_string(), index_digest);

    // ctr: pulls as bob (by tag, and by digest), pushes as alice, refused as bob.
    let containerd = tokio::task::spawn_blocking(crate::ops::Containerd::start)
        .await
        .unwrap()
        .unwrap_or_else(|why| panic!("containerd cannot start: {why}"));
    let multi = format!("{host}/ctr/multi:v1");
    let (ok, out) = containerd.ctr(&["images", "pull", "--plain-http", &multi]);
    assert!(!ok, "an anonymous pull: {out}");
    let (ok, out) = containerd.ctr(&["images", "pull", "--plain-http", "--user", &bob, &multi]);
    assert!(ok, "{out}");
    let (ok, out) = containerd.ctr(&["images", "ls", "--quiet"]);
    assert!(ok && out.contains(&multi), "{out}");
    let by_digest = format!("{host}/ctr/multi@{index_digest}");
    let (ok, out) = containerd.ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--all-platforms",
        "--user",
        &bob,
        &by_digest,
    ]);
    assert!(ok, "{out}");
    let copy = format!("{host}/ctr/copy:v1");
    let (ok, out) = containerd.ctr(&["images", "tag", &by_digest, &copy]);
    assert!(ok, "{out}");
    let (ok, out) = containerd.ctr(&["images", "push", "--plain-http", "--user", &bob, &copy]);
    assert!(!ok, "bob pushed: {out}");
    assert!(untagged(&s, "ctr/copy", "v1", ALICE).await);
    let (ok, out) = containerd.ctr(&["images", "push", "--plain-http", "--user", &alice, &copy]);
    assert!(ok, "{out}");
    assert_eq!(
        tagged_digest(&s, "ctr/copy", "v1", ALICE).await,
        index_digest
    );
}
