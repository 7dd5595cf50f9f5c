//! What the router sends connections: frames, deliveries and closes on each connection's
//! outbound channel ([`ConnTx`]), and the bound on delivery bytes a connection's socket may
//! have queued ([`MAX_OUTBOUND_BYTES`]).

use tokio::sync::mpsc;

use crate::protocol::{Delivery, ServerFrame};
use crate::queue::ConnId;

/// What the router sends a connection's writer.
#[derive(Debug)]
pub enum Outbound {
    Frame(ServerFrame),
    /// A delivery to an auto-ack consumer: the connection reports it back as written
    /// ([`super::Command::Written`]) and that settles it.
    AutoAckDelivery(Delivery),
    /// A WebSocket ping, sent by the connection itself to check that its peer is alive.
    Ping,
    /// The broker ends the connection (its vhost was deleted): close it with this reason.
    Close(String),
}

/// What the router sends a connection, with the channel number and router connection it
/// is for (see [`ConnTx`]).
pub type Addressed = (u16, ConnId, Outbound);
/// The receiving end of a connection's outbound channel.
pub type ConnRx = mpsc::UnboundedReceiver<Addressed>;

/// A connection's outbound channel. Each frame travels with the channel number and router
/// connection it is for: an AMQP connection takes all its channels' frames from one
/// channel, with no task per channel to tag them (a hand-off per frame saved); the other
/// front ends have one router connection, on channel number 0.
#[derive(Clone, Debug)]
pub struct ConnTx {
    tx: mpsc::UnboundedSender<Addressed>,
    channel: u16,
    conn: ConnId,
}

impl ConnTx {
    /// A new outbound channel for router connection `conn`.
    pub fn channel(conn: ConnId) -> (ConnTx, ConnRx) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            ConnTx {
                tx,
                channel: 0,
                conn,
            },
            rx,
        )
    }

    /// A sender on the same channel for another router connection: AMQP channel `channel`.
    pub fn for_channel(&self, channel: u16, conn: ConnId) -> ConnTx {
        ConnTx {
            tx: self.tx.clone(),
            channel,
            conn,
        }
    }

    /// Fails only once the connection has stopped receiving.
    pub fn send(&self, outbound: Outbound) -> Result<(), mpsc::error::SendError<Outbound>> {
        self.tx
            .send((self.channel, self.conn, outbound))
            .map_err(|mpsc::error::SendError((_, _, outbound))| mpsc::error::SendError(outbound))
    }
}

/// Delivery bytes queued for one connection's socket past which its consumers get no
/// more deliveries until its writer drains (a consumer that stops reading cannot grow
/// the broker's memory).
pub const MAX_OUTBOUND_BYTES: usize = 4 * 1024 * 1024;

/// What a delivery counts against [`MAX_OUTBOUND_BYTES`]: its body and a fixed overhead.
pub fn outbound_cost(delivery: &Delivery) -> usize {
    delivery.message.body_len() + 256
}
