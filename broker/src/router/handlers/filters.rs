//! Filter-mode attachments: a subscription that names a filter has its deliveries pass
//! through the handler before they reach the subscriber.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Key, not_attached};
use crate::protocol::{Delivery, ErrorCode, HandlerMode};
use crate::queue::ConnId;
use crate::router::{ConnTx, OpError, Router};

/// A delivery to a filtered subscriber, on its way through the filter.
pub(in crate::router) struct FilterJob {
    pub(super) delivery: Delivery,
    pub(super) auto_ack: bool,
    pub(super) conn: ConnId,
    pub(super) tx: ConnTx,
}

/// The route of a filtered subscription.
pub(in crate::router) struct FilterRoute {
    pub(super) key: Key,
    pub tx: mpsc::UnboundedSender<FilterJob>,
}

impl FilterJob {
    pub(in crate::router) fn new(
        delivery: Delivery,
        auto_ack: bool,
        conn: ConnId,
        tx: ConnTx,
    ) -> Self {
        FilterJob {
            delivery,
            auto_ack,
            conn,
            tx,
        }
    }
}

impl Router {
    /// A subscription that names `filter`: routes its deliveries through the filter.
    pub(in crate::router) fn check_filter(&self, queue: &str, filter: &str) -> Result<(), OpError> {
        let key: Key = (queue.into(), filter.to_owned());
        match self.handlers.attachments.get(&key) {
            Some(a) if a.record.mode == HandlerMode::Filter => Ok(()),
            Some(_) => Err(OpError::new(
                ErrorCode::InvalidField,
                format!(
                    "handler `{filter}` is attached to `{queue}` in consume mode, not as a filter"
                ),
            )),
            None => Err(not_attached(queue, filter)),
        }
    }

    pub(in crate::router) fn add_filter(
        &mut self,
        conn: ConnId,
        tag: Arc<str>,
        queue: Arc<str>,
        filter: &str,
    ) {
        let key: Key = (queue, filter.to_owned());
        let Some(attachment) = self.handlers.attachments.get_mut(&key) else {
            return;
        };
        let Some(tx) = attachment.filter_tx.clone() else {
            return;
        };
        attachment.subscribers += 1;
        self.handlers
            .filters
            .insert((conn, tag), FilterRoute { key, tx });
    }

    /// A consumer went away: if it was filtered, its filter has one subscriber less.
    pub(in crate::router) fn forget_filter(&mut self, conn: ConnId, tag: &str) {
        if self.handlers.filters.is_empty() {
            return;
        }
        let key = (conn, Arc::<str>::from(tag));
        if let Some(route) = self.handlers.filters.remove(&key)
            && let Some(attachment) = self.handlers.attachments.get_mut(&route.key)
        {
            attachment.subscribers = attachment.subscribers.saturating_sub(1);
        }
    }
}
