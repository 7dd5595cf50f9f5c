//! The `topic` exchange (AMQP semantics): keys and patterns are words separated by `.`;
//! in a pattern `*` matches exactly one word and `#` zero or more words.
//!
//! Patterns live in a trie of words, so routing costs depend on the key's length and
//! the patterns that share its prefixes, not on the number of bindings.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use broker_plugin_sdk::{BindingId, Capabilities, Exchange, Headers, Message};

/// Longest accepted pattern, in bytes (AMQP's short-string limit); it bounds matching work.
pub const MAX_PATTERN_LEN: usize = 255;

/// FNV-1a: word lookups hash short strings on every route, where SipHash's DoS
/// resistance buys nothing (patterns come from the broker's own bindings).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<Fnv>>;

#[derive(Default)]
struct Node {
    words: HashMap<String, Node>,
    star: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    /// Bindings whose pattern ends here.
    bindings: Vec<BindingId>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.bindings.is_empty()
            && self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }
}

#[derive(Default)]
pub struct Topic {
    root: Node,
    patterns: HashMap<BindingId, String>,
}

/// The words of a key or pattern. The empty string has no words; `"a."` is `a` and ``.
fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// Pattern words with runs of `#` collapsed (`#.#` means the same as `#`), which keeps
/// matching polynomial.
fn pattern_words(pattern: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for word in words(pattern) {
        if !(word == "#" && out.last() == Some(&"#")) {
            out.push(word);
        }
    }
    out
}

fn insert(node: &mut Node, words: &[&str], id: BindingId) {
    let Some((first, rest)) = words.split_first() else {
        node.bindings.push(id);
        return;
    };
    let child = match *first {
        "*" => node.star.get_or_insert_with(Box::default),
        "#" => node.hash.get_or_insert_with(Box::default),
        word => node.words.entry(word.to_owned()).or_default(),
    };
    insert(child, rest, id);
}

/// Removes `id` below `node`, pruning nodes left empty.
fn remove(node: &mut Node, words: &[&str], id: BindingId) {
    let Some((first, rest)) = words.split_first() else {
        node.bindings.retain(|&b| b != id);
        return;
    };
    match *first {
        "*" | "#" => {
            let slot = if *first == "*" {
                &mut node.star
            } else {
                &mut node.hash
            };
            if let Some(child) = slot {
                remove(child, rest, id);
                if child.is_empty() {
                    *slot = None;
                }
            }
        }
        word => {
            if let Some(child) = node.words.get_mut(word) {
                remove(child, rest, id);
                if child.is_empty() {
                    node.words.remove(word);
                }
            }
        }
    }
}

/// A position in a routing key: the byte offset where the next word starts, or `DONE`
/// once every word was consumed. Walking offsets instead of a split `Vec` keeps routing
/// free of allocations.
const DONE: usize = usize::MAX;

/// The first position of `key`: the empty key has no words at all.
fn start(key: &str) -> usize {
    if key.is_empty() { DONE } else { 0 }
}

/// The word at `at` and the position after it.
fn next_word(key: &str, at: usize) -> (&str, usize) {
    match key[at..].find('.') {
        Some(len) => (&key[at..at + len], at + len + 1),
        None => (&key[at..], DONE),
    }
}

/// Expanding a `#` more often than this in one route turns on memoisation.
const MEMO_AFTER: u32 = 64;

/// State of one route. `seen` records (`#` node, position) pairs already expanded, so
/// patterns with many `#`s cannot make matching exponential; it is only allocated once a
/// route expands `#` nodes often, which ordinary patterns never do.
struct Walk<'k> {
    key: &'k str,
    expansions: u32,
    seen: Option<HashSet<(usize, usize)>>,
}

impl Walk<'_> {
    fn first_visit(&mut self, node: &Node, at: usize) -> bool {
        self.expansions += 1;
        if self.expansions <= MEMO_AFTER {
            return true;
        }
        self.seen
            .get_or_insert_with(HashSet::new)
            .insert((node as *const Node as usize, at))
    }

    /// Collects the bindings of patterns below `node` that match the key from `at`.
    fn collect(&mut self, node: &Node, at: usize, out: &mut Vec<BindingId>) {
        if at == DONE {
            out.extend_from_slice(&node.bindings);
        } else {
            let (word, next) = next_word(self.key, at);
            if let Some(child) = node.words.get(word) {
                self.collect(child, next, out);
            }
            if let Some(star) = &node.star {
                self.collect(star, next, out);
            }
        }
        if let Some(hash) = &node.hash {
            // `#` consumes zero or more words: try every later position.
            let mut skip_to = at;
            loop {
                if self.first_visit(hash, skip_to) {
                    self.collect(hash, skip_to, out);
                }
                if skip_to == DONE {
                    break;
                }
                skip_to = next_word(self.key, skip_to).1;
            }
        }
    }
}

impl Topic {
    /// The ids of the bindings whose pattern matches `key`, each once, in ascending order.
    pub fn matches(&self, key: &str, out: &mut Vec<BindingId>) {
        let begin = out.len();
        let mut walk = Walk {
            key,
            expansions: 0,
            seen: None,
        };
        walk.collect(&self.root, start(key), out);
        if out.len() - begin > 1 {
            out[begin..].sort_unstable();
            let mut unique = begin + 1;
            for i in begin + 1..out.len() {
                if out[i] != out[unique - 1] {
                    out[unique] = out[i];
                    unique += 1;
                }
            }
            out.truncate(unique);
        }
    }
}

impl Exchange for Topic {
    fn capabilities() -> Capabilities {
        Capabilities::KEY_ONLY
    }

    fn new(_exchange: &str, _arguments: &Headers) -> Result<Self, String> {
        Ok(Topic::default())
    }

    fn validate_binding(&self, key: &str, _arguments: &Headers) -> Result<(), String> {
        if key.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "topic pattern is {} bytes, longer than {MAX_PATTERN_LEN}",
                key.len()
            ));
        }
        Ok(())
    }

    fn bind(&mut self, id: BindingId, key: &str, _arguments: &Headers) -> Result<(), String> {
        self.unbind(id);
        insert(&mut self.root, &pattern_words(key), id);
        self.patterns.insert(id, key.to_owned());
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        if let Some(pattern) = self.patterns.remove(&id) {
            remove(&mut self.root, &pattern_words(&pattern), id);
        }
    }

    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) {
        self.matches(msg.routing_key(), out);
    }
}

broker_plugin_sdk::export_exchange!(Topic);

#[cfg(test)]
mod tests;
