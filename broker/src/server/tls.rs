//! TLS for the broker's listeners, with rustls (ring provider): the one place that loads
//! the certificate, key and client CA files and accepts TLS connections.
//!
//! Every listener (WebSocket, management HTTP, and the protocol listeners to come) does the
//! same three steps: [`TlsSetup::load`] once at startup (a bad file stops the broker with
//! an error naming it), [`accept`] on each accepted socket (plain when the listener has no
//! TLS), and [`MaybeTls::client_user`] for the user a verified client certificate names.
//! The client side (`crate::client`) reuses [`load_certificates`], [`load_private_key`] and
//! [`MaybeTls`].

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::shard_threads::Socket;
use rustls::RootCertStore;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;

/// The files of a TLS listener (`--tls-cert`, `--tls-key`, `--tls-ca`).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// PEM: the server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM: CA certificates whose client certificates log in as the user named by their
    /// subject CN. Clients without a certificate still connect (and log in by password).
    pub client_ca: Option<PathBuf>,
}

/// Why TLS could not be set up; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate file {path}: {source}")]
    Certificate { path: PathBuf, source: pem::Error },
    #[error("the TLS certificate file {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot read the TLS private key file {path}: {source}")]
    PrivateKey { path: PathBuf, source: pem::Error },
    #[error("the TLS private key file {path} holds no PEM private key")]
    NoPrivateKey { path: PathBuf },
    #[error("the TLS CA file {path} holds a certificate that is not a valid CA: {source}")]
    CaCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the TLS client CA file {path} cannot verify client certificates: {source}")]
    ClientVerifier {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    #[error("the TLS certificate {cert} and key {key} do not go together: {source}")]
    KeyPair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The certificates of a PEM file (a chain, or a CA bundle).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |source| TlsError::Certificate {
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_owned(),
        },
        source => TlsError::PrivateKey {
            path: path.to_owned(),
            source,
        },
    })
}

/// A trust store of the CA certificates in a PEM file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(path)? {
        roots.add(cert).map_err(|source| TlsError::CaCertificate {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// The crypto provider of every TLS configuration here: ring. (rustls deprecates it for
/// lacking post-quantum key exchange; the alternative, aws-lc-rs, is a C/cmake build this
/// project keeps out.)
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A loaded server configuration; cheap to clone (one per listener task).
#[derive(Clone)]
pub struct TlsSetup {
    acceptor: TlsAcceptor,
}

impl TlsSetup {
    /// Reads the files and builds the server configuration.
    pub fn load(config: &TlsConfig) -> Result<TlsSetup, TlsError> {
        let chain = load_certificates(&config.cert)?;
        let key = load_private_key(&config.key)?;
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let builder = match &config.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let roots = Arc::new(load_roots(path)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|source| TlsError::ClientVerifier {
                        path: path.clone(),
                        source,
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let server = builder
            .with_single_cert(chain, key)
            .map_err(|source| TlsError::KeyPair {
                cert: config.cert.clone(),
                key: config.key.clone(),
                source,
            })?;
        Ok(TlsSetup {
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// The TLS handshake on an accepted socket (bound it in time: a silent peer waits).
    /// A plaintext client fails here: its first bytes are not a TLS record.
    pub async fn accept(&self, tcp: Socket) -> io::Result<MaybeTls> {
        let tls = self.acceptor.accept(tcp).await?;
        Ok(MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Server(
            tls,
        ))))
    }
}

/// [`TlsSetup::accept`] when the listener has TLS, else the socket as it is.
pub async fn accept(tls: Option<&TlsSetup>, tcp: Socket) -> io::Result<MaybeTls> {
    match tls {
        Some(tls) => tls.accept(tcp).await,
        None => Ok(MaybeTls::Plain(tcp)),
    }
}

/// The TLS handshake of a protocol listener (`--amqps`, `--stomps`), bounded by the
/// handshake timeout; `None` when it failed (a certificate refusal is audited, a
/// plaintext client or a port scan only logged at debug) or timed out.
pub async fn handshake(
    tls: &TlsSetup,
    tcp: Socket,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<MaybeTls> {
    match tokio::time::timeout(timeout, tls.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) if is_certificate_error(&e) => {
            tracing::warn!(target: "audit", event = "certificate_refused", %peer, error = %e, "TLS handshake refused: client certificate");
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Whether a failed handshake was about the peer's certificate (worth an audit line; a
/// plaintext client or a port scan is not).
pub fn is_certificate_error(error: &io::Error) -> bool {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    matches!(
        rustls_error,
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    )
}

/// A connection's byte stream: plain TCP, or TLS over TCP (either side).
pub enum MaybeTls {
    Plain(Socket),
    Tls(Box<tokio_rustls::TlsStream<Socket>>),
}

impl MaybeTls {
    /// The subject CN of the client certificate the server verified (against
    /// `--tls-ca`); `None` without TLS, without a client certificate, or without a CN.
    pub fn client_user(&self) -> Option<String> {
        let MaybeTls::Tls(tls) = self else {
            return None;
        };
        let tokio_rustls::TlsStream::Server(server) = &**tls else {
            return None;
        };
        let leaf = server.get_ref().1.peer_certificates()?.first()?;
        common_name(leaf)
    }
}

/// The first subject CN of a DER certificate, when it is a string.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            MaybeTls::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            MaybeTls::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(tls) => Pin::new(&mut **tls).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(tcp) => tcp.is_write_vectored(),
            MaybeTls::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            MaybeTls::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            MaybeTls::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_subject_cn() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "app");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()), Some("app".to_string()));
        // A subject without a CN names no user.
        let mut bare = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        bare.distinguished_name = rcgen::DistinguishedName::new();
        let bare = bare.self_signed(&key).unwrap();
        assert_eq!(common_name(bare.der()), None);
        assert_eq!(common_name(&CertificateDer::from(vec![1, 2, 3])), None);
    }

    #[test]
    fn missing_and_garbage_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = load_certificates(&missing).unwrap_err();
        assert!(matches!(error, TlsError::Certificate { .. }), "{error}");
        assert!(error.to_string().contains("missing.pem"), "{error}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not pem").unwrap();
        assert!(matches!(
            load_certificates(&garbage),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(matches!(
            load_private_key(&garbage),
            Err(TlsError::NoPrivateKey { .. })
        ));
    }
}
