//! The consumer timeout (RabbitMQ's `consumer_timeout`): a client's delivery left unacked
//! for longer than it ends its consumer's connection (for AMQP, the channel: a channel
//! exception 406), and its unacked messages return to their queues for other consumers.
//! A stuck consumer cannot hold messages forever. A delivery's limit is its consumer's
//! `x-consumer-timeout`, else its queue's `consumer_timeout`, else the broker's
//! `--consumer-timeout`, as RabbitMQ ranks them. One check runs when the earliest
//! deadline is due, scanning the unacked deliveries; per delivery only its time and
//! limit are noted.

use std::time::Duration;

use super::{Outbound, Router};
use crate::protocol::{ErrorCode, ServerFrame, WireProtocol};
use crate::queue::ConnId;

pub(super) struct AckTimeout {
    /// The broker's `--consumer-timeout`; `None`: only queues and consumers that set
    /// one have a limit.
    default_ms: Option<u64>,
    /// When the next check runs (ms since the epoch): the earliest deadline of the
    /// deliveries known; `u64::MAX`: none has a limit.
    due: u64,
}

impl Default for AckTimeout {
    fn default() -> Self {
        AckTimeout {
            default_ms: None,
            due: u64::MAX,
        }
    }
}

impl AckTimeout {
    pub fn new(default: Option<Duration>) -> Self {
        let default_ms = default.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
        AckTimeout {
            default_ms,
            due: u64::MAX,
        }
    }

    /// The limit of a delivery made at `now`, as RabbitMQ ranks them: its consumer's
    /// `x-consumer-timeout`, else its queue's, else the broker's; none for the broker's
    /// own consumers (handlers, the HTTP API: not `to_client`), bounded otherwise. The
    /// check runs by its deadline.
    pub fn limit_delivery(
        &mut self,
        to_client: bool,
        consumer: Option<u64>,
        queue: Option<u64>,
        now: u64,
    ) -> Option<u64> {
        let limit = consumer
            .or(queue)
            .or(self.default_ms)
            .filter(|_| to_client)?;
        self.due = self.due.min(now.saturating_add(limit));
        Some(limit)
    }

    /// When the router must wake up for the next check, if any delivery has a limit.
    pub fn next_check(&self) -> Option<u64> {
        (self.due != u64::MAX).then_some(self.due)
    }
}

impl Router {
    /// Ends the client connections holding a delivery unacked past its limit, if a check
    /// is due at `now`; schedules the next check for the earliest deadline left.
    pub(super) fn check_ack_timeouts(&mut self, now: u64) {
        if self.ack_timeout.due > now {
            return;
        }
        let mut next = u64::MAX;
        let mut expired = Vec::new();
        for (id, c) in &self.conns {
            // The first delivery past its limit ends the connection.
            let mut late = None;
            for (tag, held) in c.unacked() {
                let Some(limit) = held.timeout_ms else {
                    continue;
                };
                let deadline = held.delivered_at.saturating_add(limit);
                match deadline <= now {
                    true if late.is_none() => late = Some((tag, limit)),
                    true => {}
                    false => next = next.min(deadline),
                }
            }
            if let Some((tag, limit)) = late {
                expired.push((*id, tag, limit));
            }
        }
        self.ack_timeout.due = next;
        for (conn, tag, limit) in expired {
            self.time_out_consumer(conn, tag, limit);
        }
    }

    /// Tells connection `conn` why it ends (an AMQP channel: a channel exception, the
    /// AMQP connection goes on) and closes it as if it had gone: its consumers end, its
    /// unacked messages go back to their queues.
    fn time_out_consumer(&mut self, conn: ConnId, tag: u64, limit_ms: u64) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let text = format!(
            "delivery acknowledgement timed out: delivery tag {tag} was not acked within the consumer timeout ({limit_ms} ms)"
        );
        tracing::warn!(
            conn,
            tag,
            limit_ms,
            "consumer timeout: connection closed, its unacked messages requeued"
        );
        let error = ServerFrame::error(None, ErrorCode::PreconditionFailed, text.clone());
        let _ = c.tx.send(Outbound::Frame(error));
        if c.protocol != WireProtocol::Amqp {
            let _ = c.tx.send(Outbound::Close(text));
        }
        self.close_conn(conn, false);
    }
}
