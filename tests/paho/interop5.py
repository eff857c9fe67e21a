#!/usr/bin/env python3
"""MQTT 5.0 interoperability tests for midge with the Eclipse Paho Python client.

Modelled on the Eclipse Paho MQTT 5.0 interoperability tests (paho.mqtt.testing,
interoperability/client_test5.py), rewritten for paho-mqtt 2.x with MQTTv5:

    pip install paho-mqtt==2.2.0
    python3 tests/paho/interop5.py --host 127.0.0.1 --port 1883 \\
        --max-keepalive 30 --response-information responses/

The broker is expected to run with `max_keepalive` and `response_information`
set to the values given (tests/paho.rs does so). Prints one line per scenario
("ok NAME" or "FAIL NAME: REASON") and a final line "N passed, M failed";
exits 0 only if every scenario passed. Some scenarios are those of
tests/paho/interop.py run again over MQTT 5.0 (its Client speaks what its
PROTOCOL says); the others are 5.0's own. Where paho cannot do what a
scenario needs (withhold acknowledgements, keep a socket silent), a small
raw-socket 5.0 client is used instead.
"""

import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import interop as v3  # noqa: E402  (also checks that paho-mqtt 2.x is installed)
from interop import Failure, check, describe  # noqa: E402

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.reasoncodes import ReasonCode  # noqa: E402
from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: E402

v3.PROTOCOL = mqtt.MQTTv5
Client = v3.Client
TOKEN = v3.TOKEN
WAIT = v3.WAIT
QUIET = v3.QUIET

# Set from the command line: the broker's max_keepalive and response_information.
MAX_KEEPALIVE = 30
RESPONSE_INFORMATION = "responses/"


def props(kind, **values):
    """A paho Properties for packet type `kind` ("CONNECT", "PUBLISH",
    "SUBSCRIBE", "WILLMESSAGE") with the given values."""
    p = Properties(getattr(PacketTypes, kind))
    for name, value in values.items():
        setattr(p, name, value)
    return p


def prop(message_or_props, name, default=None):
    """A property of a received message (or a Properties), or `default`."""
    p = message_or_props
    if not isinstance(p, Properties):  # a message (Properties has a .properties too)
        p = p.properties
    return getattr(p, name, default) if p is not None else default


def sub_ids(m):
    ids = prop(m, "SubscriptionIdentifier", [])
    return sorted(ids if isinstance(ids, list) else [ids])


def code(rc):
    """A paho ReasonCode (or None) as an int, for messages and comparisons."""
    return None if rc is None else rc.value


# ---------------------------------------------------------------------------
# A raw MQTT 5.0 client, for what paho cannot do.


def decode_varint(data, at):
    value, mult = 0, 1
    while True:
        byte = data[at]
        at += 1
        value += (byte & 0x7F) * mult
        mult *= 128
        if not byte & 0x80:
            return value, at


def connect5(client_id, clean_start=True, keepalive=60, session_expiry=None, will=None):
    """A 5.0 CONNECT; `will` is (topic, payload, qos)."""
    flags = 0x02 if clean_start else 0
    properties = b"" if session_expiry is None else b"\x11" + struct.pack("!I", session_expiry)
    payload = v3.utf8(client_id)
    if will is not None:
        topic, message, qos = will
        flags |= 0x04 | (qos << 3)
        payload += b"\x00" + v3.utf8(topic) + struct.pack("!H", len(message)) + message
    body = (v3.utf8("MQTT") + bytes([5, flags]) + struct.pack("!H", keepalive)
            + v3.encode_length(len(properties)) + properties + payload)
    return v3.packet(0x10, body)


def subscribe5(pid, topic, qos):
    return v3.packet(0x82, struct.pack("!H", pid) + b"\x00" + v3.utf8(topic) + bytes([qos]))


class Raw5(v3.Raw):
    def connack(self):
        """Returns (session present, reason code)."""
        _, body = self.expect(2)
        return body[0] & 1, body[1]

    def publish(self, timeout=WAIT):
        flags, body = self.expect(3, timeout)
        dup, qos = flags >> 3, (flags >> 1) & 3
        tlen = struct.unpack("!H", body[:2])[0]
        topic = body[2:2 + tlen].decode("utf-8")
        at = 2 + tlen
        pid = None
        if qos:
            pid = struct.unpack("!H", body[at:at + 2])[0]
            at += 2
        plen, at = decode_varint(body, at)
        return {"dup": dup, "qos": qos, "topic": topic, "pid": pid,
                "payload": bytes(body[at + plen:])}

    def disconnect_reason(self, timeout):
        """Waits for the server's DISCONNECT and returns its reason code."""
        _, body = self.expect(14, timeout)
        return body[0] if body else 0


# ---------------------------------------------------------------------------
# MQTT 5.0 scenarios. Each takes a list to register its clients in (closed
# afterwards) and raises Failure (or anything else) on failure.


