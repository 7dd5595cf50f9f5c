//! One exchange's run of its type's version on trial ([`super::trial::Trial`]): its own
//! instance, key cache and failure health next to the active version's, so the two never
//! mix. A canary lane routes the messages whose draw falls in its share; a message it
//! fails on is routed by the active version instead (counted as a canary error), and once
//! its failures pass the quarantine threshold the trial is marked failing and the lane
//! takes no more messages (the router then drops the canary). A shadow lane routes every
//! message again after the active version, only to compare.

use std::sync::Arc;
use std::time::Instant;

use super::binding_map::{BindingMap, check_route_output, start_instance};
use super::bindings::wit;
use super::convert;
use super::health::CallHealth;
use super::instance::LiveInstance;
use super::key_cache::KeyCache;
use super::limits::Limits;
use super::trial::{Trial, TrialMode};
use crate::exchange::BindingId;
use crate::message::{Headers, Message};

/// What of its exchange a lane needs to (re)start an instance and check its output.
pub(super) struct LaneContext<'a> {
    pub name: &'a Arc<str>,
    pub arguments: &'a [wit::Header],
    pub bindings: &'a BindingMap,
    pub limits: &'a Limits,
}

pub(super) struct TrialLane {
    trial: Arc<Trial>,
    threshold: Option<u64>,
    /// `None` until the first call, and after a failure.
    instance: Option<LiveInstance>,
    cache: Option<KeyCache>,
    health: CallHealth,
}

impl TrialLane {
    pub fn new(trial: Arc<Trial>, limits: &Limits) -> Self {
        TrialLane {
            threshold: trial.mode.canary_threshold(),
            cache: trial
                .plugin
                .info
                .capabilities
                .key_only
                .then(|| KeyCache::new(limits.key_cache_entries)),
            trial,
            instance: None,
            health: CallHealth::new(limits),
        }
    }

    /// Whether this lane runs `trial` (the slot's trial did not change).
    pub fn runs(&self, trial: &Arc<Trial>) -> bool {
        Arc::ptr_eq(&self.trial, trial)
    }

    pub fn is_shadow(&self) -> bool {
        self.trial.mode == TrialMode::Shadow
    }

    /// Whether the canary routes the message with this draw (uniform over `u32`): in its
    /// share, not judged failing, and not throttled.
    pub fn takes(&mut self, draw: u32, limits: &Limits) -> bool {
        match self.threshold {
            Some(threshold) => {
                u64::from(draw) < threshold
                    && !self.trial.report.is_failed()
                    && !self.health.throttled(limits)
            }
            None => false,
        }
    }

    /// The canary's cached route of `msg`, counted as routed by it.
    pub fn canary_cached(&self, msg: &Message) -> Option<Vec<BindingId>> {
        let ids = self.cache.as_ref()?.get(&msg.routing_key)?.to_vec();
        self.trial.plugin.stats.record_messages(1);
        self.trial.plugin.stats.record_cache_hits(1);
        self.trial.report.record_canary();
        Some(ids)
    }

    /// Routes `msg` by the canary; `None` when it failed (counted), for the active
    /// version to route it instead.
    pub fn canary(&mut self, cx: &LaneContext<'_>, msg: &Message) -> Option<Vec<BindingId>> {
        match self.route(cx, msg) {
            Ok(ids) => {
                self.trial.plugin.stats.record_messages(1);
                self.trial.report.record_canary();
                Some(ids)
            }
            Err(_) => {
                self.trial.report.record_canary_error();
                None
            }
        }
    }

    /// Compares the shadow's route of `msg` with the active version's, from the shadow's
    /// key cache only; false when it would take a call.
    pub fn shadow_cached(&self, exchange: &str, msg: &Message, active: &[BindingId]) -> bool {
        let Some(ids) = self.cache.as_ref().and_then(|c| c.get(&msg.routing_key)) else {
            return false;
        };
        self.trial.report.compare(exchange, msg, active, Ok(ids));
        true
    }

    /// Routes `msg` by the shadow and compares with the active version's route.
    pub fn shadow(&mut self, cx: &LaneContext<'_>, msg: &Message, active: &[BindingId]) {
        if self.health.throttled(cx.limits) {
            return;
        }
        let shadow = self.route(cx, msg);
        let shadow = shadow.as_deref().map_err(Clone::clone);
        self.trial.report.compare(cx.name, msg, active, shadow);
    }

    /// Messages the shadow left out (its exchange was behind).
    pub fn skip(&self, messages: usize) {
        self.trial.report.record_skipped(messages as u64);
    }

    /// One route call (or cache hit) on the trial version, its failures counted for that
    /// version and against the lane's health.
    fn route(&mut self, cx: &LaneContext<'_>, msg: &Message) -> Result<Vec<BindingId>, String> {
        if let Some(ids) = self.cache.as_ref().and_then(|c| c.get(&msg.routing_key)) {
            return Ok(ids.to_vec());
        }
        let started = Instant::now();
        let plugin = self.trial.plugin.clone();
        if self.instance.is_none() {
            match start_instance(&plugin, cx.name, cx.arguments, cx.bindings, cx.limits) {
                Ok(instance) => self.instance = Some(instance),
                Err(reason) => return Err(self.fail(reason, started, cx)),
            }
        }
        let view = convert::message(msg, plugin.info.capabilities);
        let instance = self.instance.as_mut().expect("just ensured");
        let routed = instance.route(&view, msg.body.clone()).and_then(|ids| {
            check_route_output(&ids, cx.limits.max_route_ids, |id| {
                cx.bindings.contains_key(&id)
            })
            .map(|()| ids)
        });
        match routed {
            Ok(ids) => {
                self.health.record_success(cx.limits);
                if let Some(cache) = &mut self.cache {
                    cache.insert(&msg.routing_key, &ids);
                }
                Ok(ids)
            }
            Err(failure) => {
                plugin.stats.record_failure(failure.kind);
                Err(self.fail(failure.reason, started, cx))
            }
        }
    }

    /// A failed call: drop the instance; a canary whose failures pass the quarantine
    /// threshold is marked failing (a shadow's are only counted).
    fn fail(&mut self, reason: String, started: Instant, cx: &LaneContext<'_>) -> String {
        self.instance = None;
        let version = self.trial.plugin.info.version;
        if let Some(cause) = self.health.record_failure(started.elapsed(), cx.limits)
            && self.threshold.is_some()
            && !self.trial.report.is_failed()
        {
            tracing::warn!(exchange = %cx.name, plugin = %self.trial.plugin.info.name, version, %cause, "canary version failing");
            self.trial.report.fail(cause.to_string());
        }
        reason
    }

    /// Bindings changed: cached routes are stale.
    pub fn forget_routes(&mut self) {
        if let Some(cache) = &mut self.cache {
            cache.clear();
        }
    }

    /// Passes a new binding to the live instance; if it refuses or fails, the instance is
    /// dropped and the next call starts one with every binding replayed.
    pub fn bind(&mut self, id: BindingId, key: &str, arguments: &Headers) {
        self.forget_routes();
        let Some(instance) = self.instance.as_mut() else {
            return;
        };
        if !matches!(
            instance.bind(id, key, &convert::headers(arguments)),
            Ok(Ok(()))
        ) {
            self.instance = None;
        }
    }

    pub fn unbind(&mut self, id: BindingId) {
        self.forget_routes();
        if let Some(instance) = self.instance.as_mut()
            && instance.unbind(id).is_err()
        {
            self.instance = None;
        }
    }
}
