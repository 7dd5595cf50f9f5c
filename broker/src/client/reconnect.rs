//! Reconnecting: the policy ([`Reconnect`]: exponential backoff with jitter and a cap, the
//! circuit breaker's thresholds), opening a new connection after one dropped, and
//! recovering on it — confirms back on, the application's declarations replayed in order,
//! its subscriptions made again with the same consumer tags, then the publishes that were
//! not confirmed resent (with their request ids, so their futures resolve with the new
//! connection's confirms).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use super::circuit::{self, Breaker, Circuit};
use super::connection::{self, ReaderEnd, Ws, WsSink};
use super::health::LinkState;
use super::link::{Link, write_frame};
use super::{ClientError, Pending, Shared};
use crate::protocol::{Op, Request, RequestId, Subscribed};

/// How a client reconnects after its connection drops (see [`ConnectOptions::reconnect`]
/// (super::ConnectOptions::reconnect)). The first connection is not retried: `connect`
/// fails if the broker cannot be reached then.
#[derive(Debug, Clone)]
pub struct Reconnect {
    /// The wait before the first attempt.
    pub initial_delay: Duration,
    /// Each failed attempt multiplies the wait by this.
    pub multiplier: f64,
    /// The longest wait between attempts.
    pub max_delay: Duration,
    /// Each wait is drawn uniformly from `[delay × (1 − jitter), delay]`, so clients cut
    /// off together do not come back together.
    pub jitter: f64,
    /// Give up (the client closes) after this many failed attempts in a row; `None`:
    /// never.
    pub max_attempts: Option<u32>,
    /// How long one attempt (TCP, TLS, WebSocket upgrade) may take.
    pub connect_timeout: Duration,
    /// When publishing fails fast instead of waiting for the next connection.
    pub breaker: Breaker,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(10),
            jitter: 0.5,
            max_attempts: None,
            connect_timeout: Duration::from_secs(10),
            breaker: Breaker::default(),
        }
    }
}

impl Reconnect {
    /// The wait before attempt `attempt` (0 for the first after a drop).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponential = self.initial_delay.as_secs_f64()
            * self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let capped = exponential.min(self.max_delay.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64(capped * (1.0 - jitter * fastrand::f64()))
    }
}

/// Opens a new connection, waiting between attempts as the policy says, opening the
/// circuit when the outage passes its thresholds. `None` when the client was closed or
/// dropped meanwhile, or the attempts ran out.
pub(super) async fn reopen(link: &mut Link) -> Option<Ws> {
    let shared = link.shared.clone();
    let policy = shared.reconnect.clone()?;
    let mut attempt = 0;
    loop {
        let wake = tokio::time::Instant::now() + policy.delay(attempt);
        loop {
            let now = Instant::now();
            let until = match circuit::check_outage(&shared, now) {
                Some(open_at) => wake.min(tokio::time::Instant::from_std(open_at)),
                None => wake,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = &mut link.alive => return None,
            }
            if tokio::time::Instant::now() >= wake {
                break;
            }
        }
        let opened = tokio::select! {
            opened = tokio::time::timeout(policy.connect_timeout, connection::open(&link.url, &link.options)) => opened,
            _ = &mut link.alive => return None,
        };
        let error = match opened {
            Ok(Ok(ws)) => return Some(ws),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no connection within {:?}", policy.connect_timeout),
        };
        attempt += 1;
        tracing::debug!(attempt, %error, "reconnecting");
        circuit::on_failed_attempt(&shared, attempt, error);
        circuit::check_outage(&shared, Instant::now());
        if policy.max_attempts.is_some_and(|max| attempt >= max) {
            return None;
        }
    }
}

