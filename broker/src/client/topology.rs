//! What the application declared and subscribed through a reconnecting client, in order,
//! so a new connection can declare and subscribe it all again (a restarted broker, or
//! another node, may not have it).

use crate::protocol::{Binding, DeclareExchange, DeclareQueue, ExchangeBinding, Op, Subscribe};

/// One declaration to replay.
#[derive(Debug, Clone)]
enum Declaration {
    Queue(DeclareQueue),
    Exchange(DeclareExchange),
    Binding(Binding),
    ExchangeBinding(ExchangeBinding),
}

/// The declarations (queues, exchanges, bindings in the order the application made them)
/// and subscriptions (with the consumer tag the broker confirmed) of one client.
#[derive(Debug, Default)]
pub(super) struct Topology {
    declarations: Vec<Declaration>,
    subscriptions: Vec<Subscribe>,
}

impl Topology {
    /// `declare` succeeded as queue `name` (the broker's name for a server-named queue).
    pub fn declared_queue(&mut self, mut declare: DeclareQueue, name: &str) {
        declare.queue = name.to_owned();
        self.declarations
            .retain(|d| !matches!(d, Declaration::Queue(q) if q.queue == name));
        self.declarations.push(Declaration::Queue(declare));
    }

    pub fn declared_exchange(&mut self, declare: DeclareExchange) {
        self.declarations
            .retain(|d| !matches!(d, Declaration::Exchange(e) if e.exchange == declare.exchange));
        self.declarations.push(Declaration::Exchange(declare));
    }

    pub fn bound(&mut self, binding: Binding) {
        self.unbound(&binding);
        self.declarations.push(Declaration::Binding(binding));
    }

    pub fn unbound(&mut self, binding: &Binding) {
        self.declarations.retain(|d| {
            !matches!(d, Declaration::Binding(b) if b.exchange == binding.exchange
                && b.queue == binding.queue && b.key == binding.key
                && b.arguments == binding.arguments)
        });
    }

    pub fn bound_exchange(&mut self, binding: ExchangeBinding) {
        self.unbound_exchange(&binding);
        self.declarations
            .push(Declaration::ExchangeBinding(binding));
    }

    pub fn unbound_exchange(&mut self, binding: &ExchangeBinding) {
        self.declarations
            .retain(|d| !matches!(d, Declaration::ExchangeBinding(b) if b == binding));
    }

    /// Forgets queue `name`, its bindings and its subscriptions.
    pub fn deleted_queue(&mut self, name: &str) {
        self.declarations.retain(|d| match d {
            Declaration::Queue(q) => q.queue != name,
            Declaration::Binding(b) => b.queue != name,
            Declaration::Exchange(_) | Declaration::ExchangeBinding(_) => true,
        });
        self.subscriptions.retain(|s| s.queue != name);
    }

    /// Forgets exchange `name` and the bindings from and to it.
    pub fn deleted_exchange(&mut self, name: &str) {
        self.declarations.retain(|d| match d {
            Declaration::Exchange(e) => e.exchange != name,
            Declaration::Binding(b) => b.exchange != name,
            Declaration::ExchangeBinding(b) => b.source != name && b.destination != name,
            Declaration::Queue(_) => true,
        });
    }

    /// `subscribe` succeeded with `consumer_tag`.
    pub fn subscribed(&mut self, mut subscribe: Subscribe, consumer_tag: &str) {
        subscribe.consumer_tag = Some(consumer_tag.to_owned());
        self.subscriptions.push(subscribe);
    }

    pub fn cancelled(&mut self, consumer_tag: &str) {
        self.subscriptions
            .retain(|s| s.consumer_tag.as_deref() != Some(consumer_tag));
    }

    /// The declarations to replay, in the order they were made.
    pub fn declarations(&self) -> Vec<Op> {
        self.declarations
            .iter()
            .map(|d| match d {
                Declaration::Queue(q) => Op::DeclareQueue(q.clone()),
                Declaration::Exchange(e) => Op::DeclareExchange(e.clone()),
                Declaration::Binding(b) => Op::Bind(b.clone()),
                Declaration::ExchangeBinding(b) => Op::BindExchange(b.clone()),
            })
            .collect()
    }

    /// The subscriptions to make again, each with its consumer tag.
    pub fn subscriptions(&self) -> Vec<Subscribe> {
        self.subscriptions.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str) -> DeclareQueue {
        DeclareQueue {
            queue: name.into(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: Default::default(),
        }
    }

    fn binding(exchange: &str, queue: &str) -> Binding {
        Binding {
            exchange: exchange.into(),
            queue: queue.into(),
            key: "k".into(),
            arguments: Default::default(),
        }
    }

    fn names(topology: &Topology) -> Vec<String> {
        topology
            .declarations()
            .iter()
            .map(|op| match op {
                Op::DeclareQueue(q) => format!("queue {}", q.queue),
                Op::DeclareExchange(e) => format!("exchange {}", e.exchange),
                Op::Bind(b) => format!("bind {}->{}", b.exchange, b.queue),
                Op::BindExchange(b) => format!("bind {}->{}", b.source, b.destination),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn replays_in_order_and_forgets_what_was_deleted() {
        let mut topology = Topology::default();
        topology.declared_queue(queue(""), "amq.gen-1");
        topology.declared_exchange(DeclareExchange {
            exchange: "x".into(),
            kind: "direct".into(),
            durable: false,
            internal: false,
            auto_delete: false,
            arguments: Default::default(),
        });
        topology.bound(binding("x", "amq.gen-1"));
        topology.declared_queue(queue("q"), "q");
        topology.bound(binding("x", "q"));
        topology.bound(binding("x", "q"));
        assert_eq!(
            names(&topology),
            [
                "queue amq.gen-1",
                "exchange x",
                "bind x->amq.gen-1",
                "queue q",
                "bind x->q"
            ]
        );
        topology.deleted_queue("amq.gen-1");
        topology.unbound(&binding("x", "q"));
        assert_eq!(names(&topology), ["exchange x", "queue q"]);
        topology.deleted_exchange("x");
        assert_eq!(names(&topology), ["queue q"]);
    }

    #[test]
    fn exchange_bindings_replay_and_go_with_either_exchange() {
        let e2e = |source: &str, destination: &str| ExchangeBinding {
            source: source.into(),
            destination: destination.into(),
            key: "k".into(),
            arguments: Default::default(),
        };
        let mut topology = Topology::default();
        topology.bound_exchange(e2e("a", "b"));
        topology.bound_exchange(e2e("a", "b"));
        topology.bound_exchange(e2e("b", "c"));
        topology.bound_exchange(e2e("c", "d"));
        assert_eq!(names(&topology), ["bind a->b", "bind b->c", "bind c->d"]);
        topology.unbound_exchange(&e2e("a", "b"));
        assert_eq!(names(&topology), ["bind b->c", "bind c->d"]);
        // Deleting `c` takes the bindings from it and to it.
        topology.deleted_exchange("c");
        assert!(names(&topology).is_empty());
    }
}
