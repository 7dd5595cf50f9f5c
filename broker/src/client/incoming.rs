//! What the client's reader does with each broker frame: replies to their waiting callers
//! by request id, deliveries to their subscriptions by consumer tag, flow-control frames
//! to [`Client::blocked`](super::Client::blocked).

use tokio::sync::mpsc;

use super::{ClientError, Returned, Shared, delivery_tags};
use crate::protocol::{RequestId, ServerFrame};

pub(super) fn on_frame(
    shared: &Shared,
    returns: &mpsc::UnboundedSender<Returned>,
    frame: ServerFrame,
    generation: u64,
) {
    let (id, result) = match frame {
        ServerFrame::Deliver(mut delivery) => {
            delivery.delivery_tag = delivery_tags::for_app(generation, delivery.delivery_tag);
            let consumers = shared.consumers.lock().unwrap();
            if let Some(tx) = consumers.get(&*delivery.consumer_tag) {
                let _ = tx.send(delivery);
            }
            return;
        }
        ServerFrame::Cancelled { consumer_tag, .. } => {
            shared.consumers.lock().unwrap().remove(&consumer_tag);
            shared.topology.lock().unwrap().cancelled(&consumer_tag);
            return;
        }
        ServerFrame::Blocked { reason } => {
            shared.blocked.send_replace(Some(reason));
            return;
        }
        ServerFrame::Unblocked => {
            shared.blocked.send_replace(None);
            return;
        }
        ServerFrame::Return {
            id,
            reason,
            message,
        } => {
            let _ = returns.send(Returned {
                id,
                reason,
                message,
            });
            return;
        }
        ServerFrame::Ok { id, result } => (id, Ok(result)),
        ServerFrame::Confirm { id } => (id, Ok(serde_json::Value::Null)),
        ServerFrame::Error { id, code, message } => {
            let Some(id) = id else {
                tracing::warn!(%code, %message, "broker reported an error");
                return;
            };
            (id, Err(ClientError::Server { code, message }))
        }
    };
    let RequestId::Num(id) = id else { return };
    let Some(pending) = shared.pending.lock().unwrap().remove(&id) else {
        if let Err(e) = result {
            tracing::warn!(request = id, error = %e, "broker refused a request");
        }
        return;
    };
    if let (Ok(value), Some(consumer)) = (&result, pending.consumer)
        && let Some(tag) = value.get("consumer_tag").and_then(|t| t.as_str())
    {
        // Registered before the caller is woken: deliveries may follow this reply at once.
        shared
            .consumers
            .lock()
            .unwrap()
            .insert(tag.to_owned(), consumer.deliveries);
        if let Some(subscribe) = consumer.resubscribe {
            shared.topology.lock().unwrap().subscribed(subscribe, tag);
        }
    }
    let _ = pending.reply.send(result);
}
