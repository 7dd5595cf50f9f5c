//! Handler attachments: Wasm handlers run as in-broker consumers of a queue (`consume`
//! mode) or in front of subscriptions (`filter` mode).
//!
//! A consume-mode attachment is modelled as a connection: it has a connection id, a
//! channel the router delivers into and a consumer on the queue with a prefetch window,
//! so dispatch, redelivery, retries with backoff, the delivery limit and dead-lettering
//! are exactly those of a remote consumer. Worker threads (one plugin instance each) run
//! the calls off the router's task and answer each delivery with one
//! [`Command::HandlerDone`] carrying the outcome *and* the messages the handler
//! published; the router applies both in the same turn, so they go into the same store
//! batch, which commits in one redb transaction.
//!
//! What can run twice: a handler whose delivery is not settled before the broker stops
//! or crashes, or before its attachment is detached. The message is then redelivered and
//! the handler runs again; the first run's publishes were never stored, so the broker's
//! own outputs do not duplicate, but effects outside the broker (an email really sent)
//! can.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::queues::check_access;
use super::{Answer, Command, OpError, Outbound, Reply, Router, Settle};
use crate::message::Message;
use crate::plugin::{HandlerError, HandlerSlot, LiveHandler};
use crate::protocol::{
    AttachHandler, ErrorCode, HandlerCounts, HandlerList, HandlerMode, HandlerRefusal, HandlerRow,
    RequestId, ServerFrame,
};
use crate::queue::{ConnId, Consumer, Retry};
use crate::store::StoreOp;

mod filters;
mod outputs;
mod workers;
pub(super) use filters::{FilterJob, FilterRoute};
use workers::{Input, Pool};

/// Deliveries held per worker: one running, the rest queued so a worker never waits for
/// the router between messages.
const WINDOW_PER_WORKER: u32 = 8;
/// Most workers (instances) of one attachment.
pub const MAX_CONCURRENCY: u32 = 64;

/// What a handler decided about one delivery, for the router to apply.
#[derive(Debug)]
pub enum Verdict {
    /// Ack it, after storing what the handler published.
    Ack(Vec<Published>),
    /// Redeliver it after this delay, or after the queue's backoff.
    Retry(Option<u64>),
    /// Dead-letter it (reason `rejected`), after storing what the handler published.
    Reject(String, Vec<Published>),
    /// The call failed (trap, limits, broken contract): a failed delivery whose death
    /// reason at the delivery limit is `plugin_error`.
    Failed(String),
}

/// A message a handler published (its exchange named in the vhost of the handler's
/// queue), routed on the handler's worker thread as ingress routes a client's publish.
#[derive(Debug)]
pub struct Published {
    pub message: Message,
    /// `None`: the default exchange, routed by the router.
    pub routed: Option<super::Routed>,
}

/// An attach whose first instance is ready, for the router to register.
pub struct Started {
    conn: ConnId,
    id: RequestId,
    record: AttachHandler,
    slot: Arc<HandlerSlot>,
    first: LiveHandler,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("conn", &self.conn)
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// A handler's answer to one delivery.
#[derive(Debug)]
pub struct Done {
    pub conn: ConnId,
    pub delivery_tag: u64,
    pub verdict: Verdict,
}

/// Counters of one attachment.
#[derive(Debug, Default)]
struct AttachmentStats {
    handled: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    transformed: AtomicU64,
    published: AtomicU64,
    /// The plugin version the attachment's instances run (0: bundled or unversioned).
    version: AtomicU64,
    /// The active version, when it refused the attachment (its config, or failed
    /// starting for it), and why; cleared when an instance of an active version starts.
    refused: std::sync::Mutex<Option<(u64, String)>>,
}

impl AttachmentStats {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// An instance of the active version, `version`, started for the attachment.
    fn running(&self, version: u64) {
        self.version.store(version, Ordering::Relaxed);
        *self.refused.lock().expect("attachment lock poisoned") = None;
    }

    /// `version` refused the attachment; its instances stay on the version they run.
    fn refused(&self, version: u64, reason: String) {
        *self.refused.lock().expect("attachment lock poisoned") = Some((version, reason));
    }

    /// The version its instances run (`None` for version 0) and the refusal, if any.
    fn version(&self) -> (Option<u64>, Option<HandlerRefusal>) {
        let version = self.version.load(Ordering::Relaxed);
        let refused = self.refused.lock().expect("attachment lock poisoned");
        let refused = refused.as_ref().map(|(version, reason)| HandlerRefusal {
            version: *version,
            reason: reason.clone(),
        });
        ((version > 0).then_some(version), refused)
    }

    fn counts(&self) -> HandlerCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HandlerCounts {
            handled: get(&self.handled),
            acked: get(&self.acked),
            retried: get(&self.retried),
            rejected: get(&self.rejected),
            failed: get(&self.failed),
            dropped: get(&self.dropped),
            transformed: get(&self.transformed),
            published: get(&self.published),
        }
    }
}

