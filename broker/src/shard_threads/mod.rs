//! Where the router's queue shards and the client connections run.
//!
//! By default each queue shard gets a thread of its own running a single-threaded
//! runtime (`--shard-threads false`: tokio's pool of a worker per core instead), and each
//! client connection's tasks run on the thread of the shard whose queues it uses: they start on shard `id % N` and move to the shard of the first queue
//! the connection consumes from (or, before any consume, of the first queue one of its
//! publishes reaches; `moving_task.rs`), its socket following them
//! (`moving_socket.rs`). A publish, its delivery and its ack on one queue are then
//! handled on one thread: at light load each message wakes that thread and the store
//! writer, not three or four threads (docs/performance.md, "Light load and the shard
//! design").

mod moving_socket;
mod moving_task;

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub use moving_socket::Socket;
pub use moving_task::{ConnPlace, PlacedTask, TaskEnded, current_place, spawn};

use crate::queue::ConnId;

/// The runtimes the queue shards and connections are spawned on. Cheap to clone.
#[derive(Clone)]
pub struct ShardRuntimes {
    count: usize,
    /// One per shard; `None`: everything on tokio's pool.
    handles: Option<Arc<[Handle]>>,
}

/// The shard threads themselves; dropping this stops them (and drops what still runs
/// on them), which the broker does last in its shutdown.
pub struct ShardThreads {
    stops: Vec<oneshot::Sender<()>>,
}

/// Which shard thread this is (`None`: any other thread), and a tag naming its runtime
/// for [`Socket`]: unique in the process, 0 on every thread that is not a shard's.
#[derive(Clone, Copy)]
struct ThreadShard {
    shard: usize,
    runtime: u64,
}

thread_local! {
    static THREAD_SHARD: Cell<Option<ThreadShard>> = const { Cell::new(None) };
}

fn thread_shard() -> Option<ThreadShard> {
    THREAD_SHARD.with(Cell::get)
}

impl ShardRuntimes {
    /// `count` shards on tokio's pool.
    pub fn pool(count: usize) -> Self {
        ShardRuntimes {
            count,
            handles: None,
        }
    }

    /// `count` shard threads, each with a single-threaded runtime.
    pub fn threads(count: usize) -> std::io::Result<(Self, ShardThreads)> {
        static RUNTIMES: AtomicU64 = AtomicU64::new(1);
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for shard in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            let tag = ThreadShard {
                shard,
                runtime: RUNTIMES.fetch_add(1, Ordering::Relaxed),
            };
            std::thread::Builder::new()
                .name(format!("shard-{shard}"))
                .spawn(move || {
                    THREAD_SHARD.with(|t| t.set(Some(tag)));
                    // Tasks on a single-threaded runtime run while it is blocked on.
                    let _ = runtime.block_on(stopped);
                })?;
        }
        let runtimes = ShardRuntimes {
            count,
            handles: Some(handles.into()),
        };
        Ok((runtimes, ShardThreads { stops }))
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Runs queue shard `shard`'s task.
    pub fn spawn_shard<F>(&self, shard: usize, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.handles {
            Some(handles) => drop(handles[shard].spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    /// Runs client connection `id`'s task: with shard threads, on shard `id % N`'s, from
    /// where it (and every task it [`spawn`]s) moves as the connection is placed.
    pub fn spawn_connection<F>(&self, id: ConnId, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.handles {
            Some(handles) => {
                let start = id as usize % handles.len();
                let place = Arc::new(ConnPlace::new(handles.clone(), start));
                drop(moving_task::spawn_placed(place, task));
            }
            None => drop(tokio::spawn(task)),
        }
    }
}

impl Drop for ShardThreads {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}
