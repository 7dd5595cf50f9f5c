//! A message broker whose routing is programmable with sandboxed WebAssembly plugins.
//!
//! The path of a message: a [`server`] connection task parses a frame and hands it to the
//! [`router`], the one owner of queues, exchanges and consumers; the router routes it,
//! enqueues it and asks the [`store`] to persist it (group commit); the store's writer
//! confirms to the publisher after commit; the router dispatches to consumers.

pub mod amqp;
pub mod auth;
pub mod client;
pub mod clock;
pub(crate) mod conn_ids;
pub mod exchange;
pub(crate) mod fast_map;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod message;
pub mod metrics;
pub mod plugin;
pub mod protocol;
pub mod queue;
pub mod router;
pub mod server;
pub mod shard_threads;
pub mod stomp;
pub mod store;
pub mod vhost;

pub use client::{
    Client, ClientError, ClientTls, ConnectOptions, QueueOptions, Reconnect, Subscription,
};
pub use message::{Headers, Message, Properties};
pub use server::{Broker, Config};