/// (queue, plugin): one attachment per pair.
type Key = (Arc<str>, String);

struct Attachment {
    record: AttachHandler,
    /// Consume mode: the attachment's connection.
    conn: Option<ConnId>,
    /// Filter mode: where deliveries to its subscribers go.
    filter_tx: Option<mpsc::UnboundedSender<FilterJob>>,
    stop: Arc<AtomicBool>,
    stats: Arc<AttachmentStats>,
    subscribers: usize,
}

/// The router's handler state.
#[derive(Default)]
pub(super) struct Handlers {
    attachments: HashMap<Key, Attachment>,
    /// (subscriber connection, consumer tag) → its filter.
    pub filters: HashMap<(ConnId, Arc<str>), FilterRoute>,
}

fn handler_error(e: HandlerError) -> OpError {
    let code = match &e {
        HandlerError::Unknown(_) => ErrorCode::PluginNotFound,
        HandlerError::NotAHandler(_) | HandlerError::Config(_) => ErrorCode::InvalidField,
        HandlerError::Failed(_) => ErrorCode::PluginError,
    };
    OpError::new(code, e.to_string())
}

fn not_attached(queue: &str, plugin: &str) -> OpError {
    OpError::new(
        ErrorCode::PluginNotFound,
        format!("no handler `{plugin}` attached to queue `{queue}`"),
    )
}

impl Router {
    /// Checks the request, then compiles (bundled plugins, on first use) and initialises
    /// the first instance off the router's task; [`Router::handler_started`] finishes.
    pub(super) fn attach_handler(
        &mut self,
        conn: ConnId,
        id: RequestId,
        attach: AttachHandler,
    ) -> Result<Reply, OpError> {
        if let Some(reply) = self.check_attach(conn, &attach)? {
            return Ok(reply);
        }
        let Some(tx) = self.conns.get(&conn).map(|c| c.tx.clone()) else {
            return Ok(Reply::Silent);
        };
        let (plugins, router) = (self.plugins.clone(), self.self_tx.clone());
        tokio::spawn(async move {
            let record = attach.clone();
            let started = tokio::task::spawn_blocking(move || {
                let slot = plugins.handler(&record.plugin)?;
                let config: Vec<(String, String)> = record.config.into_iter().collect();
                let first = slot.instantiate(&record.queue, &config)?;
                Ok::<_, HandlerError>((slot, first))
            })
            .await
            .unwrap_or_else(|e| Err(HandlerError::Failed(format!("start task failed: {e}"))));
            match started {
                Ok((slot, first)) => {
                    let started = Started {
                        conn,
                        id,
                        record: attach,
                        slot,
                        first,
                    };
                    let _ = router.send(Command::HandlerStarted(Box::new(started)));
                }
                Err(e) => {
                    let e = handler_error(e);
                    let frame = ServerFrame::error(Some(id), e.code, e.message);
                    let _ = tx.send(Outbound::Frame(frame));
                }
            }
        });
        Ok(Reply::Silent)
    }

    /// What an attach must satisfy, checked when it arrives and again once its first
    /// instance is ready (the queue or another attach may have changed meanwhile).
    fn check_attach(&self, conn: ConnId, attach: &AttachHandler) -> Result<Option<Reply>, OpError> {
        let queue = self.queue(&attach.queue)?;
        check_access(queue, self.owner(conn))?;
        if !(1..=MAX_CONCURRENCY).contains(&attach.concurrency) {
            let message = format!("`concurrency` must be 1 to {MAX_CONCURRENCY}");
            return Err(OpError::new(ErrorCode::InvalidField, message));
        }
        let key: Key = (attach.queue.as_str().into(), attach.plugin.clone());
        match self.handlers.attachments.get(&key) {
            None => Ok(None),
            Some(existing) if existing.record == *attach => Ok(Some(Reply::Ok(Answer::Done))),
            Some(_) => {
                let message = format!(
                    "handler `{}` is attached to queue `{}` with a different mode/concurrency/config; detach it first",
                    attach.plugin, attach.queue
                );
                Err(OpError::new(ErrorCode::PreconditionFailed, message))
            }
        }
    }

    /// An attach whose first instance is ready: start it (the reply follows the commit of
    /// its record for a durable queue).
    pub(super) fn handler_started(&mut self, started: Started) {
        let Started {
            conn,
            id,
            record,
            slot,
            first,
        } = started;
        let result = match self.check_attach(conn, &record) {
            Err(e) => Err(e),
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => {
                let stored = self
                    .queues
                    .get(record.queue.as_str())
                    .is_some_and(|q| q.is_stored());
                tracing::info!(queue = %record.queue, plugin = %record.plugin, mode = ?record.mode, "handler attached");
                self.start_with(record.clone(), slot, first);
                if stored {
                    self.turn.store(StoreOp::PutHandler(record));
                    Ok(Reply::OkAfterCommit(Answer::Done))
                } else {
                    Ok(Reply::Ok(Answer::Done))
                }
            }
        };
        self.answer(conn, id, result, None);
    }

