#!/usr/bin/env python3
"""Interoperability tests for midge with the Eclipse Paho Python client.

Modelled on the Eclipse Paho interoperability tests (paho.mqtt.testing,
interoperability/client_test.py), rewritten for paho-mqtt 2.x and MQTT 3.1.1:

    pip install paho-mqtt==2.2.0
    python3 tests/paho/interop.py --host 127.0.0.1 --port 1883

Prints one line per scenario ("ok NAME" or "FAIL NAME: REASON") and a final
line "N passed, M failed"; exits 0 only if every scenario passed. Every wait is
bounded; each scenario uses its own client ids and topics under a random
prefix, so scenarios (and concurrent runs) do not interfere. Where paho cannot
do what a scenario needs (withhold acknowledgements, send a malformed
CONNECT), a small raw-socket client is used instead.
"""

import argparse
import queue
import socket
import struct
import sys
import threading
import time
import traceback
import uuid

try:
    import paho.mqtt.client as mqtt
except ImportError:
    print("FAIL setup: the paho-mqtt Python package is missing: "
          "pip install paho-mqtt==2.2.0")
    print("0 passed, 1 failed")
    sys.exit(2)

if not hasattr(mqtt, "CallbackAPIVersion"):
    print("FAIL setup: paho-mqtt 2.x is required (found an older version): "
          "pip install paho-mqtt==2.2.0")
    print("0 passed, 1 failed")
    sys.exit(2)

# How long to wait for something that should happen.
WAIT = 5.0
# How long to wait to be reasonably sure something does not happen.
QUIET = 0.7

HOST = "127.0.0.1"
PORT = 1883
TOKEN = uuid.uuid4().hex[:8]
# Whether the broker queues QoS 0 messages for offline sessions
# (midge --queue-qos0-messages); midge's default is not to.
QUEUED_QOS0 = False
# The protocol Client speaks unless told otherwise: tests/paho/interop5.py
# sets mqtt.MQTTv5 and runs some of these scenarios again over MQTT 5.0.
PROTOCOL = mqtt.MQTTv311


class Failure(Exception):
    """A scenario's expectation was not met."""


def check(cond, reason):
    if not cond:
        raise Failure(reason)


# ---------------------------------------------------------------------------
# paho-mqtt wrapper


