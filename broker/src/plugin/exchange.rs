//! One declared exchange backed by a plugin instance: keeps the bindings (to replay into
//! a fresh instance), validates what the plugin returns, caches key-only routes, and
//! contains failures (discard the instance, count, log at a limited rate, throttle, and
//! quarantine after too many in a row or too many of the recent calls). Every message is
//! its own call with its own budget, batches included. When its type has a version on
//! trial, the exchange also runs it in a [`TrialLane`] (a canary's share of the messages,
//! or every message again as a shadow).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::binding_map::{BindingMap, BoundKey, check_route_output, start_instance};
use super::bindings::wit;
use super::convert;
use super::health::{CallHealth, LogThrottle};
use super::instance::{Failure, LiveInstance};
use super::key_cache::KeyCache;
use super::limits::Limits;
use super::loader::LoadedPlugin;
use super::registry::PluginSlot;
use super::stats::PluginStats;
use super::trial::Trial;
use super::trial_lane::{LaneContext, TrialLane};
use crate::exchange::{BindingId, Exchange, ExchangeError};
use crate::message::{Headers, Message};

/// The part of an exchange's state the host can reach while the router owns the exchange.
#[derive(Debug)]
pub struct ExchangeControl {
    /// The exchange type (plugin name), for a reset of every exchange of a plugin.
    plugin: String,
    quarantined: AtomicBool,
    /// When it was quarantined (ms since the Unix epoch), and why.
    quarantine: Mutex<Option<(u64, String)>>,
    reset_requested: AtomicBool,
}

impl ExchangeControl {
    pub fn new(plugin: &str) -> Self {
        ExchangeControl {
            plugin: plugin.to_owned(),
            quarantined: AtomicBool::new(false),
            quarantine: Mutex::new(None),
            reset_requested: AtomicBool::new(false),
        }
    }

    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Acquire)
    }

    /// Since when (ms since the Unix epoch) and why the exchange is quarantined.
    pub fn quarantine(&self) -> Option<(u64, String)> {
        if !self.is_quarantined() {
            return None;
        }
        self.quarantine
            .lock()
            .expect("control lock poisoned")
            .clone()
    }

    /// Lifts quarantine now; the exchange starts a fresh instance, its failure history
    /// forgotten, at its next call.
    pub fn request_reset(&self) {
        self.reset_requested.store(true, Ordering::Release);
        self.set_quarantine(None);
    }

    fn set_quarantine(&self, cause: Option<String>) {
        let mut quarantine = self.quarantine.lock().expect("control lock poisoned");
        *quarantine = cause.map(|cause| (crate::clock::now_ms(), cause));
        self.quarantined
            .store(quarantine.is_some(), Ordering::Release);
    }
}

pub struct PluginExchange {
    name: Arc<str>,
    arguments: Vec<wit::Header>,
    slot: Arc<PluginSlot>,
    /// The plugin version `instance` runs and the slot generation it came from.
    plugin: Arc<LoadedPlugin>,
    generation: u64,
    /// `None` after a failure, until the next call recreates it.
    instance: Option<LiveInstance>,
    bindings: BindingMap,
    cache: Option<KeyCache>,
    health: CallHealth,
    failure_log: LogThrottle,
    limits: Limits,
    control: Arc<ExchangeControl>,
    stats: Arc<PluginStats>,
    /// The type's version on trial (shadow or canary), when it has one.
    lane: Option<TrialLane>,
}

fn plugin_failed(failure: Failure) -> ExchangeError {
    ExchangeError::PluginFailed(failure.reason)
}

