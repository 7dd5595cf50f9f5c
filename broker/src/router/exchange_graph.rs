//! Exchange-to-exchange bindings (AMQP's `exchange.bind`), the one record of them: the
//! router adds and removes them, ingress reads them to route a publish on through the
//! exchanges its first exchange leads to ([`super::ingress`]'s `hops`).
//!
//! The source exchange's routing also knows each such binding (by its id, like a queue
//! binding), so the plugin decides which of them a message takes; this graph only says
//! where each one leads.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use crate::exchange::BindingId;
use crate::protocol::ExchangeBinding;

#[derive(Default)]
pub(crate) struct ExchangeGraph {
    /// How many bindings there are: ingress skips everything while there are none.
    count: AtomicUsize,
    /// Source exchange → its bindings to other exchanges, by id.
    by_source: RwLock<HashMap<String, HashMap<BindingId, ExchangeBinding>>>,
    /// Stored bindings of an exchange whose type is not loaded yet (router only).
    waiting: Mutex<Vec<(BindingId, ExchangeBinding)>>,
}

impl ExchangeGraph {
    /// No exchange is bound to another (the usual case: one atomic load).
    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    fn read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, HashMap<BindingId, ExchangeBinding>>> {
        self.by_source.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, HashMap<BindingId, ExchangeBinding>>> {
        self.by_source.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, id: BindingId, binding: ExchangeBinding) {
        let mut graph = self.write();
        let previous = graph
            .entry(binding.source.clone())
            .or_default()
            .insert(id, binding);
        if previous.is_none() {
            self.count.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The id of a binding equal to `binding`, if there is one.
    pub fn find(&self, binding: &ExchangeBinding) -> Option<BindingId> {
        let graph = self.read();
        graph
            .get(&binding.source)?
            .iter()
            .find_map(|(id, b)| (b == binding).then_some(*id))
    }

    pub fn remove(&self, source: &str, id: BindingId) -> Option<ExchangeBinding> {
        let mut graph = self.write();
        let out = graph.get_mut(source)?;
        let removed = out.remove(&id)?;
        if out.is_empty() {
            graph.remove(source);
        }
        self.count.fetch_sub(1, Ordering::AcqRel);
        Some(removed)
    }

    /// Removes every binding from or to `exchange` (it is being deleted).
    pub fn remove_touching(&self, exchange: &str) -> Vec<(BindingId, ExchangeBinding)> {
        let mut graph = self.write();
        let mut removed: Vec<(BindingId, ExchangeBinding)> = graph
            .remove(exchange)
            .map(|out| out.into_iter().collect())
            .unwrap_or_default();
        for out in graph.values_mut() {
            let ids: Vec<BindingId> = out
                .iter()
                .filter(|(_, b)| b.destination == exchange)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                removed.extend(out.remove(&id).map(|b| (id, b)));
            }
        }
        graph.retain(|_, out| !out.is_empty());
        self.count.fetch_sub(removed.len(), Ordering::AcqRel);
        removed
    }

    pub fn wait(&self, id: BindingId, binding: ExchangeBinding) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.push((id, binding));
    }

    pub fn take_waiting(&self) -> Vec<(BindingId, ExchangeBinding)> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *waiting)
    }

    /// How many exchanges `source` is bound to.
    pub fn out_count(&self, source: &str) -> usize {
        match self.is_empty() {
            true => 0,
            false => self.read().get(source).map_or(0, |out| out.len()),
        }
    }

    /// Whether `source` is bound to any exchange.
    pub fn has_out(&self, source: &str) -> bool {
        !self.is_empty() && self.read().contains_key(source)
    }

    /// Every binding, for `list_bindings`.
    pub fn all(&self) -> Vec<(BindingId, ExchangeBinding)> {
        let graph = self.read();
        graph
            .values()
            .flat_map(|out| out.iter().map(|(id, b)| (*id, b.clone())))
            .collect()
    }

    /// The exchanges that the bindings among `ids` of `source` lead to and that are not
    /// in `visited` yet (each is added to it): an exchange routes a message once per
    /// publish, so cycles end and diamonds do not duplicate.
    pub fn next_hops(
        &self,
        source: &str,
        ids: &[BindingId],
        visited: &mut HashSet<String>,
    ) -> Vec<String> {
        let graph = self.read();
        let Some(out) = graph.get(source) else {
            return Vec::new();
        };
        let mut next = Vec::new();
        for id in ids {
            if let Some(binding) = out.get(id)
                && visited.insert(binding.destination.clone())
            {
                next.push(binding.destination.clone());
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(source: &str, destination: &str) -> ExchangeBinding {
        ExchangeBinding {
            source: source.into(),
            destination: destination.into(),
            key: String::new(),
            arguments: Default::default(),
        }
    }

    #[test]
    fn cycles_are_followed_once() {
        let graph = ExchangeGraph::default();
        graph.insert(1, binding("a", "b"));
        graph.insert(2, binding("b", "a"));
        graph.insert(3, binding("b", "c"));
        let mut visited = HashSet::from(["a".to_string()]);
        assert_eq!(graph.next_hops("a", &[1], &mut visited), vec!["b"]);
        assert_eq!(graph.next_hops("b", &[2, 3], &mut visited), vec!["c"]);
    }

    #[test]
    fn removing_an_exchange_removes_its_bindings_both_ways() {
        let graph = ExchangeGraph::default();
        graph.insert(1, binding("a", "b"));
        graph.insert(2, binding("b", "c"));
        graph.insert(3, binding("c", "a"));
        let mut removed: Vec<BindingId> = graph
            .remove_touching("b")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        removed.sort();
        assert_eq!(removed, vec![1, 2]);
        assert!(!graph.is_empty());
        assert!(graph.has_out("c"));
        assert!(!graph.has_out("a"));
        assert_eq!(
            graph.remove("c", 3).map(|b| b.destination),
            Some("a".into())
        );
        assert!(graph.is_empty());
    }
}