    pub(super) fn detach_handler(&mut self, queue: &str, plugin: &str) -> Result<Reply, OpError> {
        let key: Key = (queue.into(), plugin.to_owned());
        let attachment = self
            .handlers
            .attachments
            .get(&key)
            .ok_or_else(|| not_attached(queue, plugin))?;
        if attachment.subscribers > 0 {
            let message = format!(
                "filter `{plugin}` is in use by {} subscription(s) on `{queue}`; cancel them first",
                attachment.subscribers
            );
            return Err(OpError::new(ErrorCode::PreconditionFailed, message));
        }
        self.stop_attachment(&key);
        tracing::info!(queue, plugin, "handler detached");
        self.turn.store(StoreOp::DeleteHandler {
            queue: queue.to_owned(),
            plugin: plugin.to_owned(),
        });
        Ok(Reply::OkAfterCommit(Answer::Done))
    }

    pub(super) fn list_handlers(&self, conn: ConnId) -> Reply {
        let vhost = self.conn_vhost(conn);
        let mut rows: Vec<_> = self
            .handlers
            .attachments
            .values()
            .filter(|a| crate::vhost::of(&a.record.queue) == vhost)
            .map(|a| {
                let r = &a.record;
                let (plugin_version, refused) = a.stats.version();
                HandlerRow {
                    queue: r.queue.clone(),
                    plugin: r.plugin.clone(),
                    mode: r.mode,
                    concurrency: r.concurrency,
                    config: r.config.clone(),
                    plugin_version,
                    refused,
                    subscribers: a.subscribers,
                    stats: a.stats.counts(),
                }
            })
            .collect();
        rows.sort_by(|a, b| (&a.queue, &a.plugin).cmp(&(&b.queue, &b.plugin)));
        Reply::Ok(HandlerList { handlers: rows }.into())
    }

    /// Re-attaches the stored attachments at startup (after the plugin versions are
    /// restored); one whose plugin is missing stays stored for a later start.
    pub(super) fn restore_handlers(&mut self, records: Vec<AttachHandler>) {
        for record in records {
            if !self.queues.contains_key(record.queue.as_str()) {
                self.turn.store(StoreOp::DeleteHandler {
                    queue: record.queue,
                    plugin: record.plugin,
                });
                continue;
            }
            let (queue, plugin) = (record.queue.clone(), record.plugin.clone());
            if let Err(e) = self.start_attachment(record) {
                tracing::error!(%queue, %plugin, error = %e.message, "cannot restore handler attachment; it stays stored");
            }
        }
    }

    /// Detaches every handler of queue `name` (being deleted) and forgets its filters.
    pub(super) fn remove_queue_handlers(&mut self, name: &str) {
        let keys: Vec<Key> = self
            .handlers
            .attachments
            .keys()
            .filter(|(q, _)| &**q == name)
            .cloned()
            .collect();
        for key in keys {
            self.stop_attachment(&key);
            self.turn.store(StoreOp::DeleteHandler {
                queue: key.0.to_string(),
                plugin: key.1,
            });
        }
        self.handlers
            .filters
            .retain(|_, route| &*route.key.0 != name);
    }

    /// The queues with an attachment running handler `plugin`, on every shard.
    pub(super) fn attached_queues(&self, plugin: &str) -> Vec<String> {
        self.queues.placement().attached_queues(plugin)
    }

    /// Applies a handler's verdict on a delivery it still holds. Publishes and the ack
    /// land in this turn's store batch: one commit.
    pub(super) fn handler_done(&mut self, done: Done) {
        // After a detach or a closed subscriber the delivery was requeued: its verdict and
        // publishes must not apply.
        let held = self
            .conns
            .get(&done.conn)
            .is_some_and(|c| c.holds(done.delivery_tag));
        if !held {
            return;
        }
        // Outputs for queues of other shards, forwarded once the verdict is applied.
        let mut elsewhere = Vec::new();
        let how = match done.verdict {
            Verdict::Ack(published) => match self.publish_outputs(published, &mut elsewhere) {
                Ok(()) => Settle::Ack,
                Err(e) => {
                    tracing::warn!(error = %e.message, "handler output not routable; delivery failed");
                    Settle::Failed
                }
            },
            Verdict::Retry(None) => Settle::Retry(Retry::Backoff),
            Verdict::Retry(Some(ms)) => Settle::Retry(Retry::After(ms)),
            Verdict::Reject(reason, published) => {
                tracing::info!(%reason, "handler rejected a message; dead-lettering it");
                match self.publish_outputs(published, &mut elsewhere) {
                    Ok(()) => Settle::DeadLetter,
                    Err(e) => {
                        tracing::warn!(error = %e.message, "handler output not routable; delivery failed");
                        Settle::Failed
                    }
                }
            }
            Verdict::Failed(reason) => {
                // Logged by the worker, with the plugin, version and queue, rate-limited.
                tracing::debug!(%reason, "handler call failed");
                Settle::Failed
            }
        };
        if how == Settle::Failed {
            elsewhere.clear();
        }
        if elsewhere.is_empty() {
            let _ = self.settle(done.conn, done.delivery_tag, false, how);
        } else {
            // Settled when the shards of the outputs answer: a full queue there fails it.
            self.forward_outputs((done.conn, done.delivery_tag), how, elsewhere);
        }
    }

