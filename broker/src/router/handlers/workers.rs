//! The worker threads of a handler attachment: each holds one plugin instance and takes
//! deliveries (consume mode) or filter jobs off a shared channel, calls the handler off
//! the router's task and reports each verdict back to the router.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::{AttachmentStats, Done, FilterJob, Published, Verdict};
use crate::message::Message;
use crate::plugin::{
    Handled, HandlerOutcome, HandlerSlot, HandlerVersion, LiveHandler, LogThrottle,
};
use crate::protocol::ServerFrame;
use crate::queue::ConnId;
use crate::router::ingress::ExchangeDirectory;
use crate::router::{Command, ConnRx, Outbound};

/// Where a pool's workers take their work from.
pub(super) enum Input {
    /// Deliveries to the attachment's connection.
    Consume(ConnRx, ConnId),
    Filter(mpsc::UnboundedReceiver<FilterJob>),
}

/// What every worker of an attachment shares.
#[derive(Clone)]
pub(super) struct Pool {
    pub slot: Arc<HandlerSlot>,
    /// The version the attachment started on (its first instance's).
    pub initial: HandlerVersion,
    pub queue: String,
    pub config: Vec<(String, String)>,
    pub stats: Arc<AttachmentStats>,
    pub stop: Arc<AtomicBool>,
    pub router: mpsc::UnboundedSender<Command>,
    /// Where the handler's outputs are routed, on the worker's thread.
    pub directory: Arc<ExchangeDirectory>,
    /// One failure line per second for the attachment, whichever worker failed.
    pub failure_log: Arc<Mutex<LogThrottle>>,
}

impl Pool {
    /// Starts `n` worker threads; the first gets the already initialised instance.
    pub(super) fn spawn(self, n: u32, first: LiveHandler, input: Input) {
        let (input, conn) = match input {
            Input::Consume(rx, conn) => (Either::Consume(Arc::new(Mutex::new(rx))), conn),
            Input::Filter(rx) => (Either::Filter(Arc::new(Mutex::new(rx))), 0),
        };
        let mut first = Some(first);
        for i in 0..n {
            let worker = Worker {
                ran: self.initial.clone(),
                pool: self.clone(),
                live: first.take(),
                refused_generation: None,
            };
            let input = input.clone();
            let name = format!("handler-{}-{i}", self.slot.name());
            let spawned = std::thread::Builder::new()
                .name(name)
                .spawn(move || match input {
                    Either::Consume(rx) => worker.consume(&rx, conn),
                    Either::Filter(rx) => worker.filter(&rx),
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a handler worker thread");
            }
        }
    }
}

#[derive(Clone)]
enum Either {
    Consume(Arc<Mutex<ConnRx>>),
    Filter(Arc<Mutex<mpsc::UnboundedReceiver<FilterJob>>>),
}

/// One worker thread: one plugin instance, one call at a time.
struct Worker {
    pool: Pool,
    live: Option<LiveHandler>,
    /// The version the worker runs (or last ran, if its instance failed): a new instance
    /// is of this version while the active one refuses the attachment.
    ran: HandlerVersion,
    /// The plugin generation that refused the attachment (so it is not retried on every
    /// message).
    refused_generation: Option<u64>,
}

impl Worker {
    fn stopped(&self) -> bool {
        self.pool.stop.load(Ordering::Acquire)
    }

    /// Runs the handler, on the current plugin version (taken per call, never mid-call).
    fn call(&mut self, msg: &Message, delivery_count: u32) -> Result<Handled, String> {
        let generation = self.pool.slot.generation();
        let current = self.live.as_ref().map(LiveHandler::generation);
        // A version other than the one running (or no instance): try the active version,
        // each version once.
        if current != Some(generation) && self.refused_generation != Some(generation) {
            match self
                .pool
                .slot
                .instantiate_active(&self.pool.queue, &self.pool.config)
            {
                Ok(live) => {
                    self.pool.stats.running(live.version());
                    self.ran = live.handler_version();
                    self.live = Some(live);
                    self.refused_generation = None;
                }
                // The active version refuses the config (or fails to start for it): stay
                // on the version we run.
                Err((version, e)) if version != self.ran.version() => {
                    tracing::warn!(plugin = self.pool.slot.name(), queue = %self.pool.queue, version, running = self.ran.version(), error = %e, "redeployed handler refused the attachment; keeping the previous version");
                    self.pool.stats.refused(version, e.to_string());
                    self.refused_generation = Some(generation);
                }
                Err((_, e)) => return Err(e.to_string()),
            }
        }
        if self.live.is_none() {
            // The instance failed and the active version refused the attachment: a fresh
            // instance of the version it ran.
            let live = self
                .pool
                .slot
                .instantiate_version(&self.ran, &self.pool.queue, &self.pool.config)
                .map_err(|e| e.to_string())?;
            self.live = Some(live);
        }
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| "no handler instance".to_owned())?;
        let version = live.version();
        let result = live.handle(msg, delivery_count);
        if let Err(reason) = &result {
            // A failed instance is not reused; the next call starts a fresh one.
            self.live = None;
            let admitted = self.pool.failure_log.lock().map(|mut log| log.admit());
            if let Ok(Some(suppressed)) = admitted {
                tracing::warn!(plugin = self.pool.slot.name(), version, queue = %self.pool.queue, %reason, suppressed, "handler call failed");
            }
        }
        result
    }

