//! `berth hosts-toml`: containerd `hosts.toml` files that make nodes pull every configured
//! upstream through berth, with the upstream itself as fallback. It reads the
//! configuration and writes files; it never talks to a registry.

use crate::config::Config;
use anyhow::Context;
use std::path::{Path, PathBuf};

/// What `hosts-toml` writes.
pub struct HostsOptions {
    /// Directory receiving `<upstream>/hosts.toml`.
    pub out: PathBuf,
    /// berth's URL as nodes reach it; derived from `[server]` when absent.
    pub endpoint: Option<String>,
    /// CA certificate (PEM) nodes should trust for `endpoint`.
    pub ca: Option<PathBuf>,
}

/// berth's URL from the configuration: scheme from TLS, address from `listen`.
fn default_endpoint(config: &Config) -> anyhow::Result<String> {
    let listen = config.server.listen;
    if listen.ip().is_unspecified() {
        anyhow::bail!(
            "[server] listen is {listen}, which nodes cannot dial; give --endpoint with the address they use (e.g. http://registry.lan:{})",
            listen.port()
        );
    }
    let scheme = if config.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    Ok(format!("{scheme}://{listen}"))
}

/// TOML basic-string quoting.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `hosts.toml` text for one upstream.
pub fn hosts_toml(
    upstream_name: &str,
    upstream_url: &str,
    endpoint: &str,
    ca: Option<&Path>,
) -> String {
    let mut s = format!(
        "# Written by `berth hosts-toml` for {upstream_name}: pull through berth, fall back to\n\
         # the upstream itself when berth is unreachable.\n\
         server = {}\n\n\
         [host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
        quoted(upstream_url),
        quoted(endpoint),
    );
    if let Some(ca) = ca {
        s.push_str(&format!("  ca = {}\n", quoted(&ca.display().to_string())));
    }
    s
}

/// Write one `hosts.toml` per upstream; returns the files written.
pub fn write_hosts(config: &Config, opts: &HostsOptions) -> anyhow::Result<Vec<PathBuf>> {
    if config.upstreams.is_empty() {
        anyhow::bail!("the configuration has no [[upstream]] tables; there is nothing to mirror");
    }
    let endpoint = match &opts.endpoint {
        Some(e) => {
            let e = e.trim_end_matches('/');
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                anyhow::bail!("--endpoint {e:?} must start with http:// or https://");
            }
            e.to_owned()
        }
        None => default_endpoint(config)?,
    };
    let mut written = Vec::new();
    for u in &config.upstreams {
        // Upstream names are validated host[:port] strings: safe as one path component.
        let dir = opts.out.join(&u.name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("hosts.toml");
        let text = hosts_toml(
            &u.name,
            u.url.trim_end_matches('/'),
            &endpoint,
            opts.ca.as_deref(),
        );
        client::write_atomic(&path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_per_upstream_with_the_upstream_as_fallback() {
        let config = Config::load(None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = write_hosts(
            &config,
            &HostsOptions {
                out: dir.path().to_owned(),
                endpoint: None,
                ca: None,
            },
        )
        .unwrap();
        assert_eq!(files.len(), config.upstreams.len());
        let docker = std::fs::read_to_string(dir.path().join("docker.io/hosts.toml")).unwrap();
        let parsed: toml::Value = toml::from_str(&docker).unwrap();
        assert_eq!(
            parsed["server"].as_str(),
            Some("https://registry-1.docker.io")
        );
        let host = &parsed["host"]["http://127.0.0.1:5000"];
        assert_eq!(
            host["capabilities"].as_array().unwrap().len(),
            2,
            "{docker}"
        );
        // An unspecified listen address needs --endpoint.
        let mut open = config.clone();
        open.server.listen = "0.0.0.0:5000".parse().unwrap();
        let e = write_hosts(
            &open,
            &HostsOptions {
                out: dir.path().to_owned(),
                endpoint: None,
                ca: None,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("--endpoint"), "{e}");
        // With an endpoint and a CA.
        write_hosts(
            &open,
            &HostsOptions {
                out: dir.path().to_owned(),
                endpoint: Some("https://registry.lan:5000/".into()),
                ca: Some("/etc/berth/ca.crt".into()),
            },
        )
        .unwrap();
        let quay: toml::Value = toml::from_str(
            &std::fs::read_to_string(dir.path().join("quay.io/hosts.toml")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            quay["host"]["https://registry.lan:5000"]["ca"].as_str(),
            Some("/etc/berth/ca.crt")
        );
    }
}