impl PluginExchange {
    /// Creates the exchange with a first instance; fails if the plugin rejects `arguments`.
    pub(crate) fn new(
        slot: Arc<PluginSlot>,
        name: &str,
        arguments: &Headers,
        limits: &Limits,
        control: Arc<ExchangeControl>,
    ) -> Result<Self, ExchangeError> {
        let (plugin, trial, generation) = slot.current_and_trial();
        let stats = plugin.stats.clone();
        let name: Arc<str> = name.into();
        let arguments = convert::headers(arguments);
        let instance = match LiveInstance::new(&plugin, &name, &arguments, limits, &stats) {
            Ok(Ok(instance)) => instance,
            Ok(Err(reason)) => return Err(ExchangeError::InvalidArguments(reason)),
            Err(failure) => {
                stats.record_failure(failure.kind);
                return Err(plugin_failed(failure));
            }
        };
        Ok(PluginExchange {
            cache: plugin
                .info
                .capabilities
                .key_only
                .then(|| KeyCache::new(limits.key_cache_entries)),
            name,
            arguments,
            slot,
            plugin,
            generation,
            instance: Some(instance),
            bindings: BindingMap::default(),
            health: CallHealth::new(limits),
            failure_log: LogThrottle::default(),
            limits: limits.clone(),
            control,
            stats,
            lane: trial.map(|trial| TrialLane::new(trial, limits)),
        })
    }

    /// The fuel its plugin's last call used (`None`: fuel not metered, or no instance
    /// since a failure); `broker plugin test` prints it.
    pub fn last_call_fuel(&self) -> Option<u64> {
        self.instance.as_ref()?.last_call_fuel()
    }

    /// The counters of the plugin version this exchange runs.
    pub fn stats(&self) -> &Arc<PluginStats> {
        &self.stats
    }

    pub fn is_quarantined(&self) -> bool {
        self.control.is_quarantined()
    }

    /// Leaves quarantine; the next call starts a fresh instance with the current bindings.
    pub fn reset(&mut self) {
        self.control.reset_requested.store(false, Ordering::Release);
        self.control.set_quarantine(None);
        self.health.clear(&self.limits);
        self.instance = None;
    }

    /// Applies a reset requested through the host, and moves to a redeployed version of
    /// the plugin; then refuses work while quarantined or throttled (no call is made).
    fn check_in(&mut self) -> Result<(), ExchangeError> {
        if self.control.reset_requested.load(Ordering::Acquire) {
            self.reset();
        }
        if self.slot.generation() != self.generation {
            self.upgrade();
        }
        if let Some((_, cause)) = self.control.quarantine() {
            return Err(ExchangeError::Unavailable(format!(
                "exchange `{}` is quarantined ({cause}); run `broker plugin reset {}` or \
                 redeploy the plugin",
                self.name, self.plugin.info.name
            )));
        }
        if self.health.throttled(&self.limits) {
            return Err(ExchangeError::Unavailable(format!(
                "exchange `{}` is throttled: its failing calls used their time share; \
                 retry later",
                self.name
            )));
        }
        Ok(())
    }

    /// Switches to the slot's current plugin version if it accepts all bindings;
    /// otherwise stays on the old version (a redeploy must not lose bindings).
    fn upgrade(&mut self) {
        let (plugin, trial, generation) = self.slot.current_and_trial();
        self.generation = generation;
        self.sync_lane(trial);
        if Arc::ptr_eq(&plugin, &self.plugin) {
            // Only the version on trial changed.
            return;
        }
        match self.start(&plugin) {
            Ok(instance) => {
                tracing::info!(exchange = %self.name, plugin = %plugin.info.name, version = plugin.info.version, "exchange moved to redeployed plugin");
                self.stats = plugin.stats.clone();
                self.plugin = plugin;
                self.instance = Some(instance);
                self.cache = self
                    .plugin
                    .info
                    .capabilities
                    .key_only
                    .then(|| KeyCache::new(self.limits.key_cache_entries));
                self.control.set_quarantine(None);
                self.health.clear(&self.limits);
            }
            Err(reason) => {
                tracing::warn!(exchange = %self.name, %reason, "redeployed plugin rejected the exchange; keeping the previous version");
            }
        }
    }

    /// Follows the slot's version on trial: a new lane for a new trial, none without.
    fn sync_lane(&mut self, trial: Option<Arc<Trial>>) {
        match trial {
            Some(trial) if self.lane.as_ref().is_some_and(|lane| lane.runs(&trial)) => {}
            Some(trial) => self.lane = Some(TrialLane::new(trial, &self.limits)),
            None => self.lane = None,
        }
    }

