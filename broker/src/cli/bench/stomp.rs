//! `--protocol stomp`: `persistent` and `transient` over STOMP 1.2 on TCP (the broker's
//! STOMP listener, `--stomp-addr`), shaped like the JSON clients: each publisher SENDs
//! with a `receipt` (the broker answers it after the confirm, so after the commit for a
//! persistent message) and keeps at most --window unanswered; each consumer SUBSCRIBEs
//! with `ack:client-individual` and `prefetch-count` = --prefetch and ACKs every MESSAGE.
//! The queue is declared and deleted through the JSON protocol (--server), as for the
//! JSON run, so both runs measure the same queue. No Rust STOMP client crate is in the
//! dependency set; the few frames a bench sends are written here.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use bytes::{Buf as _, Bytes, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::clients::{IDLE_TIMEOUT, body_stamp, client_share, stamped_body};
use super::throughput::Topology;
use super::{BenchArgs, Cleanup, Report, Scenario, merged, new_histogram};

/// The address `--stomp-addr` defaults to: the broker's default STOMP listener.
pub(super) const DEFAULT_STOMP_ADDR: &str = "127.0.0.1:61613";

pub(super) async fn run(url: &str, stomp_addr: &str, args: &BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        matches!(args.scenario, Scenario::Persistent | Scenario::Transient),
        "--protocol stomp runs the persistent and transient scenarios"
    );
    let topology = Topology::of(args);
    anyhow::ensure!(
        topology.queues.len() == 1,
        "--protocol stomp: one queue (no --queues)"
    );
    let admin = super::connect(url).await?;
    let mut cleanup = Cleanup::default();
    let result = async {
        topology.declare(&admin, &mut cleanup).await?;
        measure(stomp_addr, args, &topology.queues[0], topology.durable).await
    }
    .await;
    cleanup.finish(&admin, result).await
}

async fn measure(
    addr: &str,
    args: &BenchArgs,
    queue: &str,
    persistent: bool,
) -> anyhow::Result<Report> {
    let msgs = args.msgs();
    let mut consumers = Vec::new();
    for i in 0..args.consumers {
        let share = client_share(msgs, args.consumers, i);
        consumers.push((
            StompConsumer::subscribe(addr, queue, args.prefetch).await?,
            share,
        ));
    }

    super::mark_measured_start();
    let start = Instant::now();
    let drains: Vec<JoinHandle<anyhow::Result<Histogram<u64>>>> = consumers
        .into_iter()
        .map(|(consumer, share)| tokio::spawn(consumer.drain(share, start)))
        .collect();
    let mut first = 0;
    let publishers: Vec<_> = (0..args.publishers)
        .map(|i| {
            let share = client_share(msgs, args.publishers, i);
            let range = first..first + share;
            first += share;
            let publisher = Publisher {
                addr: addr.to_owned(),
                destination: format!("/amq/queue/{queue}"),
                persistent,
                size: args.size,
                window: args.window.max(1),
            };
            tokio::spawn(publisher.publish(range, start))
        })
        .collect();
    let confirm_us = merged(publishers).await?;
    let latency_us = merged(drains).await?;
    let secs = start.elapsed().as_secs_f64();
    let mut report = Report::new(args.scenario, msgs, secs);
    report.confirm_us = confirm_us;
    report.latency_us = latency_us;
    Ok(report)
}

/// One STOMP connection, logged in as guest.
struct Connection {
    reader: FrameReader,
    writer: BufWriter<OwnedWriteHalf>,
}

impl Connection {
    async fn open(addr: &str) -> anyhow::Result<Connection> {
        let socket = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to STOMP at {addr}"))?;
        socket.set_nodelay(true)?;
        let (read, write) = socket.into_split();
        let mut connection = Connection {
            reader: FrameReader {
                socket: read,
                buf: BytesMut::with_capacity(64 * 1024),
            },
            writer: BufWriter::with_capacity(64 * 1024, write),
        };
        connection
            .send(
                "CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:0,0\n\n",
                b"",
            )
            .await?;
        connection.writer.flush().await?;
        let connected = connection.reader.next().await?;
        anyhow::ensure!(
            connected.command == "CONNECTED",
            "STOMP login refused: {}",
            connected.describe()
        );
        Ok(connection)
    }

    /// Buffers one frame: `head` is the command and header lines with the blank line.
    async fn send(&mut self, head: &str, body: &[u8]) -> anyhow::Result<()> {
        self.writer.write_all(head.as_bytes()).await?;
        self.writer.write_all(body).await?;
        self.writer.write_all(b"\0").await?;
        Ok(())
    }
}

struct Publisher {
    addr: String,
    destination: String,
    persistent: bool,
    size: usize,
    window: usize,
}

