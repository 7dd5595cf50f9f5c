//! A message broker whose routing is programmable with sandboxed WebAssembly plugins.
//!
//! The path of a message: a [`server`] connection task parses a frame and hands it to the
//! [`router`], the one owner of queues, exchanges and consumers; the router routes it,
//! enqueues it and asks the [`store`] to persist it (group commit); the store's writer
//! confirms to the publisher after commit; the router dispatches to consumers.

pub mod exchange;
pub mod message;
pub mod plugin;
