//! Recovery: the router rebuilt from what the store recovered at startup (queues with
//! their messages, exchanges, bindings, plugin versions, handlers, dedup windows).

use std::sync::Arc;

use super::Router;
use crate::fast_map::FastMap;
use crate::plugin::PluginHost;
use crate::queue::{Entry, QueuePolicy, QueueSpec};
use crate::store::{Recalled, Recovered, StoreWriter};

impl Router {
    /// The router as the store recovered it; `self_tx` is its own control channel.
    pub(super) fn recover(
        recovered: Recovered,
        store: StoreWriter,
        plugins: PluginHost,
        self_tx: tokio::sync::mpsc::UnboundedSender<super::Command>,
        auth: Arc<crate::auth::Authenticator>,
        directory: Arc<super::ingress::ExchangeDirectory>,
        shards: usize,
    ) -> Self {
        let mut router = Router {
            queues: super::queue_shards::QueueShards::new(shards),
            topology: super::topology::Topology::new(directory),
            plugins,
            versions: super::plugin_versions::PluginVersions {
                deployed: super::plugins::group_versions(recovered.plugin_versions),
                active: recovered.active_plugins.into_iter().collect(),
                artifacts: recovered.plugin_artifacts,
                trials: recovered.plugin_trials.into_iter().collect(),
                ..Default::default()
            },
            self_tx,
            conns: FastMap::default(),
            store: Some(store),
            turn: Default::default(),
            run_id: format!("{:x}", crate::clock::now_ms()),
            handlers: Default::default(),
            auth,
            conn_ids: Default::default(),
            ack_timeout: Default::default(),
        };
        let mut messages = 0;
        for stored in recovered.queues {
            let record = stored.record;
            router.queues.next_queue_id = router.queues.next_queue_id.max(record.id + 1);
            let spec = QueueSpec {
                durable: true,
                exclusive_owner: None,
                auto_delete: record.auto_delete,
                arguments: record.arguments,
            };
            let policy = QueuePolicy::from_arguments(&spec.arguments, false).unwrap_or_else(|e| {
                tracing::error!(queue = %record.name, error = %e, "stored arguments invalid; using defaults");
                QueuePolicy::from_arguments(&Default::default(), false).expect("defaults are valid")
            });
            let name: Arc<str> = record.name.into();
            let mut queue = router.new_queue(name.clone(), record.id, spec, policy);
            queue.declared_by = record.declared_by.map(Arc::from);
            messages += stored.messages.len();
            for m in stored.messages {
                match m.message {
                    Recalled::InMemory(message) => {
                        let mut entry = Entry::new(m.seq, message, true);
                        entry.delivery_count = m.delivery_count;
                        entry.state_stored = m.delivery_count > 0 || m.not_before.is_some();
                        queue.restore(entry, m.enqueued_at, m.not_before);
                    }
                    Recalled::OnDisk(placement) => {
                        queue.restore_on_disk(m.seq, placement, m.enqueued_at, m.delivery_count)
                    }
                }
            }
            router.queues.insert(name, queue);
        }
        for record in recovered.exchanges {
            if let Err((record, e)) = router.restore_exchange(record) {
                tracing::error!(
                    exchange = %record.name, kind = %record.kind, error = %e,
                    "cannot restore exchange; it stays stored and is restored when its type is deployed"
                );
                let waiting = super::exchanges::Unrestored {
                    record,
                    bindings: Vec::new(),
                };
                router
                    .topology
                    .unrestored
                    .insert(waiting.record.name.clone(), waiting);
            }
        }
        router.predeclare_all();
        for (id, binding) in recovered.bindings {
            router.topology.next_binding_id = router.topology.next_binding_id.max(id + 1);
            router.restore_binding(id, binding);
        }
        for (id, binding) in recovered.exchange_bindings {
            router.topology.next_binding_id = router.topology.next_binding_id.max(id + 1);
            router.restore_exchange_binding(id, binding);
        }
        let exchanges: Vec<String> = router.topology.exchanges.keys().cloned().collect();
        router.drop_unbound_auto_delete(exchanges);
        router.restore_handlers(recovered.handlers);
        router.restore_message_ids(recovered.dedup, crate::clock::now_ms());
        let names: Vec<Arc<str>> = router.queues.keys().cloned().collect();
        for name in &names {
            // Delays that ended and messages that expired while the broker was down are
            // handled at once; the rest get their wake-ups.
            router.turn.to_dispatch.insert(name.clone());
            router.queues.schedule(name);
        }
        tracing::info!(
            queues = router.queues.len(),
            exchanges = router.topology.exchanges.len(),
            messages,
            "recovered stored state"
        );
        router
    }
}
