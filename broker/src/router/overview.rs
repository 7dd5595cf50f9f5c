//! Read-only views for operators: exchanges with their counters, bindings, connections.

use super::exchanges::DEFAULT_EXCHANGE;
use super::{Reply, Router};
use crate::protocol::{
    Binding, BindingList, ConnectionInfo, ConnectionList, ConsumerInfo, ExchangeInfo, ExchangeList,
};
use crate::queue::ConnId;

impl Router {
    pub(super) fn list_exchanges(&self, conn: ConnId) -> Reply {
        let vhost = self.conn_vhost(conn);
        let default = ExchangeInfo {
            exchange: DEFAULT_EXCHANGE.into(),
            kind: "default".into(),
            durable: true,
            arguments: Default::default(),
            bindings: 0,
            routed: self.default_exchange.routed,
            unroutable: self.default_exchange.unroutable,
            failed: self.default_exchange.failed,
            quarantined: false,
            quarantined_since: None,
            quarantine_reason: None,
            last_auto_rollback: None,
        };
        let mut exchanges: Vec<ExchangeInfo> = std::iter::once(default)
            .chain(
                self.exchanges
                    .iter()
                    .filter(|(name, _)| crate::vhost::of(name) == vhost)
                    .map(|(name, e)| {
                        let quarantine = self.plugins.quarantine(name);
                        ExchangeInfo {
                            exchange: name.clone(),
                            kind: e.kind.clone(),
                            durable: e.durable,
                            arguments: e.arguments.clone(),
                            bindings: e.bindings.len() as u64,
                            routed: e.counters.routed,
                            unroutable: e.counters.unroutable,
                            failed: e.counters.failed,
                            quarantined: quarantine.is_some(),
                            quarantined_since: quarantine.as_ref().map(|(since, _)| *since),
                            quarantine_reason: quarantine.map(|(_, reason)| reason),
                            last_auto_rollback: self
                                .auto_rollbacks
                                .get(&e.kind)
                                .map(|r| serde_json::to_value(r).expect("serializable")),
                        }
                    }),
            )
            .collect();
        exchanges.sort_by(|a, b| a.exchange.cmp(&b.exchange));
        let mut unrestored: Vec<String> = self
            .unrestored
            .keys()
            .filter(|name| crate::vhost::of(name) == vhost)
            .cloned()
            .collect();
        unrestored.sort();
        Reply::Ok(to_json(ExchangeList {
            exchanges,
            unrestored,
        }))
    }

    pub(super) fn list_bindings(&self, conn: ConnId) -> Reply {
        let vhost = self.conn_vhost(conn);
        let mut bindings: Vec<(&u64, &Binding)> = self
            .exchanges
            .iter()
            .filter(|(name, _)| crate::vhost::of(name) == vhost)
            .flat_map(|(_, e)| e.bindings.iter())
            .collect();
        // By exchange, then in the order they were made.
        bindings.sort_by(|a, b| (&a.1.exchange, a.0).cmp(&(&b.1.exchange, b.0)));
        let bindings = bindings.into_iter().map(|(_, b)| b.clone()).collect();
        Reply::Ok(to_json(BindingList { bindings }))
    }

    pub(super) fn list_connections(&self, conn: ConnId) -> Reply {
        let vhost = self.conn_vhost(conn);
        let mut connections: Vec<ConnectionInfo> = self
            .conns
            .iter()
            .filter(|(_, c)| *c.vhost == *vhost)
            .filter_map(|(id, c)| {
                Some(ConnectionInfo {
                    conn: *id,
                    peer: c.peer?.to_string(),
                    vhost: c.vhost.to_string(),
                    protocol: c.protocol.to_string(),
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
                    unacked: c.unacked.len() as u64,
                })
            })
            .collect();
        connections.sort_by_key(|c| c.conn);
        Reply::Ok(to_json(ConnectionList { connections }))
    }
}

fn to_json(value: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).expect("results serialize to JSON")
}