def scenario_connack_properties(clients):
    """CONNACK Success carries the server's limits: Receive Maximum, Topic
    Alias Maximum (section 3.2.2.3); a Keep Alive above max_keepalive, or 0,
    gets Server Keep Alive = max_keepalive (3.2.2.3.14; the client must use
    it, MQTT-3.2.2-21), one within it none (MQTT-3.2.2-22)."""
    for keepalive, expected in ((60, MAX_KEEPALIVE), (0, MAX_KEEPALIVE), (10, None)):
        c = Client("connack", f"keepalive{keepalive}"); clients.append(c)
        c.connect(keepalive=keepalive)
        p = c.connack_properties
        got = prop(p, "ServerKeepAlive")
        check(got == expected, f"keepalive {keepalive}: Server Keep Alive {got}, "
                               f"expected {expected} (max_keepalive {MAX_KEEPALIVE})")
        check(prop(p, "ReceiveMaximum") == 20, f"Receive Maximum {prop(p, 'ReceiveMaximum')}, "
                                               "expected 20 (max_inflight)")
        check(prop(p, "TopicAliasMaximum") == 10,
              f"Topic Alias Maximum {prop(p, 'TopicAliasMaximum')}, expected 10")
        check(prop(p, "AssignedClientIdentifier") is None,
              "Assigned Client Identifier for a client that sent one")
        c.disconnect()


def scenario_zero_length_client_id(clients):
    """A zero-length client id is assigned a unique one, returned in CONNACK
    (MQTT-3.1.3-6, MQTT-3.1.3-7, MQTT-3.2.2-16), with Clean Start 1 and,
    unlike 3.1.1, with Clean Start 0 too; the client works under it."""
    topic = f"{TOKEN}/zero5/topic"
    assigned = []
    for clean in (True, False):
        c = Client("zero5", "", clean_session=clean, client_id=""); clients.append(c)
        c.connect(expect_session_present=False)
        cid = prop(c.connack_properties, "AssignedClientIdentifier")
        check(cid, f"Clean Start {int(clean)}: no Assigned Client Identifier "
                   "in CONNACK (MQTT-3.2.2-16)")
        assigned.append(cid)
        check(c.subscribe([(topic, 1)]) == [1], "SUBACK did not grant QoS 1")
        c.publish(topic, cid.encode(), 1)
        m = c.receive()
        check(m.payload == cid.encode(), f"unexpected {describe([m])}")
        c.disconnect()
    check(assigned[0] != assigned[1], f"the same client id assigned twice: {assigned}"
                                      " (MQTT-3.1.3-6: unique)")


def scenario_session_expiry(clients):
    """Session Expiry Interval: with 60 s, messages published while the
    client is away are queued and delivered when it resumes with Clean Start
    0 (MQTT-3.1.2-23, MQTT-3.1.2-5); with 0 (absent) the session ends at the
    disconnect (MQTT-3.1.2-23); with 1 s it is gone after 2 s
    (MQTT-4.1.0-2)."""
    base = f"{TOKEN}/expiry5"
    cid = f"{TOKEN}-expiry5-a"
    keep = props("CONNECT", SessionExpiryInterval=60)
    a = Client("expiry5", "a", clean_session=True, client_id=cid); clients.append(a)
    a.connect(properties=keep, expect_session_present=False)
    check(a.subscribe([(f"{base}/+", 2)]) == [2], "SUBACK did not grant QoS 2")
    a.disconnect()
    b = Client("expiry5", "b"); clients.append(b)
    b.connect()
    for qos in (1, 2):
        b.publish(f"{base}/qos{qos}", f"offline qos {qos}".encode(), qos)
    a2 = Client("expiry5", "a2", clean_session=False, client_id=cid); clients.append(a2)
    a2.connect(properties=keep, expect_session_present=True)
    got = a2.receive_n(2, what="queued messages (MQTT-3.1.2-23)") + a2.quiet(0.3)
    got.sort(key=lambda m: m.topic)
    check([(m.topic, m.payload, m.qos) for m in got]
          == [(f"{base}/qos{q}", f"offline qos {q}".encode(), q) for q in (1, 2)],
          f"expected the queued messages once each, got {describe(got)}")
    a2.disconnect()
    v3.clear_session("expiry5", cid)

    for interval, wait in ((None, 0), (1, 2.2)):
        cid = f"{TOKEN}-expiry5-{interval}"
        connect_props = None if interval is None else props("CONNECT", SessionExpiryInterval=interval)
        c = Client("expiry5", f"short{interval}", client_id=cid); clients.append(c)
        c.connect(properties=connect_props)
        c.subscribe([(f"{base}/short", 1)])
        c.disconnect()
        time.sleep(wait)  # the interval itself: nothing to wait on
        c2 = Client("expiry5", f"again{interval}", clean_session=False, client_id=cid)
        clients.append(c2)
        present = c2.connect(properties=props("CONNECT", SessionExpiryInterval=60))
        check(not present, f"Session Expiry Interval {interval}: the session was still "
                           f"there {wait}s after the disconnect (MQTT-3.1.2-23, MQTT-4.1.0-2)")
        c2.disconnect()
        v3.clear_session("expiry5", cid)


