//! Recovery: the router rebuilt from what the store recovered at startup (queues with
//! their messages, exchanges, bindings, plugin versions, handlers, dedup windows).

use std::sync::Arc;

use super::Router;
use super::queue_shards::Placement;
use crate::fast_map::FastMap;
use crate::plugin::PluginHost;
use crate::queue::{Entry, QueuePolicy, QueueSpec};
use crate::store::{Recalled, Recovered, StoreSubmitter, StoreWriter};

/// What a shard's router is built with, besides what it recovers.
pub(super) struct ShardSetup {
    pub shard: usize,
    pub placement: Arc<super::queue_shards::Placement>,
    pub peers: Arc<[tokio::sync::mpsc::UnboundedSender<super::Command>]>,
    pub store: StoreSubmitter,
    /// Home's: it closes the store.
    pub store_owner: Option<StoreWriter>,
    /// Distinguishes this run's generated names from earlier runs' durable ones.
    pub run_id: String,
    pub conn_ids: crate::conn_ids::ConnIds,
    pub directory: Arc<super::ingress::ExchangeDirectory>,
}

/// What the store recovered, as each shard's part: the queues (with their messages and
/// dedup windows) by where they live; everything else is home's (the first part).
pub(super) fn split(mut recovered: Recovered, placement: &Placement) -> Vec<Recovered> {
    let mut parts: Vec<Recovered> = (1..placement.shards())
        .map(|_| Recovered::default())
        .collect();
    if parts.is_empty() {
        return vec![recovered];
    }
    let mut shard_of_id = std::collections::HashMap::new();
    for queue in std::mem::take(&mut recovered.queues) {
        // Recovered queues are spread as declared ones are: each where there are fewest.
        let shard = placement.place_declare(&queue.record.name);
        shard_of_id.insert(queue.record.id, shard);
        match shard {
            0 => recovered.queues.push(queue),
            n => parts[n - 1].queues.push(queue),
        }
    }
    for attachment in std::mem::take(&mut recovered.handlers) {
        match placement.shard_of(&attachment.queue) {
            0 => recovered.handlers.push(attachment),
            n => parts[n - 1].handlers.push(attachment),
        }
    }
    for window in std::mem::take(&mut recovered.dedup) {
        match shard_of_id.get(&window.0).copied().unwrap_or(0) {
            0 => recovered.dedup.push(window),
            n => parts[n - 1].dedup.push(window),
        }
    }
    parts.insert(0, recovered);
    parts
}

impl Router {
    /// A shard's router as the store recovered it (home's with everything but the other
    /// shards' queues).
    pub(super) fn recover(
        recovered: Recovered,
        setup: ShardSetup,
        plugins: PluginHost,
        auth: Arc<crate::auth::Authenticator>,
    ) -> Self {
        let self_tx = setup.peers[setup.shard].clone();
        let mut router = Router {
            queues: super::queue_shards::QueueShards::new(setup.placement, setup.shard),
            peers: setup.peers,
            topology: super::topology::Topology::new(setup.directory),
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
            store: Some(setup.store),
            store_owner: setup.store_owner,
            turn: Default::default(),
            run_id: setup.run_id,
            handlers: Default::default(),
            auth,
            conn_ids: setup.conn_ids,
            ack_timeout: Default::default(),
        };
        let mut messages = 0;
        for stored in recovered.queues {
            let record = stored.record;
            router.queues.recovered_queue_id(record.id);
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
        if router.is_home() {
            router.predeclare_all();
        }
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
