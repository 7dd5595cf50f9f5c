//! The fuzz targets of `broker::fuzz` (the same ones `cargo fuzz` runs, see fuzz/),
//! driven on stable for a bounded number of inputs: each target starts from valid seeds
//! (real frames, a real data file, real plugin outputs), mutates them with a seeded
//! generator and feeds every input to the target, after replaying every input kept in
//! `tests/fuzz/regressions/TARGET/`. An input that fails is written to
//! `target/fuzz-failures/` and named in the failure with the seed: copy it into the
//! regressions folder once fixed.
//!
//! `FUZZ_SEED=N` (default 1; `random` picks one and prints it) and `FUZZ_ITERATIONS=N`
//! (default per target below) run it longer or differently.

mod common;
#[path = "support/hostile.rs"]
mod hostile;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use broker::protocol::{parse_request, write_request_record};

fn seed() -> u64 {
    match std::env::var("FUZZ_SEED").as_deref() {
        Ok("random") => {
            let seed = fastrand::u64(..);
            eprintln!("FUZZ_SEED={seed}");
            seed
        }
        Ok(n) => n.parse().expect("FUZZ_SEED is a number or `random`"),
        Err(_) => 1,
    }
}

fn iterations(default: usize) -> usize {
    std::env::var("FUZZ_ITERATIONS")
        .ok()
        .map(|n| n.parse().expect("FUZZ_ITERATIONS is a number"))
        .unwrap_or(default)
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Bytes that make decoders take their edge cases: lengths, delimiters, escapes.
const INTERESTING: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\n",
    b"\r\n",
    b"\n\n",
    b":",
    b"\\",
    b"\\c",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b"null",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\xce",
    b"\xe2\x82",
];

/// One mutation of `input`, sometimes spliced with another seed.
fn mutate(rng: &mut fastrand::Rng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.usize(1..=4) {
        let len = out.len();
        match rng.u8(0..8) {
            0 if len > 0 => {
                let i = rng.usize(..len);
                out[i] ^= 1 << rng.u8(0..8);
            }
            1 if len > 0 => {
                let i = rng.usize(..len);
                out[i] = rng.u8(..);
            }
            2 => {
                let i = rng.usize(..=len);
                let piece = INTERESTING[rng.usize(..INTERESTING.len())];
                out.splice(i..i, piece.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.usize(..len);
                let b = rng.usize(a..=len.min(a + 16));
                out.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.usize(..len);
                let b = rng.usize(a..=len.min(a + 32));
                let piece = out[a..b].to_vec();
                let i = rng.usize(..=out.len());
                out.splice(i..i, piece);
            }
            5 => out.truncate(rng.usize(..=len)),
            6 => {
                let other = &seeds[rng.usize(..seeds.len())];
                let from = rng.usize(..=other.len());
                let i = rng.usize(..=len);
                out.truncate(i);
                out.extend_from_slice(&other[from..]);
            }
            _ => {
                let i = rng.usize(..=len);
                let random: Vec<u8> = (0..rng.usize(1..8)).map(|_| rng.u8(..)).collect();
                out.splice(i..i, random);
            }
        }
    }
    out
}

/// Runs `target` on the kept regressions, then on `default_iterations` mutations of
/// `seeds`; panics naming the first input that fails.
fn drive(
    name: &str,
    seeds: Vec<Vec<u8>>,
    default_iterations: usize,
    mut target: impl FnMut(&[u8]),
) {
    let mut run = |input: &[u8], origin: &str| {
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| target(input)));
        if let Err(panic) = result {
            let dir = workspace().join("target/fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("{name}-{:016x}.bin", fxhash(input)));
            std::fs::write(&file, input).unwrap();
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "{name}: {origin} fails ({what}); input kept in {}",
                file.display()
            );
        }
    };
    let kept = workspace().join("tests/fuzz/regressions").join(name);
    if let Ok(entries) = std::fs::read_dir(&kept) {
        for entry in entries {
            let path = entry.unwrap().path();
            run(&std::fs::read(&path).unwrap(), &path.display().to_string());
        }
    }
    for seed in &seeds {
        run(seed, "a seed");
    }
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    for i in 0..iterations(default_iterations) {
        let base = &seeds[rng.usize(..seeds.len())];
        let input = mutate(&mut rng, base, &seeds);
        run(&input, &format!("input {i} of FUZZ_SEED={seed}"));
    }
}

fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Real requests, as a client sends them.
const JSON_SEEDS: &[&str] = &[
    r#"{"id":1,"op":"publish","exchange":"","routing_key":"q","body":"hello"}"#,
    r#"{"id":"a","op":"publish","exchange":"x","routing_key":"k.1","body":"aGk=","body_encoding":"base64","mandatory":true,"properties":{"persistent":true,"priority":3,"content_type":"text/plain","expiration_ms":500},"headers":{"h":1,"n":[1,"two",{"x":null}]}}"#,
    r#"{"id":2,"op":"declare_queue","queue":"q","durable":true,"arguments":{"max_length":10,"dead_letter_exchange":"dlx","retry_backoff":["1s","5s"]}}"#,
    r#"{"id":3,"op":"bind","exchange":"x","queue":"q","key":"a.*","arguments":{"x-match":"all"}}"#,
    r#"{"id":4,"op":"subscribe","queue":"q","prefetch":10,"auto_ack":false}"#,
    r#"{"id":5,"op":"ack","delivery_tag":7,"multiple":true}"#,
    r#"{"id":6,"op":"nack","delivery_tag":8,"requeue":true,"delay_ms":100}"#,
    r#"{"id":7,"op":"declare_exchange","exchange":"x","type":"topic","durable":false}"#,
    r#"{"id":8,"op":"authenticate","username":"guest","password":"guest"}"#,
    r#"{"id":9,"op":"set_permissions","user":"u","vhost":"/","configure":"^a","write":".*","read":""}"#,
];

