//! Hash maps for the maps every message touches (connections, queues, bindings, unacked
//! deliveries). The standard `HashMap` hashes with SipHash-1-3, which was 3-4 % of the
//! broker's CPU at full speed; foldhash is several times cheaper and still seeds each map
//! at random, so keys a client chooses (queue names) cannot be aimed at collisions ahead.

pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
