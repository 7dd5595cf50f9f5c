//! The consumer timeout (RabbitMQ's `consumer_timeout`): a client's delivery left unacked
//! for longer than it ends its consumer's connection (for AMQP, the channel: a channel
//! exception 406), and its unacked messages return to their queues for other consumers.
//! A stuck consumer cannot hold messages forever. One check runs when the earliest
//! delivery could be due (at least once per timeout), scanning the connections that hold
//! deliveries; nothing is done per delivery beyond noting its time.

use std::time::Duration;

use super::{Outbound, Router};
use crate::protocol::{ErrorCode, ServerFrame, WireProtocol};
use crate::queue::ConnId;

pub(super) struct AckTimeout {
    limit_ms: u64,
    /// When the next check runs (ms since the epoch).
    pub due: u64,
}

impl AckTimeout {
    pub fn new(limit: Option<Duration>, now: u64) -> Option<Self> {
        let limit_ms = u64::try_from(limit?.as_millis()).unwrap_or(u64::MAX).max(1);
        Some(AckTimeout {
            limit_ms,
            due: now.saturating_add(limit_ms),
        })
    }
}

impl Router {
    /// Ends the client connections holding a delivery older than the consumer timeout,
    /// if a check is due at `now`; schedules the next check.
    pub(super) fn check_ack_timeouts(&mut self, now: u64) {
        let Some(timeout) = &self.ack_timeout else {
            return;
        };
        if timeout.due > now {
            return;
        }
        let limit = timeout.limit_ms;
        // Deliveries made after this check are due after `now + limit` at the earliest.
        let mut next = now.saturating_add(limit);
        let mut expired = Vec::new();
        for (id, c) in &self.conns {
            // Tags grow with time: the first unacked one is the oldest. The broker's own
            // consumers (handlers, the HTTP API) are bounded otherwise.
            let Some((tag, held)) = c.oldest_unacked() else {
                continue;
            };
            if c.peer.is_none() {
                continue;
            }
            let deadline = held.delivered_at.saturating_add(limit);
            match deadline <= now {
                true => expired.push((*id, tag)),
                false => next = next.min(deadline),
            }
        }
        if let Some(timeout) = &mut self.ack_timeout {
            timeout.due = next;
        }
        for (conn, tag) in expired {
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
