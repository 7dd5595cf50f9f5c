//! Exchange-to-exchange bindings at ingress: once a publish's first exchange has routed
//! it, every exchange bound to it through a binding the message took routes it again
//! (same routing key and headers), and so on, each exchange at most once per publish (a
//! cycle ends, a diamond does not duplicate; the router delivers once per queue).
//!
//! Each hop is routed as a first one is: its cached route on the publisher's task, or a
//! call on its own exchange's worker with its own budget and containment, so a failing or
//! slow destination holds only its own worker. A hop that fails fails the publish (no
//! queue gets it, a confirm-mode publisher gets a negative confirm), as when the first
//! exchange fails: a publish is routed whole or not at all. Nothing happens here while
//! no exchange is bound to another (one atomic load).

use std::collections::{HashSet, VecDeque};

use super::{Command, ExchangeDirectory, Ingress, RoutedIds, publish_message};
use crate::exchange::{BindingId, ExchangeError};
use crate::message::Message;

impl Ingress {
    /// Routes `command` (a publish its first exchange has routed: `first`) on through
    /// the exchanges bound to that one; returns the binding ids of every exchange. `draw` is the
    /// publish's canary draw: every hop picks its plugin version with the same one.
    pub(super) async fn follow_hops(
        &self,
        mut command: Command,
        first: RoutedIds,
        draw: u32,
    ) -> (Command, RoutedIds) {
        let graph = &self.directory.graph;
        let Ok(first) = first else {
            return (command, first);
        };
        if graph.is_empty() {
            return (command, Ok(first));
        }
        let Some(message) = publish_message(&command) else {
            return (command, Ok(first));
        };
        let source = message.exchange.clone();
        let mut visited = HashSet::from([source.clone()]);
        let mut todo: VecDeque<String> = graph.next_hops(&source, &first, &mut visited).into();
        let mut all: Vec<BindingId> = first;
        while let Some(name) = todo.pop_front() {
            // Deleted meanwhile: its bindings went with it.
            let Some(exchange) = self.directory.get(&name) else {
                continue;
            };
            let message = publish_message(&command).expect("a publish");
            let hop = match exchange.try_cached(message, draw) {
                Some(routed) => routed,
                None => {
                    let (routed_command, routed) =
                        self.route_on_worker(&exchange, command, draw).await;
                    command = routed_command;
                    routed
                }
            };
            match hop {
                Ok(ids) => {
                    todo.extend(graph.next_hops(&name, &ids, &mut visited));
                    all.extend(ids);
                }
                Err(e) => return (command, Err(e)),
            }
        }
        (command, Ok(all))
    }
}

impl ExchangeDirectory {
    /// [`Ingress::follow_hops`] on the calling thread (the router's own routing of dead
    /// letters, a handler's outputs): appends what the exchanges bound to `message`'s
    /// exchange route to `ids` (the first exchange's route).
    pub(super) fn follow_now(
        &self,
        message: &Message,
        ids: &mut Vec<BindingId>,
    ) -> Result<(), ExchangeError> {
        if self.graph.is_empty() {
            return Ok(());
        }
        let mut visited = HashSet::from([message.exchange.clone()]);
        let mut todo: VecDeque<String> = self
            .graph
            .next_hops(&message.exchange, ids, &mut visited)
            .into();
        while let Some(name) = todo.pop_front() {
            let Some(exchange) = self.get(&name) else {
                continue;
            };
            let mut hop = Vec::new();
            exchange.lock().route(message, &mut hop)?;
            todo.extend(self.graph.next_hops(&name, &hop, &mut visited));
            ids.extend(hop);
        }
        Ok(())
    }
}
