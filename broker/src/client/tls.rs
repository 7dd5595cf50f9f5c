//! The client's connection to a URL: TCP, and for `wss://` TLS with the CAs it trusts and
//! the certificate it may present (logging in as the user the certificate's CN names, when
//! the broker has `--tls-ca`).

use std::path::Path;
use std::sync::Arc;

use crate::shard_threads::Socket;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::server::tls::{self, MaybeTls, TlsError};

/// A TLS client configuration; cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    /// Whether it presents a client certificate (then the URL's credentials, if any,
    /// must name the certificate's user, and none are sent without them).
    has_identity: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("has_identity", &self.has_identity)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA certificates in `ca` (PEM), or the system's CAs without it; presents
    /// `identity` (certificate chain and private key files, PEM) when given.
    pub fn from_files(
        ca: Option<&Path>,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Self, TlsError> {
        let roots = match ca {
            Some(path) => tls::load_roots(path)?,
            None => system_roots(),
        };
        let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = tls::load_certificates(cert)?;
                let private = tls::load_private_key(key)?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|source| TlsError::KeyPair {
                        cert: cert.to_owned(),
                        key: key.to_owned(),
                        source,
                    })?
            }
        };
        Ok(ClientTls {
            config: Arc::new(config),
            has_identity: identity.is_some(),
        })
    }

    /// The system's CAs only, no client certificate (`wss://` without options).
    pub fn system() -> Self {
        Self::from_files(None, None).expect("no files to read")
    }

    pub fn has_identity(&self) -> bool {
        self.has_identity
    }

    /// The TLS handshake with `host` (a DNS name or an IP address, as in the URL).
    async fn connect(&self, host: &str, tcp: Socket) -> std::io::Result<MaybeTls> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let tls = TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await?;
        Ok(MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Client(
            tls,
        ))))
    }
}

/// The TCP connection to the URL's host and port, with the TLS handshake for `wss://`.
pub(super) async fn open_stream(
    uri: &tokio_tungstenite::tungstenite::http::Uri,
    tls: Option<&ClientTls>,
) -> Result<MaybeTls, String> {
    let secure = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err("the URL must start with ws:// or wss://".into()),
    };
    let host = uri.host().ok_or("the URL names no host")?;
    // An IPv6 address comes bracketed.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let tcp = Socket::new(tcp);
    if !secure {
        return Ok(MaybeTls::Plain(tcp));
    }
    let tls = match tls {
        Some(tls) => tls.clone(),
        None => ClientTls::system(),
    };
    tls.connect(host, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// The operating system's CA bundle; certificates it cannot read are skipped (a
/// connection to a server they would have vouched for then fails with `UnknownIssuer`).
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "reading the system's CA certificates");
    }
    roots.add_parsable_certificates(found.certs);
    roots
}