impl Publisher {
    /// SENDs messages `range` with receipts, at most `window` unanswered; returns the
    /// receipt latencies. A reader task takes the RECEIPTs (each names its send time).
    async fn publish(self, range: Range<u64>, start: Instant) -> anyhow::Result<Histogram<u64>> {
        let Connection {
            mut reader,
            mut writer,
        } = Connection::open(&self.addr).await?;
        let count = range.end - range.start;
        let window = Arc::new(Semaphore::new(self.window));
        let receipts = tokio::spawn({
            let window = window.clone();
            async move {
                let mut confirm_us = new_histogram();
                for _ in 0..count {
                    let frame = reader.next().await?;
                    anyhow::ensure!(
                        frame.command == "RECEIPT",
                        "SEND refused: {}",
                        frame.describe()
                    );
                    let id = frame.header("receipt-id").unwrap_or_default();
                    let sent_us: u64 = id
                        .split_once('-')
                        .and_then(|(_, us)| us.parse().ok())
                        .context("a receipt-id this bench did not send")?;
                    let now_us = start.elapsed().as_micros() as u64;
                    confirm_us.saturating_record(now_us.saturating_sub(sent_us));
                    window.add_permits(1);
                }
                Ok::<_, anyhow::Error>((confirm_us, reader))
            }
        });
        let persistent = match self.persistent {
            true => "persistent:true\n",
            false => "",
        };
        for n in range {
            let permit = match window.try_acquire() {
                Ok(permit) => permit,
                Err(_) => {
                    // Out of window: what is buffered must reach the broker first.
                    writer.flush().await?;
                    window.acquire().await?
                }
            };
            permit.forget();
            let sent_us = start.elapsed().as_micros() as u64;
            let body = stamped_body(self.size, sent_us);
            let head = format!(
                "SEND\ndestination:{}\n{persistent}receipt:{n}-{sent_us}\ncontent-length:{}\n\n",
                self.destination,
                body.len()
            );
            writer.write_all(head.as_bytes()).await?;
            writer.write_all(&body).await?;
            writer.write_all(b"\0").await?;
        }
        writer.flush().await?;
        let (confirm_us, _reader) = receipts.await??;
        writer.write_all(b"DISCONNECT\n\n\0").await?;
        writer.flush().await?;
        Ok(confirm_us)
    }
}

/// A subscription (client-individual acks, --prefetch) that has not consumed yet.
struct StompConsumer {
    connection: Connection,
    queue: String,
}

impl StompConsumer {
    async fn subscribe(addr: &str, queue: &str, prefetch: u32) -> anyhow::Result<StompConsumer> {
        let mut connection = Connection::open(addr).await?;
        let head = format!(
            "SUBSCRIBE\nid:0\ndestination:/amq/queue/{queue}\nack:client-individual\n\
             prefetch-count:{prefetch}\nreceipt:subscribed\n\n"
        );
        connection.send(&head, b"").await?;
        connection.writer.flush().await?;
        let receipt = connection.reader.next().await?;
        anyhow::ensure!(
            receipt.command == "RECEIPT",
            "SUBSCRIBE refused: {}",
            receipt.describe()
        );
        Ok(StompConsumer {
            connection,
            queue: queue.to_owned(),
        })
    }

    /// Consumes and ACKs `count` messages; returns end-to-end latencies. ACKs are written
    /// in batches: flushed whenever no further MESSAGE is already read.
    async fn drain(mut self, count: u64, start: Instant) -> anyhow::Result<Histogram<u64>> {
        let mut latency_us = new_histogram();
        let Connection { reader, writer } = &mut self.connection;
        for got in 0..count {
            if !reader.has_frame() {
                writer.flush().await?;
            }
            let frame = tokio::time::timeout(IDLE_TIMEOUT, reader.next())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "no MESSAGE from `{}` for {} s after {got} of {count}",
                        self.queue,
                        IDLE_TIMEOUT.as_secs()
                    )
                })??;
            anyhow::ensure!(frame.command == "MESSAGE", "{}", frame.describe());
            let sent_us = body_stamp(&frame.body)?;
            let now_us = start.elapsed().as_micros() as u64;
            latency_us.saturating_record(now_us.saturating_sub(sent_us));
            let ack = frame.header("ack").context("MESSAGE without `ack`")?;
            writer.write_all(b"ACK\nid:").await?;
            writer.write_all(ack.as_bytes()).await?;
            writer.write_all(b"\n\n\0").await?;
        }
        writer.write_all(b"DISCONNECT\n\n\0").await?;
        writer.flush().await?;
        Ok(latency_us)
    }
}

/// A frame from the broker (its header values are ours or plain: no unescaping).
struct Frame {
    command: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Frame {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find_map(|(n, v)| (n == name).then_some(v.as_str()))
    }

    fn describe(&self) -> String {
        let message = self.header("message").unwrap_or_default();
        format!("{} {message}", self.command)
    }
}

struct FrameReader {
    socket: OwnedReadHalf,
    buf: BytesMut,
}

impl FrameReader {
    async fn next(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            let n = tokio::time::timeout(IDLE_TIMEOUT, self.socket.read_buf(&mut self.buf))
                .await
                .context("the broker sent nothing for too long")??;
            anyhow::ensure!(n > 0, "the broker closed the STOMP connection");
        }
    }

    /// Whether a whole frame is already buffered (so reading it will not wait).
    fn has_frame(&self) -> bool {
        self.buf.contains(&0)
    }

    fn parse(&mut self) -> anyhow::Result<Option<Frame>> {
        // Heart-beats and the EOLs allowed between frames.
        while matches!(self.buf.first(), Some(b'\n' | b'\r')) {
            self.buf.advance(1);
        }
        let Some(head_end) = self.buf.windows(2).position(|w| w == b"\n\n") else {
            return Ok(None);
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("a non-UTF-8 frame head")?;
        let mut lines = head.lines().map(|l| l.trim_end_matches('\r'));
        let command = lines.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        let body_start = head_end + 2;
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse::<usize>())
            .transpose()
            .context("a bad content-length")?;
        let body_end = match length {
            Some(length) if self.buf.len() > body_start + length => body_start + length,
            Some(_) => return Ok(None),
            None => match self.buf[body_start..].iter().position(|b| *b == 0) {
                Some(at) => body_start + at,
                None => return Ok(None),
            },
        };
        anyhow::ensure!(self.buf[body_end] == 0, "a frame body not followed by NUL");
        let mut frame = self.buf.split_to(body_end + 1);
        let body = frame
            .split_off(body_start)
            .freeze()
            .slice(..body_end - body_start);
        Ok(Some(Frame {
            command,
            headers,
            body,
        }))
    }
}