    /// Starts a stored attachment (startup: blocking is fine there).
    fn start_attachment(&mut self, record: AttachHandler) -> Result<(), OpError> {
        if !self.queues.contains_key(record.queue.as_str()) {
            let message = format!("no queue `{}`", record.queue);
            return Err(OpError::new(ErrorCode::QueueNotFound, message));
        }
        let slot = self
            .plugins
            .handler(&record.plugin)
            .map_err(handler_error)?;
        let config: Vec<(String, String)> = record.config.clone().into_iter().collect();
        // The first instance runs `init`, so a bad config refuses the attachment.
        let first = slot
            .instantiate(&record.queue, &config)
            .map_err(handler_error)?;
        self.start_with(record, slot, first);
        Ok(())
    }

    /// Registers an attachment (its queue exists) and starts its workers.
    fn start_with(&mut self, record: AttachHandler, slot: Arc<HandlerSlot>, first: LiveHandler) {
        let (queue, _) = self
            .queues
            .get_key_value(record.queue.as_str())
            .expect("callers check the queue exists");
        let queue = queue.clone();
        let config: Vec<(String, String)> = record.config.clone().into_iter().collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(AttachmentStats::default());
        stats.running(first.version());
        let pool = Pool {
            directory: self.topology.directory.clone(),
            initial: first.handler_version(),
            slot,
            queue: record.queue.clone(),
            config,
            stats: stats.clone(),
            stop: stop.clone(),
            router: self.self_tx.clone(),
            failure_log: Default::default(),
        };
        let mut attachment = Attachment {
            record,
            conn: None,
            filter_tx: None,
            stop,
            stats,
            subscribers: 0,
        };
        match attachment.record.mode {
            HandlerMode::Consume => {
                let conn = self.conn_ids.next();
                let (tx, rx) = super::ConnTx::channel(conn);
                let vhost = crate::vhost::of(&queue).into();
                let open = super::OpenConn {
                    conn,
                    tx,
                    peer: None,
                    outbound: None,
                    user: None,
                    vhost,
                    session: None,
                    protocol: Default::default(),
                    link: Default::default(),
                };
                let state = super::Conn::new(open, self.queues.shard());
                self.open_conn(conn, state);
                let tag: Arc<str> = format!("handler.{}", attachment.record.plugin).into();
                let prefetch = attachment.record.concurrency * WINDOW_PER_WORKER;
                self.conns
                    .get_mut(&conn)
                    .expect("just opened")
                    .consumers
                    .push((queue.clone(), tag.clone()));
                self.queues
                    .get_mut(&queue)
                    .expect("checked above")
                    .add_consumer(Consumer::new(conn, tag, prefetch, false));
                self.turn.to_dispatch.insert(queue.clone());
                pool.spawn(
                    attachment.record.concurrency,
                    first,
                    Input::Consume(rx, conn),
                );
                attachment.conn = Some(conn);
            }
            HandlerMode::Filter => {
                let (tx, rx) = mpsc::unbounded_channel();
                pool.spawn(attachment.record.concurrency, first, Input::Filter(rx));
                attachment.filter_tx = Some(tx);
            }
        }
        let key: Key = (queue, attachment.record.plugin.clone());
        self.queues
            .placement()
            .note_attachment(&key.0, &key.1, true);
        self.handlers.attachments.insert(key, attachment);
    }

    /// Stops an attachment's workers; its held deliveries go back to the queue without
    /// counting as failed (nobody failed).
    fn stop_attachment(&mut self, key: &Key) {
        let Some(attachment) = self.handlers.attachments.remove(key) else {
            return;
        };
        self.queues
            .placement()
            .note_attachment(&key.0, &key.1, false);
        attachment.stop.store(true, Ordering::Release);
        if let Some(conn) = attachment.conn {
            self.close_conn(conn, true);
        }
    }
}
