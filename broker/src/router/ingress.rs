//! Ingress, the first stage of a publish: a message to a named exchange is routed here,
//! before it reaches the router, so no exchange plugin runs on the router's task (which
//! owns every queue) and a slow or failing plugin delays only the publishes to its own
//! exchange.
//!
//! - A key-only route already cached (or a refusal while the exchange is quarantined) is
//!   answered on the publisher's own task: no hand-off on the hot path.
//! - Anything else waits in its exchange's queue for an exchange worker: a few threads
//!   below the broker's scheduling priority, each taking one exchange at a time and routing
//!   what waits for it in one batch (each message with its own budget). A hostile exchange
//!   occupies one worker at most; the others keep routing everyone else's.
//! - The connection waits for its publish's route before it sends anything else, so its
//!   requests still reach the router in order; and after a request that changes routing
//!   (declare, bind, ...) it waits until the router has applied it, so a publish that
//!   follows is routed with it ([`changes_routing`]).
//!
//! - A publish whose exchange is bound to other exchanges is routed on by each of them
//!   the same way, each on its own cached route or worker ([`hops`]).
//!
//! - A route leaves ingress as the names of its queues, each once ([`ExchangeDirectory`]
//!   maps binding ids to queues).
//!
//! The router still owns the exchanges: it creates them, binds and unbinds, keeping the
//! directory up to date; it skips a queue deleted since ingress routed.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::oneshot;

mod directory;
mod hops;

pub(crate) use directory::ExchangeDirectory;

use super::{Command, Routed};
use crate::exchange::{BindingId, Exchange, ExchangeError};
use crate::message::Message;
use crate::protocol::{Op, Request};

/// Publishes routed by one worker in one turn at most, so one busy exchange cannot keep a
/// worker from the others for long.
const WORKER_BATCH: usize = 256;

/// One declared exchange's routing, shared by the router (which binds and unbinds) and
/// ingress (which routes), with what applying a publish needs of the exchange.
pub(crate) struct SharedExchange {
    routing: Mutex<Box<dyn Exchange>>,
    /// `internal` and `auto_delete` (fixed at declare).
    pub flags: super::exchange_flags::ExchangeFlags,
    /// The qualified name of its `alternate_exchange`, if it has one.
    pub alternate: Option<String>,
    /// Its `delayed` argument: a message's `x-delay` header delays it.
    pub delayed: bool,
    pub counters: super::topology::ExchangeCounters,
    /// Publishes waiting for a worker, and whether the exchange is queued for one.
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    jobs: VecDeque<RouteJob>,
    scheduled: bool,
}

/// A publish (a `Command::Request` with `Op::Publish`) waiting for its route.
struct RouteJob {
    command: Command,
    /// Which version routes it when a canary is deployed (see
    /// [`Exchange::route_cached_drawn`]); drawn once, before the cache is looked at.
    draw: u32,
    done: oneshot::Sender<(Command, RoutedIds)>,
}

/// What one exchange's routing returned: binding ids, resolved to queues once every
/// exchange the publish reaches has routed it.
type RoutedIds = Result<Vec<BindingId>, ExchangeError>;

impl SharedExchange {
    pub fn new(
        routing: Box<dyn Exchange>,
        flags: super::exchange_flags::ExchangeFlags,
        alternate: Option<String>,
        delayed: bool,
    ) -> Arc<Self> {
        Arc::new(SharedExchange {
            routing: Mutex::new(routing),
            flags,
            alternate,
            delayed,
            counters: Default::default(),
            waiting: Mutex::default(),
        })
    }

