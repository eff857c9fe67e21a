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

/// Dropping a node drops its descendants one after another from a list, not
/// by recursion: a deep chain of levels would otherwise overflow the stack.
impl<V> Drop for Node<V> {
    fn drop(&mut self) {
        let mut pending: Vec<Node<V>> = self.children.drain().map(|(_, n)| n).collect();
        while let Some(mut node) = pending.pop() {
            pending.extend(node.children.drain().map(|(_, n)| n));
        }
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
        // The deepest level on the path that stays when the subscription's
        // own node empties: the root, or a node with another child or a
        // subscriber of its own. Everything below it goes in one cut.
        let mut keep = 0;
        let mut node = &self.root;
        for (depth, level) in filter.split('/').enumerate() {
            if depth == 0 || node.children.len() > 1 || !node.subscribers.is_empty() {
                keep = depth;
            }
            node = node.children.get(level)?;
        }
        let prune = node.children.is_empty() && node.subscribers.len() == 1;
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.get_mut(level)?;
        }
        let old = node.subscribers.remove(client)?;
        self.len -= 1;
        if prune {
            let mut levels = filter.split('/');
            let mut node = &mut self.root;
            for level in levels.by_ref().take(keep) {
                node = node.children.get_mut(level).expect("walked above");
            }
            if let Some(level) = levels.next() {
                node.children.remove(level);
            }
        }
        Some(old)
    }

    /// Number of clients subscribed to exactly `filter`.
    pub fn subscribers(&self, filter: &str) -> usize {
        let mut node = &self.root;
        for level in filter.split('/') {
            match node.children.get(level) {
                Some(child) => node = child,
                None => return 0,
            }
        }
        node.subscribers.len()
    }

    /// Whether `client` has a subscription to exactly `filter`.
    pub fn contains(&self, filter: &str, client: &str) -> bool {
        let mut node = &self.root;
        for level in filter.split('/') {
            match node.children.get(level) {
                Some(child) => node = child,
                None => return false,
            }
        }
        node.subscribers.contains_key(client)
    }

    /// Calls `f` with every subscription's filter, client and value
    /// (walked with a list of nodes still to visit, not by recursion).
    pub fn for_each(&self, mut f: impl FnMut(&str, &Arc<str>, &V)) {
        let mut pending: Vec<(&Node<V>, String)> =
            self.root.children.iter().map(|(level, node)| (node, level.to_string())).collect();
        while let Some((node, path)) = pending.pop() {
            for (level, child) in &node.children {
                pending.push((child, format!("{path}/{level}")));
            }
            for (client, value) in &node.subscribers {
                f(&path, client, value);
            }
        }
    }

    /// Every filter with at least one subscriber (walked with a list of
    /// nodes still to visit, not by recursion).
    pub fn filters(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut pending: Vec<(&Node<V>, String)> =
            self.root.children.iter().map(|(level, node)| (node, level.to_string())).collect();
        while let Some((node, path)) = pending.pop() {
            for (level, child) in &node.children {
                pending.push((child, format!("{path}/{level}")));
            }
            if !node.subscribers.is_empty() {
                found.push(path);
            }
        }
        found
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
        // Nodes still to visit, each with the levels left to match there and
        // whether wildcards are skipped (the root of a `$` topic).
        let mut pending: Vec<(&Node<V>, Split<'_, char>, bool)> = Vec::with_capacity(4);
        pending.push((&self.root, topic.split('/'), topic.starts_with('$')));
        while let Some((node, mut rest, skip_wildcards)) = pending.pop() {
            if !skip_wildcards && let Some(hash) = node.children.get("#") {
                hash.subscribers.iter().for_each(|(c, v)| f(c, v));
            }
            let Some(level) = rest.next() else {
                node.subscribers.iter().for_each(|(c, v)| f(c, v));
                continue;
            };
            if let Some(child) = node.children.get(level) {
                pending.push((child, rest.clone(), false));
            }
            if !skip_wildcards && let Some(plus) = node.children.get("+") {
                pending.push((plus, rest, false));
            }
        }
    }
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

    #[test]
    fn removing_prunes_only_what_is_left_empty() {
        let mut trie = Trie::default();
        trie.insert("a/b/c/d", "c1".into(), 1);
        trie.insert("a/b", "c2".into(), 2);
        trie.insert("a/x", "c3".into(), 3);
        assert_eq!(trie.remove("a/b/c/d", "c2"), None, "other client");
        assert_eq!(trie.remove("a/b/c", "c1"), None, "no subscription at a/b/c");
        assert_eq!(trie.remove("a/b/c/d", "c1"), Some(1));
        assert!(trie.root.children["a"].children["b"].children.is_empty(), "c/d pruned, b kept");
        assert_eq!(matched(&trie, "a/b"), [("c2".into(), 2)]);
        assert_eq!(trie.remove("a/b", "c2"), Some(2));
        assert_eq!(trie.root.children["a"].children.len(), 1, "b pruned, x kept");
        assert_eq!(trie.remove("a/x", "c3"), Some(3));
        assert!(trie.root.children.is_empty() && trie.is_empty());
    }

    /// MQTT's strings allow a 65,535-byte filter: 30,000 levels. Inserting,
    /// matching, removing and dropping it must not recurse per level.
    #[test]
    fn thirty_thousand_levels_do_not_overflow_the_stack() {
        let deep = vec!["a"; 30_000].join("/");
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut trie = Trie::default();
                trie.insert(&deep, "c1".into(), 1);
                trie.insert(&format!("{deep}/#"), "c2".into(), 2);
                assert_eq!(matched(&trie, &deep), [("c1".into(), 1), ("c2".into(), 2)]);
                assert_eq!(trie.remove(&deep, "c1"), Some(1));
                drop(trie);
            })
            .unwrap()
            .join()
            .expect("no stack overflow");
    }

    #[test]
    fn filters_and_subscribers_name_what_is_subscribed() {
        let mut trie = Trie::default();
        for (filter, client) in [("a/+", "x"), ("a/+", "y"), ("/a", "x"), ("a/", "x"), ("a/b/#", "x")] {
            trie.insert(filter, client.into(), 0u8);
        }
        let mut filters = trie.filters();
        filters.sort();
        assert_eq!(filters, ["/a", "a/", "a/+", "a/b/#"]);
        assert_eq!((trie.subscribers("a/+"), trie.subscribers("a/b"), trie.subscribers("x")), (2, 0, 0));
        trie.remove("a/+", "x");
        trie.remove("a/b/#", "x");
        assert_eq!(trie.subscribers("a/+"), 1);
        let mut filters = trie.filters();
        filters.sort();
        assert_eq!(filters, ["/a", "a/", "a/+"], "a level kept only on the way to a/b/# is not a filter");
    }
}
