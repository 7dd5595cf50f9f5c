//! AMQP and STOMP over TLS (`--amqps`, `--stomps`) end to end, with a CA made in the test:
//! lapin over `amqps://` and stomp.py over TLS publish and consume through the TLS
//! listeners; a plaintext client on a TLS port is dropped without storing anything; a TLS
//! listener without certificates stops the start.

#[path = "support/certs.rs"]
mod certs;
#[path = "support/stomp.rs"]
mod stomp;

use std::path::Path;
use std::time::Duration;

use broker::server::{StartError, TlsConfig};
use broker::{Broker, Config};
use certs::TestCa;
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// A broker whose only AMQP and STOMP TCP listeners are the TLS ones, with `ca`'s
/// server certificate.
async fn start_tls(dir: &Path, ca: &TestCa) -> Broker {
    start_tls_with(dir, ca, false).await
}

/// [`start_tls`], with client certificates of `ca` logging in when `client_ca`.
async fn start_tls_with(dir: &Path, ca: &TestCa, client_ca: bool) -> Broker {
    let server = ca.server();
    let mut config = Config::new(dir.join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.amqps = Some("127.0.0.1:0".parse().unwrap());
    config.stomps = Some("127.0.0.1:0".parse().unwrap());
    config.handshake_timeout = Duration::from_secs(5);
    config.tls = Some(TlsConfig {
        cert: server.cert,
        key: server.key,
        client_ca: client_ca.then(|| ca.ca.clone()),
    });
    Broker::start(config).await.unwrap()
}

/// lapin over `amqps://` as guest, trusting `ca`.
async fn connect_amqps(broker: &Broker, ca: &TestCa) -> Connection {
    let uri = format!(
        "amqps://guest:guest@127.0.0.1:{}/%2f",
        broker.amqps_addr().unwrap().port()
    );
    try_amqps(&uri, ca, None)
        .await
        .expect("lapin connects over TLS")
}

/// lapin to `uri` trusting `ca`, presenting `identity` when given.
async fn try_amqps(
    uri: &str,
    ca: &TestCa,
    identity: Option<&certs::CertFiles>,
) -> lapin::Result<Connection> {
    let tls = OwnedTLSConfig {
        identity: identity.map(|files| OwnedIdentity::PKCS8 {
            pem: std::fs::read(&files.cert).unwrap(),
            key: std::fs::read(&files.key).unwrap(),
        }),
        cert_chain: Some(std::fs::read_to_string(&ca.ca).unwrap()),
    };
    let runtime = lapin::runtime::default_runtime().unwrap();
    tokio::time::timeout(
        WAIT,
        Connection::connect_with_config(uri, ConnectionProperties::default(), tls, runtime),
    )
    .await
    .expect("in time")
}

#[tokio::test(flavor = "multi_thread")]
async fn lapin_publishes_and_consumes_over_amqps() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "amqps");
    let broker = start_tls(dir.path(), &ca).await;
    assert_eq!(
        broker.amqp_addr(),
        None,
        "the TLS listener is the only AMQP one"
    );

    let connection = connect_amqps(&broker, &ca).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            "tls-orders".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = channel
        .basic_publish(
            "".into(),
            "tls-orders".into(),
            BasicPublishOptions::default(),
            b"over tls",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "{confirm:?}");

    let mut consumer = channel
        .basic_consume(
            "tls-orders".into(),
            "tls-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("in time")
        .expect("consumer open")
        .expect("a delivery");
    assert_eq!(delivery.data, b"over tls");
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    connection.close(200, "bye".into()).await.unwrap();
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stomp_py_sends_and_receives_over_stomps() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "stomps");
    let broker = start_tls(dir.path(), &ca).await;
    assert_eq!(
        broker.stomp_addr(),
        None,
        "the TLS listener is the only STOMP one"
    );
    let port = broker.stomps_addr().unwrap().port();
    let ca_path = ca.ca.to_str().unwrap();

    let result = stomp::scenario_with_env(
        "roundtrip",
        "tls",
        port,
        &["tls-q"],
        &[("STOMP_TLS_CA", ca_path)],
    )
    .await;
    assert_eq!(result["message"]["body"], "hello stomp", "{result}");
    assert_eq!(
        result["receipts"],
        serde_json::json!(["r-send", "r-sub", "r-ack", "r-unsub"]),
        "{result}"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_logs_in_over_stomps_when_connect_has_no_passcode() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "stomp-certs");
    let broker = start_tls_with(dir.path(), &ca, true).await;
    let port = broker.stomps_addr().unwrap().port();
    let run = |cn: &str, login: &'static str| {
        let client = ca.client(cn);
        let env = [
            ("STOMP_TLS_CA", ca.ca.to_str().unwrap().to_owned()),
            ("STOMP_TLS_CERT", client.cert.to_str().unwrap().to_owned()),
            ("STOMP_TLS_KEY", client.key.to_str().unwrap().to_owned()),
        ];
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            stomp::scenario_with_env("certificate_login", "tls", port, &["cert-q", login], &env)
                .await
        }
    };
    // No login, no passcode: the certificate's CN (guest) is the user.
    let by_certificate = run("guest", "-").await;
    assert_eq!(by_certificate["body"], "by certificate", "{by_certificate}");
    // A CN naming no user, and a login naming someone else, are refused.
    let unknown = run("nobody", "-").await;
    assert!(
        unknown["error"]
            .as_str()
            .unwrap_or_default()
            .contains("names no user"),
        "{unknown}"
    );
    let mismatch = run("guest", "admin").await;
    assert!(
        mismatch["error"]
            .as_str()
            .unwrap_or_default()
            .contains("client certificate is for user `guest`"),
        "{mismatch}"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_logs_in_over_amqps_with_sasl_external() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "amqp-certs");
    let broker = start_tls_with(dir.path(), &ca, true).await;
    let port = broker.amqps_addr().unwrap().port();
    let external = format!("amqps://127.0.0.1:{port}/%2f?auth_mechanism=external");

    // The certificate's CN (guest) is the user: no password anywhere.
    let guest = ca.client("guest");
    let connection = try_amqps(&external, &ca, Some(&guest))
        .await
        .expect("EXTERNAL with a client certificate logs in");
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            "by-certificate".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    connection.close(200, "bye".into()).await.unwrap();

    // EXTERNAL without a certificate, or with one naming no user, is refused.
    let without = try_amqps(&external, &ca, None).await.unwrap_err();
    let nobody = ca.client("nobody");
    let unknown = try_amqps(&external, &ca, Some(&nobody)).await.unwrap_err();
    for error in [without, unknown] {
        match error.kind() {
            lapin::ErrorKind::ProtocolError(e) => assert_eq!(e.get_id(), 403, "{error}"),
            _ => panic!("expected 403 ACCESS_REFUSED, got {error}"),
        }
    }
    broker.shutdown().await;
}