    /// The exchange's routing, for the router's binding changes. A worker that panicked
    /// holding it left nothing half-done that matters: the plugin instance is replaced
    /// after a failure anyway.
    pub fn lock(&self) -> MutexGuard<'_, Box<dyn Exchange>> {
        self.routing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cheap route, if there is one and no worker holds the exchange.
    fn try_cached(&self, message: &Message, draw: u32) -> Option<RoutedIds> {
        let mut routing = match self.routing.try_lock() {
            Ok(routing) => routing,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        routing.route_cached_drawn(message, draw)
    }

    /// Queues a publish; schedules the exchange on a worker if it is not already.
    fn submit(self: &Arc<Self>, job: RouteJob, run: &RunQueue) {
        let mut waiting = self.waiting.lock().expect("waiting lock poisoned");
        waiting.jobs.push_back(job);
        if !waiting.scheduled {
            waiting.scheduled = true;
            run.schedule(self.clone());
        }
    }

    /// Routes what waits (one batch), answers each publish, and puts the exchange back in
    /// line if more came meanwhile.
    fn route_waiting(self: &Arc<Self>, run: &RunQueue) {
        let jobs: Vec<RouteJob> = {
            let mut waiting = self.waiting.lock().expect("waiting lock poisoned");
            let n = waiting.jobs.len().min(WORKER_BATCH);
            waiting.jobs.drain(..n).collect()
        };
        let (results, shadowed) = {
            let messages: Vec<&Message> = jobs
                .iter()
                .map(|job| publish_message(&job.command).expect("only publishes are queued"))
                .collect();
            let draws: Vec<u32> = jobs.iter().map(|job| job.draw).collect();
            let mut routing = self.lock();
            let results = std::panic::catch_unwind(AssertUnwindSafe(|| {
                routing.route_batch_drawn(&messages, &draws)
            }))
            .unwrap_or_else(|_| {
                let failed = ExchangeError::PluginFailed("the exchange's routing panicked".into());
                vec![Err(failed); messages.len()]
            });
            // A shadow runs after the publishers are answered, on copies.
            let shadowed = routing.shadows().then(|| {
                let copies: Vec<Message> = messages.iter().map(|m| (*m).clone()).collect();
                (copies, results.clone())
            });
            (results, shadowed)
        };
        for (job, routed) in jobs.into_iter().zip(results) {
            // The connection may have gone; its publish goes with it.
            let _ = job.done.send((job.command, routed));
        }
        if let Some((messages, routed)) = shadowed {
            let messages: Vec<&Message> = messages.iter().collect();
            // Behind: more than a batch of publishes waits for this exchange.
            let behind = || {
                let waiting = self.waiting.lock().expect("waiting lock poisoned");
                waiting.jobs.len() > WORKER_BATCH
            };
            let mut routing = self.lock();
            let shadow = AssertUnwindSafe(|| routing.shadow_batch(&messages, &routed, &behind));
            if std::panic::catch_unwind(shadow).is_err() {
                tracing::error!("an exchange's shadow routing panicked");
            }
        }
        let mut waiting = self.waiting.lock().expect("waiting lock poisoned");
        if waiting.jobs.is_empty() {
            waiting.scheduled = false;
        } else {
            run.schedule(self.clone());
        }
    }
}

/// Exchanges with publishes waiting, in the order they asked for a worker.
#[derive(Default)]
struct RunQueue {
    state: Mutex<RunState>,
    ready: Condvar,
}

#[derive(Default)]
struct RunState {
    exchanges: VecDeque<Arc<SharedExchange>>,
    stopped: bool,
}

impl RunQueue {
    fn schedule(&self, exchange: Arc<SharedExchange>) {
        let mut state = self.state.lock().expect("run queue poisoned");
        state.exchanges.push_back(exchange);
        self.ready.notify_one();
    }