class Client:
    """A paho-mqtt 2.x client (MQTT 3.1.1 unless PROTOCOL or `protocol` says
    otherwise) with its network loop in a thread and its callbacks turned
    into queues and events that can be awaited. Over MQTT 5.0,
    `clean_session` is the Clean Start flag."""

    def __init__(self, scenario, name, clean_session=True, client_id=None,
                 protocol=None):
        if client_id is None:
            client_id = f"{TOKEN}-{scenario}-{name}"
        self.client_id = client_id
        self.protocol = PROTOCOL if protocol is None else protocol
        self.v5 = self.protocol == mqtt.MQTTv5
        self.clean_session = clean_session
        # paho refuses a clean_session argument for MQTT 5.0 (Clean Start is
        # given to connect()).
        session = {} if self.v5 else {"clean_session": clean_session}
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=self.protocol,
            **session,
        )
        # Never reconnect behind the scenario's back.
        self.c.reconnect_delay_set(min_delay=60, max_delay=60)
        self.messages = queue.Queue()
        self.connacks = queue.Queue()
        self.subacks = {}
        self.unsubacks = {}
        self.disconnected = threading.Event()
        # The reason code of the DISCONNECT that ended the connection (5.0).
        self.disconnect_reason = None
        # CONNACK's properties (5.0), and each publish's PUBACK / PUBREC /
        # PUBCOMP reason code by message id.
        self.connack_properties = None
        self.acks = {}
        self.lock = threading.Lock()
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_disconnect = self._on_disconnect
        self.c.on_publish = self._on_publish
        self.looping = False
        self.closed = False

    # callbacks, on paho's network thread
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack_properties = properties
        self.connacks.put((flags.session_present, reason_code))

    def _on_message(self, client, userdata, message):
        self.messages.put(message)

    def _ack_slot(self, table, mid):
        with self.lock:
            return table.setdefault(mid, [threading.Event(), None])

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties):
        slot = self._ack_slot(self.subacks, mid)
        slot[1] = [rc.value for rc in reason_code_list]
        slot[0].set()

    def _on_unsubscribe(self, client, userdata, mid, reason_code_list, properties):
        slot = self._ack_slot(self.unsubacks, mid)
        slot[1] = [rc.value for rc in reason_code_list]
        slot[0].set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_reason = reason_code
        self.disconnected.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.lock:
            self.acks[mid] = reason_code

    # operations
    def will(self, topic, payload, qos=1, retain=False, properties=None):
        self.c.will_set(topic, payload, qos=qos, retain=retain, properties=properties)

    def connect(self, keepalive=60, expect_session_present=None, properties=None):
        """Connects, starts the network loop, waits for CONNACK 0 and returns
        the session-present flag. `properties`: CONNECT's (5.0)."""
        v5 = {"clean_start": self.clean_session, "properties": properties} if self.v5 else {}
        self.c.connect(HOST, PORT, keepalive=keepalive, **v5)
        self.c.loop_start()
        self.looping = True
        try:
            session_present, rc = self.connacks.get(timeout=WAIT)
        except queue.Empty:
            raise Failure(f"{self.client_id}: no CONNACK within {WAIT}s")
        check(not rc.is_failure, f"{self.client_id}: CONNACK refused: {rc}")
        if expect_session_present is not None:
            check(session_present == expect_session_present,
                  f"{self.client_id}: CONNACK session present = {session_present},"
                  f" expected {expect_session_present}")
        return session_present

    def subscribe(self, subs, properties=None):
        """Subscribes to [(filter, qos or SubscribeOptions)], waits for
        SUBACK, returns the granted QoS (5.0: reason code) list."""
        rc, mid = self.c.subscribe(subs, properties=properties)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe {subs}: paho error {rc}")
        slot = self._ack_slot(self.subacks, mid)
        check(slot[0].wait(WAIT), f"{self.client_id}: no SUBACK for {subs}")
        return slot[1]

    def unsubscribe(self, topic):
        """Unsubscribes from a filter (or a list of them), waits for UNSUBACK,
        returns its reason codes (5.0; empty for 3.1.1)."""
        rc, mid = self.c.unsubscribe(topic)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"unsubscribe {topic}: paho error {rc}")
        slot = self._ack_slot(self.unsubacks, mid)
        check(slot[0].wait(WAIT), f"{self.client_id}: no UNSUBACK for {topic}")
        return slot[1]

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        """Publishes and waits until the QoS flow is complete (PUBACK for QoS
        1, PUBCOMP for QoS 2, written to the socket for QoS 0); returns the
        last acknowledgement's reason code (5.0), if paho reported one."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        check(info.rc == mqtt.MQTT_ERR_SUCCESS,
              f"publish to {topic} at QoS {qos}: paho error {info.rc}")
        info.wait_for_publish(timeout=WAIT)
        check(info.is_published(),
              f"publish to {topic} at QoS {qos}: flow not completed within {WAIT}s")
        with self.lock:
            return self.acks.pop(info.mid, None)

    def receive(self, timeout=WAIT, what="a message"):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise Failure(f"{self.client_id}: no {what} within {timeout}s")

    def receive_n(self, n, timeout=WAIT, what="messages"):
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < n:
            left = deadline - time.monotonic()
            try:
                got.append(self.messages.get(timeout=max(left, 0.001)))
            except queue.Empty:
                raise Failure(f"{self.client_id}: got {len(got)} of {n} {what} "
                              f"within {timeout}s: {describe(got)}")
        return got

    def quiet(self, timeout=QUIET):
        """Returns the messages that arrive within `timeout` (expected: none)."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                return got

    def disconnect(self):
        """Sends DISCONNECT and waits for the connection to close."""
        self.c.disconnect()
        self.disconnected.wait(WAIT)
        self.stop()

    def stop(self):
        """Stops the network loop without sending anything."""
        if self.looping:
            self.looping = False
            self.c.loop_stop()

    def kill(self):
        """Stops the network loop and closes the socket: no DISCONNECT."""
        self.stop()
        sock = self.c.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self):
        if self.closed:
            return
        self.closed = True
        try:
            if self.looping and self.c.is_connected():
                self.c.disconnect()
                self.disconnected.wait(1.0)
        except Exception:
            pass
        self.kill()


