//! TLS, with rustls (ring as its cryptography, no other TLS stack): the
//! daemon's TCP listener (a certificate and key, reloaded when asked
//! without dropping a connection; client certificates when a CA for them
//! is given), and clients (the CLI against a remote daemon, a node relaying
//! another's answer, webhooks), which verify a server against the system's
//! roots or a CA of their own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("failed to read {what} {}: {why}", path.display())]
    Pem {
        /// What it should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// rustls refused the certificates or key.
    #[error("cannot use {what}: {source}")]
    Rustls {
        /// What.
        what: &'static str,
        /// Why.
        #[source]
        source: rustls::Error,
    },
}

/// What the TCP listener serves TLS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM), the server's first.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// If given, every client must show a certificate this CA (PEM)
    /// signed: mutual TLS.
    pub client_ca: Option<PathBuf>,
}

/// rustls's cryptography: ring (the build stays light; aws-lc-rs, which
/// adds post-quantum key exchange, builds a C library of its own).
#[expect(
    deprecated,
    reason = "ring has no post-quantum key exchange; TLS 1.3 with X25519 is what orch needs"
)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |why: String| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        why,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("no certificate in it".into()));
    }
    Ok(certs)
}

fn roots_of(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(path, "the CA certificate")? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            what: "the CA certificate",
            source,
        })?;
    }
    Ok(roots)
}

impl TlsFiles {
    /// The server configuration these files make.
    fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let chain = certs(&self.cert, "the certificate")?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::Pem {
            what: "the private key",
            path: self.key.clone(),
            why: e.to_string(),
        })?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: "TLS",
                source,
            })?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots_of(ca)?),
                    provider(),
                )
                .build()
                .map_err(|e| TlsError::Pem {
                    what: "the client CA",
                    path: ca.clone(),
                    why: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder
                .with_single_cert(chain, key)
                .map_err(|source| TlsError::Rustls {
                    what: "the certificate and key",
                    source,
                })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The listener's TLS: its files and the configuration they made last.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl ServerTls {
    /// Reads the files; fails, naming the file, if they cannot be used.
    pub fn load(files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
        let config = files.server_config()?;
        Ok(Arc::new(ServerTls {
            files,
            current: RwLock::new(config),
        }))
    }

    /// Reads the files again: new connections get the new certificate;
    /// open ones keep theirs. On failure the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = self.files.server_config()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// An acceptor with the configuration of now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

/// How a client verifies servers: the system's roots, or one CA's (PEM)
/// instead; with a client certificate and key of its own, for mutual TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// A CA (PEM) to trust instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) and its key (PEM).
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClientTls {
    /// From the environment: `ORCH_TLS_CA` (a CA to trust instead of the
    /// system's roots), `ORCH_TLS_CERT` and `ORCH_TLS_KEY` (a client
    /// certificate). What the CLI and a node relaying another's answer use.
    pub fn from_env() -> ClientTls {
        let path = |var: &str| std::env::var_os(var).map(PathBuf::from);
        ClientTls {
            ca: path("ORCH_TLS_CA"),
            identity: path("ORCH_TLS_CERT").zip(path("ORCH_TLS_KEY")),
        }
    }

    /// The connector these settings make.
    pub(crate) fn connector(&self) -> Result<TlsConnector, TlsError> {
        let roots = match &self.ca {
            Some(ca) => roots_of(ca)?,
            None => {
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                roots
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: "TLS",
                source,
            })?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            Some((cert, key)) => {
                let chain = certs(cert, "the client certificate")?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
                    what: "the client key",
                    path: key.clone(),
                    why: e.to_string(),
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|source| TlsError::Rustls {
                        what: "the client certificate and key",
                        source,
                    })?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// The name a server's certificate must hold for `host`.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_owned()).map_err(|e| format!("{host:?} is not a host name: {e}"))
}