    /// The next exchange to route for; `None` once the workers are stopped.
    fn next(&self) -> Option<Arc<SharedExchange>> {
        let mut state = self.state.lock().expect("run queue poisoned");
        loop {
            if state.stopped {
                return None;
            }
            if let Some(exchange) = state.exchanges.pop_front() {
                return Some(exchange);
            }
            state = self.ready.wait(state).expect("run queue poisoned");
        }
    }
}

/// The exchange worker threads: they take exchanges with waiting publishes, one at a
/// time. Dropping this stops them.
pub(crate) struct ExchangeWorkers {
    run: Arc<RunQueue>,
}

impl ExchangeWorkers {
    /// Starts `n` workers below the broker's scheduling priority.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let run = Arc::new(RunQueue::default());
        for i in 0..n.max(1) {
            let run = run.clone();
            std::thread::Builder::new()
                .name(format!("exchange-worker-{i}"))
                .spawn(move || {
                    crate::plugin::lower_thread_priority();
                    while let Some(exchange) = run.next() {
                        exchange.route_waiting(&run);
                    }
                })?;
        }
        Ok(ExchangeWorkers { run })
    }
}

impl Drop for ExchangeWorkers {
    fn drop(&mut self) {
        let mut state = self.run.state.lock().expect("run queue poisoned");
        state.stopped = true;
        self.run.ready.notify_all();
    }
}

/// The ingress stage, shared by every connection's [`super::RouterHandle`].
pub(crate) struct Ingress {
    pub directory: Arc<ExchangeDirectory>,
    workers: ExchangeWorkers,
}

impl Ingress {
    pub fn new(directory: Arc<ExchangeDirectory>, workers: ExchangeWorkers) -> Self {
        Ingress { directory, workers }
    }

    /// Routes `command` if it publishes to a named exchange (stamping the message's
    /// timestamp first, as the plugin may read it); anything else passes unchanged, and so
    /// does a publish to an exchange that does not exist (the router answers it).
    pub async fn route(&self, mut command: Command) -> Command {
        if is_routed(&command) {
            return command;
        }
        let Some(message) = publish_message_mut(&mut command) else {
            return command;
        };
        if super::exchanges::is_default(&message.exchange) {
            return command;
        }
        message
            .properties
            .timestamp
            .get_or_insert_with(crate::clock::now_ms);
        let Some(exchange) = self.directory.get(&message.exchange) else {
            return command;
        };
        let draw = match is_route(&command) {
            // `route` shows the active version's decision (the one `plugin_version`
            // names), never a canary's share.
            true => u32::MAX,
            false => fastrand::u32(..),
        };
        let message = publish_message(&command).expect("checked above");
        let first = match exchange.try_cached(message, draw) {
            Some(routed) => routed,
            None => {
                let (routed_command, routed) = self.route_on_worker(&exchange, command, draw).await;
                command = routed_command;
                routed
            }
        };
        let (command, first) = self.route_extra_keys(command, &exchange, first, draw).await;
        let (mut command, routed) = self.follow_hops(command, first, draw).await;
        set_routed(&mut command, routed.map(|ids| self.directory.resolve(ids)));
        command
    }

    /// [`Self::route`] when it needs no waiting: not a publish, the default exchange, an
    /// exchange not (or no longer) declared, or a cached route with no exchange-to-exchange
    /// bindings to follow. `Err` gives the command back for [`Self::route`] (with what was
    /// already done to it: its timestamp).
    // The command comes back by value either way: it is not copied more than when it is sent.
    #[allow(clippy::result_large_err)]
    pub fn try_route(&self, mut command: Command) -> Result<Command, Command> {
        let Some(message) = publish_message_mut(&mut command) else {
            return Ok(command);
        };
        if super::exchanges::is_default(&message.exchange) {
            return Ok(command);
        }
        message
            .properties
            .timestamp
            .get_or_insert_with(crate::clock::now_ms);
        let Some(exchange) = self.directory.get(&message.exchange) else {
            return Ok(command);
        };
        if is_route(&command) || !self.directory.graph.is_empty() {
            return Err(command);
        }
        let message = publish_message(&command).expect("checked above");
        if !message.extra_routing_keys().is_empty() {
            return Err(command);
        }
        let message = publish_message(&command).expect("checked above");
        match exchange.try_cached(message, fastrand::u32(..)) {
            Some(routed) => {
                set_routed(&mut command, routed.map(|ids| self.directory.resolve(ids)));
                Ok(command)
            }
            None => Err(command),
        }
    }