    /// A fresh instance of `plugin` with this exchange's arguments and bindings.
    fn start(&self, plugin: &LoadedPlugin) -> Result<LiveInstance, String> {
        start_instance(
            plugin,
            &self.name,
            &self.arguments,
            &self.bindings,
            &self.limits,
        )
    }

    /// The live instance, recreated (bindings replayed) after a failure.
    fn instance(&mut self) -> Result<&mut LiveInstance, Failure> {
        if self.instance.is_none() {
            match self.start(&self.plugin.clone()) {
                Ok(instance) => self.instance = Some(instance),
                // Counted in the stats by `start`; the caller counts it for the exchange.
                Err(reason) => {
                    return Err(Failure {
                        kind: super::stats::FailureKind::Trap,
                        reason: format!("could not restart the plugin: {reason}"),
                        out_of_time: false,
                    });
                }
            }
        }
        Ok(self.instance.as_mut().expect("just ensured"))
    }

    /// A call that worked.
    fn succeed(&mut self) {
        self.health.record_success(&self.limits);
    }

    /// Records a failed call that took `spent` (restart included): drop the instance,
    /// log (at most once a second per exchange), maybe quarantine.
    fn fail(&mut self, failure: Failure, started: Instant, counted: bool) -> ExchangeError {
        if counted {
            self.stats.record_failure(failure.kind);
        }
        self.instance = None;
        let (plugin, version) = (&*self.plugin.info.name, self.plugin.info.version);
        if let Some(suppressed) = self.failure_log.admit() {
            tracing::warn!(exchange = %self.name, plugin, version, kind = ?failure.kind, reason = %failure.reason, suppressed, "plugin call failed");
        }
        if let Some(cause) = self.health.record_failure(started.elapsed(), &self.limits)
            && !self.control.is_quarantined()
        {
            self.stats.record_quarantine();
            tracing::warn!(exchange = %self.name, plugin, version, %cause, "exchange quarantined");
            self.control.set_quarantine(Some(cause.to_string()));
        }
        plugin_failed(failure)
    }

    /// Checks a route result against the contract: bounded size, bound ids only.
    fn check_output(&self, ids: &[BindingId]) -> Result<(), Failure> {
        check_route_output(ids, self.limits.max_route_ids, |id| {
            self.bindings.contains_key(&id)
        })
    }

    fn capabilities(&self) -> super::loader::Capabilities {
        self.plugin.info.capabilities
    }

    /// Routes several messages: each is checked in (quarantine, throttle) and routed on
    /// its own, from the key cache or with one `route` call under its own fuel and time
    /// budget, so a message that makes the plugin fail fails alone, and once the exchange
    /// is quarantined no later message of the batch reaches the plugin.
    pub fn route_batch(&mut self, msgs: &[&Message]) -> Vec<Result<Vec<BindingId>, ExchangeError>> {
        let draws: Vec<u32> = msgs.iter().map(|_| fastrand::u32(..)).collect();
        self.route_batch_drawn(msgs, &draws)
    }

    /// [`Self::route_batch`] with each message's draw (which version routes it, when a
    /// canary is deployed) made by the caller.
    pub fn route_batch_drawn(
        &mut self,
        msgs: &[&Message],
        draws: &[u32],
    ) -> Vec<Result<Vec<BindingId>, ExchangeError>> {
        msgs.iter()
            .zip(draws)
            .map(|(msg, draw)| {
                let mut out = Vec::new();
                self.route_checked(msg, *draw, &mut out).map(|()| out)
            })
            .collect()
    }

    /// Whether a shadow version runs next to this exchange's: ingress then passes what
    /// it routed to [`Self::shadow_batch`] once the publishers are answered.
    pub fn shadows(&self) -> bool {
        self.lane.as_ref().is_some_and(TrialLane::is_shadow)
    }