def scenario_subscription_identifiers(clients):
    """Overlapping subscriptions a/# (QoS 2, id 1), a/+ (QoS 1, id 2) and a/x
    (QoS 0, no id): a QoS 2 publish arrives with both identifiers, in one
    copy at QoS 2 (MQTT-3.3.4-2, MQTT-3.3.4-4) or one copy per subscription,
    each carrying its own (MQTT-3.3.4-3, MQTT-3.3.4-5)."""
    base = f"{TOKEN}/subid"
    c = Client("subid", "a"); clients.append(c)
    c.connect()
    check(c.subscribe([(f"{base}/#", 2)], props("SUBSCRIBE", SubscriptionIdentifier=1)) == [2],
          "SUBACK did not grant QoS 2")
    check(c.subscribe([(f"{base}/+", 1)], props("SUBSCRIBE", SubscriptionIdentifier=2)) == [1],
          "SUBACK did not grant QoS 1")
    check(c.subscribe([(f"{base}/x", 0)]) == [0], "SUBACK did not grant QoS 0")
    c.publish(f"{base}/x", b"overlapping", 2)
    got = [c.receive()] + c.quiet(0.5)
    seen = [(m.qos, sub_ids(m)) for m in got]
    if len(got) == 1:
        check(seen == [(2, [1, 2])], f"one copy delivered as (QoS, identifiers) {seen}: "
                                     "expected QoS 2 with identifiers 1 and 2 "
                                     "(MQTT-3.3.4-2, MQTT-3.3.4-4)")
    else:
        ids = sorted(i for _, copy in seen for i in copy)
        check(ids == [1, 2] and all(len(copy) <= 1 for _, copy in seen),
              f"copies delivered as (QoS, identifiers) {seen}: expected each "
              "subscription's own identifier (MQTT-3.3.4-5)")
        check(max(q for q, _ in seen) == 2, f"no copy at QoS 2: {seen}")
    c.disconnect()


def scenario_keepalive(clients):
    """A 5.0 client with keepalive 2 s that falls silent gets DISCONNECT 0x8D
    (Keep Alive timeout) after 1.5 x keepalive (MQTT-3.1.2-22) and its will
    is published (MQTT-3.1.2-8)."""
    will_topic = f"{TOKEN}/keepalive5/will"
    w = Client("keepalive5", "watcher"); clients.append(w)
    w.connect()
    check(w.subscribe([(will_topic, 1)]) == [1], "SUBACK did not grant QoS 1")
    raw = Raw5(); clients.append(raw)
    raw.send(connect5(f"{TOKEN}-keepalive5-raw", keepalive=2,
                      will=(will_topic, b"keepalive expiry", 1)))
    start = time.monotonic()
    _, rc = raw.connack()
    check(rc == 0, f"CONNACK reason code {rc:#x}")
    try:
        reason = raw.disconnect_reason(timeout=8.0)
    except (Failure, ConnectionError) as e:
        raise Failure(f"no DISCONNECT 0x8D on keepalive expiry: {e}")
    elapsed = time.monotonic() - start
    check(reason == 0x8D, f"DISCONNECT reason {reason:#x}, expected 0x8D (Keep Alive timeout)")
    check(2.9 <= elapsed <= 6.5, f"disconnected {elapsed:.1f}s after CONNACK, keepalive 2 s: "
                                 "expected ~3 s (MQTT-3.1.2-22)")
    m = w.receive(what="will after keepalive expiry (MQTT-3.1.2-8)")
    check(m.payload == b"keepalive expiry", f"unexpected {describe([m])}")
    w.disconnect()


class Wire5:
    """interop.py's redelivery scenario over MQTT 5.0: a session with
    Session Expiry Interval 60 s, resumed with Clean Start 0."""
    name = "redelivery5"
    raw = Raw5

    @staticmethod
    def connect(cid):
        return connect5(cid, clean_start=False, session_expiry=60)

    @staticmethod
    def subscribe(topic):
        return subscribe5(1, topic, 2)

    # SUBACK: packet id 1, no properties, QoS 2 granted.
    suback = b"\x00\x01\x00\x02"

    @staticmethod
    def pubrel_ok(body, pid):
        # 5.0 may add Reason Code 0x00 and empty properties (3.6.2.1).
        return body[:2] == struct.pack("!H", pid) and not any(body[2:])


def scenario_redelivery(clients):
    """A 5.0 session (Session Expiry 60 s) that does not acknowledge QoS 1 and
    2 messages gets them again when it resumes, with the same packet ids and
    DUP set (MQTT-4.4.0-1, MQTT-3.3.1-1)."""
    v3.scenario_redelivery_on_reconnect(clients, Wire5)


def scenario_unsubscribe_reason_codes(clients):
    """UNSUBACK has a reason code per filter: 0x00 for a subscription that
    existed, 0x11 (No subscription existed) for one that did not (section
    3.11.3, MQTT-3.10.4-5)."""
    base = f"{TOKEN}/unsub5"
    c = Client("unsub5", "a"); clients.append(c)
    c.connect()
    c.subscribe([(f"{base}/kept", 1)])
    codes = c.unsubscribe([f"{base}/kept", f"{base}/never"])
    check(codes == [0x00, 0x11], f"UNSUBACK reason codes {codes}, expected [0x00, 0x11]")
    c.disconnect()


