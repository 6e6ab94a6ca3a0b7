//! TLS termination for downstream connections (rustls, ALPN h2 and http/1.1),
//! with the certificate reloaded from disk without dropping connections.
//!
//! The server configuration asks a [`Certificates`] resolver for the key
//! pair on every handshake; a reload swaps the pair the resolver hands out.
//! Connections keep the certificate they shook hands with, new ones get the
//! new one. A reload that fails (a half-written file, a key that does not
//! match) keeps the old pair and says why in the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

/// The certificate and key files and the pair loaded from them.
#[derive(Debug)]
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    pair: Arc<CertifiedKey>,
    /// Modification times of the files when they were read.
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

impl Certificates {
    /// Loads the pair; an error says which file is wrong and how.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certificates>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = read_pair(cert, key, &provider)?;
        Ok(Arc::new(Certificates {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: RwLock::new(loaded),
        }))
    }

    /// Reads the files again and swaps the pair in if it is usable.
    pub fn reload(&self) -> Result<(), String> {
        let loaded = read_pair(&self.cert, &self.key, &self.provider)?;
        if let Ok(mut current) = self.current.write() {
            *current = loaded;
        }
        info!(cert = %self.cert.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// Reloads when either file's modification time changed since the last
    /// load; returns whether a new pair is in use.
    pub fn reload_if_changed(&self) -> bool {
        let stamp = (modified(&self.cert), modified(&self.key));
        let unchanged = self
            .current
            .read()
            .map(|c| c.stamp == stamp)
            .unwrap_or(true);
        if unchanged {
            return false;
        }
        match self.reload() {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "the TLS files changed but cannot be used; keeping the old certificate");
                // Not retried until the files change again.
                if let Ok(mut current) = self.current.write() {
                    current.stamp = stamp;
                }
                false
            }
        }
    }

    /// A rustls server configuration that asks this store on every handshake.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, String> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.pair.clone())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Loaded, String> {
    let stamp = (modified(cert), modified(key));
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let pair = CertifiedKey::from_der(chain, der, provider)
        .map_err(|e| format!("certificate and key do not make a usable pair: {e}"))?;
    Ok(Loaded {
        pair: Arc::new(pair),
        stamp,
    })
}

/// A TLS client configuration for an https:// upstream: the CA certificates
/// in `ca_file`, or the system's roots; HTTP/1.1 only.
pub fn upstream_client(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{} holds no PEM certificate", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // One odd certificate in the system store must not stop the proxy.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system CA certificates found; set upstream_tls.ca_file".to_owned());
            }
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Builds a server configuration from a PEM certificate chain and a PEM key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    Certificates::load(cert, key)?.server_config()
}
