//! A connection's tasks, which follow the connection to the shard thread it is placed on.
//!
//! A tokio task cannot change runtimes, but the future it runs can: a [`Moving`] task
//! that finds, when polled, that its connection now belongs on another shard's thread
//! ends, handing its (unfinished, not being polled) future to a new task on that thread.
//! The future's wakers are renewed by its next poll there; its socket re-registers with
//! the new thread's reactor when next used (`moving_socket.rs`). Its timers stay with the
//! old thread's timer wheel, which still fires them (a wake-up across threads, for
//! heartbeats and timeouts only).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Where one client connection's tasks run, shared by them and by the router's record
/// of the connection (which places it, see `router/conn_sends.rs`).
pub struct ConnPlace {
    handles: Arc<[Handle]>,
    /// The shard thread its tasks should run on.
    target: AtomicUsize,
    /// The shard thread its tasks last ran on.
    running: AtomicUsize,
    /// What placed it: [`NOT_PLACED`], [`BY_PUBLISH`] or [`BY_CONSUME`].
    placed_by: AtomicU8,
}

const NOT_PLACED: u8 = 0;
const BY_PUBLISH: u8 = 1;
const BY_CONSUME: u8 = 2;

impl std::fmt::Debug for ConnPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPlace")
            .field("target", &self.target)
            .field("placed_by", &self.placed_by)
            .finish_non_exhaustive()
    }
}

impl ConnPlace {
    pub(super) fn new(handles: Arc<[Handle]>, start: usize) -> Self {
        ConnPlace {
            handles,
            target: AtomicUsize::new(start),
            running: AtomicUsize::new(start),
            placed_by: AtomicU8::new(NOT_PLACED),
        }
    }

    /// The shard thread the connection's tasks should run on (they move there when
    /// next woken).
    pub fn shard(&self) -> usize {
        self.target.load(Ordering::Relaxed)
    }

    /// The shard thread the connection's tasks last ran on.
    pub fn running_on(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// The connection consumes from a queue of `shard`: its first consume places it there
    /// for good (a consumer's deliveries and acks are most of its traffic).
    pub fn consumes_on(&self, shard: usize) {
        if self.placed_by.swap(BY_CONSUME, Ordering::Relaxed) != BY_CONSUME {
            self.target.store(shard, Ordering::Relaxed);
        }
    }

    /// A publish of the connection's reached queues of `shard` alone: its first such
    /// publish places it there, unless a consume does later.
    pub fn publishes_to(&self, shard: usize) {
        let placed = (self.placed_by).compare_exchange(
            NOT_PLACED,
            BY_PUBLISH,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if placed.is_ok() {
            self.target.store(shard, Ordering::Relaxed);
        }
    }
}

thread_local! {
    /// The place of the connection whose task is being polled on this thread.
    static CURRENT_PLACE: RefCell<Option<Arc<ConnPlace>>> = const { RefCell::new(None) };
}

/// The place of the connection whose task is running (`None` outside one, and without
/// shard threads).
pub fn current_place() -> Option<Arc<ConnPlace>> {
    CURRENT_PLACE.with(|current| current.borrow().clone())
}

/// Spawns `task` as one of the running connection's tasks, which moves with it; outside
/// a connection's task, a plain tokio task.
pub fn spawn<F>(task: F) -> PlacedTask<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match current_place() {
        Some(place) => spawn_placed(place, task),
        None => spawn_unplaced(task),
    }
}

pub(super) fn spawn_placed<F>(place: Arc<ConnPlace>, task: F) -> PlacedTask<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (moving, handle) = Moving::new(Some(place.clone()), task);
    let here = super::thread_shard().map(|t| t.shard);
    match here {
        // Started on its thread already: it moves, if it must, when first polled.
        Some(_) => drop(tokio::spawn(moving)),
        None => drop(place.handles[place.shard()].spawn(moving)),
    }
    handle
}

fn spawn_unplaced<F>(task: F) -> PlacedTask<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (moving, handle) = Moving::new(None, task);
    drop(tokio::spawn(moving));
    handle
}

/// What a [`PlacedTask`] and its running future share.
struct Abort {
    asked: AtomicBool,
    /// The waker of whichever tokio task runs the future now.
    waker: AtomicWaker,
}

/// A task's future, on whichever thread its connection is placed.
struct Moving<F: Future> {
    future: Option<Pin<Box<F>>>,
    place: Option<Arc<ConnPlace>>,
    done: Option<oneshot::Sender<F::Output>>,
    abort: Arc<Abort>,
}

impl<F: Future> Moving<F> {
    fn new(place: Option<Arc<ConnPlace>>, future: F) -> (Self, PlacedTask<F::Output>) {
        let (done, finished) = oneshot::channel();
        let abort = Arc::new(Abort {
            asked: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let moving = Moving {
            future: Some(Box::pin(future)),
            place,
            done: Some(done),
            abort: abort.clone(),
        };
        (moving, PlacedTask { finished, abort })
    }
}

impl<F> Future for Moving<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.abort.waker.register(cx.waker());
        if this.abort.asked.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let Some(future) = this.future.as_mut() else {
            return Poll::Ready(());
        };
        if let Some(place) = &this.place {
            let target = place.shard();
            let here = super::thread_shard().map(|t| t.shard);
            if here != Some(target) {
                let moved = Moving {
                    future: this.future.take(),
                    place: this.place.clone(),
                    done: this.done.take(),
                    abort: this.abort.clone(),
                };
                drop(place.handles[target].spawn(moved));
                return Poll::Ready(());
            }
            if let Some(here) = here {
                place.running.store(here, Ordering::Relaxed);
            }
        }
        let _current = CurrentPlace::enter(this.place.clone());
        match future.as_mut().poll(cx) {
            Poll::Ready(output) => {
                if let Some(done) = this.done.take() {
                    let _ = done.send(output);
                }
                this.future = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Sets [`CURRENT_PLACE`] while a task's future is polled (restored on unwind too).
struct CurrentPlace(Option<Arc<ConnPlace>>);

impl CurrentPlace {
    fn enter(place: Option<Arc<ConnPlace>>) -> Self {
        CurrentPlace(CURRENT_PLACE.with(|current| current.replace(place)))
    }
}

impl Drop for CurrentPlace {
    fn drop(&mut self) {
        let before = self.0.take();
        CURRENT_PLACE.with(|current| *current.borrow_mut() = before);
    }
}

/// A spawned connection task: await it for its output, wherever it runs now.
pub struct PlacedTask<T> {
    finished: oneshot::Receiver<T>,
    abort: Arc<Abort>,
}

/// The task ended without an output: it panicked, was aborted, or its runtime stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskEnded;

impl<T> PlacedTask<T> {
    /// Stops the task at its next poll (it is woken for it), dropping its future.
    pub fn abort(&self) {
        self.abort.asked.store(true, Ordering::Release);
        self.abort.waker.wake();
    }
}

impl<T> Future for PlacedTask<T> {
    type Output = Result<T, TaskEnded>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.finished)
            .poll(cx)
            .map(|ended| ended.map_err(|_| TaskEnded))
    }
}