def describe(messages):
    return [(m.topic, bytes(m.payload), m.qos, int(m.retain)) for m in messages]


def clear_session(scenario, client_id):
    """Ends a persistent session by connecting with clean session."""
    c = Client(scenario, "cleanup", clean_session=True, client_id=client_id)
    try:
        c.connect()
        c.disconnect()
    finally:
        c.close()


# ---------------------------------------------------------------------------
# A raw MQTT 3.1.1 client, for what paho cannot do.


def encode_length(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def utf8(s):
    b = s.encode("utf-8")
    return struct.pack("!H", len(b)) + b


def packet(first_byte, body):
    return bytes([first_byte]) + encode_length(len(body)) + body


def connect_packet(client_id, clean_session=True, keepalive=60, will=None):
    flags = 0x02 if clean_session else 0
    payload = utf8(client_id)
    if will is not None:
        topic, message, qos = will
        flags |= 0x04 | (qos << 3)
        payload += utf8(topic) + struct.pack("!H", len(message)) + message
    body = utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
    return packet(0x10, body)


def subscribe_packet(pid, subs):
    body = struct.pack("!H", pid)
    for topic, qos in subs:
        body += utf8(topic) + bytes([qos])
    return packet(0x82, body)


def ack_packet(kind, pid):
    first = {"puback": 0x40, "pubrec": 0x50, "pubrel": 0x62, "pubcomp": 0x70}[kind]
    return packet(first, struct.pack("!H", pid))


DISCONNECT = b"\xe0\x00"
PACKET_NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK",
                5: "PUBREC", 6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE",
                9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK", 12: "PINGREQ",
                13: "PINGRESP", 14: "DISCONNECT"}


class Raw:
    def __init__(self):
        self.sock = socket.create_connection((HOST, PORT), timeout=WAIT)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            self.sock.settimeout(left)
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("connection closed by the broker")
            self.buf += chunk

    def recv(self, timeout=WAIT):
        """Returns (type, flags, body) of the next packet."""
        deadline = time.monotonic() + timeout
        self._fill(2, deadline)
        length, mult, i = 0, 1, 1
        while True:
            self._fill(i + 1, deadline)
            byte = self.buf[i]
            length += (byte & 0x7F) * mult
            mult *= 128
            i += 1
            if not byte & 0x80:
                break
        self._fill(i + length, deadline)
        first = self.buf[0]
        body = self.buf[i:i + length]
        self.buf = self.buf[i + length:]
        return first >> 4, first & 0x0F, body

    def expect(self, kind, timeout=WAIT):
        try:
            ptype, flags, body = self.recv(timeout)
        except socket.timeout:
            raise Failure(f"raw client: no {PACKET_NAMES[kind]} within {timeout}s")
        check(ptype == kind, f"raw client: expected {PACKET_NAMES[kind]}, "
                             f"got {PACKET_NAMES.get(ptype, ptype)} {body!r}")
        return flags, body

    def connack(self):
        _, body = self.expect(2)
        check(len(body) == 2, f"CONNACK of length {len(body)}")
        return body[0] & 1, body[1]

    def publish(self, timeout=WAIT):
        flags, body = self.expect(3, timeout)
        dup, qos, retain = flags >> 3, (flags >> 1) & 3, flags & 1
        tlen = struct.unpack("!H", body[:2])[0]
        topic = body[2:2 + tlen].decode("utf-8")
        rest = body[2 + tlen:]
        pid = None
        if qos:
            pid = struct.unpack("!H", rest[:2])[0]
            rest = rest[2:]
        return {"dup": dup, "qos": qos, "retain": retain, "topic": topic,
                "pid": pid, "payload": bytes(rest)}

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------
# Scenarios. Each takes a list to register its clients in (closed afterwards)
# and raises Failure (or anything else) on failure.