#[test]
fn json_requests() {
    for text in JSON_SEEDS {
        parse_request(text).unwrap_or_else(|e| panic!("seed {text}: {e:?}"));
    }
    let seeds = JSON_SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect();
    drive("json_request", seeds, 20_000, broker::fuzz::json_request);
}

#[test]
fn binary_request_records() {
    let mut seeds = Vec::new();
    for text in JSON_SEEDS {
        let Ok(request) = parse_request(text) else {
            continue;
        };
        let mut record = Vec::new();
        if write_request_record(&mut record, &request) {
            seeds.push(record);
        }
    }
    assert!(!seeds.is_empty(), "some requests have binary records");
    let two: Vec<u8> = seeds.iter().take(2).flatten().copied().collect();
    seeds.push(two);
    drive(
        "binary_requests",
        seeds,
        20_000,
        broker::fuzz::binary_requests,
    );
}

#[test]
fn stomp_frames() {
    let frames: &[&[u8]] = &[
        b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:1000,1000\n\n\0",
        b"SEND\ndestination:/queue/a\ncontent-type:text/plain\ncontent-length:5\nreceipt:r1\n\nhello\0\n",
        b"SUBSCRIBE\nid:0\ndestination:/exchange/x/k.*\nack:client-individual\n\n\0",
        b"ACK\nid:m-1\ntransaction:t1\n\n\0BEGIN\ntransaction:t1\n\n\0",
        b"SEND\ndestination:/topic/a\\cb\nkey\\nwith\\\\escapes:v\\r\n\nbody without length\0",
        b"\n\n\r\nDISCONNECT\nreceipt:bye\n\n\0",
    ];
    // The first byte of an input picks where it is split in two.
    let seeds = frames.iter().map(|f| [&[128u8][..], f].concat()).collect();
    drive("stomp_frames", seeds, 20_000, broker::fuzz::stomp_frames);
}

/// A frame: type, channel, payload, frame end.
fn amqp_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![kind];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.push(0xCE);
    frame
}

#[test]
fn amqp_frames() {
    // basic.publish exchange "x", routing key "k", no flags.
    let publish = amqp_frame(1, 1, b"\x00\x3c\x00\x28\x00\x00\x01x\x01k\x00");
    // Content header of class 60, body size 5, content-type, headers {a: long 1},
    // delivery-mode 2, expiration "100".
    let mut header = b"\x00\x3c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05".to_vec();
    header.extend_from_slice(&(0x8000u16 | 0x2000 | 0x1000 | 0x0100).to_be_bytes());
    header.extend_from_slice(b"\x0atext/plain");
    header.extend_from_slice(b"\x00\x00\x00\x07\x01aI\x00\x00\x00\x01");
    header.push(2);
    header.extend_from_slice(b"\x03100");
    let header = amqp_frame(2, 1, &header);
    let body = amqp_frame(3, 1, b"hello");
    let heartbeat = amqp_frame(8, 0, b"");
    // queue.declare "q", durable, arguments {x-max-length: long 10}.
    let mut declare = b"\x00\x32\x00\x0a\x00\x00\x01q\x02".to_vec();
    declare.extend_from_slice(b"\x00\x00\x00\x11\x0cx-max-lengthI\x00\x00\x00\x0a");
    let declare = amqp_frame(1, 1, &declare);
    let seeds = vec![
        [publish.clone(), header.clone(), body.clone()].concat(),
        heartbeat,
        declare,
        header,
        publish,
    ];
    drive("amqp_frames", seeds, 20_000, broker::fuzz::amqp_frames);
}

/// A data file the broker wrote (queues, messages, an exchange, a binding), mutated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker::Config::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    let b = broker::Broker::start(config).await.unwrap();
    let c = broker::Client::connect(&b.url()).await.unwrap();
    c.declare_queue("q", broker::QueueOptions::durable())
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    for i in 0..5 {
        let mut m = broker::Message::text("q", format!("message {i}"));
        m.properties.persistent = true;
        c.publish(m, false).await.unwrap();
    }
    drop(c);
    b.shutdown().await;
    let file = std::fs::read(dir.path().join(broker::store::DB_FILE)).unwrap();
    // Opening a whole data file per input is slow: fewer inputs than the codecs get.
    tokio::task::spawn_blocking(move || {
        drive("store_file", vec![file], 60, broker::fuzz::store_file)
    })
    .await
    .unwrap();
}

#[test]
fn plugin_route_outputs() {
    let host = broker::plugin::PluginHost::new(broker::plugin::Limits::default()).unwrap();
    let mut exchange = hostile::exchange(&host, "body-ids");
    let ids = |ids: &[u64]| {
        ids.iter()
            .flat_map(|id| id.to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let seeds = vec![
        ids(&[1]),
        ids(&[1, 2]),
        ids(&[2, 2, 1]),
        ids(&[3]),
        ids(&[u64::MAX]),
        b"!panic".to_vec(),
        vec![1],
        Vec::new(),
    ];
    drive("route_output", seeds, 3_000, |data| {
        broker::fuzz::route_output(&mut exchange, &[1, 2], data)
    });
}