WILL_PROPERTIES = dict(PayloadFormatIndicator=1, ContentType="text/plain; charset=utf-8",
                       ResponseTopic="will/response", CorrelationData=b"\x00\x01will",
                       MessageExpiryInterval=120,
                       UserProperty=[("k", "first"), ("other", "x"), ("k", "second")])


def check_forwarded(m, sent, rules):
    """Each sent property arrived unaltered (the Message Expiry Interval at
    most as sent, and within 3 s of it)."""
    for name, value in sent.items():
        got = prop(m, name)
        if name == "MessageExpiryInterval":
            check(got is not None and value - 3 <= got <= value,
                  f"Message Expiry Interval {got}, sent {value} (MQTT-3.3.2-6)")
        else:
            check(got == value, f"{name} {got!r}, sent {value!r} ({rules})")


def scenario_will_properties(clients):
    """A will is published with its properties, User Properties in order
    (MQTT-3.1.3-10), on an abrupt close (MQTT-3.1.2-8) and on DISCONNECT 0x04
    Disconnect with Will Message (section 3.14.2.1)."""
    base = f"{TOKEN}/will5"
    w = Client("will5", "watcher"); clients.append(w)
    w.connect()
    w.subscribe([(f"{base}/+", 1)])
    a = Client("will5", "abrupt"); clients.append(a)
    a.will(f"{base}/abrupt", b"abrupt close", qos=1,
           properties=props("WILLMESSAGE", **WILL_PROPERTIES))
    a.connect()
    a.kill()
    m = w.receive(what="will after an abrupt close (MQTT-3.1.2-8)")
    check(m.topic == f"{base}/abrupt", f"unexpected {describe([m])}")
    check_forwarded(m, WILL_PROPERTIES, "MQTT-3.1.3-10")

    b = Client("will5", "with-will"); clients.append(b)
    b.will(f"{base}/on-disconnect", b"asked for", qos=1)
    b.connect()
    b.c.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=0x04))
    b.disconnected.wait(WAIT)
    m = w.receive(what="will after DISCONNECT 0x04 (Disconnect with Will Message)")
    check((m.topic, m.payload) == (f"{base}/on-disconnect", b"asked for"), f"unexpected {describe([m])}")
    w.disconnect()


def scenario_user_properties_in_order(clients):
    """User Properties are forwarded unaltered and in order, repeated names
    and empty values included (MQTT-3.3.2-17, MQTT-3.3.2-18)."""
    topic = f"{TOKEN}/userprops/topic"
    pairs = [("z", "1"), ("a", "2"), ("z", "3"), ("empty", ""), ("ünï", "cödé")]
    subs = []
    for name in ("s1", "s2"):
        s = Client("userprops", name); clients.append(s)
        s.connect()
        s.subscribe([(topic, 1)])
        subs.append(s)
    p = Client("userprops", "publisher"); clients.append(p)
    p.connect()
    for qos in (0, 1, 2):
        p.publish(topic, f"qos {qos}".encode(), qos, properties=props("PUBLISH", UserProperty=pairs))
    for s in subs:
        for m in s.receive_n(3):
            got = prop(m, "UserProperty")
            check(got == pairs, f"{m.payload!r}: User Properties {got}, sent {pairs} "
                                "(MQTT-3.3.2-17, MQTT-3.3.2-18)")


def scenario_message_properties(clients):
    """Payload Format Indicator, Content Type, Response Topic and Correlation
    Data are forwarded unaltered (MQTT-3.3.2-4, MQTT-3.3.2-15, MQTT-3.3.2-16,
    MQTT-3.3.2-20); a payload said to be UTF-8 that is not gets PUBACK 0x99
    and is not delivered (section 3.3.2.3.2); QoS 1 with no subscriber gets
    PUBACK 0x10 (section 3.4.2.1)."""
    topic = f"{TOKEN}/msgprops/topic"
    sent = dict(PayloadFormatIndicator=1, ContentType="application/json",
                ResponseTopic=f"{TOKEN}/msgprops/reply", CorrelationData=b"\x00\xffid-42")
    s = Client("msgprops", "subscriber"); clients.append(s)
    s.connect()
    s.subscribe([(topic, 2)])
    p = Client("msgprops", "publisher"); clients.append(p)
    p.connect()
    for qos in (0, 1, 2):
        p.publish(topic, b'{"qos": %d}' % qos, qos, properties=props("PUBLISH", **sent))
    for m in s.receive_n(3):
        check_forwarded(m, sent, "MQTT-3.3.2-4, -15, -16, -20")
    p.publish(topic, b"plain", 1)
    m = s.receive()
    for name in sent:
        check(prop(m, name) is None, f"{name} on a message published without it: {describe([m])}")

    rc = p.publish(topic, b"\xff\xfe not utf-8", 1, properties=props("PUBLISH", PayloadFormatIndicator=1))
    check(code(rc) == 0x99, f"PUBACK reason {code(rc)} for a payload that is not UTF-8 "
                            "but says it is, expected 0x99")
    p.publish(topic, b"sentinel", 1)
    got = [s.receive(what="sentinel")] + s.quiet(0.3)
    check([m.payload for m in got] == [b"sentinel"], f"the ill-formed payload was delivered: {describe(got)}")
    rc = p.publish(f"{TOKEN}/msgprops/nobody", b"x", 1)
    check(code(rc) == 0x10, f"PUBACK reason {code(rc)} with no matching subscriber, expected 0x10")