def scenario_basic(clients):
    """Connect, subscribe at QoS 2 (and at QoS 1 from a second client),
    publish at QoS 0, 1 and 2: each arrives at min(published, granted) QoS."""
    topic = f"{TOKEN}/basic/topic"
    a = Client("basic", "a"); clients.append(a)
    b = Client("basic", "b"); clients.append(b)
    a.connect(expect_session_present=False)
    b.connect(expect_session_present=False)
    check(a.subscribe([(topic, 2)]) == [2], "SUBACK did not grant QoS 2")
    check(b.subscribe([(topic, 1)]) == [1], "SUBACK did not grant QoS 1")
    for qos in (0, 1, 2):
        a.publish(topic, f"qos {qos}".encode(), qos)
    for client, granted in ((a, 2), (b, 1)):
        got = client.receive_n(3, what=f"messages (subscribed at QoS {granted})")
        got.sort(key=lambda m: m.payload)
        for qos, m in zip((0, 1, 2), got):
            check(m.topic == topic and m.payload == f"qos {qos}".encode(),
                  f"unexpected message {describe([m])}")
            check(m.qos == min(qos, granted),
                  f"published at QoS {qos}, subscribed at {granted}: "
                  f"delivered at QoS {m.qos} (MQTT-3.8.4-6)")
            check(not m.retain, f"retain flag set on a live message {describe([m])}"
                                " (MQTT-3.3.1-9)")
        extra = client.quiet(0.3)
        check(not extra, f"duplicate messages: {describe(extra)}")
    a.disconnect()
    b.disconnect()


def scenario_retained(clients):
    """Retained messages at QoS 0, 1 and 2 go to a new wildcard subscriber
    with the retain flag; empty retained payloads clear them."""
    base = f"{TOKEN}/retained"
    topics = [f"{base}/qos0", f"{base}/qos1", f"{base}/qos2"]
    p = Client("retained", "publisher"); clients.append(p)
    p.connect()
    for qos, topic in enumerate(topics):
        p.publish(topic, f"retained qos {qos}".encode(), qos, retain=True)

    s = Client("retained", "sub1"); clients.append(s)
    s.connect()
    check(s.subscribe([(f"{base}/+", 2)]) == [2], "SUBACK did not grant QoS 2")
    got = s.receive_n(3, what="retained messages (MQTT-3.3.1-6)")
    got.sort(key=lambda m: m.topic)
    for qos, (topic, m) in enumerate(zip(topics, got)):
        check(m.topic == topic and m.payload == f"retained qos {qos}".encode(),
              f"unexpected retained message {describe([m])}")
        check(m.retain, f"retain flag not set on {describe([m])} (MQTT-3.3.1-8)")
        check(m.qos == qos, f"retained message stored at QoS {qos} delivered "
                            f"at QoS {m.qos} (MQTT-3.3.1-5)")
    extra = s.quiet(0.3)
    check(not extra, f"extra messages: {describe(extra)}")
    s.disconnect()

    for qos, topic in enumerate(topics):
        p.publish(topic, b"", qos, retain=True)
    s2 = Client("retained", "sub2"); clients.append(s2)
    s2.connect()
    check(s2.subscribe([(f"{base}/#", 2)]) == [2], "SUBACK did not grant QoS 2")
    # A live message after the SUBACK: retained messages, if any, come first.
    p.publish(f"{base}/sentinel", b"sentinel", 1)
    got = [s2.receive(what="sentinel message")]
    got += s2.quiet(0.3)
    stale = [m for m in got if m.topic != f"{base}/sentinel"]
    check(not stale, "retained messages not cleared by empty retained payloads "
                     f"(MQTT-3.3.1-10, MQTT-3.3.1-11): {describe(stale)}")
    s2.disconnect()
    p.disconnect()


