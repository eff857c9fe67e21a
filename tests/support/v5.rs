//! A small blocking MQTT 5.0 client for the wire-level tests: [`Raw`] for
//! the bytes and the crate's own `midge::v5` codec for the packets. Every
//! read has the deadline of [`Raw`]; a packet the codec cannot decode
//! fails the test, naming what arrived.

use super::client::{Raw, TIMEOUT};
use bytes::{Bytes, BytesMut};
use midge::packet::QoS;
use midge::v5::{
    self, Ack, Connack, Connect, Disconnect, Packet, Properties, Publish, ReasonCode, RetainHandling, Suback,
    Subscribe, SubscriptionOptions,
};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;

/// A CONNECT for `client_id`: Clean Start 1, keep alive 60 s, no properties.
pub fn connect_packet(client_id: &str) -> Connect {
    Connect {
        keep_alive: 60,
        client_id: client_id.into(),
        clean_start: true,
        properties: Properties::default(),
        will: None,
        username: None,
        password: None,
    }
}

/// A PUBLISH without properties (the packet id is filled in by [`V5::publish_with`]).
pub fn publish_packet(topic: &str, payload: &[u8], qos: u8) -> Publish {
    Publish {
        dup: false,
        qos: QoS::from_u8(qos).expect("QoS 0, 1 or 2"),
        retain: false,
        topic: topic.into(),
        pid: None,
        topic_alias: None,
        subscription_ids: Vec::new(),
        properties: Properties::empty(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// Subscription options: maximum QoS `qos`, everything else off.
pub fn options(qos: u8) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::from_u8(qos).expect("QoS 0, 1 or 2"),
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::OnSubscribe,
    }
}

/// The bytes of `packet` in midge's encoding.
pub fn encoded(packet: &Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    v5::encode(packet, &mut out).expect("encode");
    out.to_vec()
}

/// A packet with a hand-written body: fixed header byte, remaining length, body.
pub fn frame(header: u8, body: &[u8]) -> Vec<u8> {
    super::packets::packet(header, body)
}

/// A connection speaking MQTT 5.0.
pub struct V5 {
    pub raw: Raw,
    next_pid: u16,
    /// The size in bytes of the last packet received, fixed header included.
    pub last_size: usize,
}

impl V5 {
    /// Connects, sends the CONNECT `adjust` made of [`connect_packet`], and
    /// returns the CONNACK, whatever its reason code.
    pub fn connect(addr: SocketAddr, client_id: &str, adjust: impl FnOnce(&mut Connect)) -> (V5, Connack) {
        let mut c = connect_packet(client_id);
        adjust(&mut c);
        let mut client = V5 { raw: Raw::connect(addr), next_pid: 0, last_size: 0 };
        client.send(&Packet::Connect(Box::new(c)));
        match client.recv() {
            Packet::Connack(connack) => (client, connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// [`V5::connect`] that expects CONNACK 0x00 (Success).
    pub fn accepted(addr: SocketAddr, client_id: &str, adjust: impl FnOnce(&mut Connect)) -> (V5, Connack) {
        let (client, connack) = V5::connect(addr, client_id, adjust);
        assert_eq!(connack.reason, ReasonCode::SUCCESS, "CONNACK for {client_id:?}: {connack:?}");
        (client, connack)
    }

    /// A clean client (Clean Start 1, no properties) after CONNACK 0x00.
    pub fn client(addr: SocketAddr, client_id: &str) -> V5 {
        V5::accepted(addr, client_id, |_| {}).0
    }

    /// A client over a TCP connection on which nothing was sent yet.
    pub fn over(raw: Raw) -> V5 {
        V5 { raw, next_pid: 0, last_size: 0 }
    }

    /// Sends a packet (an error means the broker closed; the next
    /// expectation tells).
    pub fn send(&mut self, packet: &Packet) {
        self.raw.send(&encoded(packet));
    }

    /// Sends bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.raw.send(bytes);
    }

    /// The next packet (within [`TIMEOUT`]), decoded.
    pub fn recv(&mut self) -> Packet {
        let got = self.raw.try_recv().unwrap_or_else(|e| match e.kind() {
            ErrorKind::UnexpectedEof => panic!("expected a packet: the broker closed the connection"),
            ErrorKind::WouldBlock | ErrorKind::TimedOut => panic!("expected a packet: none within {TIMEOUT:?}"),
            _ => panic!("expected a packet: {e}"),
        });
        self.last_size = super::packets::packet(got.header, &got.body).len();
        v5::decode(got.header, Bytes::from(got.body.clone())).unwrap_or_else(|e| {
            panic!("undecodable packet from the broker ({e}): {:02x} {:02x?}", got.header, got.body)
        })
    }

    /// The next packet, which must be a PUBLISH.
    pub fn recv_publish(&mut self) -> Publish {
        match self.recv() {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// A fresh packet identifier.
    pub fn pid(&mut self) -> u16 {
        self.next_pid = self.next_pid % u16::MAX + 1;
        self.next_pid
    }

    /// Acknowledges a received PUBLISH as its QoS asks (PUBACK; PUBREC,
    /// PUBREL expected, PUBCOMP).
    pub fn ack(&mut self, p: &Publish) {
        match (p.qos, p.pid) {
            (QoS::AtMostOnce, _) => {}
            (QoS::AtLeastOnce, Some(pid)) => self.send(&Packet::Puback(Ack::success(pid))),
            (QoS::ExactlyOnce, Some(pid)) => {
                self.send(&Packet::Pubrec(Ack::success(pid)));
                match self.recv() {
                    Packet::Pubrel(a) if a.pid == pid && a.reason == ReasonCode::SUCCESS => {}
                    other => panic!("expected PUBREL {pid} 0x00, got {other:?}"),
                }
                self.send(&Packet::Pubcomp(Ack::success(pid)));
            }
            _ => panic!("PUBLISH at QoS > 0 without a packet id: {p:?}"),
        }
    }

    /// Receives a PUBLISH and acknowledges it.
    pub fn recv_and_ack(&mut self) -> Publish {
        let p = self.recv_publish();
        self.ack(&p);
        p
    }

    /// Publishes `p` (its packet id filled in at QoS > 0) and completes the
    /// flow: the PUBACK or PUBREC must carry a success code (0x00, or 0x10
    /// No matching subscribers), which is returned.
    pub fn publish_with(&mut self, mut p: Publish) -> ReasonCode {
        let qos = p.qos;
        if qos == QoS::AtMostOnce {
            self.send(&Packet::Publish(p));
            return ReasonCode::SUCCESS;
        }
        let pid = match p.pid {
            Some(pid) => pid,
            None => *p.pid.insert(self.pid()),
        };
        self.send(&Packet::Publish(p));
        let reason = match (qos, self.recv()) {
            (QoS::AtLeastOnce, Packet::Puback(a)) | (QoS::ExactlyOnce, Packet::Pubrec(a)) if a.pid == pid => a.reason,
            (_, other) => panic!("expected the acknowledgement of PUBLISH {pid} at {qos:?}, got {other:?}"),
        };
        assert!(
            [ReasonCode::SUCCESS, ReasonCode::NO_MATCHING_SUBSCRIBERS].contains(&reason),
            "PUBLISH {pid} refused with {reason}"
        );
        if qos == QoS::ExactlyOnce {
            self.send(&Packet::Pubrel(Ack::success(pid)));
            match self.recv() {
                Packet::Pubcomp(a) if a.pid == pid && a.reason == ReasonCode::SUCCESS => {}
                other => panic!("expected PUBCOMP {pid} 0x00, got {other:?}"),
            }
        }
        reason
    }

    /// Publishes a message without properties and completes its flow.
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: u8) {
        self.publish_with(publish_packet(topic, payload, qos));
    }

    /// SUBSCRIBE (its packet id filled in) and the SUBACK for it.
    pub fn subscribe_with(&mut self, mut s: Subscribe) -> Suback {
        s.pid = self.pid();
        let pid = s.pid;
        self.send(&Packet::Subscribe(s));
        match self.recv() {
            Packet::Suback(ack) if ack.pid == pid => ack,
            other => panic!("expected SUBACK {pid}, got {other:?}"),
        }
    }

    /// Subscribes to `filter` with `options` (and a Subscription Identifier
    /// if `id` is set); returns the SUBACK's one reason code.
    pub fn subscribe_opts(&mut self, filter: &str, options: SubscriptionOptions, id: Option<u32>) -> ReasonCode {
        let s = Subscribe {
            pid: 1,
            subscription_id: id,
            properties: Properties::default(),
            filters: vec![(filter.into(), options)],
        };
        let ack = self.subscribe_with(s);
        assert_eq!(ack.reasons.len(), 1, "one reason code per filter: {ack:?}");
        ack.reasons[0]
    }

    /// Subscribes to `filter` at maximum QoS `qos` and expects it granted.
    pub fn subscribe(&mut self, filter: &str, qos: u8) {
        let reason = self.subscribe_opts(filter, options(qos), None);
        assert_eq!(reason, ReasonCode(qos), "SUBACK for {filter:?}");
    }

    /// PINGREQ → PINGRESP: every earlier packet has been processed.
    pub fn ping(&mut self) {
        self.send(&Packet::Pingreq);
        match self.recv() {
            Packet::Pingresp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }

    /// No message waits for this client (see `Raw::expect_nothing_queued`).
    pub fn expect_nothing_queued(&mut self) {
        self.ping();
        self.ping();
    }

    /// A DISCONNECT from the broker with `reason`, then the close. The
    /// server never sends a Session Expiry Interval in it (MQTT-3.14.2-2),
    /// and sends nothing after it (MQTT-3.14.4-1/-2).
    pub fn expect_disconnect(&mut self, reason: ReasonCode) -> Disconnect {
        self.expect_disconnect_of(&[reason])
    }

    /// [`V5::expect_disconnect`] accepting any of `reasons` (where the
    /// spec leaves the server a choice).
    pub fn expect_disconnect_of(&mut self, reasons: &[ReasonCode]) -> Disconnect {
        let d = match self.recv() {
            Packet::Disconnect(d) => d,
            other => panic!("expected DISCONNECT {reasons:?}, got {other:?}"),
        };
        assert!(reasons.contains(&d.reason), "expected DISCONNECT {reasons:?}, got {d:?}");
        assert_eq!(d.properties.session_expiry, None, "MQTT-3.14.2-2: the server sent a session expiry");
        self.raw.expect_closed();
        d
    }

    /// The broker closes the connection without sending anything more.
    pub fn expect_closed(&mut self) {
        self.raw.expect_closed();
    }

    /// Sends DISCONNECT `reason` with `properties`; the broker closes.
    pub fn disconnect_with(mut self, reason: ReasonCode, properties: Properties) {
        self.send(&Packet::Disconnect(Disconnect { reason, properties }));
        self.raw.expect_closed_or_reset();
    }

    /// A normal DISCONNECT (0x00); the broker closes.
    pub fn disconnect(self) {
        self.disconnect_with(ReasonCode::NORMAL_DISCONNECTION, Properties::default());
    }
}

/// Message properties with the given User Properties.
pub fn user_properties(pairs: &[(&str, &str)]) -> Vec<(Arc<str>, Arc<str>)> {
    pairs.iter().map(|(k, v)| (Arc::from(*k), Arc::from(*v))).collect()
}
