//! Mosquitto ACL files (`acl_file`): `user`, `topic` and `pattern` lines,
//! checked as Mosquitto 2.0's `src/security_default.c` does, except that a
//! matching `deny` anywhere wins (see [`Acl`]).

use std::collections::HashMap;
use std::path::Path;

use super::{LoadError, ParseError};

/// Topic access rules read from a Mosquitto ACL file.
///
/// Which rules a client gets: the rules after its `user <name>` line (all
/// `user` blocks with that name), or the rules before the first `user` line
/// if it has no username, plus every `pattern` rule. A client with a username
/// but no `user` block gets the patterns only.
///
/// A check passes when at least one of those rules matches the topic and
/// grants the access (`read`, `write`, or `readwrite`, the default), and no
/// matching rule is `deny`. Anything not granted is denied, so an empty file
/// denies everything. Mosquitto 2.0 agrees except in one case: it checks the
/// client's own rules before the patterns and stops at the first decision,
/// so there a `pattern deny` cannot override a `user`/`topic` grant; here it
/// does.
///
/// Matching: the concrete topic is matched against the rule's topic as an
/// MQTT filter (`+`, `#`; `a/#` also matches `a`); a filter starting with a
/// wildcard never matches a topic starting with `$` (MQTT-4.7.2-1), so
/// `$SYS` needs rules that name it. A topic that is empty or contains `+` or
/// `#` matches nothing, as in Mosquitto.
///
/// Patterns: `%c` is replaced by the client id and `%u` by the username,
/// anywhere in the topic. A pattern using `%u` never applies to a client
/// without a username. Patterns never apply to a client whose id or username
/// contains `+`, `#` or `/`: substituting those would add wildcards or
/// levels (Mosquitto 1.4.12+ refuses `+` and `#` for the same reason).
#[derive(Debug, Clone, Default)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

#[derive(Debug, Clone)]
struct Rule {
    access: Access,
    levels: Vec<Level>,
    uses_username: bool,
}

#[derive(Debug, Clone)]
enum Level {
    Plus,
    Hash,
    /// A literal level, or for patterns a mix of text and substitutions.
    Text(Vec<Piece>),
}

#[derive(Debug, Clone)]
enum Piece {
    Lit(String),
    ClientId,
    Username,
}

/// The client a check is for.
struct Client<'a> {
    id: &'a str,
    username: Option<&'a str>,
}