def scenario_zero_length_client_id(clients):
    """A zero-length client id with clean session is accepted (MQTT-3.1.3-6)
    and works; with clean session 0 it is refused with CONNACK 2
    (MQTT-3.1.3-8)."""
    topic = f"{TOKEN}/zero/topic"
    c = Client("zero", "", client_id=""); clients.append(c)
    c.connect(expect_session_present=False)
    check(c.subscribe([(topic, 1)]) == [1], "SUBACK did not grant QoS 1")
    c.publish(topic, b"zero", 1)
    m = c.receive()
    check(m.payload == b"zero" and m.qos == 1, f"unexpected {describe([m])}")
    c.disconnect()

    raw = Raw(); clients.append(raw)
    raw.send(connect_packet("", clean_session=False))
    try:
        sp, rc = raw.connack()
    except ConnectionError:
        raise Failure("zero-length client id with clean session 0: connection "
                      "closed without CONNACK 0x02 (MQTT-3.1.3-8)")
    check(rc == 2, f"zero-length client id with clean session 0: CONNACK "
                   f"return code {rc}, expected 2 (MQTT-3.1.3-8)")


def scenario_offline_queueing(clients):
    """Messages published while a persistent session is offline are delivered
    on reconnect (MQTT-3.1.2-5): QoS 1 and 2, and QoS 0 only with
    --queued-qos0 (midge does not queue QoS 0 by default)."""
    base = f"{TOKEN}/offline"
    cid = f"{TOKEN}-offline-a"
    a = Client("offline", "a", clean_session=False, client_id=cid); clients.append(a)
    a.connect()
    check(a.subscribe([(f"{base}/+", 2)]) == [2], "SUBACK did not grant QoS 2")
    a.disconnect()

    b = Client("offline", "b"); clients.append(b)
    b.connect()
    for qos in (0, 1, 2):
        b.publish(f"{base}/qos{qos}", f"offline qos {qos}".encode(), qos)
    b.disconnect()

    a2 = Client("offline", "a2", clean_session=False, client_id=cid); clients.append(a2)
    a2.connect(expect_session_present=True)
    got = a2.receive_n(2, what="queued messages (MQTT-3.1.2-5)")
    got += a2.quiet(0.5)
    got.sort(key=lambda m: m.topic)
    qos0 = [m for m in got if m.topic == f"{base}/qos0"]
    if QUEUED_QOS0:
        check(qos0, f"QoS 0 message not queued (--queued-qos0): {describe(got)}")
    else:
        check(not qos0, f"QoS 0 message queued although midge's default is not "
                        f"to queue QoS 0 (see --queued-qos0): {describe(got)}")
    expected = [(f"{base}/qos{q}", f"offline qos {q}".encode(), q)
                for q in ((0, 1, 2) if QUEUED_QOS0 else (1, 2))]
    check([(m.topic, m.payload, m.qos) for m in got] == expected,
          f"expected the queued messages once each, got {describe(got)}")
    a2.disconnect()
    clear_session("offline", cid)


