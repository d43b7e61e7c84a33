//! Shared helpers: an in-process berth on port 0 over a temporary filesystem store, and
//! small builders for blobs and manifests.

#![allow(dead_code)] // reason: each test module uses a different subset

use berth::config::Config;
use oci::Digest;
use serde_json::json;
use std::net::SocketAddr;

/// A berth server running in this process on a free port, with its own data directory.
pub struct TestServer {
    pub addr: SocketAddr,
    pub app: server::App,
    pub base: String,
    pub dir: tempfile::TempDir,
    /// The configuration it runs with.
    pub config: Config,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server `berth::run_server_on` started, with its background jobs (eviction,
    /// gc, retention, scrub) on their configured schedules.
    running: Option<berth::Running>,
}

impl TestServer {
    /// Start a server with the default configuration on a fresh temporary store.
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        TestServer::start_in(dir).await
    }

    /// Start a server on an existing data directory.
    pub async fn start_in(dir: tempfile::TempDir) -> TestServer {
        TestServer::start_configured(dir, |_| {}).await
    }

    /// Start a server on a fresh store with the default configuration changed by `f`.
    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_configured(tempfile::tempdir().unwrap(), f).await
    }

    async fn start_configured(dir: tempfile::TempDir, f: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_wrapped(dir, f, |s| s).await
    }

    /// Start a server whose configured store is first passed through `wrap` (a fault
    /// injector, say). It runs as `berth serve` does ([`berth::run_server_on`]) on a
    /// main listener of its own; dedicated upstream listeners are started by
    /// [`dedicated_listener`], and `[metrics] listen` is left to the test.
    pub async fn start_wrapped(
        dir: tempfile::TempDir,
        f: impl FnOnce(&mut Config),
        wrap: impl FnOnce(std::sync::Arc<dyn store::Store>) -> std::sync::Arc<dyn store::Store>,
    ) -> TestServer {
        let mut config = Config::load(None).unwrap();
        config.storage.path = dir.path().join("data");
        config.storage.fsync = false; // tests do not need power-loss durability
        // Tests push anonymously unless they configure users and rules themselves.
        config.access = vec![anyone_may_do_anything()];
        f(&mut config);
        let store = wrap(berth::open_store(&config).await.unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let running = berth::run_server_on(
            &config,
            berth::Listeners::main_only(listener),
            berth::RunOptions {
                config_path: None,
                store: Some(store),
            },
            async {
                let _ = rx.await;
            },
        )
        .await
        .unwrap();
        let addr = running.local_addr();
        let scheme = if running.tls() { "https" } else { "http" };
        TestServer {
            addr,
            app: running.app().clone(),
            base: format!("{scheme}://{addr}"),
            dir,
            config,
            shutdown: Some(tx),
            running: Some(running),
        }
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Store `bytes` as a blob linked into `repo` through the registry itself (no HTTP,
    /// for tests that need many); its digest.
    pub async fn put_blob_direct(&self, repo: &oci::RepoName, bytes: &[u8]) -> Digest {
        use futures::StreamExt;
        let d = digest_of(bytes);
        let body = futures::stream::iter([Ok(bytes::Bytes::copy_from_slice(bytes))]).boxed();
        self.app
            .registry
            .put_blob(repo, &d, Some(bytes.len() as u64), body)
            .await
            .unwrap();
        d
    }

    /// Stop the server, keeping its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(r) = self.running.take() {
            let _ = r.wait().await;
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// An `[[access]]` rule letting anyone pull, push and delete everywhere.
pub fn anyone_may_do_anything() -> berth::config::AccessConfig {
    rule("**", &["anonymous"], &["pull", "push", "delete"])
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn digest_of(bytes: &[u8]) -> Digest {
    Digest::sha256_of(bytes)
}

/// Basic credentials, if any, on a request.
pub fn as_user(r: reqwest::RequestBuilder, creds: Option<(&str, &str)>) -> reqwest::RequestBuilder {
    match creds {
        Some((u, p)) => r.basic_auth(u, Some(p)),
        None => r,
    }
}

/// Upload a blob monolithically (POST with digest) and return its digest.
pub async fn push_blob(s: &TestServer, repo: &str, bytes: &[u8]) -> Digest {
    push_blob_as(s, repo, bytes, None).await
}

/// [`push_blob`] with Basic credentials.
pub async fn push_blob_as(
    s: &TestServer,
    repo: &str,
    bytes: &[u8],
    creds: Option<(&str, &str)>,
) -> Digest {
    let d = digest_of(bytes);
    let r = as_user(
        client().post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}"))),
        creds,
    )
    .header("content-type", "application/octet-stream")
    .body(bytes.to_vec())
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 201, "push blob: {}", r.text().await.unwrap());
    d
}

/// An OCI image manifest for a config and layers already pushed.
pub fn image_manifest(config: (&Digest, usize), layers: &[(&Digest, usize)]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::media::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": layers.iter().map(|(d, n)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// Push a manifest under `reference` and return the response.
pub async fn put_manifest(
    s: &TestServer,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> reqwest::Response {
    put_manifest_as(s, repo, reference, media_type, body, None).await
}

/// [`put_manifest`] with Basic credentials.
pub async fn put_manifest_as(
    s: &TestServer,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
    creds: Option<(&str, &str)>,
) -> reqwest::Response {
    as_user(
        client().put(s.url(&format!("/v2/{repo}/manifests/{reference}"))),
        creds,
    )
    .header("content-type", media_type)
    .body(body.to_vec())
    .send()
    .await
    .unwrap()
}

/// Push a small random image (config + one layer) tagged `tag`; returns the manifest digest.
pub async fn push_image(s: &TestServer, repo: &str, tag: &str, seed: &str) -> Digest {
    push_image_as(s, repo, tag, seed, None).await
}

/// [`push_image`] with Basic credentials.
pub async fn push_image_as(
    s: &TestServer,
    repo: &str,
    tag: &str,
    seed: &str,
    creds: Option<(&str, &str)>,
) -> Digest {
    let config = format!("{{\"seed\":\"{seed}\"}}");
    let layer = format!("layer of {seed}").repeat(100);
    let c = push_blob_as(s, repo, config.as_bytes(), creds).await;
    let l = push_blob_as(s, repo, layer.as_bytes(), creds).await;
    let m = image_manifest((&c, config.len()), &[(&l, layer.len())]);
    let r = put_manifest_as(s, repo, tag, oci::media::OCI_MANIFEST, &m, creds).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    digest_of(&m)
}

/// The error code of a spec error body.
pub async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.unwrap();
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Is a Debian tool on PATH? Tests that need one fail with a clear message if not,
/// because `.ci/run` installs them: a missing tool is a broken setup, not a skip.
pub fn require_tool(name: &str) {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: run .ci/run (it installs the Debian packages the tests need)"
    );
}

/// `n` pseudo-random bytes (xorshift64): the same on every run, and incompressible, so a
/// layer of it is really `n` bytes on the wire.
pub fn pseudo_random(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// GET `url` and return the body bytes, asserting a 200.
pub async fn get_bytes(url: &str) -> bytes::Bytes {
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    r.bytes().await.unwrap()
}

/// GET `url` and read the body as text, asserting a 200.
pub async fn get_text(url: &str) -> String {
    String::from_utf8(get_bytes(url).await.to_vec()).unwrap()
}

/// Run the `berth` binary with `args`; (exit code, stdout, stderr).
pub async fn run_berth(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// GET `url` and parse the body as JSON, asserting a 200.
pub async fn get_json(url: &str) -> serde_json::Value {
    serde_json::from_slice(&get_bytes(url).await).unwrap()
}

/// An `[[upstream]]` entry for `name` at `url`, with a short tag TTL and no credentials.
pub fn upstream_config(
    name: &str,
    url: &str,
    tag_ttl: std::time::Duration,
) -> berth::config::UpstreamConfig {
    // Every other key at its default, as a file that names only these would have it.
    let text = format!("[[upstream]]\nname = {name:?}\nurl = {url:?}\n");
    let mut u = Config::parse(&text, "test upstream")
        .unwrap()
        .upstreams
        .remove(0);
    u.tag_ttl = tag_ttl;
    u
}

/// Serve the dedicated listener of upstream `name` of `s` on a free port; its address.
pub async fn dedicated_listener(s: &TestServer, name: &str) -> SocketAddr {
    let router = server::upstream_router(s.app.clone(), name).expect("upstream configured");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::transport::serve(
        listener,
        router,
        std::future::pending(),
        server::ServeOptions::default(),
    ));
    addr
}

/// The cache counters of upstream `name`.
pub fn stats(s: &TestServer, name: &str) -> std::sync::Arc<cache::CachedUpstream> {
    s.app.cache.upstream(name).expect("upstream configured")
}

/// A child process killed (and reaped) when dropped, so a failing test leaves no daemon.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Send `sig` to process `pid` (a child of the test); whether it was delivered.
pub fn send_signal(pid: u32, sig: libc::c_int) -> bool {
    #[allow(unsafe_code)] // reason: libc::kill has no safe wrapper in std
    // SAFETY: kill(2) takes no pointers; a wrong pid only fails with ESRCH.
    unsafe {
        libc::kill(pid as libc::pid_t, sig) == 0
    }
}

/// A port on 127.0.0.1 that was free a moment ago (for servers started as processes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Write an htpasswd file of bcrypt entries (cost 4: tests need no slow hashes).
pub fn write_htpasswd(path: &std::path::Path, users: &[(&str, &str)]) {
    let lines: String = users
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap()))
        .collect();
    std::fs::write(path, lines).unwrap();
}

/// An `[[access]]` rule granting `allow` on `repos` to `users`.
pub fn rule(repos: &str, users: &[&str], allow: &[&str]) -> berth::config::AccessConfig {
    berth::config::AccessConfig {
        repositories: repos.into(),
        users: users.iter().map(|s| (*s).to_owned()).collect(),
        allow: allow.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Start `berth serve --config config` as a process (stderr into `log` when given, with
/// `env` set) and wait until it answers on `base` (`http://127.0.0.1:PORT`).
pub async fn serve_process(
    config: &std::path::Path,
    base: &str,
    log: Option<&std::path::Path>,
    env: &[(&str, &str)],
) -> KillOnDrop {
    let stderr = match log {
        Some(l) => std::process::Stdio::from(std::fs::File::create(l).unwrap()),
        None => std::process::Stdio::null(),
    };
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while client().get(format!("{base}/v2/")).send().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "berth serve never answered on {base}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    child
}

/// `location` with `query` appended (`?` or `&`, as the location already has a query).
pub fn with_query(location: &str, query: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}{query}")
}

/// A tmpfs mounted at a fresh directory `at` with mount `options` (`size=4m`, `ro`),
/// unmounted when dropped; `None` (with the reason printed) where this machine does
/// not let the test mount (it needs root).
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(at: &std::path::Path, options: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .status();
        if !mounted.is_ok_and(|s| s.success()) {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root and mount rights)");
            return None;
        }
        Some(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
