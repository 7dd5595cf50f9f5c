//! Helpers of the AMQP tests: a broker with its AMQP listener, lapin connections to it,
//! and the reply code of an AMQP error.
#![allow(dead_code)] // each test crate uses a different subset

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use broker::{Broker, Config};
use futures_util::StreamExt;
use lapin::{Connection, ConnectionProperties};

/// Declares `queue` with the default options and no arguments.
pub async fn declare_queue(channel: &lapin::Channel, queue: &str) {
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Generous bound for anything that should happen "at once".
pub const WAIT: Duration = Duration::from_secs(10);

/// An in-process broker with both listeners on ephemeral ports.
pub struct AmqpBroker {
    pub broker: Option<Broker>,
    pub dir: tempfile::TempDir,
}

pub fn config(dir: &Path) -> Config {
    let mut config = Config::new(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.amqp = Some("127.0.0.1:0".parse().unwrap());
    config.max_frame_bytes = 1024 * 1024;
    config
}

/// A broker on `dir` (its data kept there across restarts), as [`config`] with `adjust`.
pub async fn start_in(dir: &Path, adjust: impl FnOnce(&mut Config)) -> Broker {
    let mut config = config(dir);
    adjust(&mut config);
    Broker::start(config).await.unwrap()
}

impl AmqpBroker {
    pub async fn start() -> AmqpBroker {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> AmqpBroker {
        let dir = tempfile::tempdir().unwrap();
        let broker = start_in(dir.path(), adjust).await;
        AmqpBroker {
            broker: Some(broker),
            dir,
        }
    }

    pub fn broker(&self) -> &Broker {
        self.broker.as_ref().unwrap()
    }

    pub fn amqp_addr(&self) -> SocketAddr {
        self.broker().amqp_addr().expect("AMQP listener configured")
    }

    /// `amqp://user:password@addr/%2f`.
    pub fn uri(&self, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@{}/%2f", self.amqp_addr())
    }

    /// A lapin connection as guest.
    pub async fn connect(&self) -> Connection {
        within(Connection::connect(
            &self.uri("guest", "guest"),
            ConnectionProperties::default(),
        ))
        .await
        .expect("lapin connects")
    }

    /// A JSON-protocol client of the same broker.
    pub async fn json_client(&self) -> broker::Client {
        broker::Client::connect(&self.broker().url()).await.unwrap()
    }

    /// Graceful shutdown and a fresh start on the same data directory.
    pub async fn restart(&mut self) {
        self.broker.take().unwrap().shutdown().await;
        let config = config(self.dir.path());
        self.broker = Some(Broker::start(config).await.unwrap());
    }
}

/// Fails the test when `future` takes longer than [`WAIT`].
pub async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(WAIT, future).await.expect("in time")
}

/// The AMQP reply code of a lapin error (`None` when it is not an AMQP error).
pub fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

/// The next delivery of a lapin consumer.
pub async fn next_delivery(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    within(consumer.next())
        .await
        .expect("consumer open")
        .expect("a delivery, not an error")
}

/// The reply code of the next channel or connection exception `events` reports (from
/// `Connection::events_listener`): what a method sent after the offending one may not see,
/// because lapin fails it as "channel closing" first.
pub async fn next_error_code(
    events: &mut (impl futures_util::Stream<Item = lapin::Event> + Unpin),
) -> u16 {
    within(async {
        loop {
            match events.next().await.expect("connection events") {
                lapin::Event::Error(e) => match reply_code(&e) {
                    Some(code) => break code,
                    None => continue,
                },
                _ => continue,
            }
        }
    })
    .await
}

/// Encodes one frame.
pub fn frame_bytes(frame: &amq_protocol::frame::AMQPFrame) -> Vec<u8> {
    let (buffer, _) = amq_protocol::frame::gen_frame(frame)(Vec::new().into())
        .unwrap()
        .into_inner();
    buffer
}

/// A raw socket through the handshake (PLAIN guest/guest, a 1 s heartbeat, the offered
/// frame_max), for bytes no client library would send.
pub async fn raw_open(broker: &AmqpBroker) -> tokio::net::TcpStream {
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{AMQPClass, connection};
    use tokio::io::AsyncWriteExt;
    let mut socket = tokio::net::TcpStream::connect(broker.amqp_addr())
        .await
        .unwrap();
    socket.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    let method =
        |m: connection::AMQPMethod| frame_bytes(&AMQPFrame::Method(0, AMQPClass::Connection(m)));
    let start_ok = connection::StartOk {
        client_properties: Default::default(),
        mechanism: "PLAIN".into(),
        response: "\0guest\0guest".into(),
        locale: "en_US".into(),
    };
    let tune_ok = connection::TuneOk {
        channel_max: 16,
        frame_max: 131072,
        heartbeat: 1,
    };
    let open = connection::Open {
        virtual_host: "/".into(),
    };
    for m in [
        connection::AMQPMethod::StartOk(start_ok),
        connection::AMQPMethod::TuneOk(tune_ok),
        connection::AMQPMethod::Open(open),
    ] {
        socket.write_all(&method(m)).await.unwrap();
    }
    socket
}

/// Reads frames until the broker's `connection.close` (answering it with `close-ok`);
/// returns its reply code, then checks the broker closes the socket.
pub async fn connection_close_code(socket: &mut tokio::net::TcpStream) -> u16 {
    use amq_protocol::frame::{AMQPFrame, parse_frame};
    use amq_protocol::protocol::{AMQPClass, connection};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = Vec::new();
    let code = within(async {
        loop {
            // Skip whole frames already read; stop at the close.
            loop {
                let parsed = parse_frame(buffer.as_slice()).map(|(rest, f)| (rest.len(), f));
                match parsed {
                    Ok((rest, frame)) => {
                        let used = buffer.len() - rest;
                        buffer.drain(..used);
                        if let AMQPFrame::Method(
                            0,
                            AMQPClass::Connection(connection::AMQPMethod::Close(close)),
                        ) = frame
                        {
                            return close.reply_code;
                        }
                    }
                    Err(_) => break,
                }
            }
            let mut chunk = [0u8; 4096];
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the broker closed without connection.close");
            buffer.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let close_ok = AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    );
    let _ = socket.write_all(&frame_bytes(&close_ok)).await;
    let mut rest = Vec::new();
    let _ = within(socket.read_to_end(&mut rest)).await;
    code
}