/// Recovers on a new connection; `Err(why)` if it dropped meanwhile.
pub(super) async fn recover(
    link: &mut Link,
    sink: &mut WsSink,
    end: &mut ReaderEnd,
) -> Result<(), String> {
    let shared = link.shared.clone();
    shared.health.send_if_modified(|health| {
        let open = health.circuit == Circuit::Open;
        if open {
            health.circuit = Circuit::HalfOpen;
        }
        open
    });
    // The probe: the half-open circuit closes once a round trip on this connection
    // succeeds (a refusal counts: the broker answered).
    let mut probed = false;
    if shared.confirms.load(Ordering::Relaxed) {
        if let Err(e) = round_trip(&shared, sink, end, Op::ConfirmSelect).await? {
            note(&shared, format!("turning confirms back on: {e}"));
        }
        probed = true;
    }
    let declarations = shared.topology.lock().unwrap().declarations();
    for op in declarations {
        if let Err(e) = round_trip(&shared, sink, end, op).await? {
            note(&shared, format!("redeclaring: {e}"));
        }
        probed = true;
    }
    let subscriptions = shared.topology.lock().unwrap().subscriptions();
    for subscribe in subscriptions {
        let tag = subscribe.consumer_tag.clone().unwrap_or_default();
        let replied = round_trip(&shared, sink, end, Op::Subscribe(subscribe)).await?;
        probed = true;
        let refused = match replied {
            Ok(value) => serde_json::from_value::<Subscribed>(value)
                .err()
                .map(|e| e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(error) = refused {
            // Its stream ends: the application sees `None` and may subscribe again.
            shared.consumers.lock().unwrap().remove(&tag);
            shared.topology.lock().unwrap().cancelled(&tag);
            note(&shared, format!("resubscribing `{tag}`: {error}"));
        }
    }
    if !probed {
        let _answered = round_trip(&shared, sink, end, Op::ListVhosts).await?;
    }
    let resent = resend(link, sink).await?;
    shared.buffered.store(0, Ordering::Relaxed);
    shared.health.send_modify(|health| {
        health.state = LinkState::Connected;
        health.circuit = Circuit::Closed;
        health.reconnects += 1;
        health.failed_attempts = 0;
        health.disconnected_since = None;
        health.last_connected = Instant::now();
        health.resent += resent;
    });
    Ok(())
}

/// Writes the publishes still waiting for a confirm (by request id, the order they were
/// made in), then those made without confirms while disconnected.
async fn resend(link: &mut Link, sink: &mut WsSink) -> Result<u64, String> {
    let binary = link.shared.binary;
    let unconfirmed = {
        // Under the lock `send` holds while it queues a publish: every publish waiting
        // for a confirm is either queued now (taken off the queue here) or was written
        // to the old connection, so each is written once below.
        let shared = link.shared.clone();
        let mut pending = shared.pending.lock().unwrap();
        link.take_queued(&mut pending);
        let mut unconfirmed: Vec<Request> =
            pending.values().filter_map(|p| p.resend.clone()).collect();
        unconfirmed.sort_by_key(|r| match r.id {
            RequestId::Num(id) => id,
            _ => 0,
        });
        unconfirmed
    };
    let count = unconfirmed
        .iter()
        .filter(|r| matches!(r.op, Op::Publish(_)))
        .count() as u64;
    let mut records = Vec::new();
    for request in unconfirmed {
        let frame = match binary {
            true => connection::Frame::Record(request),
            false => connection::Frame::Text(crate::protocol::encode_request(&request)),
        };
        write_frame(sink, &mut records, frame).await?;
    }
    for item in std::mem::take(&mut link.backlog) {
        write_frame(sink, &mut records, item.frame).await?;
    }
    super::link::flush(sink, &mut records).await?;
    Ok(count)
}

/// One request and its reply on the recovering connection: `Err(why)` if the connection
/// dropped, `Ok(reply)` (an error reply included) otherwise.
async fn round_trip(
    shared: &Shared,
    sink: &mut WsSink,
    end: &mut ReaderEnd,
    op: Op,
) -> Result<Result<serde_json::Value, ClientError>, String> {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (reply, rx) = oneshot::channel();
    let pending = Pending {
        reply,
        consumer: None,
        resend: None,
    };
    shared.pending.lock().unwrap().insert(id, pending);
    let request = Request {
        id: RequestId::Num(id),
        op,
    };
    let text = crate::protocol::encode_request(&request);
    if let Err(e) = sink.send(WsMessage::Text(Utf8Bytes::from(text))).await {
        shared.pending.lock().unwrap().remove(&id);
        return Err(e.to_string());
    }
    tokio::select! {
        biased;
        reply = rx => match reply {
            Ok(Err(ClientError::Disconnected)) | Err(_) => Err(end.wait().await),
            Ok(reply) => Ok(reply),
        },
        reason = end.wait() => {
            shared.pending.lock().unwrap().remove(&id);
            Err(reason)
        }
    }
}

fn note(shared: &Shared, error: String) {
    tracing::warn!(%error, "recovering the client's connection");
    shared
        .health
        .send_modify(|health| health.last_error = Some(error));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_to_its_cap_with_jitter_below_the_delay() {
        let policy = Reconnect {
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(1),
            jitter: 0.5,
            ..Default::default()
        };
        for _ in 0..100 {
            let first = policy.delay(0);
            assert!(first <= Duration::from_millis(100) && first >= Duration::from_millis(50));
            let third = policy.delay(2);
            assert!(third <= Duration::from_millis(400) && third >= Duration::from_millis(200));
            let late = policy.delay(30);
            assert!(late <= Duration::from_secs(1) && late >= Duration::from_millis(500));
        }
        let exact = Reconnect {
            jitter: 0.0,
            ..policy
        };
        assert_eq!(exact.delay(1), Duration::from_millis(200));
        assert_eq!(exact.delay(u32::MAX), Duration::from_secs(1));
    }
}
