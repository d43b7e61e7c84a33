//! Connections as clients meet them: HTTPS with a test CA (skopeo logging in and
//! pushing, anonymous pulls, HTTP/2 and HTTP/1.1 by ALPN), certificates reloaded when
//! their files change and on SIGHUP, slow and silent clients cut off after the client
//! timeout without losing committed bytes, and the blob size limit.

use crate::common::*;
use crate::skopeo::{build_image, layout_blob, p, require_tools};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A throwaway certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// Certificate and key files get padded to this size, so a replaced pair can be made
/// to look unchanged to the file watcher (same size and modification time).
const PADDED: usize = 8192;

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for 127.0.0.1 and localhost: (cert PEM, key PEM).
    fn issue(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client trusting only this CA.
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem().as_bytes()).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// A directory as skopeo's `--*-cert-dir` wants it: the CA as `ca.crt`.
    fn cert_dir(&self, dir: &Path) -> PathBuf {
        let d = dir.join("certs.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ca.crt"), self.pem()).unwrap();
        d
    }
}

/// Write `pem` padded with blank lines to [`PADDED`] bytes (PEM readers skip them).
fn write_padded(path: &Path, pem: &str) {
    let mut bytes = pem.as_bytes().to_vec();
    assert!(bytes.len() < PADDED);
    bytes.resize(PADDED, b'\n');
    std::fs::write(path, bytes).unwrap();
}

struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    fn write(dir: &Path, ca: &Ca) -> TlsFiles {
        let files = TlsFiles {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        };
        files.replace(ca);
        files
    }

    fn replace(&self, ca: &Ca) {
        let (cert, key) = ca.issue();
        write_padded(&self.key, &key);
        write_padded(&self.cert, &cert);
    }
}

async fn tls_server(files: &TlsFiles, f: impl FnOnce(&mut berth::config::Config)) -> TestServer {
    let (cert, key) = (files.cert.clone(), files.key.clone());
    TestServer::start_with(move |c| {
        c.server.tls_cert = Some(cert);
        c.server.tls_key = Some(key);
        f(c);
    })
    .await
}