def scenario_message_expiry(clients):
    """Message Expiry Interval: a live delivery carries the interval less the
    time waited (MQTT-3.3.2-6); a queued message and a retained message
    whose interval passed are not delivered (MQTT-3.3.2-5), those still
    within it are, with what is left."""
    base = f"{TOKEN}/expiry"
    cid = f"{TOKEN}-expiry-offline"
    live = Client("expiry", "live"); clients.append(live)
    live.connect()
    live.subscribe([(f"{base}/+", 1)])
    off = Client("expiry", "offline", client_id=cid); clients.append(off)
    off.connect(properties=props("CONNECT", SessionExpiryInterval=60))
    off.subscribe([(f"{base}/+", 1)])
    off.disconnect()
    p = Client("expiry", "publisher"); clients.append(p)
    p.connect()
    for name, interval in (("short", 1), ("long", 60)):
        p.publish(f"{base}/{name}", name.encode(), 1, retain=True,
                  properties=props("PUBLISH", MessageExpiryInterval=interval))
    for m in live.receive_n(2):
        sent = 1 if m.payload == b"short" else 60
        got = prop(m, "MessageExpiryInterval")
        check(got is not None and sent - 1 <= got <= sent,
              f"live {m.payload!r}: Message Expiry Interval {got}, sent {sent} (MQTT-3.3.2-6)")
    time.sleep(2.2)  # let the short interval pass: nothing to wait on
    off2 = Client("expiry", "offline-again", clean_session=False, client_id=cid); clients.append(off2)
    off2.connect(properties=props("CONNECT", SessionExpiryInterval=60), expect_session_present=True)
    late = Client("expiry", "late"); clients.append(late)
    late.connect()
    late.subscribe([(f"{base}/+", 1)])
    for who, c in (("queued", off2), ("retained", late)):
        got = [c.receive(what=f"{who} message within its interval")] + c.quiet(0.5)
        check([m.payload for m in got] == [b"long"],
              f"{who}: delivered {describe(got)}, expected only the unexpired one (MQTT-3.3.2-5)")
        left = prop(got[0], "MessageExpiryInterval")
        check(left is not None and 50 <= left <= 58,
              f"{who}: Message Expiry Interval {left} after 2 s of 60 (MQTT-3.3.2-6)")
    p.publish(f"{base}/long", b"", 1, retain=True)
    off2.disconnect()
    v3.clear_session("expiry", cid)


def resolve_aliases(messages, maximum):
    """The topics of messages received under outbound Topic Aliases, checking
    each alias is within `maximum` (MQTT-3.1.2-26)."""
    aliases, topics, used = {}, [], 0
    for m in messages:
        alias = prop(m, "TopicAlias")
        if alias is not None:
            used += 1
            check(1 <= alias <= maximum, f"Topic Alias {alias} above the client's "
                                         f"maximum {maximum} (MQTT-3.1.2-26)")
            if m.topic:
                aliases[alias] = m.topic
            else:
                check(alias in aliases, f"empty topic with unknown alias {alias}")
        topics.append(m.topic or aliases[alias])
    return topics, used


def scenario_topic_aliases(clients):
    """Topic aliases: a publisher's alias is set and reused, and remapped
    (section 3.3.2.3.4, MQTT-3.3.2-12), subscribers get the full topic and
    no alias unless they announced a Topic Alias Maximum (MQTT-3.1.2-27);
    one that announced 2 gets aliases within 2 (MQTT-3.1.2-26); an alias
    above the server's maximum (a breach of MQTT-3.3.2-9) gets DISCONNECT
    0x94 (section 3.3.2.3.4)."""
    base = f"{TOKEN}/alias"
    plain = Client("alias", "plain"); clients.append(plain)
    plain.connect()
    plain.subscribe([(f"{base}/#", 1)])
    aliased = Client("alias", "aliased"); clients.append(aliased)
    aliased.connect(properties=props("CONNECT", TopicAliasMaximum=2))
    aliased.subscribe([(f"{base}/#", 1)])
    p = Client("alias", "publisher"); clients.append(p)
    p.connect()
    sent = [(f"{base}/a", 1), ("", 1), (f"{base}/b", 1), ("", 1), (f"{base}/c", 2), (f"{base}/a", None),
            (f"{base}/c", None), ("", 2)]
    expected = [f"{base}/a", f"{base}/a", f"{base}/b", f"{base}/b", f"{base}/c", f"{base}/a",
                f"{base}/c", f"{base}/c"]
    for i, (topic, alias) in enumerate(sent):
        publish_props = None if alias is None else props("PUBLISH", TopicAlias=alias)
        p.publish(topic, f"{i}".encode(), 1, properties=publish_props)
    got = plain.receive_n(len(sent))
    check([m.topic for m in got] == expected, f"topics {[m.topic for m in got]}, expected {expected}")
    check(all(prop(m, "TopicAlias") is None for m in got),
          "a Topic Alias sent to a client without Topic Alias Maximum (MQTT-3.1.2-27)")
    got = aliased.receive_n(len(sent))
    topics, used = resolve_aliases(got, 2)
    check(topics == expected, f"resolved topics {topics}, expected {expected}")
    check(used > 0, "no outbound Topic Alias used for a client that allows 2")

    p.c.publish(f"{base}/a", b"bad alias", 1, properties=props("PUBLISH", TopicAlias=11))
    check(p.disconnected.wait(WAIT), "alias 11 above the maximum 10: still connected")
    check(code(p.disconnect_reason) == 0x94,
          f"alias 11 above the maximum 10: DISCONNECT {code(p.disconnect_reason)}, expected 0x94")
    got = plain.quiet(0.3)
    check(not got, f"the PUBLISH with a bad alias was delivered: {describe(got)}")