    /// Routes `msgs` again by the shadow version (if there is one) and compares each with
    /// what the active version did (`routed`); decides nothing. Once `behind` says the
    /// exchange's publishes pile up, the rest is skipped (counted).
    pub fn shadow_batch(
        &mut self,
        msgs: &[&Message],
        routed: &[Result<Vec<BindingId>, ExchangeError>],
        behind: &dyn Fn() -> bool,
    ) {
        let Some(lane) = self.lane.as_mut().filter(|lane| lane.is_shadow()) else {
            return;
        };
        let cx = LaneContext {
            name: &self.name,
            arguments: &self.arguments,
            bindings: &self.bindings,
            limits: &self.limits,
        };
        for (done, (msg, routed)) in msgs.iter().zip(routed).enumerate() {
            if behind() {
                lane.skip(msgs.len() - done);
                return;
            }
            if let Ok(active) = routed
                && !lane.shadow_cached(cx.name, msg, active)
            {
                lane.shadow(&cx, msg, active);
            }
        }
    }

    /// The canary's route of `msg` if its draw is the canary's and the canary did not
    /// fail on it.
    fn route_canary(&mut self, msg: &Message, draw: u32) -> Option<Vec<BindingId>> {
        let lane = self.lane.as_mut()?;
        if !lane.takes(draw, &self.limits) {
            return None;
        }
        let cx = LaneContext {
            name: &self.name,
            arguments: &self.arguments,
            bindings: &self.bindings,
            limits: &self.limits,
        };
        lane.canary(&cx, msg)
    }

    /// The cheap part of [`Self::route_checked`]: a refusal while quarantined or
    /// throttled, or a cached key-only route; `None` when the plugin must be called (or
    /// a reset or redeploy must be applied first, which starts an instance).
    /// With a canary, the draw decides the version first, then only that version's cache
    /// is looked at; with a shadow, a cached route counts only if the shadow's is cached
    /// too (compared here), otherwise the worker routes it and runs the shadow after.
    fn route_cached(
        &mut self,
        msg: &Message,
        draw: u32,
    ) -> Option<Result<Vec<BindingId>, ExchangeError>> {
        if self.control.reset_requested.load(Ordering::Acquire)
            || self.slot.generation() != self.generation
        {
            return None;
        }
        if self.control.is_quarantined() || self.health.throttled(&self.limits) {
            return self.check_in().err().map(Err);
        }
        if let Some(lane) = self.lane.as_mut()
            && lane.takes(draw, &self.limits)
        {
            return lane.canary_cached(msg).map(Ok);
        }
        let ids = self.cache.as_ref()?.get(&msg.routing_key)?;
        if let Some(lane) = &self.lane
            && lane.is_shadow()
            && !lane.shadow_cached(&self.name, msg, ids)
        {
            return None;
        }
        let ids = ids.to_vec();
        self.stats.record_messages(1);
        self.stats.record_cache_hits(1);
        Some(Ok(ids))
    }

    fn route_checked(
        &mut self,
        msg: &Message,
        draw: u32,
        out: &mut Vec<BindingId>,
    ) -> Result<(), ExchangeError> {
        self.check_in()?;
        if let Some(ids) = self.route_canary(msg, draw) {
            out.extend_from_slice(&ids);
            return Ok(());
        }
        self.stats.record_messages(1);
        self.route_one(msg, out)
    }

    /// Routes one message (already counted) with the cache or one `route` call.
    fn route_one(&mut self, msg: &Message, out: &mut Vec<BindingId>) -> Result<(), ExchangeError> {
        if let Some(ids) = self.cache.as_ref().and_then(|c| c.get(&msg.routing_key)) {
            out.extend_from_slice(ids);
            self.stats.record_cache_hits(1);
            return Ok(());
        }
        let started = Instant::now();
        let view = convert::message(msg, self.capabilities());
        let instance = match self.instance() {
            Ok(instance) => instance,
            Err(failure) => return Err(self.fail(failure, started, false)),
        };
        let routed = instance.route(&view, msg.body.clone());
        match routed.and_then(|ids| self.check_output(&ids).map(|()| ids)) {
            Ok(ids) => {
                self.succeed();
                if let Some(cache) = &mut self.cache {
                    cache.insert(&msg.routing_key, &ids);
                }
                out.extend_from_slice(&ids);
                Ok(())
            }
            Err(failure) => Err(self.fail(failure, started, true)),
        }
    }

