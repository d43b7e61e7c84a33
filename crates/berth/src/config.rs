//! The configuration file: one TOML document, parsed strictly (unknown keys and bad
//! values are refused with the key named), plus the embedded default. It only describes
//! settings; it never opens stores or sockets.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The configuration `berth serve` runs with when no file is given.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub log: LogConfig,
}

/// `[server]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port of the registry listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5000))
}

/// Which storage backend.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Fs,
}

/// `[storage]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default = "default_kind")]
    pub kind: StorageKind,
    /// Directory of the filesystem store (relative paths are relative to the working
    /// directory).
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// fsync data and directories before acknowledging a write.
    #[serde(default = "default_true")]
    pub fsync: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            kind: default_kind(),
            path: default_path(),
            fsync: true,
        }
    }
}

fn default_kind() -> StorageKind {
    StorageKind::Fs
}

fn default_path() -> PathBuf {
    PathBuf::from("./berth-data")
}

fn default_true() -> bool {
    true
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[log]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
}

impl Config {
    /// Parse a configuration document; `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Config> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("invalid configuration in {origin}: {e}"))
    }

    /// Load from a file, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        match path {
            None => Config::parse(DEFAULT_TOML, "the embedded default configuration"),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    anyhow::anyhow!("cannot read configuration file {}: {e}", p.display())
                })?;
                Config::parse(&text, &p.display().to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_and_example_parse() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.storage.path, PathBuf::from("./berth-data"));
        assert!(c.storage.fsync);
        Config::parse(
            include_str!("../../../config/berth.example.toml"),
            "example",
        )
        .unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = Config::parse("[server]\nlisen = \"127.0.0.1:1\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = Config::parse("[server]\nlisten = \"nowhere\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
        let e = Config::parse("[storage]\nkind = \"tape\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kind") && e.contains("tape"), "{e}");
        let e = Config::parse("[nope]\n", "t").unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
