//! Users and access rules as clients meet them: Basic credentials checked against an
//! htpasswd file, `[[access]]` rules deciding pull, push and delete per repository, the
//! catalog filtered to what the caller may pull, and cross-repository mounts that need
//! pull access to their source.

use crate::common::*;

async fn server() -> TestServer {
    // The file outlives the test's scope like a real one would (it is tiny).
    let dir = tempfile::tempdir().unwrap().keep();
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", "alice-pw"), ("carol", "carol-pw")]);
    TestServer::start_with(move |c| {
        c.auth.htpasswd = Some(htpasswd);
        c.access = vec![
            rule("team/**", &["alice"], &["pull", "push"]),
            rule("secret/**", &["carol"], &["pull", "push", "delete"]),
            rule("secret/**", &["anonymous"], &[]),
            rule("**", &["anonymous"], &["pull"]),
        ];
    })
    .await
}

async fn try_push_blob(
    s: &TestServer,
    repo: &str,
    bytes: &[u8],
    creds: Option<(&str, &str)>,
) -> reqwest::Response {
    let d = digest_of(bytes);
    as_user(
        client().post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}"))),
        creds,
    )
    .body(bytes.to_vec())
    .send()
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn pushing_needs_the_right_credentials_and_rules() {
    let s = server().await;
    // No credentials: 401 with a challenge.
    let r = try_push_blob(&s, "team/app", b"x", None).await;
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"http://{}/token\",service=\"berth\",scope=\"repository:team/app:push\"",
            s.addr
        )
    );
    assert_eq!(error_code(r).await, "UNAUTHORIZED");
    // Wrong password: 401.
    let r = try_push_blob(&s, "team/app", b"x", Some(("alice", "nope"))).await;
    assert_eq!(r.status(), 401);
    // Unknown user: 401 as well.
    let r = try_push_blob(&s, "team/app", b"x", Some(("mallory", "alice-pw"))).await;
    assert_eq!(r.status(), 401);
    // alice may push team/**, but not other/x.
    let r = try_push_blob(&s, "team/app", b"x", Some(("alice", "alice-pw"))).await;
    assert_eq!(r.status(), 201);
    let r = try_push_blob(&s, "other/x", b"x", Some(("alice", "alice-pw"))).await;
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "DENIED");
    // Nor delete in team/** (no delete right).
    let d = digest_of(b"x");
    let r = as_user(
        client().delete(s.url(&format!("/v2/team/app/blobs/{d}"))),
        Some(("alice", "alice-pw")),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    // Anonymous pull of team/** works; of secret/** it does not.
    let r = client()
        .get(s.url(&format!("/v2/team/app/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = try_push_blob(&s, "secret/x", b"hidden", Some(("carol", "carol-pw"))).await;
    assert_eq!(r.status(), 201);
    let hidden = digest_of(b"hidden");
    let r = client()
        .get(s.url(&format!("/v2/secret/x/blobs/{hidden}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn login_catalog_and_mount_respect_the_rules() {
    let s = server().await;
    // /v2/ challenges anonymous callers once users exist (docker login relies on it).
    let r = client().get(s.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = as_user(client().get(s.url("/v2/")), Some(("alice", "alice-pw")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = as_user(client().get(s.url("/v2/")), Some(("alice", "carol-pw")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let r = try_push_blob(&s, "secret/x", b"secret layer", Some(("carol", "carol-pw"))).await;
    assert_eq!(r.status(), 201);
    let r = try_push_blob(&s, "team/app", b"team layer", Some(("alice", "alice-pw"))).await;
    assert_eq!(r.status(), 201);

    // alice can not mount carol's blob: the mount falls back to a fresh upload (202).
    let d = digest_of(b"secret layer");
    for from in ["&from=secret/x", ""] {
        let r = as_user(
            client().post(s.url(&format!("/v2/team/app/blobs/uploads/?mount={d}{from}"))),
            Some(("alice", "alice-pw")),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 202, "mount{from}");
    }
    let r = as_user(
        client().head(s.url(&format!("/v2/team/app/blobs/{d}"))),
        Some(("alice", "alice-pw")),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 404, "nothing was linked");

    // The catalog lists only what the caller may pull.
    let anon: serde_json::Value = client()
        .get(s.url("/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(anon["repositories"], serde_json::json!(["team/app"]));
    let carol: serde_json::Value = as_user(
        client().get(s.url("/v2/_catalog")),
        Some(("carol", "carol-pw")),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        carol["repositories"],
        serde_json::json!(["secret/x", "team/app"])
    );
}

/// Without `[[access]]` rules: with no users anyone may pull and push (a first run);
/// once users exist, anonymous callers may only pull. Deleting needs a rule either way.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_rules_open_a_first_run_and_close_push_once_users_exist() {
    let first_run = TestServer::start_with(|c| c.access.clear()).await;
    let r = try_push_blob(&first_run, "any/repo", b"x", None).await;
    assert_eq!(r.status(), 201, "no users: anyone may push");
    let d = digest_of(b"x");
    let r = client()
        .delete(first_run.url(&format!("/v2/any/repo/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "deleting needs a rule");

    let dir = tempfile::tempdir().unwrap().keep();
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", "alice-pw")]);
    let s = TestServer::start_with(move |c| {
        c.access.clear();
        c.auth.htpasswd = Some(htpasswd);
    })
    .await;
    let r = try_push_blob(&s, "any/repo", b"x", None).await;
    assert_eq!(r.status(), 401);
    let r = try_push_blob(&s, "any/repo", b"x", Some(("alice", "alice-pw"))).await;
    assert_eq!(r.status(), 201, "a user may push");
    let r = client()
        .get(s.url("/v2/any/repo/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "pull is allowed; the tag just is not there"
    );
}

async fn token(s: &TestServer, scopes: &[&str], creds: Option<(&str, &str)>) -> reqwest::Response {
    let q: Vec<(&str, &str)> = std::iter::once(("service", "berth"))
        .chain(scopes.iter().map(|sc| ("scope", *sc)))
        .collect();
    as_user(client().get(s.url("/token")).query(&q), creds)
        .send()
        .await
        .unwrap()
}

async fn token_string(s: &TestServer, scopes: &[&str], creds: Option<(&str, &str)>) -> String {
    let r = token(s, scopes, creds).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["token"], v["access_token"]);
    assert_eq!(v["expires_in"], 300);
    assert!(v["issued_at"].as_str().unwrap().ends_with('Z'), "{v}");
    v["token"].as_str().unwrap().to_owned()
}

async fn push_with_token(
    s: &TestServer,
    repo: &str,
    bytes: &[u8],
    token: &str,
) -> reqwest::Response {
    let d = digest_of(bytes);
    client()
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
        .bearer_auth(token)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_flow_grants_the_allowed_subset_and_nothing_else() {
    let s = server().await;
    // alice asks for push on her repository and on one she may not push to.
    let t = token_string(
        &s,
        &[
            "repository:team/app:pull,push",
            "repository:other/x:pull,push",
        ],
        Some(("alice", "alice-pw")),
    )
    .await;
    assert_eq!(
        push_with_token(&s, "team/app", b"t", &t).await.status(),
        201
    );
    // The token carries pull but not push on other/x: insufficient scope.
    let r = push_with_token(&s, "other/x", b"t", &t).await;
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"repository:other/x:push\""),
        "{challenge}"
    );
    // A token for one repository is not one for another.
    let only_team = token_string(
        &s,
        &["repository:team/app:pull,push"],
        Some(("alice", "alice-pw")),
    )
    .await;
    let r = client()
        .get(s.url(&format!("/v2/team/other/blobs/{}", digest_of(b"t"))))
        .bearer_auth(&only_team)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Anonymous tokens carry what anonymous may do: pull, not push.
    let anon = token_string(&s, &["repository:team/app:pull,push"], None).await;
    let r = client()
        .get(s.url(&format!("/v2/team/app/blobs/{}", digest_of(b"t"))))
        .bearer_auth(&anon)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        push_with_token(&s, "team/app", b"u", &anon).await.status(),
        401
    );

    // Wrong password at the token endpoint, tampered and foreign tokens, bad scopes.
    assert_eq!(
        token(&s, &["repository:team/app:pull"], Some(("alice", "x")))
            .await
            .status(),
        401
    );
    // One character of the signed payload changed.
    let dot = t.find('.').unwrap() + 5;
    let mut tampered = t.clone().into_bytes();
    tampered[dot] = if tampered[dot] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(
        push_with_token(&s, "team/app", b"v", &tampered)
            .await
            .status(),
        401
    );
    let foreign = auth::TokenSigner::new(auth::TokenSigner::generate_key())
        .issue(
            "alice",
            &["repository:team/app:pull,push".parse().unwrap()],
            std::time::SystemTime::now(),
            auth::token::TOKEN_TTL,
        )
        .0;
    assert_eq!(
        push_with_token(&s, "team/app", b"v", &foreign)
            .await
            .status(),
        401
    );
    for bad in [
        "repository:../etc:pull",
        "repository:team/app:own",
        "registry:x:*",
    ] {
        assert_eq!(
            token(&s, &[bad], Some(("alice", "alice-pw")))
                .await
                .status(),
            400,
            "{bad}"
        );
    }

    // The catalog needs its scope; the listing is what the user may pull.
    let cat = token_string(&s, &["registry:catalog:*"], Some(("carol", "carol-pw"))).await;
    let r = client()
        .get(s.url("/v2/_catalog"))
        .bearer_auth(&cat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(s.url("/v2/_catalog"))
        .bearer_auth(&only_team)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a token without registry:catalog:*");
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_failed_logins_from_one_address_are_refused_unchecked() {
    let s = server().await;
    for _ in 0..server::access::MAX_FAILED_LOGINS {
        let r = token(&s, &["repository:team/app:pull"], Some(("alice", "guess"))).await;
        assert_eq!(r.status(), 401);
    }
    // Now even the right password is refused for a while, without a bcrypt check.
    let r = token(
        &s,
        &["repository:team/app:pull"],
        Some(("alice", "alice-pw")),
    )
    .await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "60");
    let r = try_push_blob(&s, "team/app", b"x", Some(("alice", "alice-pw"))).await;
    assert_eq!(r.status(), 429);
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    // Anonymous pulls are not logins and still work.
    let r = client()
        .get(s.url("/v2/team/app/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// A real `berth serve` logging everything it can (`BERTH_LOG=trace`) through failed and
/// successful logins, a token and a push: its log never holds a password, the Basic
/// header's encoded credentials or a token.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_and_tokens_never_reach_the_log() {
    use base64::Engine;
    let tmp = tempfile::tempdir().unwrap();
    let password = "pw-Xq7rT9-secret";
    let htpasswd = tmp.path().join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", password)]);
    let port = free_port();
    let config = tmp.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\npath = {:?}\n[auth]\nhtpasswd = {:?}\n",
            tmp.path().join("data").to_str().unwrap(),
            htpasswd.to_str().unwrap()
        ),
    )
    .unwrap();
    let log = tmp.path().join("log");
    let base = format!("http://127.0.0.1:{port}");
    let child = serve_process(&config, &base, Some(&log), &[("BERTH_LOG", "trace")]).await;
    let wrong = client()
        .get(format!("{base}/v2/"))
        .basic_auth("alice", Some("pw-Xq7rT9-wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let r = client()
        .get(format!(
            "{base}/token?service=berth&scope=repository:team/app:pull,push"
        ))
        .basic_auth("alice", Some(password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let blob = b"logged?";
    let r = client()
        .post(format!(
            "{base}/v2/team/app/blobs/uploads/?digest={}",
            digest_of(blob)
        ))
        .bearer_auth(&token)
        .body(&blob[..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    drop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("login failed"), "the log is empty?\n{text}");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}"));
    for secret in [password, "pw-Xq7rT9-wrong", basic.as_str(), token.as_str()] {
        assert!(!text.contains(secret), "{secret} is in the log");
    }
    // The token's signature alone must not leak either.
    let signature = token.rsplit('.').next().unwrap();
    assert!(!text.contains(signature));
}

/// The scope a 401 challenge names (`repository:library/hello:pull`) and its realm.
fn challenge_of(r: &reqwest::Response) -> (String, String) {
    let v = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let field = |name: &str| {
        let start = v
            .find(&format!("{name}=\""))
            .unwrap_or_else(|| panic!("{v}"))
            + name.len()
            + 2;
        v[start..start + v[start..].find('"').unwrap()].to_owned()
    };
    (field("realm"), field("scope"))
}

/// Follow a 401 the way docker does: ask the challenge's realm for its scope with
/// credentials, then retry with the token.
async fn get_via_token_flow(url: &str, creds: (&str, &str)) -> reqwest::Response {
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 401, "{url}");
    let (realm, scope) = challenge_of(&r);
    let t = as_user(
        client()
            .get(&realm)
            .query(&[("service", "berth"), ("scope", scope.as_str())]),
        Some(creds),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(t.status(), 200, "{realm}");
    let token: serde_json::Value = t.json().await.unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    client().get(url).bearer_auth(token).send().await.unwrap()
}

async fn token_at(base: &str, scope: &str, creds: (&str, &str)) -> String {
    let t = as_user(
        client()
            .get(format!("{base}/token"))
            .query(&[("service", "berth"), ("scope", scope)]),
        Some(creds),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(t.status(), 200);
    let v: serde_json::Value = t.json().await.unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// Issue 15: a cached repository has one name for rules and tokens, whichever route
/// reaches it. docker on a Docker Hub mirror's dedicated listener asks its `/token` for
/// `repository:library/hello:pull`; that token must work there, and the rules written
/// for `docker.io/library/hello` decide it. The catalog lists, for a token holder, what
/// its subject may pull.
#[tokio::test(flavor = "multi_thread")]
async fn a_cached_repository_has_one_name_for_rules_and_tokens_on_every_route() {
    let upstream = TestServer::start().await;
    let image = push_image(&upstream, "library/hello", "v1", "one-name").await;
    let dir = tempfile::tempdir().unwrap().keep();
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", "alice-pw"), ("bob", "bob-pw")]);
    let upstream_url = upstream.url("");
    let s = TestServer::start_with(move |c| {
        c.auth.htpasswd = Some(htpasswd);
        c.upstreams = vec![upstream_config(
            "docker.io",
            &upstream_url,
            std::time::Duration::from_secs(60),
        )];
        c.access = vec![rule("docker.io/library/hello", &["alice"], &["pull"])];
    })
    .await;
    let dedicated = format!("http://{}", dedicated_listener(&s, "docker.io").await);
    let alice = ("alice", "alice-pw");

    // Dedicated listener, as docker asks: the challenge names the listener's own name.
    let url = format!("{dedicated}/v2/library/hello/manifests/v1");
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(
        challenge_of(&r),
        (
            format!("{dedicated}/token"),
            "repository:library/hello:pull".to_owned()
        )
    );
    let r = get_via_token_flow(&url, alice).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], image.to_string());
    // Docker Hub's short names mean the same repository there.
    let t = token_at(&dedicated, "repository:hello:pull", alice).await;
    let r = client()
        .get(format!("{dedicated}/v2/hello/manifests/v1"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Path prefix and ?ns= on the main listener: the store name, from the same rules.
    for path in [
        "/v2/docker.io/library/hello/manifests/v1".to_owned(),
        "/v2/library/hello/manifests/v1?ns=docker.io".to_owned(),
    ] {
        let url = s.url(&path);
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(
            challenge_of(&r).1,
            "repository:docker.io/library/hello:pull",
            "{path}"
        );
        let r = get_via_token_flow(&url, alice).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["docker-content-digest"], image.to_string());
    }

    // A token for the hosted name library/hello grants nothing on the cached one, on any
    // listener: the name means the hosted repository on the main listener.
    let hosted = token_at(&s.url(""), "repository:library/hello:pull", alice).await;
    for url in [
        format!("{dedicated}/v2/library/hello/manifests/v1"),
        s.url("/v2/docker.io/library/hello/manifests/v1"),
    ] {
        let r = client()
            .get(&url)
            .bearer_auth(&hosted)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{url}");
    }
    // bob has no rule: his token grants nothing, whichever listener issued it.
    let bob = token_at(
        &dedicated,
        "repository:library/hello:pull",
        ("bob", "bob-pw"),
    )
    .await;
    let r = client()
        .get(format!("{dedicated}/v2/library/hello/manifests/v1"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The catalog for token holders (podman search asks with a Bearer token): alice
    // sees what she may pull, by the names each listener's clients use; bob nothing.
    for (base, expect) in [
        (s.url(""), "docker.io/library/hello"),
        (dedicated.clone(), "library/hello"),
    ] {
        let catalog = async |who| {
            let t = token_at(&base, "registry:catalog:*", who).await;
            let v: serde_json::Value = client()
                .get(format!("{base}/v2/_catalog"))
                .bearer_auth(&t)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["repositories"].clone()
        };
        assert_eq!(catalog(alice).await, serde_json::json!([expect]), "{base}");
        assert_eq!(
            catalog(("bob", "bob-pw")).await,
            serde_json::json!([]),
            "{base}"
        );
    }
}