def scenario_overlapping_subscriptions(clients):
    """Overlapping subscriptions a/# at QoS 2 and a/+ at QoS 1: one publish
    at QoS 2 arrives once, at QoS 2 (MQTT-3.3.5-1)."""
    base = f"{TOKEN}/overlap"
    c = Client("overlap", "a"); clients.append(c)
    c.connect()
    granted = c.subscribe([(f"{base}/#", 2), (f"{base}/+", 1)])
    check(granted == [2, 1], f"SUBACK granted {granted}, expected [2, 1]")
    c.publish(f"{base}/x", b"overlapping topic filters", 2)
    got = [c.receive()]
    got += c.quiet(0.5)
    check(len(got) == 1, f"{len(got)} copies delivered: {describe(got)}")
    check(got[0].qos == 2, f"delivered at QoS {got[0].qos}, expected the maximum "
                           f"of the matching subscriptions, 2 (MQTT-3.3.5-1)")
    c.disconnect()


def scenario_keepalive(clients):
    """A client with keepalive 2 s that falls silent is disconnected after
    1.5 x keepalive (MQTT-3.1.2-24) and its will is published (MQTT-3.1.2-8)."""
    will_topic = f"{TOKEN}/keepalive/will"
    w = Client("keepalive", "watcher"); clients.append(w)
    w.connect()
    check(w.subscribe([(will_topic, 1)]) == [1], "SUBACK did not grant QoS 1")
    a = Client("keepalive", "silent"); clients.append(a)
    a.will(will_topic, b"keepalive expiry", qos=1)
    a.connect(keepalive=2)
    start = time.monotonic()
    a.stop()  # no PINGREQ from now on: the connection falls silent
    m = w.receive(timeout=8.0, what="will after keepalive expiry (MQTT-3.1.2-24)")
    elapsed = time.monotonic() - start
    check(m.topic == will_topic and m.payload == b"keepalive expiry",
          f"unexpected message {describe([m])}")
    check(elapsed >= 1.9, f"will published {elapsed:.1f}s after CONNACK, before "
                          "the 2 s keepalive elapsed")
    check(elapsed <= 6.5, f"will published only {elapsed:.1f}s after CONNACK "
                          "(keepalive 2 s: expected ~3 s, MQTT-3.1.2-24)")
    w.disconnect()


class Wire311:
    """What the raw client of scenario_redelivery_on_reconnect sends and
    expects over MQTT 3.1.1 (interop5.py has the 5.0 one)."""
    name = "redelivery"
    raw = Raw

    @staticmethod
    def connect(cid):
        return connect_packet(cid, clean_session=False)

    @staticmethod
    def subscribe(topic):
        return subscribe_packet(1, [(topic, 2)])

    # SUBACK: packet id 1, QoS 2 granted.
    suback = b"\x00\x01\x02"

    @staticmethod
    def pubrel_ok(body, pid):
        return body == struct.pack("!H", pid)


