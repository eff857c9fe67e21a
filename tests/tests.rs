//! midge's integration tests: one binary; every test runs once per compiled
//! runtime (`runtime_test!`), against a broker on 127.0.0.1 port 0. Names and
//! doc comments carry the MQTT 3.1.1 statement each test checks.

#[macro_use]
mod support;

/// Malformed and hostile input: the offender is closed, others carry on.
mod bad_input;
/// The `midge` binary: runtimes, log lines, signals.
mod binary;
/// Bridges to Mosquitto and to another midge: topics, QoS, faults, loops.
mod bridge;
/// A cluster of nodes on Redis: routes and forwarding across nodes.
#[cfg(feature = "cluster")]
mod cluster;
/// Smaller normative statements, one test each, and the check that
/// docs/conformance.md names only tests that exist.
mod conformance;
/// CONNECT, CONNACK, client ids, takeover, keepalive, connect timeout.
mod connect;
/// kill -9 during a stream of QoS 1/2 publishes loses nothing acknowledged.
mod crash;
/// Durable state: restarts, store failures, session expiry.
mod durability;
/// MQTT 5.0 enhanced authentication through the hooks: challenge and
/// response, re-authentication, refusals.
mod enhanced_auth;
/// Inflight window, queue limits, dropped messages.
mod flow;
/// Hostile clients and overload: deep topics, stuck readers, takeovers,
/// store stalls and crashes, pinned memory.
mod hardening;
/// Independent clients: mosquitto_pub / mosquitto_sub.
mod interop;
/// Independent MQTT 5.0 clients: mosquitto_pub / mosquitto_sub `-V mqttv5`
/// with `-D` properties, read back with `-F`, beside 3.1.1 clients.
mod interop5;
/// Prometheus metrics and the HTTP endpoint: counters after traffic, bad
/// HTTP input, `promtool check metrics`, a real Prometheus server scraping.
mod metrics;
/// A model-based test: random sequences of connects, subscriptions,
/// publishes, takeovers and crashes checked against a reference model.
mod model;
/// `midge -c mosquitto.conf`: Debian's file, check-config, bad input, and
/// agreement with the Mosquitto binary on the same files.
mod mosquitto_conf;
/// Independent clients: the Eclipse Paho Python client (paho-mqtt 2.x).
mod paho;
/// The connection handler over an in-memory stream.
mod pipe;
/// Property tests of the codec (proptest).
mod properties;
/// PUBLISH at QoS 0, 1 and 2 in both directions, and routing.
mod publish;
/// Passwords, ACLs, hooks and limits.
mod security;
/// Persistent sessions, wills and retained messages.
mod session;
/// SUBSCRIBE, UNSUBSCRIBE, wildcards and `$` topics.
mod subscribe;
/// `$SYS` statistics.
mod sys;
/// MQTT over TLS with mosquitto clients.
mod tls;
/// Stores written by earlier releases open intact after an upgrade.
mod upgrade;
/// MQTT 5.0, server side, over the wire: CONNECT / CONNACK, PUBLISH
/// properties, topic aliases, acknowledgements, subscription options, flow
/// control, DISCONNECT reason codes, bad input, 3.1.1 interoperability.
mod v5;
/// MQTT over WebSockets (`ws://`, `wss://`): the handshake, frames, bad
/// input, and MQTT.js (3.1.1 and 5.0) under Node and in headless Chromium.
mod websockets;
