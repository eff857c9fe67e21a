//! Smaller normative statements, one test each, that the feature-oriented
//! modules do not already cover (see docs/conformance.md).

use crate::support::{TempDir, TestBroker};

use crate::support::packets::{
    self, CONNACK_ACCEPTED, Connect, PUBACK, PUBCOMP, PUBREC, PUBREL, UNSUBACK, ack, field, packet,
};

/// A CONNECT with explicit flags and payload fields, for malformed variants.
fn raw_connect(flags: u8, payload: &[&[u8]]) -> Vec<u8> {
    let mut body = field(b"MQTT");
    body.extend([4, flags, 0, 60]);
    payload.iter().for_each(|f| body.extend_from_slice(f));
    packet(0x10, &body)
}

fn closed_without_connack(b: &TestBroker, bytes: &[u8]) {
    let mut c = b.raw();
    c.send(bytes);
    c.expect_closed();
}

runtime_test!(
    /// MQTT-3.1.2-9 / -19 / -21 / MQTT-3.1.3-3: a flag promising a field the
    /// payload does not carry (will, user name, password, even the client
    /// id) is malformed: closed without CONNACK.
    mqtt_3_1_2_9_missing_flagged_fields_close,
    |b: &TestBroker| {
        let id = field(b"c");
        closed_without_connack(b, &raw_connect(0x02 | 0x04, &[&id]));
        closed_without_connack(b, &raw_connect(0x02 | 0x80, &[&id]));
        closed_without_connack(b, &raw_connect(0x02 | 0xc0, &[&id, &field(b"user")]));
        closed_without_connack(b, &raw_connect(0x02, &[]));
    }
);

runtime_test!(
    /// MQTT-3.1.2-18 / -20: fields present without their flag are trailing
    /// bytes: closed without CONNACK.
    mqtt_3_1_2_18_fields_without_flags_close,
    |b: &TestBroker| {
        let id = field(b"c");
        closed_without_connack(b, &raw_connect(0x02, &[&id, &field(b"user")]));
        closed_without_connack(b, &raw_connect(0x82, &[&id, &field(b"user"), &field(b"pw")]));
    }
);

runtime_test!(
    /// MQTT-3.1.3-4 / -10 / -11: client id, will topic and user name must be
    /// valid UTF-8.
    mqtt_3_1_3_4_connect_strings_must_be_utf8,
    |b: &TestBroker| {
        let bad = field(&[0xc3, 0x28]);
        closed_without_connack(b, &raw_connect(0x02, &[&bad]));
        closed_without_connack(b, &raw_connect(0x06, &[&field(b"c"), &bad, &field(b"msg")]));
        closed_without_connack(b, &raw_connect(0x82, &[&field(b"c"), &bad]));
    }
);

runtime_kind_test!(
    /// MQTT-3.1.2-19 / -21, MQTT-3.1.3-1: the user name and password are read
    /// from the payload and checked, against a password file with anonymous
    /// access off: the right pair gets CONNACK 0; a wrong password, or one
    /// user's password with another's name, CONNACK 4; no user name
    /// CONNACK 5. Each refusal closes the connection.
    connect_with_username_and_password_is_accepted,
    |kind: midge::RuntimeKind| {
        let dir = TempDir::new("conformance-passwd");
        let path = crate::security::password_file(&dir);
        let b = TestBroker::start(kind, |c| {
            c.password_file = Some(path);
            c.allow_anonymous = Some(false);
        });
        let login = |id: &str, username: Option<&str>, password: Option<&[u8]>| {
            let mut c = b.raw();
            c.send(&Connect { client_id: id, username, password, ..Connect::default() }.bytes());
            c
        };
        let mut ok = login("u", Some("alice"), Some(b"wonderland"));
        ok.expect(&CONNACK_ACCEPTED);
        for (user, password) in [("alice", &b"pw"[..]), ("bob", b"wonderland")] {
            let mut refused = login("x", Some(user), Some(password));
            refused.expect(&[0x20, 0x02, 0x00, 0x04]);
            refused.expect_closed();
        }
        let mut anonymous = login("anon", None, None);
        anonymous.expect(&[0x20, 0x02, 0x00, 0x05]);
        anonymous.expect_closed();
        ok.ping();
    }
);

