//! AMQP 0-9-1: a front end over the same core operations as the JSON protocol, so that
//! RabbitMQ clients connect unmodified. `amq-protocol` (lapin's codec) reads and writes
//! the frames; every method that acts on broker state becomes the core `Op` the JSON
//! protocol uses, sent to the router like any connection's request. Each AMQP channel is
//! a router pseudo-connection of its own. docs/amqp.md says what is supported and how it
//! maps.

mod channel;
mod channels;
mod client_frames;
mod connection;
mod errors;
mod frames;
mod handshake;
mod hot;
mod listener;
mod mapping;
mod methods;
mod reader;
mod reply_to;
mod short_strings;
mod transaction;
mod websocket;
mod writer;

pub(crate) use connection::AmqpContext;
pub(crate) use frames::{Incoming, ReadError, read_frame};
pub(crate) use handshake::Offer;
pub(crate) use listener::{accept_loop, accept_tls_loop};
pub(crate) use mapping::message_from_amqp;
pub use websocket::AMQP_SUBPROTOCOL;
pub(crate) use websocket::serve_websocket;

/// The `frame_max` the broker offers (RabbitMQ's default).
pub const DEFAULT_FRAME_MAX: u32 = 131_072;
/// The most channels one connection may open (RabbitMQ's default).
pub const DEFAULT_CHANNEL_MAX: u16 = 2047;