impl Acl {
    /// Parses the text of an ACL file. Blank lines and lines starting with
    /// `#` are ignored; an unknown keyword, a bad access type, a missing
    /// topic or username, or an invalid topic filter is an error.
    pub fn parse(text: &str) -> Result<Acl, ParseError> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim_ascii();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match split_word(line) {
                ("user", "") => return Err(ParseError::new(n, "missing username")),
                ("user", name) => user = Some(name.to_owned()),
                ("topic", rest) => {
                    let rule = parse_rule(rest, false).map_err(|m| ParseError::new(n, m))?;
                    acl.rules_mut(user.as_deref()).push(rule);
                }
                ("pattern", rest) => {
                    let rule = parse_rule(rest, true).map_err(|m| ParseError::new(n, m))?;
                    acl.patterns.push(rule);
                }
                (other, _) => {
                    return Err(ParseError::new(n, format!("unknown keyword {other:?}")));
                }
            }
        }
        Ok(acl)
    }

    /// Reads and parses the ACL file at `path`.
    pub fn load(path: &Path) -> Result<Acl, LoadError> {
        Ok(Acl::parse(&super::read(path)?)?)
    }

    /// Whether the client may receive a message published to `topic`.
    pub fn can_read(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.check(&Client { id: client_id, username }, topic, Access::Read)
    }

    /// Whether the client may publish to `topic` (also for its will).
    pub fn can_write(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.check(&Client { id: client_id, username }, topic, Access::Write)
    }

    /// Whether the client may subscribe to `filter`: some rule granting
    /// read access covers every topic the filter can match (`sensors/#`
    /// allows `sensors/+/temp`; `sensors/+` does not allow `sensors/#`), and
    /// no `deny` rule covers it. A refused filter gets 0x80 in SUBACK.
    ///
    /// Mosquitto 2.0's default ACL check accepts every SUBSCRIBE
    /// (`src/security_default.c`: "FIXME - implement ACL subscription
    /// strings") and only filters deliveries; midge refuses a filter no rule
    /// could ever serve, and like Mosquitto also checks [`Acl::can_read`] on
    /// every message it delivers, retained ones included.
    pub fn can_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool {
        self.decide(&Client { id: client_id, username }, filter, Access::Read)
    }

    /// Whether some rule covering `subject` (a topic, or a filter: every
    /// topic it can match) grants `want`, and no `deny` rule covers it.
    fn decide(&self, client: &Client<'_>, subject: &str, want: Access) -> bool {
        let mut granted = false;
        for rule in self.rules_for(client) {
            if rule.covers(subject, client) {
                if rule.access == Access::Deny {
                    return false;
                }
                granted |= rule.access.grants(want);
            }
        }
        granted
    }

    /// The client's own rules (its user's, or the anonymous ones), then the
    /// patterns that may apply to it.
    fn rules_for<'a>(&'a self, client: &Client<'_>) -> impl Iterator<Item = &'a Rule> {
        let own = match client.username {
            Some(name) => self.users.get(name).map_or(&[][..], Vec::as_slice),
            None => &self.anonymous,
        };
        let patterns = if client.substitutable() { &self.patterns[..] } else { &[] };
        own.iter().chain(patterns)
    }

    fn rules_mut(&mut self, user: Option<&str>) -> &mut Vec<Rule> {
        match user {
            Some(name) => self.users.entry(name.to_owned()).or_default(),
            None => &mut self.anonymous,
        }
    }

    fn check(&self, client: &Client<'_>, topic: &str, want: Access) -> bool {
        !topic.is_empty() && !topic.contains(['+', '#']) && self.decide(client, topic, want)
    }
}

impl Access {
    fn parse(word: &str) -> Result<Access, String> {
        match word {
            "read" => Ok(Access::Read),
            "write" => Ok(Access::Write),
            "readwrite" => Ok(Access::ReadWrite),
            "deny" => Ok(Access::Deny),
            _ => Err(format!("invalid access {word:?} (expected read, write, readwrite or deny)")),
        }
    }

    fn grants(self, want: Access) -> bool {
        match self {
            Access::ReadWrite => want != Access::Deny,
            _ => self == want,
        }
    }
}

impl Client<'_> {
    /// Whether the id and username can be substituted into patterns.
    fn substitutable(&self) -> bool {
        let safe = |s: &str| !s.contains(['+', '#', '/']);
        safe(self.id) && self.username.is_none_or(safe)
    }

    fn value<'p>(&'p self, piece: &'p Piece) -> Option<&'p str> {
        match piece {
            Piece::Lit(text) => Some(text.as_str()),
            Piece::ClientId => Some(self.id),
            Piece::Username => self.username,
        }
    }
}

impl Rule {
    /// Whether every topic matching `filter` (or the topic itself, for a
    /// topic without wildcards) matches this rule after substitution. Does
    /// not allocate: substituted values contain no `/`, so each level is
    /// compared piece by piece.
    fn covers(&self, filter: &str, client: &Client<'_>) -> bool {
        if self.uses_username && client.username.is_none() {
            return false;
        }
        if filter.starts_with('$') && matches!(self.levels.first(), Some(Level::Plus | Level::Hash)) {
            return false;
        }
        let mut filter_levels = filter.split('/');
        for level in &self.levels {
            match (level, filter_levels.next()) {
                (Level::Hash, _) => return true,
                (Level::Plus, Some(f)) if f != "#" => {}
                (Level::Text(pieces), Some(f)) if f != "+" && f != "#" && level_matches(pieces, f, client) => {}
                _ => return false,
            }
        }
        filter_levels.next().is_none()
    }
}

fn level_matches(pieces: &[Piece], level: &str, client: &Client<'_>) -> bool {
    let mut rest = level;
    for piece in pieces {
        match client.value(piece).and_then(|v| rest.strip_prefix(v)) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

/// Splits off the first space- or tab-separated word; the rest is trimmed.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once([' ', '\t']) {
        Some((word, rest)) => (word, rest.trim_ascii()),
        None => (s, ""),
    }
}

