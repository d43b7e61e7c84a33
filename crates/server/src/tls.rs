//! TLS certificates for the listeners: a PEM certificate chain and key loaded into rustls,
//! swapped in place when the files change or on request (SIGHUP), so renewing a
//! certificate never needs a restart. It owns the files and the rustls configuration;
//! it never sees a connection or a request.

use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often the certificate files are checked for changes. Renewal tools (certbot,
/// cert-manager) replace them rarely and a few seconds' delay is invisible, while one
/// `stat` of two files every few seconds costs nothing.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("{key} does not fit {cert}: {what}")]
    Key {
        cert: PathBuf,
        key: PathBuf,
        what: String,
    },
}

/// Where the certificate chain and private key live.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The certificate in use, reloadable while connections are served.
#[derive(Debug)]
pub struct TlsCerts {
    files: TlsFiles,
    current: arc_swap::ArcSwap<CertifiedKey>,
    /// Modification times and sizes of the files when last looked at, to notice changes.
    seen: Mutex<Option<Stamp>>,
}

type Stamp = [(SystemTime, u64); 2];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn stamp(files: &TlsFiles) -> Option<Stamp> {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    Some([one(&files.cert)?, one(&files.key)?])
}

fn load(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: files.cert.clone(),
            what: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: files.key.clone(),
        what: format!("no usable private key ({e})"),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Key {
        cert: files.cert.clone(),
        key: files.key.clone(),
        what: e.to_string(),
    })
}

impl TlsCerts {
    /// Load the certificate and key; an error names the file at fault.
    pub fn load(files: TlsFiles) -> Result<Arc<TlsCerts>, TlsError> {
        let seen = stamp(&files);
        let key = load(&files)?;
        Ok(Arc::new(TlsCerts {
            files,
            current: arc_swap::ArcSwap::from_pointee(key),
            seen: Mutex::new(seen),
        }))
    }

    /// Read the files again and use them from the next handshake on. On error the
    /// certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let seen = stamp(&self.files);
        *self.seen.lock() = seen;
        let key = load(&self.files)?;
        self.current.store(Arc::new(key));
        Ok(())
    }

    /// Reload if either file changed since last looked at: `Ok(true)` when a new
    /// certificate is in use. A failed attempt is not retried until the files change
    /// again (a renewal writing the certificate before the key succeeds on the key).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.files);
        let changed = *self.seen.lock() != now;
        if !changed {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// Check the files every [`RELOAD_CHECK`] and reload them when they change; runs
    /// until dropped.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(RELOAD_CHECK).await;
            match self.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "new TLS certificate refused; the old one stays")
                }
            }
        }
    }

    /// A rustls server configuration that always presents the current certificate and
    /// offers HTTP/2 and HTTP/1.1 by ALPN.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions");
        let mut config = builder
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for TlsCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
