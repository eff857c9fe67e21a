//! The subscription trie: filters split by level, subscribers at the leaves.
//!
//! `+` and `#` are children like any other level; matching a topic walks the
//! exact level, `+` and `#` at each step, and skips the wildcards at the root
//! for `$` topics (MQTT-4.7.2-1).

use std::collections::HashMap;
use std::str::Split;
use std::sync::Arc;

/// Subscriptions of many clients, keyed by filter and then client id.
#[derive(Debug)]
pub struct Trie<V> {
    root: Node<V>,
    len: usize,
}

#[derive(Debug)]
struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    subscribers: HashMap<Arc<str>, V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node { children: HashMap::new(), subscribers: HashMap::new() }
    }
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Trie { root: Node::default(), len: 0 }
    }
}

impl<V> Trie<V> {
    /// Adds or replaces `client`'s subscription to `filter`; returns the old value.
    pub fn insert(&mut self, filter: &str, client: Arc<str>, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let old = node.subscribers.insert(client, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `client`'s subscription to `filter`, pruning empty levels.
    pub fn remove(&mut self, filter: &str, client: &str) -> Option<V> {
        let old = remove_at(&mut self.root, filter.split('/'), client);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Number of (filter, client) subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f` for every subscription whose filter matches `topic`; a client
    /// with several matching filters is visited once per filter.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&Arc<str>, &V)) {
        let mut levels = topic.split('/');
        let first = levels.next();
        let dollar = topic.starts_with('$');
        walk(&self.root, first, levels, dollar, &mut f);
    }
}

fn walk<V>(
    node: &Node<V>,
    level: Option<&str>,
    rest: Split<'_, char>,
    skip_wildcards: bool,
    f: &mut impl FnMut(&Arc<str>, &V),
) {
    if !skip_wildcards && let Some(hash) = node.children.get("#") {
        hash.subscribers.iter().for_each(|(c, v)| f(c, v));
    }
    let Some(level) = level else {
        node.subscribers.iter().for_each(|(c, v)| f(c, v));
        return;
    };
    let mut next = rest.clone();
    let next_level = next.next();
    if let Some(child) = node.children.get(level) {
        walk(child, next_level, next.clone(), false, f);
    }
    if !skip_wildcards && let Some(plus) = node.children.get("+") {
        walk(plus, next_level, next, false, f);
    }
}

fn remove_at<V>(node: &mut Node<V>, mut levels: Split<'_, char>, client: &str) -> Option<V> {
    let Some(level) = levels.next() else {
        return node.subscribers.remove(client);
    };
    let child = node.children.get_mut(level)?;
    let old = remove_at(child, levels, client);
    if child.children.is_empty() && child.subscribers.is_empty() {
        node.children.remove(level);
    }
    old
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(trie: &Trie<u8>, topic: &str) -> Vec<(String, u8)> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |c, v| out.push((c.to_string(), *v)));
        out.sort();
        out
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let mut trie = Trie::default();
        trie.insert("a/#", "c1".into(), 1);
        trie.insert("a/+", "c2".into(), 2);
        trie.insert("#", "c3".into(), 3);
        trie.insert("$SYS/#", "c4".into(), 4);
        trie.insert("+/b", "c5".into(), 5);
        assert_eq!(matched(&trie, "a"), [("c1".into(), 1), ("c3".into(), 3)]);
        assert_eq!(matched(&trie, "a/b"), [("c1".into(), 1), ("c2".into(), 2), ("c3".into(), 3), ("c5".into(), 5)]);
        assert_eq!(matched(&trie, "$SYS/b"), [("c4".into(), 4)]);
        assert_eq!(trie.len(), 5);
    }

    #[test]
    fn replace_and_remove_prunes() {
        let mut trie = Trie::default();
        assert_eq!(trie.insert("a/b/c", "c1".into(), 1), None);
        assert_eq!(trie.insert("a/b/c", "c1".into(), 2), Some(1));
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.remove("a/b/c", "c1"), Some(2));
        assert_eq!(trie.remove("a/b/c", "c1"), None);
        assert!(trie.root.children.is_empty());
        assert!(trie.is_empty());
    }
}