    /// Runs a binding call (validate, bind) on the live instance: the plugin's answer, or
    /// the failure recorded.
    fn binding_call(
        &mut self,
        call: impl FnOnce(&mut LiveInstance) -> Result<Result<(), String>, Failure>,
    ) -> Result<Result<(), String>, ExchangeError> {
        self.check_in()?;
        let started = Instant::now();
        let instance = match self.instance() {
            Ok(instance) => instance,
            Err(failure) => return Err(self.fail(failure, started, false)),
        };
        match call(instance) {
            Ok(answer) => {
                self.succeed();
                Ok(answer)
            }
            Err(failure) => Err(self.fail(failure, started, true)),
        }
    }
}

impl Exchange for PluginExchange {
    fn route_batch(&mut self, msgs: &[&Message]) -> Vec<Result<Vec<BindingId>, ExchangeError>> {
        PluginExchange::route_batch(self, msgs)
    }

    fn validate_binding(&mut self, key: &str, arguments: &Headers) -> Result<(), ExchangeError> {
        let arguments = convert::headers(arguments);
        self.binding_call(|instance| instance.validate_binding(key, &arguments))?
            .map_err(ExchangeError::InvalidBinding)
    }

    fn bind(&mut self, id: BindingId, key: &str, headers: &Headers) -> Result<(), ExchangeError> {
        let arguments = convert::headers(headers);
        self.binding_call(|instance| instance.bind(id, key, &arguments))?
            .map_err(ExchangeError::InvalidBinding)?;
        if let Some(lane) = &mut self.lane {
            lane.bind(id, key, headers);
        }
        self.bindings.insert(
            id,
            BoundKey {
                key: key.to_owned(),
                arguments,
            },
        );
        if let Some(cache) = &mut self.cache {
            cache.clear();
        }
        Ok(())
    }

    /// Always succeeds for the broker: the binding is forgotten host-side even if the
    /// plugin fails, and a failed instance is replaced by one without it.
    fn unbind(&mut self, id: BindingId) -> Result<(), ExchangeError> {
        let known = self.bindings.remove(&id).is_some();
        if let Some(cache) = &mut self.cache {
            cache.clear();
        }
        if let Some(lane) = &mut self.lane {
            lane.unbind(id);
        }
        if !known || self.check_in().is_err() {
            return Ok(());
        }
        let started = Instant::now();
        if let Some(instance) = self.instance.as_mut()
            && let Err(failure) = instance.unbind(id)
        {
            self.fail(failure, started, true);
        }
        Ok(())
    }

    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) -> Result<(), ExchangeError> {
        self.route_checked(msg, fastrand::u32(..), out)
    }

    fn route_cached(&mut self, msg: &Message) -> Option<Result<Vec<BindingId>, ExchangeError>> {
        PluginExchange::route_cached(self, msg, fastrand::u32(..))
    }

    fn route_cached_drawn(
        &mut self,
        msg: &Message,
        draw: u32,
    ) -> Option<Result<Vec<BindingId>, ExchangeError>> {
        PluginExchange::route_cached(self, msg, draw)
    }

    fn route_batch_drawn(
        &mut self,
        msgs: &[&Message],
        draws: &[u32],
    ) -> Vec<Result<Vec<BindingId>, ExchangeError>> {
        PluginExchange::route_batch_drawn(self, msgs, draws)
    }

    fn shadows(&self) -> bool {
        PluginExchange::shadows(self)
    }

    fn shadow_batch(
        &mut self,
        msgs: &[&Message],
        routed: &[Result<Vec<BindingId>, ExchangeError>],
        behind: &dyn Fn() -> bool,
    ) {
        PluginExchange::shadow_batch(self, msgs, routed, behind)
    }

    fn plugin_version(&self) -> Option<u64> {
        Some(self.plugin.info.version)
    }
}
