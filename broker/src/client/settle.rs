//! Settling deliveries through the client: ack, nack, reject (fire-and-forget, as in
//! AMQP), refused for a delivery whose connection is gone (see [`super::delivery_tags`]).

use std::sync::atomic::Ordering;

use super::health::LinkState;
use super::{Client, ClientError, delivery_tags};
use crate::protocol::Op;

impl Client {
    /// Acks a delivery (fire-and-forget, as in AMQP; an unknown tag is reported by the
    /// broker but not surfaced here). A delivery from a connection that has dropped
    /// cannot be acked: [`ClientError::StaleDelivery`], and the broker redelivers it.
    pub fn ack(&self, delivery_tag: u64, multiple: bool) -> Result<(), ClientError> {
        self.settle(Op::Ack {
            delivery_tag: self.broker_tag(delivery_tag, multiple)?,
            multiple,
        })
    }

    /// The broker's tag for a delivery tag the application got, if its connection is
    /// the current one (see [`delivery_tags`]).
    fn broker_tag(&self, delivery_tag: u64, multiple: bool) -> Result<u64, ClientError> {
        let (generation, tag) = delivery_tags::split(delivery_tag);
        if self.shared.reconnect.is_none() {
            return Ok(delivery_tag);
        }
        // `multiple` with tag 0 settles everything outstanding on the current connection.
        let current =
            generation == self.shared.generation.load(Ordering::SeqCst) || (multiple && tag == 0);
        match current && self.shared.health.borrow().state == LinkState::Connected {
            true => Ok(tag),
            false => Err(ClientError::StaleDelivery { delivery_tag }),
        }
    }

    pub fn nack(
        &self,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), ClientError> {
        self.settle(Op::Nack {
            delivery_tag: self.broker_tag(delivery_tag, multiple)?,
            multiple,
            requeue,
            delay_ms: None,
        })
    }

    /// Nacks with requeue, redelivering after `delay_ms` instead of the queue's backoff.
    pub fn nack_with_delay(&self, delivery_tag: u64, delay_ms: u64) -> Result<(), ClientError> {
        self.settle(Op::Nack {
            delivery_tag: self.broker_tag(delivery_tag, false)?,
            multiple: false,
            requeue: true,
            delay_ms: Some(delay_ms),
        })
    }

    pub fn reject(&self, delivery_tag: u64, requeue: bool) -> Result<(), ClientError> {
        self.settle(Op::Reject {
            delivery_tag: self.broker_tag(delivery_tag, false)?,
            requeue,
        })
    }

    fn settle(&self, op: Op) -> Result<(), ClientError> {
        // Dropping the future is fine: the frame was queued when `send` returned.
        drop(self.send(op, None, false));
        if self.out.is_closed() {
            return Err(ClientError::Closed);
        }
        Ok(())
    }
}