def scenario_redelivery_on_reconnect(clients, wire=Wire311):
    """A persistent-session subscriber that does not acknowledge QoS 1 and 2
    messages gets them again on reconnect, same packet ids, DUP set
    (MQTT-4.4.0-1, MQTT-3.3.1-1)."""
    topic = f"{TOKEN}/{wire.name}/topic"
    cid = f"{TOKEN}-{wire.name}-raw"
    raw = wire.raw(); clients.append(raw)
    raw.send(wire.connect(cid))
    sp, rc = raw.connack()
    check(rc == 0, f"CONNACK return code {rc}")
    raw.send(wire.subscribe(topic))
    _, body = raw.expect(9)
    check(body == wire.suback, f"SUBACK {body!r}, expected {wire.suback!r}: id 1 granted 2")

    p = Client(wire.name, "publisher"); clients.append(p)
    p.connect()
    p.publish(topic, b"redeliver qos 1", 1)
    p.publish(topic, b"redeliver qos 2", 2)
    first = [raw.publish(), raw.publish()]
    first.sort(key=lambda m: m["qos"])
    check([(m["qos"], m["payload"], m["dup"]) for m in first]
          == [(1, b"redeliver qos 1", 0), (2, b"redeliver qos 2", 0)],
          f"first delivery: {first}")
    # No PUBACK, no PUBREC: disconnect with the exchanges incomplete.
    raw.send(DISCONNECT)
    raw.close()
    p.disconnect()

    raw2 = wire.raw(); clients.append(raw2)
    raw2.send(wire.connect(cid))
    sp, rc = raw2.connack()
    check(rc == 0, f"reconnect: CONNACK return code {rc}")
    check(sp == 1, "reconnect: CONNACK session present 0 (MQTT-3.2.2-2)")
    try:
        again = [raw2.publish(), raw2.publish()]
    except Failure as e:
        raise Failure(f"unacknowledged messages not re-sent on reconnect "
                      f"(MQTT-4.4.0-1): {e}")
    again.sort(key=lambda m: m["qos"])
    check([(m["qos"], m["payload"]) for m in again]
          == [(1, b"redeliver qos 1"), (2, b"redeliver qos 2")],
          f"redelivered: {again}")
    for old, new in zip(first, again):
        check(new["dup"] == 1, f"redelivered without DUP (MQTT-3.3.1-1): {new}")
        check(new["pid"] == old["pid"], f"redelivered with packet id {new['pid']}, "
                                        f"originally {old['pid']} (MQTT-4.4.0-1)")
    # Complete both exchanges now.
    qos1, qos2 = again
    raw2.send(ack_packet("puback", qos1["pid"]))
    raw2.send(ack_packet("pubrec", qos2["pid"]))
    flags, body = raw2.expect(6)
    check(flags == 2 and wire.pubrel_ok(body, qos2["pid"]),
          f"PUBREL flags {flags} body {body!r} (MQTT-3.6.1-1)")
    raw2.send(ack_packet("pubcomp", qos2["pid"]))
    raw2.send(DISCONNECT)
    raw2.close()
    clear_session(wire.name, cid)


def scenario_dollar_topics(clients):
    """Filters starting with a wildcard do not match topics starting with $
    (MQTT-4.7.2-1); an explicit $ filter does."""
    dollar = f"$test/{TOKEN}"
    a = Client("dollar", "wildcard"); clients.append(a)
    a.connect()
    check(a.subscribe([("#", 2), ("+/+", 2)]) == [2, 2],
          "SUBACK did not grant QoS 2 to # and +/+")
    b = Client("dollar", "explicit"); clients.append(b)
    b.connect()
    check(b.subscribe([(f"{dollar}", 1)]) == [1], "SUBACK did not grant QoS 1")
    a.quiet(0.2)  # drop whatever retained messages "#" brought

    p = Client("dollar", "publisher"); clients.append(p)
    p.connect()
    p.publish(dollar, b"dollar", 1)
    p.publish(f"{TOKEN}/dollar", b"sentinel", 1)
    m = b.receive(what=f"message on {dollar} for the explicit subscription")
    check(m.topic == dollar and m.payload == b"dollar", f"unexpected {describe([m])}")
    got = []
    deadline = time.monotonic() + WAIT
    while not any(x.topic == f"{TOKEN}/dollar" for x in got):
        left = deadline - time.monotonic()
        check(left > 0, f"no sentinel on the # subscription; got {describe(got)}")
        got.append(a.receive(timeout=left, what="sentinel on #"))
    got += a.quiet(0.3)
    leaked = [x for x in got if x.topic.startswith("$")]
    check(not leaked, f"# or +/+ matched a $ topic (MQTT-4.7.2-1): {describe(leaked)}")
    a.disconnect()
    b.disconnect()
    p.disconnect()


