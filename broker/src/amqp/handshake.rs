//! Opening an AMQP connection: `connection.start` / `start-ok` (SASL PLAIN or AMQPLAIN,
//! checked by the shared authenticator), `tune` / `tune-ok`, `open` / `open-ok`.

use std::net::SocketAddr;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};

use super::errors::{AmqpError, code};
use super::frames::encode;
use super::frames::{Incoming, ReadError};
use super::reader::FrameReceiver;
use super::writer::{Chunk, WriterTx};
use crate::auth::{Authenticator, Principal};
use amq_protocol::frame::AMQPFrame;
use tokio::time::Instant;

/// What the handshake settled.
pub(super) struct Opened {
    pub principal: Principal,
    /// The vhost `connection.open` named (`/` for an empty name).
    pub vhost: std::sync::Arc<str>,
    /// Largest frame either side sends; 0 is no limit.
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: Option<Duration>,
}

/// Why a connection did not open.
pub(super) enum NotOpened {
    /// The peer went away (or sent no frame in time).
    Gone,
    /// Refused with this connection exception.
    Refused(AmqpError),
}

/// What the broker offers in `connection.tune`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offer {
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: Option<Duration>,
}

/// `connection.start`; `external`: the connection has a verified client certificate, so
/// SASL EXTERNAL (RabbitMQ's `rabbitmq_auth_mechanism_ssl`) is offered too.
pub(super) fn start(external: bool) -> AMQPClass {
    let mut capabilities = FieldTable::default();
    for name in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "exchange_exchange_bindings",
    ] {
        capabilities.insert(name.into(), AMQPValue::Boolean(true));
    }
    let mut properties = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    properties.insert("product".into(), text("broker"));
    properties.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    properties.insert("platform".into(), text("Rust"));
    properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: properties,
        mechanisms: match external {
            true => "EXTERNAL PLAIN AMQPLAIN".into(),
            false => "PLAIN AMQPLAIN".into(),
        },
        locales: "en_US".into(),
    }))
}

/// The next frame, as a connection-class method on channel 0.
async fn next_method(frames: &mut FrameReceiver) -> Result<connection::AMQPMethod, NotOpened> {
    loop {
        match frames.recv().await {
            None | Some(Err(ReadError::Closed(_))) => return Err(NotOpened::Gone),
            Some(Err(ReadError::Invalid(e))) => return Err(NotOpened::Refused(e)),
            Some(Ok(Incoming::Heartbeat)) => continue,
            Some(Ok(Incoming::Method(0, class))) => match *class {
                AMQPClass::Connection(method) => return Ok(method),
                other => {
                    return Err(NotOpened::Refused(
                        AmqpError::connection(
                            code::COMMAND_INVALID,
                            "COMMAND_INVALID",
                            "the connection is not open yet",
                        )
                        .during(other.get_amqp_class_id(), other.get_amqp_method_id()),
                    ));
                }
            },
            Some(Ok(_)) => {
                return Err(NotOpened::Refused(AmqpError::connection(
                    code::CHANNEL_ERROR,
                    "CHANNEL_ERROR",
                    "only channel 0 is open during the handshake",
                )));
            }
        }
    }
}

fn unexpected(method: &connection::AMQPMethod, wanted: &str) -> NotOpened {
    let class = AMQPClass::Connection(method.clone());
    NotOpened::Refused(
        AmqpError::connection(
            code::COMMAND_INVALID,
            "COMMAND_INVALID",
            format_args!("expected connection.{wanted}"),
        )
        .during(10, class.get_amqp_method_id()),
    )
}