def scenario_no_local(clients):
    """No Local: a client's own messages are not sent back to it
    (MQTT-3.8.3-3); others' are; a subscriber without it gets both."""
    topic = f"{TOKEN}/nolocal/topic"
    me = Client("nolocal", "me"); clients.append(me)
    me.connect()
    me.subscribe([(topic, SubscribeOptions(qos=1, noLocal=True))])
    other = Client("nolocal", "other"); clients.append(other)
    other.connect()
    other.subscribe([(topic, 1)])
    me.publish(topic, b"own", 1)
    other.publish(topic, b"other's", 1)
    got = [me.receive()] + me.quiet(0.3)
    check([m.payload for m in got] == [b"other's"], f"No Local subscriber got {describe(got)} (MQTT-3.8.3-3)")
    got = sorted(m.payload for m in other.receive_n(2))
    check(got == [b"other's", b"own"], f"the plain subscriber got {got}")


def scenario_retain_as_published(clients):
    """Retain As Published 1 keeps the RETAIN flag of a live message
    (MQTT-3.3.1-13), 0 clears it (MQTT-3.3.1-12)."""
    topic = f"{TOKEN}/rap/topic"
    subs = {}
    for rap in (True, False):
        s = Client("rap", f"rap{int(rap)}"); clients.append(s)
        s.connect()
        s.subscribe([(topic, SubscribeOptions(qos=1, retainAsPublished=rap))])
        subs[rap] = s
    p = Client("rap", "publisher"); clients.append(p)
    p.connect()
    p.publish(topic, b"retained and live", 1, retain=True)
    for rap, s in subs.items():
        m = s.receive()
        check(bool(m.retain) == rap, f"Retain As Published {int(rap)}: RETAIN {int(m.retain)} "
                                     f"({'MQTT-3.3.1-13' if rap else 'MQTT-3.3.1-12'})")
    p.publish(topic, b"", 1, retain=True)


def retained_on_subscribe(c, topic, handling, sentinel_from):
    """Subscribes `c` with Retain Handling `handling` and returns the
    payloads received before a live sentinel."""
    c.subscribe([(topic, SubscribeOptions(qos=1, retainHandling=handling))])
    sentinel_from.publish(topic, b"sentinel", 1)
    got = []
    while not got or got[-1].payload != b"sentinel":
        got.append(c.receive(what="sentinel"))
    return [m.payload for m in got[:-1]]


def scenario_retain_handling(clients):
    """Retain Handling 0 sends retained messages on every SUBSCRIBE
    (MQTT-3.3.1-9), 1 only when the subscription is new (MQTT-3.3.1-10), 2
    never (MQTT-3.3.1-11)."""
    topic = f"{TOKEN}/rh/topic"
    p = Client("rh", "publisher"); clients.append(p)
    p.connect()
    p.publish(topic, b"retained", 1, retain=True)
    expected = {0: ([b"retained"], [b"retained"]), 1: ([b"retained"], []), 2: ([], [])}
    rules = {0: "MQTT-3.3.1-9", 1: "MQTT-3.3.1-10", 2: "MQTT-3.3.1-11"}
    for handling, (first, again) in expected.items():
        c = Client("rh", f"rh{handling}"); clients.append(c)
        c.connect()
        got = (retained_on_subscribe(c, topic, handling, p), retained_on_subscribe(c, topic, handling, p))
        check(got == (first, again), f"Retain Handling {handling}: retained messages on the first and "
                                     f"second SUBSCRIBE {got}, expected {(first, again)} ({rules[handling]})")
    p.publish(topic, b"", 1, retain=True)