/// Run skopeo; (succeeded, stderr).
async fn skopeo_try(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `curl` over HTTPS trusting `ca_file`; the HTTP version and status it saw.
fn curl(args: &[&str], ca_file: &Path, url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .args(args)
        .arg("--cacert")
        .arg(ca_file)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_logs_in_and_pushes_over_tls_and_pulls_anonymously() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("berth test CA");
    let files = TlsFiles::write(tmp.path(), &ca);
    let htpasswd = tmp.path().join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", "alice-pw")]);
    let s = tls_server(&files, |c| {
        c.auth.htpasswd = Some(htpasswd);
        c.access = Vec::new(); // the embedded default rules
    })
    .await;
    let certs = ca.cert_dir(tmp.path());
    let src = tmp.path().join("src");
    build_image(&src, "v1", "amd64", 7, 64 << 10).await;
    let from = format!("oci:{}:v1", p(&src));
    let remote = format!("docker://{}/team/app:v1", s.addr);

    // Without credentials: refused.
    let (ok, err) = skopeo_try(&["copy", "--dest-cert-dir", p(&certs), &from, &remote]).await;
    assert!(!ok, "anonymous push succeeded");
    assert!(
        err.contains("unauthorized") || err.contains("authentication required"),
        "{err}"
    );
    // A wrong password: refused.
    let (ok, err) = skopeo_try(&[
        "copy",
        "--dest-cert-dir",
        p(&certs),
        "--dest-creds",
        "alice:wrong",
        &from,
        &remote,
    ])
    .await;
    assert!(!ok, "push with a wrong password succeeded");
    assert!(err.contains("unauthorized") || err.contains("401"), "{err}");
    // The right credentials, but a client that does not trust the CA: the TLS check is real.
    let (ok, err) = skopeo_try(&["copy", "--dest-creds", "alice:alice-pw", &from, &remote]).await;
    assert!(!ok, "push without trusting the CA succeeded");
    assert!(err.contains("certificate"), "{err}");
    // Credentials and the CA: the push goes through (Bearer token flow over HTTPS).
    let (ok, err) = skopeo_try(&[
        "copy",
        "--dest-cert-dir",
        p(&certs),
        "--dest-creds",
        "alice:alice-pw",
        &from,
        &remote,
    ])
    .await;
    assert!(ok, "{err}");

    // Anonymous pull is allowed by default, and every byte comes back.
    let out = tmp.path().join("out");
    let (ok, err) = skopeo_try(&[
        "copy",
        "--src-cert-dir",
        p(&certs),
        "--src-no-creds",
        &remote,
        &format!("oci:{}:v1", p(&out)),
    ])
    .await;
    assert!(ok, "{err}");
    let (src_digest, src_manifest) = crate::skopeo::layout_manifest(&src, "v1");
    let (out_digest, out_manifest) = crate::skopeo::layout_manifest(&out, "v1");
    assert_eq!(src_digest, out_digest);
    assert!(src_manifest == out_manifest);
    for d in crate::skopeo::referenced_blobs(&src_manifest) {
        assert!(layout_blob(&src, &d) == layout_blob(&out, &d), "blob {d}");
    }
    // The token realm a client is sent to is the HTTPS one.
    let r = ca
        .client()
        .post(s.url("/v2/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"https://{}/token\"", s.addr)),
        "{challenge}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_speaks_http2_and_http1_and_reloads_changed_certificates() {
    require_tool("curl");
    let tmp = tempfile::tempdir().unwrap();
    let first = Ca::new("first CA");
    let second = Ca::new("second CA");
    let files = TlsFiles::write(tmp.path(), &first);
    let s = tls_server(&files, |c| c.server.client_timeout = Duration::from_secs(1)).await;
    let url = s.url("/v2/");
    assert!(url.starts_with("https://"));
    let r = first.client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(second.client().get(&url).send().await.is_err());

    // Both protocols, chosen by ALPN.
    let first_pem = tmp.path().join("first.pem");
    std::fs::write(&first_pem, first.pem()).unwrap();
    assert_eq!(curl(&["--http2"], &first_pem, &url), "2 200");
    assert_eq!(curl(&["--http1.1"], &first_pem, &url), "1.1 200");
    // Over HTTP/2 a push works end to end too (a body, a Location to follow).
    let blob = b"over h2";
    let digest = digest_of(blob);
    let put = s.url(&format!("/v2/h2/blob/blobs/uploads/?digest={digest}"));
    let blob_file = tmp.path().join("blob");
    std::fs::write(&blob_file, blob).unwrap();
    let data = format!("@{}", p(&blob_file));
    assert_eq!(
        curl(
            &["--http2", "-X", "POST", "--data-binary", &data],
            &first_pem,
            &put
        ),
        "2 201"
    );
    let r = first
        .client()
        .get(s.url(&format!("/v2/h2/blob/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), blob);

    // A silent client on the TLS port is cut off (no handshake within the timeout).
    assert_closed_within(s.addr, b"", Duration::from_secs(10));

    // A broken replacement is refused and the old certificate stays.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    tokio::time::sleep(server::tls::RELOAD_CHECK * 2).await;
    let r = first.client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // A renewed pair from another CA is picked up without a restart.
    files.replace(&second);
    let deadline = Instant::now() + Duration::from_secs(15);
    while second.client().get(&url).send().await.is_err() {
        assert!(Instant::now() < deadline, "new certificate never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(first.client().get(&url).send().await.is_err());
}

#[test]
fn sighup_reloads_the_certificate_and_bad_tls_config_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let first = Ca::new("first CA");
    let second = Ca::new("second CA");
    let files = TlsFiles::write(tmp.path(), &first);
    let port = free_port();
    let config = tmp.path().join("berth.toml");
    let write_config = |cert: &Path, key: Option<&Path>| {
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = {:?}\n",
            p(cert)
        );
        if let Some(key) = key {
            text.push_str(&format!("tls_key = {:?}\n", p(key)));
        }
        text.push_str(&format!(
            "[storage]\npath = {:?}\n",
            p(&tmp.path().join("data"))
        ));
        std::fs::write(&config, text).unwrap();
    };
    let berth = || std::process::Command::new(env!("CARGO_BIN_EXE_berth"));

    // Half a TLS configuration, or a key that is not a key: refused, naming the problem.
    write_config(&files.cert, None);
    let out = berth()
        .args(["check-config", "--config", p(&config)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls_cert needs tls_key"));
    write_config(&files.cert, Some(&files.cert));
    let out = berth()
        .args(["serve", "--config", p(&config)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.crt") && err.contains("private key"),
        "{err}"
    );

    write_config(&files.cert, Some(&files.key));
    let mut child = berth()
        .args(["serve", "--config", p(&config)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/v2/");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let works = |ca: &Ca| rt.block_on(async { ca.client().get(&url).send().await.is_ok() });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !works(&first) {
        assert!(Instant::now() < deadline, "berth serve never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Replace the pair behind the watcher's back: same sizes, same modification times.
    let times = |f: &Path| std::fs::metadata(f).unwrap().modified().unwrap();
    let (cert_time, key_time) = (times(&files.cert), times(&files.key));
    files.replace(&second);
    for (f, t) in [(&files.cert, cert_time), (&files.key, key_time)] {
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    std::thread::sleep(server::tls::RELOAD_CHECK * 2);
    assert!(works(&first), "the watcher should not have noticed");
    // SIGHUP makes berth read the files again.
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: sending a signal to our own child process.
    #[allow(unsafe_code)] // reason: libc::kill has no safe wrapper in std
    let sent = unsafe { libc::kill(pid, libc::SIGHUP) };
    assert_eq!(sent, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !works(&second) {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the certificate"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!works(&first));
    let _ = child.kill();
    let _ = child.wait();
}

/// Open a connection to `addr`, send `prefix`, then stay silent: the server must close
/// the connection before `within` passes. Returns what the server sent before closing.
fn assert_closed_within(addr: std::net::SocketAddr, prefix: &[u8], within: Duration) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(prefix).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connection still open after {within:?} ({e}); got {got:?}"),
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_silent_clients_are_cut_off_and_lose_only_their_own_bytes() {
    let s = TestServer::start_with(|c| c.server.client_timeout = Duration::from_secs(1)).await;
    let addr = s.addr;
    let within = Duration::from_secs(10);
    // Connects and says nothing; sends half a request line and stops.
    tokio::task::spawn_blocking(move || {
        assert_closed_within(addr, b"", within);
        assert_closed_within(addr, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n", within);
        // Half an HTTP/2 preface, then nothing: the protocol is never told.
        assert_closed_within(addr, b"PRI * HTTP/2.0\r\n", within);
        // One whole request, then idle on the kept-alive connection.
        let got = assert_closed_within(addr, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", within);
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    })
    .await
    .unwrap();
    // Plain-text HTTP/2 with prior knowledge is told from HTTP/1.1 by its preface.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg("--http2-prior-knowledge")
        .arg(s.url("/v2/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");

    // An upload: five bytes committed, then a PATCH that stalls after ten of its hundred.
    let r = client()
        .post(s.url("/v2/slow/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let r = client()
        .patch(s.url(&location))
        .header("content-type", "application/octet-stream")
        .body(&b"01234"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let request = format!(
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n\
         Content-Range: 5-104\r\nContent-Length: 100\r\n\r\n56789abcde"
    );
    let got =
        tokio::task::spawn_blocking(move || assert_closed_within(addr, request.as_bytes(), within))
            .await
            .unwrap();
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("BLOB_UPLOAD_INVALID"), "{got}");
    // The stalled chunk is rolled back; the committed five bytes are intact.
    let r = client().get(s.url(&location)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-4");
    // The client resumes and finishes; the blob is exactly what it sent.
    let whole = b"0123456789abcdef";
    let r = client()
        .put(s.url(&format!("{location}?digest={}", digest_of(whole))))
        .header("content-type", "application/octet-stream")
        .body(&whole[5..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = client()
        .get(s.url(&format!("/v2/slow/app/blobs/{}", digest_of(whole))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), whole);
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_above_the_size_limit_are_refused_and_leave_nothing() {
    let s = TestServer::start_with(|c| c.server.max_blob_size = Some(1000)).await;
    let big = pseudo_random(1, 1001);
    let d = digest_of(&big);
    // Monolithic, with a Content-Length: refused before reading.
    let r = client()
        .post(s.url(&format!("/v2/lim/app/blobs/uploads/?digest={d}")))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(r).await, "SIZE_INVALID");
    let r = client()
        .head(s.url(&format!("/v2/lim/app/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Chunked: 600 bytes fit, 600 more do not; the first 600 stay.
    let r = client()
        .post(s.url("/v2/lim/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let r = client()
        .patch(s.url(&location))
        .body(big[..600].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let r = client()
        .patch(s.url(&location))
        .body(big[600..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Streamed without a length: cut off as the limit is crossed.
    let stream = futures::stream::iter(
        big[600..]
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let r = client()
        .patch(s.url(&location))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(r).await, "SIZE_INVALID");
    let r = client().get(s.url(&location)).send().await.unwrap();
    assert_eq!(r.headers()["range"], "0-599");
    // Exactly at the limit is fine.
    let fits = &big[..1000];
    let r = client()
        .put(s.url(&format!("{location}?digest={}", digest_of(fits))))
        .body(fits[600..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}
