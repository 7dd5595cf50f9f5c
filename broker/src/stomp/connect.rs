//! The first frame of a STOMP connection: CONNECT (or STOMP) negotiates the version and
//! heart-beats, names the vhost (`host`) and logs in (`login` / `passcode`) through the
//! broker's one authenticator; answered by CONNECTED, or by ERROR and the end.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Context;
use super::frame::{ClientCommand, Decoder, Frame, FrameError, ServerCommand, Version, encode};
use super::transport::{Read, Sink, Source};
use crate::auth::{AuthError, Principal};
use crate::queue::ConnId;

/// Shortest heart-beat interval the broker sends or expects, whatever a client asks.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// The heart-beats agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(super) struct Heartbeat {
    /// How often the broker sends something.
    pub send: Option<Duration>,
    /// How often the client sends something; silence for twice this ends the connection.
    pub expect: Option<Duration>,
}

impl Heartbeat {
    /// From the client's `heart-beat: cx,cy`: it can send every `cx` ms and wants to
    /// receive every `cy` ms (0: not at all).
    fn negotiate(header: Option<&str>) -> Result<Heartbeat, ConnectError> {
        let Some(header) = header else {
            return Ok(Heartbeat::default());
        };
        let bad = || ConnectError::Heartbeat(header.to_string());
        let (cx, cy) = header.split_once(',').ok_or_else(bad)?;
        let cx: u64 = cx.trim().parse().map_err(|_| bad())?;
        let cy: u64 = cy.trim().parse().map_err(|_| bad())?;
        let interval = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms).max(MIN_HEARTBEAT));
        Ok(Heartbeat {
            send: interval(cy),
            expect: interval(cx),
        })
    }

    fn header(&self) -> String {
        let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis());
        format!("{},{}", ms(self.send), ms(self.expect))
    }
}

/// A logged-in STOMP connection.
pub(super) struct Connected {
    pub version: Version,
    pub principal: Principal,
    pub vhost: String,
    pub heartbeat: Heartbeat,
}

/// Who the transport says the client is before CONNECT.
pub(crate) enum TransportLogin {
    /// Nothing: CONNECT must carry `login` and `passcode`.
    Nothing,
    /// The WebSocket upgrade's HTTP Basic credentials, for a CONNECT without them.
    Credentials(String, String),
    /// The user a verified client certificate names (`--stomps` with `--tls-ca`): it logs
    /// in when CONNECT has no `passcode` (a `login` beside it must name the same user).
    Certificate(String),
}

impl TransportLogin {
    /// The WebSocket upgrade's credentials, when it had some.
    pub(crate) fn upgrade(credentials: Option<(String, String)>) -> TransportLogin {
        match credentials {
            Some((user, password)) => TransportLogin::Credentials(user, password),
            None => TransportLogin::Nothing,
        }
    }
}

/// Why a connection was not accepted.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    #[error("the first frame must be CONNECT or STOMP, not {0:?}")]
    NotConnect(ClientCommand),
    #[error("no common protocol version: this broker speaks 1.0, 1.1 and 1.2, the client `{0}`")]
    Version(String),
    #[error("heart-beat header `{0}` is not two numbers of milliseconds `cx,cy`")]
    Heartbeat(String),
    #[error(
        "CONNECT needs `login` and `passcode` headers (or HTTP Basic credentials on the WebSocket upgrade, or a client certificate over TLS)"
    )]
    NoCredentials,
    #[error(transparent)]
    Refused(#[from] AuthError),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Reads CONNECT within `within` and answers it. `None` when the connection ends here
/// (after an ERROR, or silently when the peer went away or took too long).
#[allow(clippy::too_many_arguments)]
pub(super) async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    source: &mut Source<S>,
    sink: &mut Sink<S>,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    ctx: &Context,
    peer: SocketAddr,
    conn: ConnId,
    transport_login: TransportLogin,
) -> Option<(Connected, bytes::Bytes)> {
    let deadline = tokio::time::Instant::now() + ctx.handshake_timeout;
    let frame = loop {
        match decoder.decode(buf) {
            Ok(Some(frame)) => break frame,
            Ok(None) => {}
            Err(e) => {
                refuse(sink, &ConnectError::from(e), Version::V1_0).await;
                return None;
            }
        }
        match tokio::time::timeout_at(deadline, source.read(buf)).await {
            Ok(Ok(Read::Data)) => {}
            Ok(Ok(Read::Closed)) | Ok(Err(_)) => return None,
            Err(_) => {
                tracing::debug!(%peer, "no STOMP CONNECT in time");
                return None;
            }
        }
    };
    let version = Version::negotiate(frame.header("accept-version")).unwrap_or(Version::V1_0);
    match accept(&frame, ctx, peer, transport_login).await {
        Ok(connected) => {
            let session = format!("session-{conn}");
            let heartbeat = connected.heartbeat.header();
            let server = concat!("broker/", env!("CARGO_PKG_VERSION"));
            let headers = [
                ("version", connected.version.as_str()),
                ("heart-beat", heartbeat.as_str()),
                ("session", session.as_str()),
                ("server", server),
            ];
            // Sent by the session once the router knows the connection.
            let frame = encode(ServerCommand::Connected, &headers, b"", connected.version);
            decoder.set_version(connected.version);
            Some((connected, frame))
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "STOMP connection refused");
            refuse(sink, &e, version).await;
            None
        }
    }
}

