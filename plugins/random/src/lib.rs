//! The `random` exchange: each message goes to one of the bindings, picked pseudo-randomly
//! with equal chances, to spread load over queues (RabbitMQ users install
//! `x-random` / `x-local-random` for this). Binding keys and arguments are ignored.
//!
//! Plugins get no randomness from the host, so the choice comes from a SplitMix64 generator
//! kept in the instance, seeded from the exchange name: the sequence of choices is
//! deterministic for one instance, and starts over when the broker restarts or replaces
//! the instance (after a plugin failure or a redeploy).

use broker_plugin_sdk::{BindingId, Capabilities, Exchange, Headers, Message};

/// SplitMix64: one add and a finaliser per number, and statistically sound for choosing
/// among bindings.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (Lemire's multiply-shift; the bias is below 2^-32 for any
    /// realistic number of bindings).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

pub struct Random {
    /// Sorted, so the choice depends on the bindings and not on the order they arrived.
    bindings: Vec<BindingId>,
    rng: SplitMix64,
}

/// FNV-1a of the exchange name: the seed.
fn seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Exchange for Random {
    fn capabilities() -> Capabilities {
        // Not key-only: the host must not cache one choice per routing key.
        Capabilities {
            key_only: false,
            reads_headers: false,
            reads_body: false,
        }
    }

    fn new(exchange: &str, arguments: &Headers) -> Result<Self, String> {
        if let Some(arg) = arguments.iter().next() {
            return Err(format!(
                "the random exchange takes no arguments, got `{}`",
                arg.name
            ));
        }
        Ok(Random {
            bindings: Vec::new(),
            rng: SplitMix64(seed(exchange)),
        })
    }

    fn validate_binding(&self, _key: &str, _arguments: &Headers) -> Result<(), String> {
        Ok(())
    }

    fn bind(&mut self, id: BindingId, _key: &str, _arguments: &Headers) -> Result<(), String> {
        if let Err(at) = self.bindings.binary_search(&id) {
            self.bindings.insert(at, id);
        }
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        if let Ok(at) = self.bindings.binary_search(&id) {
            self.bindings.remove(at);
        }
    }

    fn route(&mut self, _msg: &Message, out: &mut Vec<BindingId>) {
        if !self.bindings.is_empty() {
            let pick = self.rng.below(self.bindings.len());
            out.push(self.bindings[pick]);
        }
    }
}

broker_plugin_sdk::export_exchange!(Random);

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(name: &str, ids: &[BindingId]) -> Random {
        let mut ex = Random::new(name, &Headers::new()).unwrap();
        for &id in ids {
            ex.bind(id, "", &Headers::new()).unwrap();
        }
        ex
    }

    fn pick(ex: &mut Random) -> Option<BindingId> {
        let mut out = Vec::new();
        ex.route(&Message::new("same-key"), &mut out);
        assert!(out.len() <= 1);
        out.first().copied()
    }

    #[test]
    fn spreads_evenly_over_the_bindings() {
        let mut ex = exchange("work", &[10, 20, 30, 40]);
        let n = 40_000;
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..n {
            *counts.entry(pick(&mut ex).unwrap()).or_insert(0usize) += 1;
        }
        assert_eq!(counts.len(), 4);
        for (id, c) in counts {
            // 10,000 expected; 5 % is over 10 standard deviations.
            assert!((9_500..10_500).contains(&c), "binding {id}: {c}");
        }
    }

    #[test]
    fn the_same_key_still_spreads() {
        let mut ex = exchange("work", &[1, 2]);
        let picks: std::collections::BTreeSet<_> = (0..50).map(|_| pick(&mut ex)).collect();
        assert_eq!(picks.len(), 2);
    }

    #[test]
    fn deterministic_per_instance_whatever_the_binding_order() {
        let mut a = exchange("work", &[1, 2, 3]);
        let mut b = exchange("work", &[3, 1, 2]);
        let seq_a: Vec<_> = (0..100).map(|_| pick(&mut a)).collect();
        let seq_b: Vec<_> = (0..100).map(|_| pick(&mut b)).collect();
        assert_eq!(seq_a, seq_b);
        // Another exchange gets another sequence.
        let mut c = exchange("other", &[1, 2, 3]);
        let seq_c: Vec<_> = (0..100).map(|_| pick(&mut c)).collect();
        assert_ne!(seq_a, seq_c);
    }

    #[test]
    fn no_bindings_route_nowhere_and_unbound_ones_are_never_picked() {
        let mut ex = exchange("work", &[]);
        assert_eq!(pick(&mut ex), None);
        let mut ex = exchange("work", &[1, 2, 3]);
        ex.bind(2, "again", &Headers::new()).unwrap();
        ex.unbind(2);
        ex.unbind(99);
        for _ in 0..200 {
            assert_ne!(pick(&mut ex), Some(2));
        }
    }

    #[test]
    fn arguments_are_refused() {
        assert!(Random::new("r", &Headers::new().with("seed", 1i64)).is_err());
    }
}
