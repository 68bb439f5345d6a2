//! HTTPS for the metrics port, as KubeVirt components serve it (8443). warp 0.4 has no TLS
//! of its own, so connections are accepted here, wrapped with `tokio-rustls`, and handed
//! to warp's filter through `hyper-util`.
//!
//! The certificate comes from PEM files (a mounted Secret) and is reloaded when they change,
//! as Secrets rotate; with no files given, a self-signed certificate is generated at start.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

/// Why a certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The PEM data is not a usable certificate chain and key.
    #[error("unusable certificate or key: {0}")]
    Pem(String),
    /// A self-signed certificate could not be generated.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
}

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// PEM files, reloaded on change.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// Generated at start.
    SelfSigned,
}

/// Builds an acceptor from PEM bytes.
pub fn acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem(e.to_string()))?;
    let mut cfg = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// A self-signed certificate for `names` (plus localhost), as PEM (cert, key).
pub fn self_signed(names: &[String]) -> Result<(String, String), TlsError> {
    let mut sans: Vec<String> = names.to_vec();
    sans.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
    let ck = rcgen::generate_simple_self_signed(sans).map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

fn read(path: &PathBuf) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

fn mtime(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The current acceptor, swapped when the certificate files change.
#[derive(Clone)]
pub struct ReloadingAcceptor(Arc<RwLock<TlsAcceptor>>);

impl std::fmt::Debug for ReloadingAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadingAcceptor")
    }
}

impl ReloadingAcceptor {
    /// Loads the certificate (or generates one) and, for files, starts watching them every
    /// `check` until `stop` fires. A changed file that does not load keeps the old certificate.
    pub fn start(source: &CertSource, node: &str, check: Duration, stop: CancellationToken) -> Result<Self, TlsError> {
        match source {
            CertSource::SelfSigned => {
                let (c, k) = self_signed(&[node.to_owned()])?;
                tracing::info!("no --tls-cert given: serving HTTPS with a self-signed certificate");
                Ok(ReloadingAcceptor(Arc::new(RwLock::new(acceptor(c.as_bytes(), k.as_bytes())?))))
            }
            CertSource::Files { cert, key } => {
                let current = ReloadingAcceptor(Arc::new(RwLock::new(acceptor(&read(cert)?, &read(key)?)?)));
                let (cert, key, shared) = (cert.clone(), key.clone(), current.clone());
                tokio::spawn(async move {
                    let mut seen = (mtime(&cert), mtime(&key));
                    loop {
                        tokio::select! { _ = tokio::time::sleep(check) => {}, _ = stop.cancelled() => return }
                        let now = (mtime(&cert), mtime(&key));
                        if now == seen {
                            continue;
                        }
                        seen = now;
                        match read(&cert).and_then(|c| read(&key).and_then(|k| acceptor(&c, &k))) {
                            Ok(a) => {
                                *shared.0.write().unwrap_or_else(PoisonError::into_inner) = a;
                                tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "TLS certificate changed but does not load; keeping the old one")
                            }
                        }
                    }
                });
                Ok(current)
            }
        }
    }

    /// The acceptor to use for a new connection.
    pub fn current(&self) -> TlsAcceptor {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_certificates_load_and_garbage_does_not() {
        let (c, k) = self_signed(&["node-1".into()]).expect("generate");
        assert!(acceptor(c.as_bytes(), k.as_bytes()).is_ok());
        assert!(matches!(acceptor(b"not pem", k.as_bytes()), Err(TlsError::Pem(_))));
        assert!(matches!(acceptor(c.as_bytes(), b"nope"), Err(TlsError::Pem(_))));
    }
}