async fn accept(
    frame: &Frame,
    ctx: &Context,
    peer: SocketAddr,
    transport_login: TransportLogin,
) -> Result<Connected, ConnectError> {
    if !matches!(frame.command, ClientCommand::Connect | ClientCommand::Stomp) {
        return Err(ConnectError::NotConnect(frame.command));
    }
    let accept = frame.header("accept-version");
    let version = Version::negotiate(accept)
        .ok_or_else(|| ConnectError::Version(accept.unwrap_or_default().to_string()))?;
    let heartbeat = Heartbeat::negotiate(frame.header("heart-beat"))?;
    let vhost = match frame.header("host") {
        None | Some("") => crate::vhost::DEFAULT_VHOST,
        Some(host) => host,
    };
    let principal = match (
        transport_login,
        frame.header("login"),
        frame.header("passcode"),
    ) {
        (TransportLogin::Certificate(certified), login, None) => {
            if let Some(login) = login.filter(|login| *login != certified) {
                tracing::warn!(target: "audit", event = "authentication_failed", user = %certified, %peer, method = "certificate", credentials_user = %login, "authentication failed: credentials for another user");
                return Err(AuthError::CertificateMismatch {
                    certificate: certified,
                    credentials: login.to_string(),
                }
                .into());
            }
            ctx.auth
                .authenticate_certificate(&certified, peer.ip())
                .await?
        }
        (_, Some(login), Some(passcode)) => {
            ctx.auth.authenticate(login, passcode, peer.ip()).await?
        }
        (TransportLogin::Credentials(user, password), _, _) => {
            ctx.auth.authenticate(&user, &password, peer.ip()).await?
        }
        _ => return Err(ConnectError::NoCredentials),
    };
    ctx.auth.open_vhost(&principal, vhost)?;
    Ok(Connected {
        version,
        principal,
        vhost: vhost.to_string(),
        heartbeat,
    })
}

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    sink: &mut Sink<S>,
    error: &ConnectError,
    version: Version,
) {
    let text = error.to_string();
    let mut headers = vec![("message", text.as_str()), ("content-type", "text/plain")];
    if matches!(error, ConnectError::Version(_)) {
        headers.push(("version", "1.0,1.1,1.2"));
    }
    let _ = sink
        .feed(encode(
            ServerCommand::Error,
            &headers,
            text.as_bytes(),
            version,
        ))
        .await;
    sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_negotiate_with_a_floor() {
        let hb = Heartbeat::negotiate(Some("1000,5")).unwrap();
        assert_eq!(hb.expect, Some(Duration::from_millis(1000)));
        assert_eq!(hb.send, Some(MIN_HEARTBEAT));
        assert_eq!(hb.header(), "100,1000");
        assert_eq!(
            Heartbeat::negotiate(Some("0,0")).unwrap(),
            Heartbeat::default()
        );
        assert_eq!(Heartbeat::negotiate(None).unwrap(), Heartbeat::default());
        assert!(Heartbeat::negotiate(Some("x")).is_err());
        assert!(Heartbeat::negotiate(Some("1,-1")).is_err());
    }
}