    /// Routes `command` (its first route: `first`) again with each routing key of its
    /// `CC` and `BCC` headers, through the same exchange; the bindings of every key.
    async fn route_extra_keys(
        &self,
        mut command: Command,
        exchange: &Arc<SharedExchange>,
        first: RoutedIds,
        draw: u32,
    ) -> (Command, RoutedIds) {
        let Ok(mut ids) = first else {
            return (command, first);
        };
        let keys = publish_message(&command).map_or_else(Vec::new, Message::extra_routing_keys);
        if keys.is_empty() {
            return (command, Ok(ids));
        }
        let own = publish_message(&command).map(|m| m.routing_key.clone());
        for key in keys {
            publish_message_mut(&mut command)
                .expect("a publish")
                .routing_key = key;
            let message = publish_message(&command).expect("a publish");
            let routed = match exchange.try_cached(message, draw) {
                Some(routed) => routed,
                None => {
                    let (routed_command, routed) =
                        self.route_on_worker(exchange, command, draw).await;
                    command = routed_command;
                    routed
                }
            };
            match routed {
                Ok(more) => {
                    for id in more {
                        if !ids.contains(&id) {
                            ids.push(id);
                        }
                    }
                }
                Err(e) => return (command, Err(e)),
            }
        }
        if let (Some(message), Some(own)) = (publish_message_mut(&mut command), own) {
            message.routing_key = own;
        }
        (command, Ok(ids))
    }

    /// Hands `command` to `exchange`'s queue for an exchange worker and waits for its
    /// route (the command comes back with it).
    async fn route_on_worker(
        &self,
        exchange: &Arc<SharedExchange>,
        command: Command,
        draw: u32,
    ) -> (Command, RoutedIds) {
        let (done, routed) = oneshot::channel();
        let job = RouteJob {
            command,
            draw,
            done,
        };
        exchange.submit(job, &self.workers.run);
        routed
            .await
            .expect("an exchange worker answers every publish it takes")
    }
}

/// Whether the router must have applied `command` before this connection's next publish
/// is routed at ingress: it changes which exchanges exist or what they are bound to.
pub(crate) fn changes_routing(command: &Command) -> bool {
    matches!(
        command,
        Command::Request {
            request: Request {
                op: Op::DeclareExchange(_)
                    | Op::DeleteExchange { .. }
                    | Op::Bind(_)
                    | Op::Unbind(_)
                    | Op::BindExchange(_)
                    | Op::UnbindExchange(_)
                    | Op::DeleteQueue { .. }
                    | Op::DeleteVhost { .. },
                ..
            },
            ..
        }
    )
}

/// Whether `command` is a `route` (what a publish would do) rather than a publish.
fn is_route(command: &Command) -> bool {
    matches!(
        command,
        Command::Request {
            request: Request {
                op: Op::Route(_),
                ..
            },
            ..
        }
    )
}

/// The message of a publish, or of a `route` (which shows what a publish would do).
fn publish_message(command: &Command) -> Option<&Message> {
    match command {
        Command::Request { request, .. } => match &request.op {
            Op::Publish(publish) => Some(&publish.message),
            Op::Route(message) => Some(message),
            _ => None,
        },
        _ => None,
    }
}

/// Whether `command` is a publish already routed (by [`Ingress::try_route`]).
fn is_routed(command: &Command) -> bool {
    matches!(
        command,
        Command::Request {
            routed: Some(_),
            ..
        }
    )
}

fn publish_message_mut(command: &mut Command) -> Option<&mut Message> {
    match command {
        Command::Request { request, .. } => match &mut request.op {
            Op::Publish(publish) => Some(&mut publish.message),
            Op::Route(message) => Some(message),
            _ => None,
        },
        _ => None,
    }
}

fn set_routed(command: &mut Command, result: Routed) {
    if let Command::Request { routed, .. } = command {
        *routed = Some(result);
    }
}
