//! An exchange's bindings as the host keeps them (to replay into a fresh instance of any
//! version, the active one or one on trial), and the checks on what an instance returns.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::bindings::wit;
use super::instance::{Failure, LiveInstance};
use super::limits::Limits;
use super::loader::LoadedPlugin;
use crate::exchange::BindingId;

/// Hashes binding ids (assigned by the broker, so not attacker-chosen) with one multiply;
/// every routed id is looked up to validate plugin output.
#[derive(Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub(super) type BindingMap = HashMap<BindingId, BoundKey, BuildHasherDefault<IdHasher>>;

pub(super) struct BoundKey {
    pub key: String,
    pub arguments: Vec<wit::Header>,
}

/// A fresh instance of `plugin` for exchange `name`, with its arguments and bindings.
pub(super) fn start_instance(
    plugin: &LoadedPlugin,
    name: &Arc<str>,
    arguments: &[wit::Header],
    bindings: &BindingMap,
    limits: &Limits,
) -> Result<LiveInstance, String> {
    let mut instance = match LiveInstance::new(plugin, name, arguments, limits, &plugin.stats) {
        Ok(Ok(instance)) => instance,
        Ok(Err(reason)) => return Err(format!("plugin rejected the exchange: {reason}")),
        Err(failure) => {
            plugin.stats.record_failure(failure.kind);
            return Err(failure.reason);
        }
    };
    for (id, bound) in bindings {
        match instance.bind(*id, &bound.key, &bound.arguments) {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                return Err(format!("plugin rejected binding {id} on replay: {reason}"));
            }
            Err(failure) => {
                plugin.stats.record_failure(failure.kind);
                return Err(failure.reason);
            }
        }
    }
    Ok(instance)
}

/// Checks one route result: at most `max` ids, each a binding of the exchange.
pub(crate) fn check_route_output(
    ids: &[BindingId],
    max: usize,
    bound: impl Fn(BindingId) -> bool,
) -> Result<(), Failure> {
    if ids.len() > max {
        return Err(Failure::invalid_output(format!(
            "routed to {} bindings, more than the limit of {max}",
            ids.len(),
        )));
    }
    match ids.iter().find(|id| !bound(**id)) {
        Some(id) => Err(Failure::invalid_output(format!(
            "routed to binding {id}, which is not bound to this exchange"
        ))),
        None => Ok(()),
    }
}