runtime_test!(
    /// MQTT-3.1.4-5: after refusing a CONNECT the server processes nothing
    /// else the client sent: a retained PUBLISH in the same write is not kept.
    mqtt_3_1_4_5_nothing_after_a_refused_connect_is_processed,
    |b: &TestBroker| {
        let mut c = b.raw();
        let mut bytes = packets::connect("", false, 60);
        bytes.extend(packets::publish_with("refused/r", b"x", 0, None, true, false));
        c.send(&bytes);
        c.expect(&[0x20, 0x02, 0x00, 0x02]);
        c.expect_closed();
        let mut reader = b.client("reader");
        reader.subscribe(1, &[("refused/#", 0)]);
        reader.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-3.1.2-12 / -16: without a will nothing is published on an abrupt
    /// close; a will with retain 0 is not kept as retained.
    mqtt_3_1_2_12_no_will_no_message_and_will_retain_0_not_kept,
    |b: &TestBroker| {
        let mut watcher = b.client("watcher");
        watcher.subscribe(1, &[("#", 0)]);
        drop(b.client("no-will"));
        let mut with_will = b.raw();
        let will = Some(("w/t", &b"bye"[..], 0, false));
        with_will.send(&Connect { client_id: "will-0", will, ..Connect::default() }.bytes());
        with_will.expect(&CONNACK_ACCEPTED);
        drop(with_will);
        assert_eq!(watcher.recv().publish().0, "w/t", "the only message is the will");
        let mut late = b.client("late");
        late.subscribe(1, &[("w/#", 0)]);
        late.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-3.3.1-7: a retained QoS 0 message replaces the retained message of
    /// its topic; MQTT-3.3.1-12: a non-retained publish leaves it alone.
    mqtt_3_3_1_7_retained_qos0_replaces_and_plain_publish_keeps,
    |b: &TestBroker| {
        let mut p = b.client("pub");
        p.send(&packets::publish_with("rq", b"a", 1, Some(1), true, false));
        p.expect(&ack(PUBACK, 1));
        p.send(&packets::publish_with("rq", b"b", 0, None, true, false));
        p.send(&packets::publish0("rq", b"not retained"));
        p.ping();
        let mut late = b.client("late");
        late.send(&packets::subscribe(1, &[("rq", 1)]));
        late.expect(&packets::suback(1, &[1]));
        let got = late.recv();
        assert_eq!((got.publish().2, got.qos(), got.retain()), (b"b".to_vec(), 0, true));
        late.expect_nothing_queued();
    }
);

runtime_test!(
    /// MQTT-3.6.1-1 / MQTT-3.10.1-1: PUBREL and UNSUBSCRIBE with reserved
    /// flags other than 0010 close the connection.
    mqtt_3_6_1_1_pubrel_and_unsubscribe_flags,
    |b: &TestBroker| {
        let mut c = b.client("c");
        c.send(&[0x60, 0x02, 0x00, 0x01]);
        c.expect_closed();
        let mut c = b.client("c");
        let mut unsubscribe = packets::unsubscribe(1, &["a"]);
        unsubscribe[0] = 0xa0;
        c.send(&unsubscribe);
        c.expect_closed();
    }
);

runtime_test!(
    /// MQTT-3.8.3-1 / MQTT-3.10.3-1: filters in SUBSCRIBE and UNSUBSCRIBE
    /// must be valid UTF-8.
    mqtt_3_8_3_1_filters_must_be_utf8,
    |b: &TestBroker| {
        let bad = field(&[0xc3, 0x28]);
        let mut c = b.client("c");
        c.send(&packet(0x82, &[&[0, 1][..], &bad, &[0]].concat()));
        c.expect_closed();
        let mut c = b.client("c");
        c.send(&packet(0xa2, &[&[0, 1][..], &bad].concat()));
        c.expect_closed();
    }
);

runtime_test!(
    /// MQTT-3.10.4-5: UNSUBSCRIBE naming only filters that were never
    /// subscribed is still answered with UNSUBACK.
    mqtt_3_10_4_5_unsubscribe_unknown_only,
    |b: &TestBroker| {
        let mut c = b.client("c");
        c.send(&packets::unsubscribe(7, &["never", "seen/+"]));
        c.expect(&ack(UNSUBACK, 7));
    }
);

runtime_test!(
    /// MQTT-3.10.4-3: messages already sent for a subscription are completed
    /// after UNSUBSCRIBE: the unacknowledged one is re-sent on reconnect.
    mqtt_3_10_4_3_unsubscribe_completes_inflight_delivery,
    |b: &TestBroker| {
        let mut sub = b.persistent("unsub", false);
        sub.subscribe(1, &[("u", 1)]);
        let mut p = b.client("pub");
        p.send(&packets::publish("u", b"m", 1, 1));
        p.expect(&ack(PUBACK, 1));
        let first = sub.recv().publish();
        sub.send(&packets::unsubscribe(2, &["u"]));
        sub.expect(&ack(UNSUBACK, 2));
        drop(sub);
        let mut sub = b.persistent("unsub", true);
        let again = sub.recv();
        assert!(again.dup());
        assert_eq!(again.publish(), first);
    }
);

runtime_test!(
    /// MQTT-3.14.1-1: DISCONNECT with reserved flags set is a violation: the
    /// connection closes and, as it was not a valid DISCONNECT, the will is
    /// published.
    mqtt_3_14_1_1_disconnect_with_flags_publishes_will,
    |b: &TestBroker| {
        let mut watcher = b.client("watcher");
        watcher.subscribe(1, &[("w", 0)]);
        let mut c = b.raw();
        let will = Some(("w", &b"will"[..], 0, false));
        c.send(&Connect { client_id: "flags", will, ..Connect::default() }.bytes());
        c.expect(&CONNACK_ACCEPTED);
        c.send(&[0xe1, 0x00]);
        c.expect_closed();
        assert_eq!(watcher.recv().publish().2, b"will");
    }
);

runtime_test!(
    /// MQTT-4.6.0-4 (and -3): PUBRELs are sent in the order of the PUBRECs
    /// received, and QoS 2 deliveries keep publish order.
    mqtt_4_6_0_4_pubrel_order_follows_pubrec_order,
    |b: &TestBroker| {
        let mut sub = b.client("sub");
        sub.subscribe(1, &[("o", 2)]);
        let mut p = b.client("pub");
        for pid in 1..=3u16 {
            p.send(&packets::publish("o", &[pid as u8], 2, pid));
            p.expect(&ack(PUBREC, pid));
            p.send(&ack(PUBREL, pid));
            p.expect(&ack(PUBCOMP, pid));
        }
        let received: Vec<(u16, Vec<u8>)> = (0..3)
            .map(|_| {
                let (_, pid, payload) = sub.recv().publish();
                (pid.unwrap(), payload)
            })
            .collect();
        assert_eq!(received.iter().map(|(_, p)| p[0]).collect::<Vec<_>>(), [1, 2, 3]);
        let recs: Vec<u8> = received.iter().rev().flat_map(|(pid, _)| ack(PUBREC, *pid)).collect();
        sub.send(&recs);
        for (pid, _) in received.iter().rev() {
            sub.expect(&ack(PUBREL, *pid));
        }
    }
);

/// The tests a test source defines: the first identifier in each
/// `runtime_test!` / `runtime_kind_test!` (after its doc comments and
/// attributes), and every `fn` with `#[test]` among the attributes above it.
fn defined_tests(source: &str) -> std::collections::HashSet<String> {
    fn ident(s: &str) -> String {
        s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
    }
    let mut names = std::collections::HashSet::new();
    for call in ["runtime_test!(", "runtime_kind_test!("] {
        for (at, _) in source.match_indices(call) {
            let body = source[at + call.len()..].lines().map(str::trim);
            let mut body = body.skip_while(|l| l.is_empty() || l.starts_with("//") || l.starts_with("#["));
            names.extend(body.next().map(ident));
        }
    }
    let lines: Vec<&str> = source.lines().map(str::trim).collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.strip_prefix("fn ").or_else(|| line.strip_prefix("pub fn ")) else { continue };
        let attributes = lines[..i].iter().rev().take_while(|l| l.starts_with("#["));
        if attributes.clone().any(|l| *l == "#[test]") {
            names.insert(ident(rest));
        }
    }
    names
}

/// The source file of the crate module `name` (`src/name.rs`,
/// `src/name/mod.rs` or `src/<dir>/name.rs`), if there is one.
fn src_module(root: &std::path::Path, name: &str) -> Option<String> {
    let mut candidates = vec![root.join(format!("src/{name}.rs")), root.join(format!("src/{name}/mod.rs"))];
    for dir in std::fs::read_dir(root.join("src")).unwrap().flatten().filter(|d| d.path().is_dir()) {
        candidates.push(dir.path().join(format!("{name}.rs")));
    }
    candidates.into_iter().find_map(|path| std::fs::read_to_string(path).ok())
}

/// docs/conformance.md maps every normative statement to the tests that
/// check it. This keeps the map from rotting: every test it names must
/// exist (`module::name` in `tests/module.rs`, `x::tests::name` in the crate's
/// `src/x.rs`), every crate item it names as `x::item` must exist in `src/x.rs`,
/// every backquoted `*.rs` file must exist, and no `file.rs:NN` line number
/// may appear (those went stale within 50 commits).
#[test]
fn conformance_map_names_existing_tests() {
    use std::collections::HashMap;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/conformance.md")).expect("read docs/conformance.md");
    let mut problems = Vec::new();
    for (at, _) in doc.match_indices(".rs:") {
        if doc[at + 4..].starts_with(|c: char| c.is_ascii_digit()) {
            let start = doc[..at].rfind(|c: char| c.is_whitespace() || c == '`').map_or(0, |i| i + 1);
            let end = at + 4 + doc[at + 4..].find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
            problems.push(format!("a line number: {}", &doc[start..end]));
        }
    }
    let mut integration: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    for entry in std::fs::read_dir(root.join("tests")).unwrap().flatten() {
        let path = entry.path();
        let Some(module) =
            path.file_stem().and_then(|s| s.to_str()).filter(|_| path.extension() == Some("rs".as_ref()))
        else {
            continue;
        };
        if module != "tests" {
            integration.insert(module.to_owned(), defined_tests(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    let (mut tests_checked, mut spans) = (0, doc.split('`'));
    // Every other piece between backquotes is a code span.
    spans.next();
    let spans: Vec<&str> = spans.collect();
    for (i, span) in spans.iter().enumerate().step_by(2) {
        // What follows the span up to the next one, for "`x_smol` / `_async_std`".
        let twin = spans.get(i + 1).is_some_and(|between| *between == " / ") && spans.get(i + 2) == Some(&"_async_std");
        if span.ends_with(".rs") && !span.contains(|c: char| c.is_whitespace() || "<>*".contains(c)) {
            let exists = [root.join(span), root.join("src").join(span), root.join("tests").join(span)];
            if !exists.iter().any(|p| p.is_file()) {
                problems.push(format!("no file {span}"));
            }
            continue;
        }
        let parts: Vec<&str> = span.split("::").collect();
        let is_ident = |p: &&str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if parts.len() < 2
            || !parts[0].starts_with(|c: char| c.is_ascii_lowercase())
            || !parts[..parts.len() - 1].iter().all(is_ident)
            || !(is_ident(&parts[parts.len() - 1]) || parts[parts.len() - 1] == "*")
        {
            continue;
        }
        match parts[..] {
            [module, "tests", name] => {
                tests_checked += 1;
                match src_module(root, module) {
                    None => problems.push(format!("{span}: no module src/{module}.rs")),
                    Some(_) if name == "*" => {}
                    Some(source) if defined_tests(&source).contains(name) => {}
                    Some(_) => problems.push(format!("{span}: no #[test] fn {name} in the crate's module {module}")),
                }
            }
            [module, name] if integration.contains_key(module) => {
                let mut names = vec![name.to_owned()];
                if let Some(stem) = name.strip_suffix("_smol").filter(|_| twin) {
                    names.push(format!("{stem}_async_std"));
                }
                for name in names {
                    tests_checked += 1;
                    if !integration[module].contains(&name) {
                        problems.push(format!("{module}::{name}: no such test in tests/{module}.rs"));
                    }
                }
            }
            [module, item] => {
                let Some(source) = src_module(root, module) else { continue };
                let declared = ["fn", "struct", "enum", "const", "static", "type", "trait", "mod"].iter().any(|kind| {
                    let declaration = format!("{kind} {item}");
                    source.match_indices(&declaration).any(|(at, _)| {
                        !source[at + declaration.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                    })
                });
                if !declared {
                    problems.push(format!("{span}: no item {item} in the crate's module {module}"));
                }
            }
            _ => {}
        }
    }
    let mut seen = std::collections::HashSet::new();
    problems.retain(|p| seen.insert(p.clone()));
    assert!(problems.is_empty(), "docs/conformance.md is out of date:\n  {}", problems.join("\n  "));
    // A parser that stopped seeing names would pass vacuously.
    assert!(tests_checked > 100, "only {tests_checked} tests found in docs/conformance.md: is the parser broken?");
}
