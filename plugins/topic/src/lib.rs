//! The `topic` exchange (AMQP semantics): keys and patterns are words separated by `.`;
//! in a pattern `*` matches exactly one word and `#` zero or more words.
//!
//! Patterns live in a trie of words, so routing costs depend on the key's length and
//! the patterns that share its prefixes, not on the number of bindings.

use std::collections::{HashMap, HashSet};

use broker_plugin_sdk::{BindingId, Capabilities, Exchange, Headers, Message};

/// Longest accepted pattern, in bytes (AMQP's short-string limit); it bounds matching work.
pub const MAX_PATTERN_LEN: usize = 255;

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

/// Collects the bindings of patterns below `node` that match `words[at..]`.
/// `seen` records (`#` node, position) pairs already expanded, so overlapping `#`s
/// cannot make matching exponential.
fn collect<'n>(
    node: &'n Node,
    words: &[&str],
    at: usize,
    seen: &mut HashSet<(*const Node, usize)>,
    out: &mut Vec<BindingId>,
) {
    if at == words.len() {
        out.extend_from_slice(&node.bindings);
    } else {
        if let Some(child) = node.words.get(words[at]) {
            collect(child, words, at + 1, seen, out);
        }
        if let Some(star) = &node.star {
            collect(star, words, at + 1, seen, out);
        }
    }
    if let Some(hash) = &node.hash {
        let hash: &'n Node = hash;
        for skip_to in at..=words.len() {
            if seen.insert((hash as *const Node, skip_to)) {
                collect(hash, words, skip_to, seen, out);
            }
        }
    }
}

impl Topic {
    /// The ids of the bindings whose pattern matches `key`, each once, in ascending order.
    pub fn matches(&self, key: &str, out: &mut Vec<BindingId>) {
        let start = out.len();
        let mut seen = HashSet::new();
        collect(&self.root, &words(key), 0, &mut seen, out);
        let found = &mut out[start..];
        if found.len() > 1 {
            found.sort_unstable();
            let mut unique = start;
            for i in start..out.len() {
                if unique == start || out[unique - 1] != out[i] {
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
