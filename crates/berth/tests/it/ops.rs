//! Operations as an operator meets them: `/metrics` checked by Debian's `promtool` and
//! counting what really happened (requests, bytes, cache hits and misses against a
//! real upstream, auth failures, GC and scrub results, a blob broken behind berth's
//! back), and the shipped alert rules checked and unit-tested by `promtool`.

use crate::common::*;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Run `promtool` with `args`, feeding it `stdin`; (succeeded, stdout + stderr).
fn promtool(args: &[&str], stdin: &[u8]) -> (bool, String) {
    use std::io::Write;
    require_tool("promtool");
    let mut child = std::process::Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The value of the sample `series` (name and labels exactly as written) in `text`.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub(crate) async fn scrape(s: &TestServer) -> String {
    let r = client().get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    r.text().await.unwrap()
}

/// Scrape until `series` reaches at least `want`.
async fn wait_for(s: &TestServer, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = scrape(s).await;
        if sample(&text, series).is_some_and(|v| v >= want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_pass_promtool_and_count_what_happened() {
    // An upstream registry (a second berth) holding one image.
    let upstream = TestServer::start().await;
    let image = push_image(&upstream, "team/app", "v1", "upstream").await;
    let s = TestServer::start_with(|c| {
        c.upstreams = vec![upstream_config(
            "mirror.test",
            &upstream.base,
            Duration::from_secs(60),
        )];
        c.gc.interval = Duration::from_secs(1);
        c.scrub.interval = Duration::from_secs(1);
    })
    .await;

    // Hosted traffic: one image pushed and pulled.
    let m = push_image(&s, "hosted/app", "v1", "hosted").await;
    let r = client()
        .get(s.url(&format!("/v2/hosted/app/manifests/{m}")))
        .header("accept", oci::media::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let manifest_len = r.bytes().await.unwrap().len();
    // A cached image pulled twice: a miss, then hits.
    let cached = |path: &str| s.url(&format!("/v2/mirror.test/team/app/{path}"));
    let manifest: serde_json::Value = get_json(&cached(&format!("manifests/{image}"))).await;
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let layer_len = get_bytes(&cached(&format!("blobs/{layer}"))).await.len();
    assert_eq!(
        get_bytes(&cached(&format!("blobs/{layer}"))).await.len(),
        layer_len
    );
    // A token request: without users there is no token service (404), and the
    // request is counted like any other.
    let r = client()
        .get(s.url("/token?service=berth&scope=repository:team/app:pull"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Bad credentials.
    let r = client()
        .get(s.url("/v2/"))
        .basic_auth("nobody", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // GC and the scrub run in the background (every second here).
    let text = wait_for(&s, "berth_scrub_runs_total{result=\"success\"}", 1.0).await;
    let text = if sample(&text, "berth_gc_runs_total{result=\"success\"}").unwrap_or(0.0) < 1.0 {
        wait_for(&s, "berth_gc_runs_total{result=\"success\"}", 1.0).await
    } else {
        text
    };

    // promtool finds nothing to complain about.
    let (ok, out) = promtool(&["check", "metrics"], text.as_bytes());
    assert!(ok && out.trim().is_empty(), "promtool: {out}\n{text}");

    // What happened is what is counted.
    let get = |series: &str| {
        sample(&text, series).unwrap_or_else(|| panic!("no sample {series}:\n{text}"))
    };
    assert_eq!(
        get("berth_http_requests_total{route=\"manifest\",method=\"PUT\",code=\"201\"}"),
        1.0
    );
    assert_eq!(
        get("berth_http_requests_total{route=\"blob\",method=\"GET\",code=\"200\"}"),
        2.0
    );
    assert_eq!(
        get("berth_http_requests_total{route=\"base\",method=\"GET\",code=\"401\"}"),
        1.0
    );
    assert_eq!(
        get("berth_http_requests_total{route=\"token\",method=\"GET\",code=\"404\"}"),
        1.0
    );
    assert_eq!(
        get("berth_auth_failures_total{reason=\"credentials\"}"),
        1.0
    );
    assert!(get("berth_http_request_bytes_total{route=\"upload\"}") > 0.0);
    assert!(get("berth_http_response_bytes_total{route=\"manifest\"}") >= manifest_len as f64);
    assert_eq!(
        get("berth_http_response_bytes_total{route=\"blob\"}"),
        2.0 * layer_len as f64
    );
    assert!(get("berth_http_request_duration_seconds_count{route=\"manifest\"}") >= 3.0);
    let up = |name: &str| get(&format!("{name}{{upstream=\"mirror.test\"}}"));
    assert!(up("berth_cache_misses_total") >= 2.0, "manifest and layer");
    assert!(up("berth_cache_hits_total") >= 1.0, "the second layer pull");
    assert_eq!(up("berth_upstream_fetched_bytes_total"), layer_len as f64);
    assert_eq!(up("berth_cache_served_bytes_total"), layer_len as f64);
    assert_eq!(up("berth_cache_stale_serves_total"), 0.0);
    assert!(up("berth_upstream_request_duration_seconds_count") >= 2.0);
    assert!(get("berth_storage_filesystem_size_bytes") > 0.0);
    assert!(get("berth_storage_blobs") >= 4.0);
    assert!(get("berth_storage_manifests") >= 2.0);
    assert!(get("berth_gc_last_success_timestamp_seconds") > 1.7e9);
    assert!(get("berth_scrub_last_completion_timestamp_seconds") > 1.7e9);
    assert_eq!(get("berth_scrub_problems{kind=\"missing_blob\"}"), 0.0);
    assert_eq!(get("berth_config_last_reload_successful"), 1.0);

    // Every series the shipped alerts and dashboard query is one berth exports.
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    for file in ["prometheus/alerts.yml", "grafana/berth.json"] {
        let used = std::fs::read_to_string(deploy.join(file)).unwrap();
        for name in metric_names(&used) {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("# TYPE {name} "))
                        || l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                "{file} uses {name}, which berth does not export"
            );
        }
    }

    // A layer deleted behind berth's back shows up as an integrity problem.
    let hosted: serde_json::Value =
        get_json(&s.url(&format!("/v2/hosted/app/manifests/{m}"))).await;
    let hosted_layer: oci::Digest = hosted["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let hex = hosted_layer.hex();
    std::fs::remove_file(
        Path::new(&s.config.storage.path)
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex),
    )
    .unwrap();
    wait_for(&s, "berth_scrub_problems{kind=\"missing_blob\"}", 1.0).await;
}

/// The `berth_*` metric names in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("berth_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Skip words that merely start with it inside other identifiers.
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn shipped_alert_rules_pass_promtool_check_and_unit_tests() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus");
    let rules = deploy.join("alerts.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()], b"");
    assert!(ok, "{out}");
    let tests = deploy.join("alerts.test.yml");
    let (ok, out) = promtool(&["test", "rules", tests.to_str().unwrap()], b"");
    assert!(ok, "{out}");
    // Every alert the rules define has a unit test.
    let defined: Vec<String> = std::fs::read_to_string(&rules)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: ").map(str::to_owned))
        .collect();
    let tested = std::fs::read_to_string(&tests).unwrap();
    assert!(defined.len() >= 6, "{defined:?}");
    for alert in &defined {
        assert!(
            tested.contains(&format!("alertname: {alert}")),
            "{alert} has no unit test"
        );
    }
}

/// A containerd daemon of its own (root, state and socket under a temporary directory),
/// killed on drop.
pub(crate) struct Containerd {
    _child: KillOnDrop,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Containerd {
    /// Start containerd, or say why it cannot run here.
    pub(crate) fn start() -> Result<Containerd, String> {
        require_tool("containerd");
        require_tool("ctr");
        // A short path: the socket's must fit in sun_path.
        let dir = tempfile::Builder::new()
            .prefix("ctd")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let socket = d.join("c.sock");
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {:?}\n[ttrpc]\n  address = {:?}\n",
                d.join("root").to_str().unwrap(),
                d.join("state").to_str().unwrap(),
                socket.to_str().unwrap(),
                d.join("c.sock.ttrpc").to_str().unwrap(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("log")).unwrap();
        let mut child = std::process::Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run containerd: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = std::process::Command::new("ctr")
                .arg("--address")
                .arg(&socket)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Ok(Containerd {
                    _child: KillOnDrop(child),
                    socket,
                    _dir: dir,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(d.join("log")).unwrap_or_default();
                return Err(format!("containerd exited ({status}):\n{log}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("containerd did not answer within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn ctr(&self, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containerd_pulls_through_berth_with_generated_hosts_toml() {
    use crate::skopeo::{build_image, layout_manifest, p, require_tools, skopeo};
    require_tools();
    let containerd = match tokio::task::spawn_blocking(Containerd::start)
        .await
        .unwrap()
    {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIPPED: containerd cannot start on this machine: {why}");
            return;
        }
    };
    // The upstream: a registry holding a real image (umoci-built, pushed by skopeo).
    let upstream = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    build_image(&layout, "v1", "amd64", 11, 256 << 10).await;
    let (digest, _) = layout_manifest(&layout, "v1");
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", p(&layout)),
        &format!("docker://{}/team/app:v1", upstream.addr),
    ])
    .await;

    // berth caching it as "mirror.test".
    let s = TestServer::start_with(|c| {
        c.upstreams = vec![upstream_config(
            "mirror.test",
            &upstream.base,
            Duration::from_secs(60),
        )];
    })
    .await;

    // The generated files, from the command line, with berth's address from [server].
    let config = tmp.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{}\"\n[[upstream]]\nname = \"mirror.test\"\nurl = {:?}\n",
            s.addr, upstream.base
        ),
    )
    .unwrap();
    let hosts = tmp.path().join("certs.d");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["hosts-toml", "--config", p(&config), "--out", p(&hosts)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = hosts.join("mirror.test/hosts.toml");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        file.to_str().unwrap()
    );

    // containerd pulls (and unpacks) the image by its upstream name, through berth.
    let hosts_dir = hosts.clone();
    let (ok, log) = tokio::task::spawn_blocking(move || {
        containerd.ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            p(&hosts_dir),
            "--snapshotter",
            "native",
            "--platform",
            "linux/amd64",
            "mirror.test/team/app:v1",
        ])
    })
    .await
    .unwrap();
    assert!(
        ok,
        "ctr pull failed:\n{log}\n{}",
        std::fs::read_to_string(&file).unwrap()
    );
    assert!(log.contains(&digest), "{log}");
    // berth served it: the cache went upstream for the manifest and every blob.
    let stats = stats(&s, "mirror.test");
    assert!(stats.stats.misses.get() >= 3);
    assert!(stats.stats.fetched_bytes.get() > 256 << 10);
}

/// A real `berth serve` on a configuration file, logging to a file.
struct Served {
    child: KillOnDrop,
    base: String,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(config_text: impl Fn(&Path) -> String) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("berth.toml");
        std::fs::write(&config, config_text(dir.path())).unwrap();
        let log = dir.path().join("log");
        let text = std::fs::read_to_string(&config).unwrap();
        let listen = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = \""))
            .unwrap()
            .trim_end_matches('"')
            .to_owned();
        let base = format!("http://{listen}");
        let child = serve_process(&config, &base, Some(&log), &[]).await;
        Served {
            child,
            base,
            config,
            log,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn metric(&self, series: &str) -> f64 {
        let text = client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sample(&text, series).unwrap_or(0.0)
    }

    /// Wait until the reload counter for `result` reaches `n`.
    async fn reloaded(&self, result: &str, n: f64) {
        let series = format!("berth_config_reloads_total{{result=\"{result}\"}}");
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.metric(&series).await < n {
            assert!(
                Instant::now() < deadline,
                "no {result} reload #{n}:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn push_status(base: &str, repo: &str, bytes: &[u8]) -> u16 {
    client()
        .post(format!(
            "{base}/v2/{repo}/blobs/uploads/?digest={}",
            digest_of(bytes)
        ))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn configuration_reloads_without_a_restart_and_refuses_a_broken_file() {
    let port = free_port();
    let head = move |dir: &Path| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\npath = {:?}\nfsync = false\n",
            dir.join("data").to_str().unwrap()
        )
    };
    let anonymous = |allow: &str| {
        format!("[[access]]\nrepositories = \"**\"\nusers = [\"anonymous\"]\nallow = [{allow}]\n")
    };
    let s = Served::start(move |d| format!("{}{}", head(d), anonymous("\"pull\""))).await;
    let dir = s.config.parent().unwrap().to_owned();
    let pid = s.child.0.id();

    // Push is refused; the file changes to allow it; no restart needed.
    assert_eq!(push_status(&s.base, "team/app", b"first").await, 401);
    std::fs::write(
        &s.config,
        format!("{}{}", head(&dir), anonymous("\"pull\", \"push\"")),
    )
    .unwrap();
    s.reloaded("success", 1.0).await;
    assert_eq!(push_status(&s.base, "team/app", b"first").await, 201);

    // A download in progress survives a reload that adds an upstream (SIGHUP this time).
    let big = pseudo_random(5, 32 << 20);
    assert_eq!(push_status(&s.base, "team/app", &big).await, 201);
    let mut download = client()
        .get(s.url(&format!("/v2/team/app/blobs/{}", digest_of(&big))))
        .send()
        .await
        .unwrap();
    let mut got = download.chunk().await.unwrap().unwrap().to_vec();
    let upstream = TestServer::start().await;
    let image = push_image(&upstream, "lib/tool", "v1", "up").await;
    std::fs::write(
        &s.config,
        format!(
            "{}{}[[upstream]]\nname = \"mirror.test\"\nurl = {:?}\n",
            head(&dir),
            anonymous("\"pull\", \"push\""),
            upstream.base
        ),
    )
    .unwrap();
    // SAFETY: signalling our own child process.
    #[allow(unsafe_code)] // reason: libc::kill has no safe wrapper in std
    let sent = unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    assert_eq!(sent, 0);
    s.reloaded("success", 2.0).await;
    while let Some(c) = download.chunk().await.unwrap() {
        got.extend_from_slice(&c);
    }
    assert!(got == big, "the download was cut or changed by the reload");
    // The new upstream serves at once.
    let r = client()
        .get(s.url(&format!("/v2/lib/tool/manifests/{image}?ns=mirror.test")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A broken file is refused; the running configuration keeps serving.
    std::fs::write(
        &s.config,
        head(&dir).replace("[storage]", "lisen = 1\n[storage]"),
    )
    .unwrap();
    s.reloaded("failure", 1.0).await;
    assert_eq!(s.metric("berth_config_last_reload_successful").await, 0.0);
    assert_eq!(push_status(&s.base, "team/app", b"still").await, 201);
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(
        log.contains("configuration refused") && log.contains("lisen"),
        "{log}"
    );

    // A listener change is reported as needing a restart; the rest applies, including a
    // new scrub schedule (the default one would not run for 15 minutes).
    assert_eq!(
        s.metric("berth_scrub_runs_total{result=\"success\"}").await,
        0.0
    );
    std::fs::write(
        &s.config,
        format!(
            "{}{}[scrub]\ninterval = \"1s\"\n",
            head(&dir).replace(&format!(":{port}"), ":1"),
            anonymous("\"pull\"")
        ),
    )
    .unwrap();
    s.reloaded("success", 3.0).await;
    assert_eq!(s.metric("berth_config_last_reload_successful").await, 1.0);
    assert_eq!(push_status(&s.base, "team/app", b"late").await, 401);
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(
        log.contains("apply only after a restart") && log.contains("[server] listen"),
        "{log}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.metric("berth_scrub_runs_total{result=\"success\"}").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the reloaded scrub schedule never ran"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.child.0.id(), pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_to_their_own_listener_when_configured() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let s = TestServer::start_with(|c| c.metrics.listen = Some(addr)).await;
    let r = client().get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 404, "metrics still on the API listener");
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(server::transport::serve(
        listener,
        server::metrics_router(s.app.clone()),
        std::future::pending(),
        server::ServeOptions::default(),
    ));
    client().get(s.url("/v2/")).send().await.unwrap();
    let text = client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(
            &text,
            "berth_http_requests_total{route=\"base\",method=\"GET\",code=\"200\"}"
        ),
        Some(1.0)
    );
    // The same address for both is refused with the key named.
    let mut c = s.config.clone();
    c.metrics.listen = Some(c.server.listen);
    let text = toml_of(&c);
    let e = berth::config::Config::parse(&text, "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("[metrics] listen"), "{e}");
}

/// A configuration with `[metrics] listen` equal to `[server] listen`, as TOML.
fn toml_of(c: &berth::config::Config) -> String {
    format!(
        "[server]\nlisten = \"{}\"\n[metrics]\nlisten = \"{}\"\n",
        c.server.listen,
        c.metrics.listen.unwrap()
    )
}
