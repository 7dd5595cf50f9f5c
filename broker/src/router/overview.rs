//! Read-only views for operators: exchanges with their counters, bindings, connections.

use super::exchanges::DEFAULT_EXCHANGE;
use super::{Answer, Reply, Router};
use crate::protocol::{
    Binding, BindingList, ConnectionInfo, ConnectionList, ConsumerInfo, ExchangeInfo, ExchangeList,
};
use crate::queue::ConnId;

impl Router {
    pub(super) fn list_exchanges(&self, conn: ConnId) -> Reply {
        let vhost = self.conn_vhost(conn);
        let totals = self.topology.directory.default_counters.totals();
        let default = ExchangeInfo {
            exchange: DEFAULT_EXCHANGE.into(),
            kind: "default".into(),
            durable: true,
            internal: false,
            auto_delete: false,
            arguments: Default::default(),
            bindings: 0,
            routed: totals.routed,
            unroutable: totals.unroutable,
            failed: totals.failed,
            quarantined: false,
            quarantined_since: None,
            quarantine_reason: None,
            last_auto_rollback: None,
        };
        let mut exchanges: Vec<ExchangeInfo> = std::iter::once(default)
            .chain(
                self.topology
                    .exchanges
                    .iter()
                    .filter(|(name, _)| crate::vhost::of(name) == vhost)
                    .map(|(name, e)| {
                        let quarantine = self.plugins.quarantine(name);
                        let totals = e.routing.counters.totals();
                        ExchangeInfo {
                            exchange: name.clone(),
                            kind: e.kind.clone(),
                            durable: e.durable,
                            internal: e.routing.flags.internal,
                            auto_delete: e.routing.flags.auto_delete,
                            arguments: e.arguments.clone(),
                            bindings: (e.bindings.len()
                                + self.topology.directory.graph.out_count(name))
                                as u64,
                            routed: totals.routed,
                            unroutable: totals.unroutable,
                            failed: totals.failed,
                            quarantined: quarantine.is_some(),
                            quarantined_since: quarantine.as_ref().map(|(since, _)| *since),
                            quarantine_reason: quarantine.map(|(_, reason)| reason),
                            last_auto_rollback: self.versions.auto_rollbacks.get(&e.kind).cloned(),
                        }
                    }),
            )
            .collect();
        exchanges.sort_by(|a, b| a.exchange.cmp(&b.exchange));
        let mut unrestored: Vec<String> = self
            .topology
            .unrestored
            .keys()
            .filter(|name| crate::vhost::of(name) == vhost)
            .cloned()
            .collect();
        unrestored.sort();
        Reply::Ok(Answer::from(ExchangeList {
            exchanges,
            unrestored,
        }))
    }

    pub(super) fn list_bindings(&self, conn: ConnId) -> Reply {
        let vhost = self.conn_vhost(conn);
        let mut bindings: Vec<(&u64, &Binding)> = self
            .topology
            .exchanges
            .iter()
            .filter(|(name, _)| crate::vhost::of(name) == vhost)
            .flat_map(|(_, e)| e.bindings.iter())
            .collect();
        // By exchange, then in the order they were made.
        bindings.sort_by(|a, b| (&a.1.exchange, a.0).cmp(&(&b.1.exchange, b.0)));
        let bindings = bindings.into_iter().map(|(_, b)| b.clone()).collect();
        let exchange_bindings = self.exchange_bindings_in(vhost);
        Reply::Ok(Answer::from(BindingList {
            bindings,
            exchange_bindings,
        }))
    }

    pub(super) fn list_connections(&self, conn: ConnId) -> Reply {
        let vhost = self.conn_vhost(conn);
        let mut connections: Vec<ConnectionInfo> = self
            .conns
            .iter()
            .filter(|(_, c)| *c.vhost == *vhost)
            .filter(|(_, c)| c.session.is_none())
            .filter_map(|(id, c)| {
                Some(ConnectionInfo {
                    conn: *id,
                    peer: c.peer?.to_string(),
                    vhost: c.vhost.to_string(),
                    protocol: c.protocol,
                    channels: 0,
                    user: c
                        .user
                        .as_ref()
                        .map_or_else(String::new, |p| p.user.to_string()),
                    opened_at: c.opened_at,
                    confirms: c.confirms,
                    consumers: c
                        .consumers
                        .iter()
                        .map(|(queue, tag)| ConsumerInfo {
                            queue: queue.to_string(),
                            consumer_tag: tag.to_string(),
                        })
                        .collect(),
                    unacked: c.unacked_len() as u64,
                    thread: c.thread().map(|shard| shard as u64),
                })
            })
            .collect();
        connections.sort_by_key(|c| c.conn);
        // An AMQP connection's channels are counted in its row.
        for c in self.conns.values() {
            let Some(row) = c
                .session
                .and_then(|s| connections.iter_mut().find(|row| row.conn == s))
            else {
                continue;
            };
            row.channels += 1;
            row.confirms |= c.confirms;
            row.unacked += c.unacked_len() as u64;
            row.consumers
                .extend(c.consumers.iter().map(|(queue, tag)| ConsumerInfo {
                    queue: queue.to_string(),
                    consumer_tag: tag.to_string(),
                }));
        }
        Reply::Ok(Answer::from(ConnectionList { connections }))
    }
}