def scenario_receive_maximum(clients):
    """A client announcing Receive Maximum 2 has at most 2 unacknowledged
    QoS 1 messages from the server at a time (MQTT-3.3.4-9); each PUBACK
    lets one more through, in order."""
    topic = f"{TOKEN}/rmax/topic"
    c = Client("rmax", "slow"); clients.append(c)
    c.c.manual_ack_set(True)
    c.connect(properties=props("CONNECT", ReceiveMaximum=2))
    c.subscribe([(topic, 1)])
    p = Client("rmax", "publisher"); clients.append(p)
    p.connect()
    for i in range(6):
        p.publish(topic, f"{i}".encode(), 1)
    held = c.receive_n(2) + c.quiet(QUIET)
    check(len(held) == 2, f"{len(held)} unacknowledged messages in flight with Receive Maximum 2 "
                          f"(MQTT-3.3.4-9): {describe(held)}")
    received = list(held)
    while held:
        m = held.pop(0)
        c.c.ack(m.mid, m.qos)
        more = c.quiet(0.3) if len(received) == 6 else [c.receive()] + c.quiet(0.1)
        held += more
        received += more
        check(len(held) <= 2, f"{len(held)} unacknowledged after a PUBACK (MQTT-3.3.4-9)")
    check([m.payload for m in received] == [f"{i}".encode() for i in range(6)],
          f"received {describe(received)}, expected 0..5 in order")


def scenario_maximum_packet_size(clients):
    """A message larger than the client's Maximum Packet Size is not sent to
    it (MQTT-3.1.2-24) and the next one is (MQTT-3.1.2-25); a client without
    the limit gets both."""
    base = f"{TOKEN}/maxpkt"
    small = Client("maxpkt", "small"); clients.append(small)
    small.connect(properties=props("CONNECT", MaximumPacketSize=256))
    small.subscribe([(f"{base}/#", 1)])
    big = Client("maxpkt", "big"); clients.append(big)
    big.connect()
    big.subscribe([(f"{base}/#", 1)])
    p = Client("maxpkt", "publisher"); clients.append(p)
    p.connect()
    p.publish(f"{base}/large", b"x" * 1000, 1)
    p.publish(f"{base}/small", b"fits", 1)
    got = [small.receive(what="the small message")] + small.quiet(0.3)
    check([m.topic for m in got] == [f"{base}/small"],
          f"client with Maximum Packet Size 256 got {[(m.topic, len(m.payload)) for m in got]} "
          "(MQTT-3.1.2-24)")
    got = big.receive_n(2)
    check(sorted(len(m.payload) for m in got) == [4, 1000], "the client without a limit missed one")


def scenario_response_information(clients):
    """Response Information is sent when the client asks for it (Request
    Response Information 1) and the broker has a prefix, and not otherwise
    (MQTT-3.1.2-28)."""
    asking = Client("respinfo", "asking"); clients.append(asking)
    asking.connect(properties=props("CONNECT", RequestResponseInformation=1))
    got = prop(asking.connack_properties, "ResponseInformation")
    check(got == RESPONSE_INFORMATION, f"Response Information {got!r}, expected {RESPONSE_INFORMATION!r}")
    silent = Client("respinfo", "silent"); clients.append(silent)
    silent.connect()
    got = prop(silent.connack_properties, "ResponseInformation")
    check(got is None, f"Response Information {got!r} sent unasked (MQTT-3.1.2-28)")


def scenario_shared_subscriptions(clients):
    """A shared subscription $share/NAME/FILTER held by two 5.0 clients and
    a 3.1.1 client gets each message once for the whole group (section
    4.8.2), in turn (round_robin, the default), and no retained message
    when it subscribes (section 4.8.2); a plain subscription still gets
    every message; CONNACK says Shared Subscription Available (it may
    leave it out: absent means available, 3.2.2.3.15)."""
    base = f"{TOKEN}/shared"
    share = f"$share/g{TOKEN}/{base}/#"
    p = Client("shared", "publisher"); clients.append(p)
    p.connect()
    check(prop(p.connack_properties, "SharedSubscriptionAvailable", 1) == 1,
          "CONNACK says Shared Subscription Available 0")
    p.publish(f"{base}/retained", b"retained", 1, retain=True)
    members = [Client("shared", "m5a"), Client("shared", "m5b"),
               Client("shared", "m311", protocol=mqtt.MQTTv311)]
    for m in members:
        clients.append(m)
        m.connect(keepalive=20)  # a 3.1.1 client above max_keepalive is refused
        check(m.subscribe([(share, 1)]) == [1], f"{m.client_id}: SUBACK did not grant QoS 1 to {share}")
    plain = Client("shared", "plain"); clients.append(plain)
    plain.connect()
    plain.subscribe([(f"{base}/t", 1)])
    for i in range(6):
        p.publish(f"{base}/t", f"{i}".encode(), 1)
    check(len(plain.receive_n(6)) == 6, "the plain subscriber missed messages")
    got = {m.client_id: m.quiet(0.5) for m in members}
    payloads = sorted(x.payload for msgs in got.values() for x in msgs)
    check(payloads == [f"{i}".encode() for i in range(6)],
          f"the group got {payloads}, expected 0..5 once each (4.8.2; retained ones excluded)")
    counts = {cid: len(msgs) for cid, msgs in got.items()}
    check(sorted(counts.values()) == [2, 2, 2], f"messages per member {counts}, expected 2 each (round_robin)")
    p.publish(f"{base}/retained", b"", 1, retain=True)


