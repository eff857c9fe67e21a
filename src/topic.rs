//! Topic names and filters: validation (MQTT 4.7) and matching.

use crate::error::Violation;

/// Checks a PUBLISH or will topic name: not empty, no wildcards, no U+0000.
pub fn validate_name(name: &str) -> Result<(), Violation> {
    if name.is_empty() {
        return Err(Violation::EmptyTopic);
    }
    if name.contains(['+', '#']) {
        return Err(Violation::WildcardInTopicName);
    }
    validate_string(name)
}

/// Checks a subscription filter: not empty, `#` alone and last, `+` alone in
/// its level, no U+0000.
pub fn validate_filter(filter: &str) -> Result<(), Violation> {
    if filter.is_empty() {
        return Err(Violation::EmptyTopic);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(Violation::MultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(Violation::SingleLevelWildcard);
        }
    }
    validate_string(filter)
}

/// A shared subscription's filter, `$share/{name}/{filter}`: its share name
/// and the filter it shares, or `None` for any other filter.
pub fn shared(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix("$share/")?.split_once('/')
}

/// Checks a `$share/` filter: a share name of at least one character
/// without `/`, `+` or `#`, then `/` and a filter (MQTT-4.8.2-1/-2).
pub fn validate_shared(filter: &str) -> Result<(), Violation> {
    if filter == "$share" || !filter.starts_with("$share/") {
        return match filter == "$share" {
            true => Err(Violation::SharedFilter),
            false => Ok(()),
        };
    }
    match shared(filter) {
        Some((name, rest)) if !name.is_empty() && !name.contains(['+', '#']) && !rest.is_empty() => Ok(()),
        _ => Err(Violation::SharedFilter),
    }
}

/// Checks any MQTT string for U+0000 (MQTT-1.5.3-2); UTF-8 validity is
/// already guaranteed by `&str`.
pub fn validate_string(s: &str) -> Result<(), Violation> {
    if s.contains('\0') {
        return Err(Violation::NullCharacter);
    }
    Ok(())
}

/// Whether a topic name or filter has more than `max` levels; counts only
/// as far as it must.
pub fn deeper_than(topic: &str, max: usize) -> bool {
    let Some(slashes) = max.checked_sub(1) else { return true };
    topic.len() >= max && topic.bytes().filter(|&b| b == b'/').nth(slashes).is_some()
}

/// Whether a (valid) filter matches a (valid) topic name, including the rule
/// that a leading wildcard never matches a `$` topic (MQTT-4.7.2-1).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match (level, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (l, Some(t)) if l == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate_name(""), Err(Violation::EmptyTopic));
        assert_eq!(validate_name("a/+"), Err(Violation::WildcardInTopicName));
        assert_eq!(validate_name("a/#"), Err(Violation::WildcardInTopicName));
        assert_eq!(validate_name("a\0b"), Err(Violation::NullCharacter));
        assert!(validate_name("/").is_ok());
        assert!(validate_name("$SYS/x").is_ok());
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/#", "+/+", "/+", "a//b", "+/a/#", "$SYS/#"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        assert_eq!(validate_filter("a/#/b"), Err(Violation::MultiLevelWildcard));
        assert_eq!(validate_filter("a#"), Err(Violation::MultiLevelWildcard));
        assert_eq!(validate_filter("a+"), Err(Violation::SingleLevelWildcard));
        assert_eq!(validate_filter("a/b+/c"), Err(Violation::SingleLevelWildcard));
        assert_eq!(validate_filter(""), Err(Violation::EmptyTopic));
    }

    #[test]
    fn depth() {
        assert!(!deeper_than("a/b/c", 3));
        assert!(deeper_than("a/b/c/d", 3));
        assert!(deeper_than("///", 3), "four empty levels");
        assert!(!deeper_than("abcdefgh", 1));
        assert!(deeper_than("a/b", 1));
    }

    #[test]
    fn matching() {
        assert!(matches("a/#", "a"), "MQTT-4.7.1-2: # matches the parent level");
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("+/+", "/a"));
        assert!(matches("+", ""));
        assert!(!matches("a", "a/b"));
        assert!(!matches("#", "$SYS/x"), "MQTT-4.7.2-1");
        assert!(!matches("+/x", "$SYS/x"), "MQTT-4.7.2-1");
        assert!(matches("$SYS/#", "$SYS/x"));
    }
}
