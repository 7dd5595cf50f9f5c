//! The machine's floor for broker-shaped traffic: what one publisher and one consumer at a
//! fixed rate cost a server that does nothing but the network I/O a broker must do for them
//! (read a publish, hand it to another task, write a confirm and a delivery, read an ack),
//! on the broker's runtime (two tokio workers), with no parsing, routing, queue or store.
//! `docs/performance.md` ("The floor at light load") compares the broker's CPU at
//! `latency --rate 5000` with it.
//!
//! ```sh
//! cargo build --release -p broker --example io_floor
//! target/release/examples/io_floor serve 127.0.0.1:27800 &
//! IO_FLOOR_PID=$! target/release/examples/io_floor drive 127.0.0.1:27800 5000 10
//! ```
//! With `IO_FLOOR_PID` set to the server's pid, `drive` prints the server's CPU (from
//! `/proc`, over the run after its first second).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A publish and a delivery: the bench's 256-byte body.
const MESSAGE: usize = 256;
/// A confirm and an ack.
const SMALL: usize = 16;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: io_floor serve ADDR | io_floor drive ADDR RATE SECS";
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("serve"), Some(addr)) => serve(addr).await,
        (Some("drive"), Some(addr)) => {
            let rate = args.get(3).and_then(|r| r.parse().ok()).expect(usage);
            let secs = args.get(4).and_then(|s| s.parse().ok()).expect(usage);
            drive(addr, rate, secs).await
        }
        _ => eprintln!("{usage}"),
    }
}

/// Accepts connections in pairs (publisher, then consumer) and serves each pair.
async fn serve(addr: &str) {
    let listener = TcpListener::bind(addr).await.expect("bind");
    loop {
        let (publisher, _) = listener.accept().await.expect("accept");
        let (consumer, _) = listener.accept().await.expect("accept");
        tokio::spawn(serve_pair(publisher, consumer));
    }
}

async fn serve_pair(publisher: TcpStream, consumer: TcpStream) {
    let _ = (publisher.set_nodelay(true), consumer.set_nodelay(true));
    let (mut publishes, mut confirms) = publisher.into_split();
    let (mut acks, mut deliveries) = consumer.into_split();
    // As in the broker: the reader hands each publish to one task that owns the queue (a
    // bounded channel), which sends the confirms and deliveries.
    let (to_owner, mut owner) = mpsc::channel::<Vec<u8>>(4096);
    tokio::spawn(async move {
        let mut message = vec![0u8; MESSAGE];
        while publishes.read_exact(&mut message).await.is_ok() {
            if to_owner.send(message.clone()).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let mut ack = [0u8; SMALL];
        while acks.read_exact(&mut ack).await.is_ok() {}
    });
    loop {
        let Some(first) = owner.recv().await else {
            return;
        };
        let mut ready = vec![first];
        while let Ok(message) = owner.try_recv() {
            ready.push(message);
        }
        let confirm_bytes = vec![1u8; SMALL * ready.len()];
        let delivery_bytes = ready.concat();
        if confirms.write_all(&confirm_bytes).await.is_err()
            || deliveries.write_all(&delivery_bytes).await.is_err()
        {
            return;
        }
    }
}

/// One publisher paced at `rate` (on its own thread, as `broker bench latency` paces) and
/// one consumer acking each delivery; prints the server's CPU.
async fn drive(addr: &str, rate: u64, secs: u64) {
    let server_pid = server_pid();
    let publisher = TcpStream::connect(addr).await.expect("connect");
    let consumer = TcpStream::connect(addr).await.expect("connect");
    let _ = (publisher.set_nodelay(true), consumer.set_nodelay(true));
    let (mut confirms, mut publishes) = publisher.into_split();
    let (mut deliveries, mut acks) = consumer.into_split();
    let total = rate * secs;
    let consumed = tokio::spawn(async move {
        let mut delivery = vec![0u8; MESSAGE];
        for _ in 0..total {
            deliveries
                .read_exact(&mut delivery)
                .await
                .expect("delivery");
            acks.write_all(&[2u8; SMALL]).await.expect("ack");
        }
    });
    let confirmed = tokio::spawn(async move {
        let mut confirm = [0u8; SMALL];
        for _ in 0..total {
            confirms.read_exact(&mut confirm).await.expect("confirm");
        }
    });
    let (tick_tx, mut ticks) = mpsc::unbounded_channel::<()>();
    std::thread::spawn(move || {
        let start = Instant::now();
        for i in 0..total {
            let at = start + Duration::from_nanos(i * 1_000_000_000 / rate);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if tick_tx.send(()).is_err() {
                return;
            }
        }
    });
    let message = vec![7u8; MESSAGE];
    let mut first_second = None;
    for i in 0..total {
        ticks.recv().await.expect("pacer");
        publishes.write_all(&message).await.expect("publish");
        if i == rate {
            first_second = Some((Instant::now(), cpu_ticks(server_pid)));
        }
    }
    consumed.await.expect("consumer");
    confirmed.await.expect("confirms");
    if let (Some((since, Some(before))), Some(after)) = (first_second, cpu_ticks(server_pid)) {
        let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let cores = (after - before) as f64 / ticks_per_sec / since.elapsed().as_secs_f64();
        println!("rate={rate} secs={secs} server_cpu_cores={cores:.3}");
    } else {
        println!("rate={rate} secs={secs} server_cpu_cores=- (set IO_FLOOR_PID)");
    }
}

/// The server's pid: `IO_FLOOR_PID`, else none (the CPU is then not printed).
fn server_pid() -> Option<u32> {
    std::env::var("IO_FLOOR_PID").ok()?.parse().ok()
}

/// utime + stime of process `pid`, in clock ticks.
fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}