def scenario_shared_subscription_member_leaves(clients):
    """A member of a shared subscription that leaves with an unacknowledged
    QoS 1 message does not keep it: the message goes to another member
    (section 4.8.2)."""
    base = f"{TOKEN}/sharedleave"
    share = f"$share/g{TOKEN}/{base}/#"
    holder = Client("sharedleave", "holder"); clients.append(holder)
    holder.c.manual_ack_set(True)
    other = Client("sharedleave", "other"); clients.append(other)
    for m in (holder, other):
        m.connect()
        m.subscribe([(share, 1)])
    p = Client("sharedleave", "publisher"); clients.append(p)
    p.connect()
    for i in range(2):
        p.publish(f"{base}/t", f"{i}".encode(), 1)
    held = holder.receive_n(1) + holder.quiet(0.3)
    check(len(held) == 1, f"the holder got {describe(held)}, expected one of two (round_robin)")
    delivered = other.receive_n(2 - len(held), what="messages not given to the holder")
    holder.kill()  # never acknowledged
    moved = other.receive_n(len(held), what="the unacknowledged message of the member that left")
    check(sorted(m.payload for m in delivered + moved) == [b"0", b"1"],
          f"the remaining member got {describe(delivered + moved)}, expected 0 and 1")


def scenario_will_delay(clients):
    """Will Delay Interval 2 s with Session Expiry 10 s: the will is
    published about 2 s after an abrupt close, not at once; a client that
    resumes its session within the delay has no will published
    (MQTT-3.1.3-9)."""
    base = f"{TOKEN}/willdelay"
    w = Client("willdelay", "watcher"); clients.append(w)
    w.connect()
    w.subscribe([(f"{base}/+", 1)])
    session = props("CONNECT", SessionExpiryInterval=10)
    delayed = props("WILLMESSAGE", WillDelayInterval=2)
    a = Client("willdelay", "late"); clients.append(a)
    a.will(f"{base}/late", b"after the delay", qos=1, properties=delayed)
    a.connect(properties=session)
    a.kill()
    start = time.monotonic()
    m = w.receive(timeout=8.0, what="will after its 2 s delay")
    elapsed = time.monotonic() - start
    check(m.payload == b"after the delay", f"unexpected {describe([m])}")
    check(1.8 <= elapsed <= 6.0, f"will published {elapsed:.1f}s after the close, its delay is 2 s")

    cid = f"{TOKEN}-willdelay-back"
    b = Client("willdelay", "back", client_id=cid); clients.append(b)
    b.will(f"{base}/back", b"must not be sent", qos=1, properties=delayed)
    b.connect(properties=session)
    b.kill()
    b2 = Client("willdelay", "back-again", clean_session=False, client_id=cid); clients.append(b2)
    b2.connect(properties=session, expect_session_present=True)
    got = w.quiet(3.0)
    check(not got, f"will published although the session resumed within its delay (MQTT-3.1.3-9): {describe(got)}")
    b2.disconnect()
    v3.clear_session("willdelay", cid)


SCENARIOS = [
    # tests/paho/interop.py's, over MQTT 5.0 (not its overlapping
    # subscriptions: 5.0 allows a copy per subscription, MQTT-3.3.4-2)
    ("basic", v3.scenario_basic),
    ("retained_messages", v3.scenario_retained),
    ("dollar_topics", v3.scenario_dollar_topics),
    ("unsubscribe", v3.scenario_unsubscribe),
    ("will_message", v3.scenario_will),
    # MQTT 5.0's own
    ("connack_properties", scenario_connack_properties),
    ("zero_length_client_id", scenario_zero_length_client_id),
    ("session_expiry", scenario_session_expiry),
    ("subscription_identifiers", scenario_subscription_identifiers),
    ("keepalive", scenario_keepalive),
    ("redelivery_on_resume", scenario_redelivery),
    ("unsubscribe_reason_codes", scenario_unsubscribe_reason_codes),
    ("will_properties", scenario_will_properties),
    ("user_properties_in_order", scenario_user_properties_in_order),
    ("message_properties", scenario_message_properties),
    ("message_expiry", scenario_message_expiry),
    ("topic_aliases", scenario_topic_aliases),
    ("no_local", scenario_no_local),
    ("retain_as_published", scenario_retain_as_published),
    ("retain_handling", scenario_retain_handling),
    ("receive_maximum", scenario_receive_maximum),
    ("maximum_packet_size", scenario_maximum_packet_size),
    ("response_information", scenario_response_information),
    ("shared_subscriptions", scenario_shared_subscriptions),
    ("shared_subscription_member_leaves", scenario_shared_subscription_member_leaves),
    ("will_delay", scenario_will_delay),
]


def main():
    global MAX_KEEPALIVE, RESPONSE_INFORMATION
    parser = v3.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--max-keepalive", type=int, default=MAX_KEEPALIVE,
                        help="the broker's max_keepalive")
    parser.add_argument("--response-information", default=RESPONSE_INFORMATION,
                        help="the broker's response_information")
    args = parser.parse_args()
    MAX_KEEPALIVE, RESPONSE_INFORMATION = args.max_keepalive, args.response_information
    v3.run(SCENARIOS, args)


if __name__ == "__main__":
    main()