def scenario_unsubscribe(clients):
    """After UNSUBACK, messages on the unsubscribed filter stop (MQTT-3.10.4-2);
    other subscriptions carry on."""
    base = f"{TOKEN}/unsub"
    c = Client("unsub", "a"); clients.append(c)
    c.connect()
    check(c.subscribe([(f"{base}/gone", 1), (f"{base}/kept", 1)]) == [1, 1],
          "SUBACK did not grant QoS 1 twice")
    c.publish(f"{base}/gone", b"before", 1)
    m = c.receive(what="message before unsubscribing")
    check(m.topic == f"{base}/gone", f"unexpected {describe([m])}")
    c.unsubscribe(f"{base}/gone")
    c.publish(f"{base}/gone", b"after", 1)
    c.publish(f"{base}/kept", b"sentinel", 1)
    got = [c.receive(what="message on the remaining subscription")]
    got += c.quiet(0.3)
    gone = [m for m in got if m.topic == f"{base}/gone"]
    check(not gone, f"message delivered after UNSUBACK (MQTT-3.10.4-2): {describe(gone)}")
    check([m.topic for m in got] == [f"{base}/kept"], f"unexpected {describe(got)}")
    c.disconnect()


def scenario_will(clients):
    """A will is published when the connection closes without DISCONNECT
    (MQTT-3.1.2-8), and discarded on DISCONNECT (MQTT-3.1.2-10)."""
    base = f"{TOKEN}/will"
    w = Client("will", "watcher"); clients.append(w)
    w.connect()
    check(w.subscribe([(f"{base}/+", 2)]) == [2], "SUBACK did not grant QoS 2")

    a = Client("will", "abrupt"); clients.append(a)
    a.will(f"{base}/abrupt", b"abrupt close", qos=2)
    a.connect()
    a.kill()
    m = w.receive(what="will after an abrupt close (MQTT-3.1.2-8)")
    check(m.topic == f"{base}/abrupt" and m.payload == b"abrupt close",
          f"unexpected {describe([m])}")
    check(m.qos == 2, f"will at QoS 2 delivered at QoS {m.qos}")
    check(not m.retain, f"will not retained but delivered with retain: {describe([m])}")

    b = Client("will", "clean"); clients.append(b)
    b.will(f"{base}/clean", b"clean disconnect", qos=1)
    b.connect()
    b.disconnect()
    b.kill()
    got = w.quiet(1.0)
    check(not got, f"will published after DISCONNECT (MQTT-3.1.2-10): {describe(got)}")
    w.disconnect()


SCENARIOS = [
    ("basic", scenario_basic),
    ("retained_messages", scenario_retained),
    ("zero_length_client_id", scenario_zero_length_client_id),
    ("offline_message_queueing", scenario_offline_queueing),
    ("overlapping_subscriptions", scenario_overlapping_subscriptions),
    ("keepalive", scenario_keepalive),
    ("redelivery_on_reconnect", scenario_redelivery_on_reconnect),
    ("dollar_topics", scenario_dollar_topics),
    ("unsubscribe", scenario_unsubscribe),
    ("will_message", scenario_will),
]


def argument_parser(description):
    """The command line every interoperability script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--queued-qos0", action="store_true",
                        help="expect QoS 0 messages queued for offline sessions")
    parser.add_argument("--verbose", action="store_true",
                        help="print a traceback for each failure")
    parser.add_argument("only", nargs="*", help="run only these scenarios")
    return parser


def run(scenarios, args):
    """Runs `scenarios` ([(name, function)]) against the broker `args` name,
    one line each, and exits 0 only if all passed."""
    global HOST, PORT, QUEUED_QOS0
    HOST, PORT, QUEUED_QOS0 = args.host, args.port, args.queued_qos0

    passed = failed = 0
    for name, scenario in scenarios:
        if args.only and name not in args.only:
            continue
        clients = []
        try:
            scenario(clients)
        except Failure as e:
            failed += 1
            print(f"FAIL {name}: {e}", flush=True)
        except Exception as e:
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            if args.verbose:
                traceback.print_exc()
        else:
            passed += 1
            print(f"ok {name}", flush=True)
        finally:
            for c in clients:
                try:
                    c.close()
                except Exception:
                    pass
    print(f"{passed} passed, {failed} failed", flush=True)
    sys.exit(0 if failed == 0 and passed > 0 else 1)


def main():
    run(SCENARIOS, argument_parser(__doc__.splitlines()[0]).parse_args())


if __name__ == "__main__":
    main()