    /// Routes what the handler published, its exchanges named in its queue's vhost.
    fn route(&self, published: Vec<Message>) -> Vec<Published> {
        let vhost = crate::vhost::of(&self.pool.queue);
        let now = crate::clock::now_ms();
        published
            .into_iter()
            .map(|mut message| {
                message.exchange = crate::vhost::qualify(vhost, &message.exchange);
                message.properties.timestamp.get_or_insert(now);
                let routed = self.pool.directory.route_now(&message);
                Published { message, routed }
            })
            .collect()
    }

    fn consume(mut self, rx: &Mutex<ConnRx>, conn: ConnId) {
        loop {
            let next = rx.lock().expect("worker lock poisoned").blocking_recv();
            let Some((_, _, out)) = next else { break };
            let delivery = match out {
                Outbound::Frame(ServerFrame::Deliver(d)) | Outbound::AutoAckDelivery(d) => d,
                _ => continue,
            };
            if self.stopped() {
                break;
            }
            let stats = self.pool.stats.clone();
            AttachmentStats::count(&stats.handled);
            let verdict = match self.call(&delivery.message, delivery.delivery_count) {
                Ok(Handled { outcome, published }) => {
                    stats
                        .published
                        .fetch_add(published.len() as u64, Ordering::Relaxed);
                    match outcome {
                        HandlerOutcome::Ack | HandlerOutcome::Drop => {
                            AttachmentStats::count(&stats.acked);
                            Verdict::Ack(self.route(published))
                        }
                        HandlerOutcome::Retry(delay) => {
                            AttachmentStats::count(&stats.retried);
                            Verdict::Retry(delay)
                        }
                        HandlerOutcome::Reject(reason) => {
                            AttachmentStats::count(&stats.rejected);
                            Verdict::Reject(reason, self.route(published))
                        }
                        HandlerOutcome::Deliver(_) => {
                            AttachmentStats::count(&stats.failed);
                            Verdict::Failed(
                                "returned `deliver`, which only a filter may; use ack or publish"
                                    .into(),
                            )
                        }
                    }
                }
                Err(reason) => {
                    AttachmentStats::count(&stats.failed);
                    Verdict::Failed(reason)
                }
            };
            let done = Done {
                conn,
                delivery_tag: delivery.delivery_tag,
                verdict,
            };
            if self
                .pool
                .router
                .send(Command::HandlerDone(Box::new(done)))
                .is_err()
            {
                break;
            }
        }
    }

    fn filter(mut self, rx: &Mutex<mpsc::UnboundedReceiver<FilterJob>>) {
        loop {
            let next = rx.lock().expect("worker lock poisoned").blocking_recv();
            let Some(job) = next else { break };
            let FilterJob {
                mut delivery,
                auto_ack,
                conn,
                tx,
            } = job;
            let stats = self.pool.stats.clone();
            AttachmentStats::count(&stats.handled);
            let verdict = match self.call(&delivery.message, delivery.delivery_count) {
                Ok(Handled { outcome, .. }) => match outcome {
                    HandlerOutcome::Ack => None,
                    HandlerOutcome::Deliver(message) => {
                        AttachmentStats::count(&stats.transformed);
                        delivery.message = Arc::new(*message);
                        None
                    }
                    HandlerOutcome::Drop => {
                        AttachmentStats::count(&stats.dropped);
                        Some(Verdict::Ack(Vec::new()))
                    }
                    HandlerOutcome::Retry(delay) => {
                        AttachmentStats::count(&stats.retried);
                        Some(Verdict::Retry(delay))
                    }
                    HandlerOutcome::Reject(reason) => {
                        AttachmentStats::count(&stats.rejected);
                        Some(Verdict::Reject(reason, Vec::new()))
                    }
                },
                Err(reason) => {
                    AttachmentStats::count(&stats.failed);
                    Some(Verdict::Failed(reason))
                }
            };
            match verdict {
                None => {
                    let out = if auto_ack {
                        Outbound::AutoAckDelivery(delivery)
                    } else {
                        Outbound::Frame(ServerFrame::Deliver(delivery))
                    };
                    // Fails only while the subscriber's connection closes; its Close requeues.
                    let _ = tx.send(out);
                }
                Some(verdict) => {
                    let done = Done {
                        conn,
                        delivery_tag: delivery.delivery_tag,
                        verdict,
                    };
                    if self
                        .pool
                        .router
                        .send(Command::HandlerDone(Box::new(done)))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    }
}