/// Reads until the broker closes `socket`; the bytes it sent before.
async fn until_closed(socket: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let read = tokio::time::timeout(WAIT, socket.read(&mut buf))
            .await
            .expect("the broker closes a plaintext client in time");
        match read {
            Ok(0) | Err(_) => return seen,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_clients_on_tls_ports_are_dropped_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "plain");
    let broker = start_tls(dir.path(), &ca).await;

    // A plain AMQP client: its protocol header is not a TLS record.
    let mut amqp = TcpStream::connect(broker.amqps_addr().unwrap())
        .await
        .unwrap();
    amqp.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    let answer = until_closed(&mut amqp).await;
    assert!(
        !answer.starts_with(b"AMQP"),
        "no AMQP spoken in the clear: {answer:?}"
    );

    // A plain STOMP client sending a message without waiting for CONNECTED.
    let mut stomp = TcpStream::connect(broker.stomps_addr().unwrap())
        .await
        .unwrap();
    let frames = b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0\
        SEND\ndestination:/queue/plain-q\n\nleaked\0";
    let _ = stomp.write_all(frames).await;
    let answer = until_closed(&mut stomp).await;
    assert!(
        !answer.starts_with(b"CONNECTED"),
        "no STOMP spoken in the clear: {answer:?}"
    );

    // The listeners still serve TLS clients, and the plaintext SEND declared nothing.
    let connection = connect_amqps(&broker, &ca).await;
    let channel = connection.create_channel().await.unwrap();
    let error = channel
        .queue_declare(
            "plain-q".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => assert_eq!(e.get_id(), 404, "{error}"),
        _ => panic!("expected 404 NOT_FOUND, got {error}"),
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn a_tls_listener_without_certificates_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    for (amqps, stomps, named) in [(true, false, "amqps"), (false, true, "stomps")] {
        let mut config = Config::new(dir.path().join("data"));
        config.listen = "127.0.0.1:0".parse().unwrap();
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        config.amqps = amqps.then_some(any);
        config.stomps = stomps.then_some(any);
        let error = match Broker::start(config).await {
            Ok(_) => panic!("{named} without TLS started"),
            Err(error) => error,
        };
        assert!(
            matches!(error, StartError::TlsListenerWithoutTls { listener } if listener == named),
            "{error}"
        );
        assert!(error.to_string().contains("--tls-cert"), "{error}");
    }
}
