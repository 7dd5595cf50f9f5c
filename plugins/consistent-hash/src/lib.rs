//! The `consistent-hash` exchange (like RabbitMQ's `x-consistent-hash`): each message goes
//! to exactly one binding, chosen by hashing its routing key (or the header named by the
//! exchange argument `hash_header`) onto a ring of points.
//!
//! A binding's key is its weight, a whole number from 1 to [`MAX_WEIGHT`]: a binding with
//! weight 10 owns ten times as many points as one with weight 1, so about ten times as many
//! keys. The points of a binding depend only on its id, so adding or removing a binding
//! moves only the keys that the new binding takes or the old one owned (about 1/n of them).
//! The hash is fixed (FNV-1a with a 64-bit finaliser), so the same key lands on the same
//! binding across instances and restarts. A message without the `hash_header` header is
//! routed nowhere.

use std::collections::BTreeMap;

use broker_plugin_sdk::{BindingId, Capabilities, Exchange, Headers, Message, Value};

/// The largest binding weight.
pub const MAX_WEIGHT: u32 = 100;
/// Ring points per unit of weight: enough that a binding's share is within ~10 % of its
/// weight's.
const POINTS_PER_WEIGHT: u32 = 100;
/// Caps the ring at 4 MiB (16 bytes per point), far below the plugin memory limit.
pub const MAX_POINTS: u64 = 250_000;

/// 64-bit FNV-1a followed by the murmur3 finaliser, which spreads FNV's weak low bits.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The position of point `index` of binding `id`.
fn point(id: BindingId, index: u32) -> u64 {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&id.to_le_bytes());
    bytes[8..].copy_from_slice(&index.to_le_bytes());
    hash(&bytes)
}

/// Parses a binding key as a weight.
pub fn parse_weight(key: &str) -> Result<u32, String> {
    match key.trim().parse::<u32>() {
        Ok(w) if (1..=MAX_WEIGHT).contains(&w) => Ok(w),
        _ => Err(format!(
            "a consistent-hash binding key is its weight, a whole number from 1 to {MAX_WEIGHT}, not `{key}`"
        )),
    }
}

pub struct ConsistentHash {
    hash_header: Option<String>,
    weights: BTreeMap<BindingId, u32>,
    /// (position, binding), sorted; rebuilt lazily after bindings change, so replaying n
    /// bindings sorts once.
    ring: Vec<(u64, BindingId)>,
    dirty: bool,
}

impl ConsistentHash {
    fn points(&self) -> u64 {
        self.weights
            .values()
            .map(|&w| u64::from(w * POINTS_PER_WEIGHT))
            .sum()
    }

    fn check_room(&self, weight: u32, replacing: Option<BindingId>) -> Result<(), String> {
        let freed = replacing
            .and_then(|id| self.weights.get(&id))
            .map_or(0, |&w| u64::from(w * POINTS_PER_WEIGHT));
        let total = self.points() - freed + u64::from(weight * POINTS_PER_WEIGHT);
        if total > MAX_POINTS {
            return Err(format!(
                "the bindings' weights add up to more than {} (the ring is full)",
                MAX_POINTS / u64::from(POINTS_PER_WEIGHT)
            ));
        }
        Ok(())
    }

    fn rebuild(&mut self) {
        self.ring.clear();
        for (&id, &weight) in &self.weights {
            self.ring
                .extend((0..weight * POINTS_PER_WEIGHT).map(|i| (point(id, i), id)));
        }
        self.ring.sort_unstable();
        self.dirty = false;
    }

    /// The binding owning position `h`: the first point at or after it, wrapping around.
    fn owner(&self, h: u64) -> Option<BindingId> {
        let at = self.ring.partition_point(|&(p, _)| p < h);
        self.ring.get(at).or(self.ring.first()).map(|&(_, id)| id)
    }
}

/// The bytes a header value hashes as: text as itself, whole numbers as their decimal
/// text (so `7`, `7.0` and `"7"` agree), other numbers by their bits, booleans as
/// `true`/`false`, arrays and objects as their JSON text. No float formatting: it would
/// double the plugin's size.
fn header_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Null => None,
        Value::Bool(b) => Some(if *b {
            b"true".to_vec()
        } else {
            b"false".to_vec()
        }),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            Some((*f as i64).to_string().into_bytes())
        }
        Value::Float(f) => Some(f.to_bits().to_le_bytes().to_vec()),
        Value::Text(s) | Value::Json(s) => Some(s.as_bytes().to_vec()),
    }
}

impl Exchange for ConsistentHash {
    fn capabilities() -> Capabilities {
        // Not key-only: with `hash_header` the header decides.
        Capabilities::HEADERS
    }

    fn new(_exchange: &str, arguments: &Headers) -> Result<Self, String> {
        let mut hash_header = None;
        for arg in arguments {
            match (arg.name.as_str(), &arg.value) {
                ("hash_header", Value::Text(name)) if !name.is_empty() => {
                    hash_header = Some(name.clone())
                }
                ("hash_header", _) => {
                    return Err("hash_header must be a non-empty header name".to_owned());
                }
                (other, _) => {
                    return Err(format!(
                        "unknown consistent-hash argument `{other}` (known: hash_header)"
                    ));
                }
            }
        }
        Ok(ConsistentHash {
            hash_header,
            weights: BTreeMap::new(),
            ring: Vec::new(),
            dirty: false,
        })
    }

    fn validate_binding(&self, key: &str, _arguments: &Headers) -> Result<(), String> {
        self.check_room(parse_weight(key)?, None)
    }

    fn bind(&mut self, id: BindingId, key: &str, _arguments: &Headers) -> Result<(), String> {
        let weight = parse_weight(key)?;
        self.check_room(weight, Some(id))?;
        self.weights.insert(id, weight);
        self.dirty = true;
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        if self.weights.remove(&id).is_some() {
            self.dirty = true;
        }
    }

    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) {
        if self.dirty {
            self.rebuild();
        }
        let h = match &self.hash_header {
            None => hash(msg.routing_key().as_bytes()),
            Some(name) => match msg.header(name).and_then(header_bytes) {
                Some(bytes) => hash(&bytes),
                None => return,
            },
        };
        out.extend(self.owner(h));
    }
}

broker_plugin_sdk::export_exchange!(ConsistentHash);

#[cfg(test)]
mod tests;