/// Runs the handshake after `connection.start` was sent; `send` writes a method on
/// channel 0. `certified`: the user a verified client certificate names, who logs in
/// with SASL EXTERNAL.
pub(super) async fn open(
    frames: &mut FrameReceiver,
    send: &mut impl FnMut(AMQPClass),
    auth: &Authenticator,
    peer: SocketAddr,
    offer: Offer,
    certified: Option<&str>,
) -> Result<Opened, NotOpened> {
    let start_ok = match next_method(frames).await? {
        connection::AMQPMethod::StartOk(m) => m,
        other => return Err(unexpected(&other, "start-ok")),
    };
    let mechanism = start_ok.mechanism.as_str().to_string();
    let refused = |text: String| {
        NotOpened::Refused(
            AmqpError::connection(code::ACCESS_REFUSED, "ACCESS_REFUSED", text).during(10, 11),
        )
    };
    let login = match (mechanism.as_str(), certified) {
        ("EXTERNAL", Some(user)) => auth.authenticate_certificate(user, peer.ip()).await,
        ("EXTERNAL", None) => {
            return Err(refused(
                "Login was refused using authentication mechanism EXTERNAL: no verified client certificate".into(),
            ));
        }
        _ => {
            let Some((user, password)) = credentials(&mechanism, &start_ok.response) else {
                return Err(refused(format!(
                    "Login was refused using authentication mechanism {mechanism}: unsupported mechanism or malformed response"
                )));
            };
            auth.authenticate(&user, &password, peer.ip()).await
        }
    };
    let principal = match login {
        Ok(principal) => principal,
        Err(e) => {
            return Err(refused(format!(
                "Login was refused using authentication mechanism {mechanism}: {e}"
            )));
        }
    };
    send(AMQPClass::Connection(connection::AMQPMethod::Tune(
        connection::Tune {
            channel_max: offer.channel_max,
            frame_max: offer.frame_max,
            heartbeat: offer
                .heartbeat
                .map_or(0, |h| h.as_secs().clamp(1, 65535) as u16),
        },
    )));
    let tune_ok = match next_method(frames).await? {
        connection::AMQPMethod::TuneOk(m) => m,
        other => return Err(unexpected(&other, "tune-ok")),
    };
    let lower = |ours: u32, theirs: u32| match (ours, theirs) {
        (0, theirs) => theirs,
        (ours, 0) => ours,
        (ours, theirs) => ours.min(theirs),
    };
    let frame_max = lower(offer.frame_max, tune_ok.frame_max);
    if frame_max != 0 && frame_max < 4096 {
        return Err(NotOpened::Refused(
            AmqpError::connection(
                code::SYNTAX_ERROR,
                "SYNTAX_ERROR",
                format_args!("frame_max {frame_max} is below the minimum of 4096"),
            )
            .during(10, 31),
        ));
    }
    let channel_max = lower(offer.channel_max.into(), tune_ok.channel_max.into()) as u16;
    // The client's tune-ok has the last word; 0 turns heartbeats off.
    let heartbeat = (tune_ok.heartbeat > 0).then(|| Duration::from_secs(tune_ok.heartbeat.into()));
    let open = match next_method(frames).await? {
        connection::AMQPMethod::Open(m) => m,
        other => return Err(unexpected(&other, "open")),
    };
    let vhost = match open.virtual_host.as_str() {
        "" => crate::vhost::DEFAULT_VHOST,
        named => named,
    };
    if auth.open_vhost(&principal, vhost).is_err() {
        return Err(NotOpened::Refused(
            AmqpError::connection(
                code::NOT_ALLOWED,
                "NOT_ALLOWED",
                format_args!(
                    "access to vhost '{vhost}' refused for user '{}'",
                    principal.user
                ),
            )
            .during(10, 40),
        ));
    }
    Ok(Opened {
        vhost: vhost.into(),
        principal,
        frame_max,
        channel_max: if channel_max == 0 {
            u16::MAX
        } else {
            channel_max
        },
        heartbeat,
    })
}

/// User and password from a SASL response.
fn credentials(mechanism: &str, response: &LongString) -> Option<(String, String)> {
    match mechanism {
        // authzid NUL authcid NUL password
        "PLAIN" => {
            let mut parts = response.as_bytes().split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = String::from_utf8(parts.next()?.to_vec()).ok()?;
            let password = String::from_utf8(parts.next()?.to_vec()).ok()?;
            parts.next().is_none().then_some((user, password))
        }
        // A field table without its length prefix.
        "AMQPLAIN" => {
            let bytes = response.as_bytes();
            let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(bytes);
            let (rest, table) =
                amq_protocol::types::parsing::parse_field_table(&framed[..]).ok()?;
            if !rest.is_empty() {
                return None;
            }
            let text = |key: &str| match table.inner().get(key)? {
                AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
                AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
                _ => None,
            };
            Some((text("LOGIN")?, text("PASSWORD")?))
        }
        _ => None,
    }
}

/// How long the broker waits for `close-ok` after closing a connection.
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends `connection.close` for `e` and waits a little for `close-ok`.
pub(super) async fn close(writer: &WriterTx, e: &AmqpError, frames: &mut FrameReceiver) {
    let AmqpError::Connection {
        code,
        text,
        class_id,
        method_id,
    } = e
    else {
        return;
    };
    let close = connection::Close {
        reply_code: *code,
        reply_text: short(text),
        class_id: *class_id,
        method_id: *method_id,
    };
    let mut out = Vec::new();
    encode(
        &AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(close)),
        ),
        &mut out,
    );
    let _ = writer.send(Chunk::frames(out));
    let deadline = Instant::now() + CLOSE_OK_TIMEOUT;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, frames.recv()).await {
        if let Incoming::Method(0, class) = frame
            && matches!(
                *class,
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
            )
        {
            break;
        }
    }
}

/// After the broker's `connection.close-ok`, the client is the one to close the socket:
/// waits for it to (at most [`CLOSE_OK_TIMEOUT`]), dropping whatever it still sends. As
/// RabbitMQ does: a client that reads the end of the stream before the close-ok reports
/// the connection as broken (lapin logs it as an error).
pub(super) async fn client_closes(frames: &mut FrameReceiver) {
    let deadline = Instant::now() + CLOSE_OK_TIMEOUT;
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, frames.recv()).await {}
}

/// A reply text fits a short string (255 bytes), cut at a character boundary.
pub(super) fn short(text: &str) -> amq_protocol::types::ShortString {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].into()
}

/// `connection.open-ok`: sent once the router knows the connection (so that a listing
/// made by anyone after the client has it shows the connection).
pub(super) fn open_ok() -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_and_amqplain_responses() {
        let plain: LongString = "\0ann\0p:w".into();
        assert_eq!(
            credentials("PLAIN", &plain),
            Some(("ann".into(), "p:w".into()))
        );
        assert_eq!(credentials("PLAIN", &"ann".into()), None);
        let creds = amq_protocol::auth::Credentials::new("bob".into(), "secret".into());
        let amqplain = creds.sasl_auth_string(amq_protocol::auth::SASLMechanism::AMQPlain);
        assert_eq!(
            credentials("AMQPLAIN", &amqplain),
            Some(("bob".into(), "secret".into()))
        );
        assert_eq!(credentials("EXTERNAL", &plain), None);
    }
}
