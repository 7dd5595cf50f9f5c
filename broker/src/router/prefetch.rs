//! A channel-wide prefetch (AMQP `basic.qos` with `global=true`, as RabbitMQ 3 reads it):
//! at most this many unsettled deliveries on one connection, whichever of its consumers
//! they went to. Each consumer's own prefetch still applies; the limit is checked when
//! a queue dispatches (`Conn::within_channel_prefetch`).

use super::Router;
use crate::queue::ConnId;

impl Router {
    pub(super) fn set_channel_prefetch(&mut self, conn: ConnId, prefetch: u32) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.channel_prefetch = prefetch;
        }
        // A larger limit (or none) lets its consumers' queues deliver more.
        self.drained(conn);
    }

    /// Deliveries of `conn` were settled: under a channel-wide prefetch, any queue it
    /// consumes from (not only the settled deliveries' queues) may deliver again.
    pub(super) fn channel_settled(&mut self, conn: ConnId) {
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| c.channel_prefetch > 0)
        {
            self.drained(conn);
        }
    }
}