/// Parses `[access] <topic>` of a `topic` or `pattern` line. As in Mosquitto,
/// a single word is the topic (access `readwrite`), so a topic containing
/// spaces needs an explicit access word.
fn parse_rule(rest: &str, pattern: bool) -> Result<Rule, String> {
    let (access, topic) = match split_word(rest) {
        ("", _) => return Err("missing topic".into()),
        (topic, "") => (Access::ReadWrite, topic),
        (access, topic) => (Access::parse(access)?, topic),
    };
    if topic.len() > 65535 || crate::topic::validate_filter(topic).is_err() {
        return Err(format!("invalid topic filter {topic:?}"));
    }
    let levels: Vec<Level> = topic.split('/').map(|l| parse_level(l, pattern)).collect();
    let uses_username = levels.iter().any(|l| match l {
        Level::Text(pieces) => pieces.iter().any(|p| matches!(p, Piece::Username)),
        _ => false,
    });
    Ok(Rule { access, levels, uses_username })
}

fn parse_level(level: &str, pattern: bool) -> Level {
    match level {
        "+" => Level::Plus,
        "#" => Level::Hash,
        _ if pattern => Level::Text(substitutions(level)),
        _ => Level::Text(vec![Piece::Lit(level.to_owned())]),
    }
}

/// Splits a pattern level into text and `%c` / `%u` substitutions.
fn substitutions(level: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut chars = level.chars().peekable();
    while let Some(c) = chars.next() {
        let piece = match (c, chars.peek()) {
            ('%', Some('c')) => Piece::ClientId,
            ('%', Some('u')) => Piece::Username,
            _ => {
                lit.push(c);
                continue;
            }
        };
        chars.next();
        if !lit.is_empty() {
            pieces.push(Piece::Lit(std::mem::take(&mut lit)));
        }
        pieces.push(piece);
    }
    if !lit.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# anonymous clients
topic read public/#
topic weather/+/now

user alice
topic readwrite alice/#
topic deny alice/secret
topic read shared/news
topic write my topic/with spaces

user bob
topic read bob/#

pattern readwrite users/%u/#
pattern write devices/%c/status
pattern read dev-%c/x%cy
";

    fn acl() -> Acl {
        Acl::parse(FILE).unwrap()
    }

    fn err(text: &str) -> String {
        Acl::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn anonymous_rules_apply_only_without_username() {
        let a = acl();
        assert!(a.can_read("c1", None, "public/a/b"));
        assert!(a.can_read("c1", None, "public"));
        assert!(!a.can_write("c1", None, "public/a"));
        assert!(a.can_write("c1", None, "weather/paris/now"));
        assert!(!a.can_read("c1", Some("alice"), "public/a"));
        assert!(!a.can_read("c1", None, "alice/x"));
    }

    #[test]
    fn user_rules_apply_to_that_user_only() {
        let a = acl();
        assert!(a.can_read("c1", Some("alice"), "alice/x/y"));
        assert!(a.can_write("c1", Some("alice"), "alice"));
        assert!(a.can_read("c1", Some("alice"), "shared/news"));
        assert!(!a.can_read("c1", Some("bob"), "alice/x"));
        assert!(a.can_read("c1", Some("bob"), "bob/x"));
        assert!(!a.can_read("c1", Some("carol"), "bob/x"));
        assert!(!a.can_read("c1", Some("carol"), "public/a"));
    }

    #[test]
    fn read_and_write_are_separate() {
        let a = acl();
        assert!(a.can_read("c1", Some("alice"), "shared/news"));
        assert!(!a.can_write("c1", Some("alice"), "shared/news"));
        assert!(a.can_write("c1", Some("alice"), "my topic/with spaces"));
        assert!(!a.can_read("c1", Some("alice"), "my topic/with spaces"));
        assert!(!a.can_write("c1", Some("bob"), "bob/x"));
    }

    #[test]
    fn deny_wins_over_grants() {
        let a = acl();
        assert!(!a.can_read("c1", Some("alice"), "alice/secret"));
        assert!(!a.can_write("c1", Some("alice"), "alice/secret"));
        assert!(a.can_read("c1", Some("alice"), "alice/secret/more"));
        let b = Acl::parse("topic deny a/+\ntopic a/#\nuser u\ntopic a/#\npattern deny a/%c").unwrap();
        assert!(!b.can_read("x", None, "a/b"));
        assert!(b.can_read("x", None, "a/b/c"));
        assert!(b.can_write("x", None, "a"));
        assert!(b.can_read("c", Some("u"), "a/b"));
        assert!(!b.can_read("c", Some("u"), "a/c"), "pattern deny beats user grant");
    }

    #[test]
    fn patterns_substitute_client_id_and_username() {
        let a = acl();
        assert!(a.can_write("c1", Some("carol"), "users/carol/inbox"));
        assert!(a.can_read("c1", Some("carol"), "users/carol"));
        assert!(!a.can_read("c1", Some("carol"), "users/dave/inbox"));
        assert!(!a.can_read("c1", None, "users/%u/inbox"));
        assert!(a.can_write("sensor-7", None, "devices/sensor-7/status"));
        assert!(!a.can_read("sensor-7", None, "devices/sensor-7/status"));
        assert!(!a.can_write("sensor-7", None, "devices/sensor-8/status"));
        assert!(a.can_read("k", None, "dev-k/xky"));
        assert!(!a.can_read("k", None, "dev-k/xk"));
        assert!(!a.can_read("k", None, "dev-/xy"));
    }

    #[test]
    fn topic_lines_do_not_substitute() {
        let a = Acl::parse("topic read lit/%c").unwrap();
        assert!(a.can_read("c", None, "lit/%c"));
        assert!(!a.can_read("c", None, "lit/c"));
    }

    #[test]
    fn dangerous_ids_get_no_pattern_access() {
        let a = acl();
        for id in ["+", "a#", "a/b"] {
            assert!(!a.can_write(id, None, &format!("devices/{id}/status")), "{id}");
        }
        assert!(!a.can_write("c1", Some("x/y"), "users/x/y/z"));
        assert!(!a.can_write("c1", Some("#"), "users/a"));
        assert!(!a.can_write("c+", Some("carol"), "users/carol/inbox"));
        assert!(a.can_read("a/b", Some("alice"), "alice/x"), "own rules still apply");
    }

    #[test]
    fn wildcard_rule_topics() {
        let a = Acl::parse("topic read +/b/+\ntopic read x/+/#\ntopic write #").unwrap();
        assert!(a.can_read("c", None, "a/b/c"));
        assert!(a.can_read("c", None, "/b/"));
        assert!(!a.can_read("c", None, "a/b"));
        assert!(!a.can_read("c", None, "a/b/c/d"));
        assert!(a.can_read("c", None, "x/y"));
        assert!(a.can_read("c", None, "x/y/z/w"));
        assert!(!a.can_read("c", None, "x"));
        assert!(a.can_write("c", None, "anything/at/all"));
        assert!(a.can_write("c", None, "/"));
    }

    #[test]
    fn wildcards_in_checked_topics_match_nothing() {
        let a = Acl::parse("topic #").unwrap();
        assert!(!a.can_read("c", None, "a/+"));
        assert!(!a.can_write("c", None, "#"));
        assert!(!a.can_write("c", None, ""));
    }

    #[test]
    fn sys_topics_need_rules_that_name_them() {
        let a =
            Acl::parse("topic read #\ntopic read +/broker/#\npattern write $SYS/broker/connection/%c/state").unwrap();
        assert!(a.can_read("c", None, "a/broker"));
        assert!(!a.can_read("c", None, "$SYS/broker/uptime"));
        assert!(!a.can_read("c", None, "$share/g/t"));
        assert!(a.can_write("br1", None, "$SYS/broker/connection/br1/state"));
        let b = Acl::parse("topic read $SYS/#").unwrap();
        assert!(b.can_read("c", None, "$SYS/broker/uptime"));
        assert!(!b.can_read("c", None, "SYS/broker"));
    }

    #[test]
    fn mosquitto_example_file() {
        // Debian's /usr/share/doc/mosquitto/examples/aclfile.example.
        let text = "# This affects access control for clients with no username.\n\
                    topic read $SYS/#\n\n\
                    # This only affects clients with username \"roger\".\n\
                    user roger\n\
                    topic foo/bar\n\n\
                    # This affects all clients.\n\
                    pattern write $SYS/broker/connection/%c/state\n";
        let a = Acl::parse(text).unwrap();
        assert!(a.can_read("c", None, "$SYS/broker/load"));
        assert!(!a.can_read("c", Some("roger"), "$SYS/broker/load"));
        assert!(a.can_write("c", Some("roger"), "foo/bar"));
        assert!(a.can_write("b", Some("roger"), "$SYS/broker/connection/b/state"));
    }

    #[test]
    fn subscribe_needs_a_read_rule_covering_the_filter() {
        let a = acl();
        for filter in ["bob/#", "bob/+/x", "bob", "users/bob/+", "users/bob/#"] {
            assert!(a.can_subscribe("c1", Some("bob"), filter), "{filter}");
        }
        for filter in ["#", "+/+", "alice/#", "$SYS/#", "nothing/granted", "users/+/x"] {
            assert!(!a.can_subscribe("c1", Some("bob"), filter), "{filter}");
        }
        assert!(a.can_subscribe("c1", Some("alice"), "alice/x"));
        assert!(!a.can_subscribe("c1", Some("alice"), "alice/secret"), "deny covers it");
        assert!(a.can_subscribe("c1", None, "weather/+/now"));
        assert!(!a.can_subscribe("c1", None, "weather/#"), "weather/+/now does not cover weather/#");
        assert!(!Acl::default().can_subscribe("c1", None, "a"), "an empty ACL grants nothing");
        // A subscription allowed by a broad rule still only delivers what may be read.
        assert!(a.can_read("c1", Some("alice"), "alice/x"));
        assert!(!a.can_read("c1", Some("alice"), "alice/secret"));
    }

    #[test]
    fn empty_file_denies_everything() {
        let a = Acl::parse("# nothing\n\n").unwrap();
        assert!(!a.can_read("c", None, "a"));
        assert!(!a.can_write("c", Some("u"), "a"));
    }

    #[test]
    fn parsing_details() {
        let a = Acl::parse(
            "  topic\tread   spaced topic  \r\n  # indented comment\r\ntopic read\nuser  two words \ntopic x",
        )
        .unwrap();
        assert!(a.can_read("c", None, "spaced topic"));
        assert!(a.can_write("c", None, "read"), "a lone word is the topic");
        assert!(a.can_write("c", Some("two words"), "x"));
    }

    #[test]
    fn parse_errors_name_their_line() {
        assert_eq!(err("topic a\n\ntopci read a"), "line 3: unknown keyword \"topci\"");
        assert_eq!(err("topic reed a/b"), "line 1: invalid access \"reed\" (expected read, write, readwrite or deny)");
        assert_eq!(err("# c\ntopic a b"), "line 2: invalid access \"a\" (expected read, write, readwrite or deny)");
        assert_eq!(err("topic"), "line 1: missing topic");
        assert_eq!(err("pattern   "), "line 1: missing topic");
        assert_eq!(err("user"), "line 1: missing username");
        assert_eq!(err("topic read a/b#"), "line 1: invalid topic filter \"a/b#\"");
        assert_eq!(err("pattern read a/#/b"), "line 1: invalid topic filter \"a/#/b\"");
        assert_eq!(err("topic read a+"), "line 1: invalid topic filter \"a+\"");
        assert_eq!(err("Topic a"), "line 1: unknown keyword \"Topic\"");
    }

    #[test]
    fn load_reads_files() {
        let missing = Path::new("/nonexistent/midge/acl");
        assert!(matches!(Acl::load(missing), Err(LoadError::Io(_))));
        let path = std::env::temp_dir().join(format!("midge-acl-{}", std::process::id()));
        std::fs::write(&path, "topic read a\nbad line\n").unwrap();
        let e = Acl::load(&path).unwrap_err();
        std::fs::write(&path, FILE).unwrap();
        let ok = Acl::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(e.to_string(), "line 2: unknown keyword \"bad\"");
        assert!(ok.can_read("c", None, "public/x"));
    }
}
